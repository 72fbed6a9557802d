"""The card's blocks come from the run and the manifest (issue 18): the "How it was made" wall times are the run's
own stage times (a stage resumed after a kill is the sum of its parts, in training.run's stage order; a broken
times file is an error), the components' numbers are the ones their fits recorded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bundle_card  # noqa: E402

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "default.yaml"


def make_run(tmp_path: Path, lines: list[dict]) -> tuple[Path, Path]:
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    run.mkdir()
    bundle.mkdir()
    (run / "config.yaml").write_text(CONFIG.read_text())
    (run / "stage_times.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (bundle / "manifest.json").write_text(
        json.dumps({"name": "b", "metrics": {"x": 1}, "training": {"final_dir": "f"}})
    )
    (bundle / "MODEL_CARD.md").write_text(
        "# card\n\n<!-- recipe:begin -->\nold\n<!-- recipe:end -->\n\n"
        "<!-- components:begin -->\n<!-- components:end -->\nrest\n"
    )
    return run, bundle


def test_resumed_stages_add_up_in_training_order(tmp_path):
    run, bundle = make_run(
        tmp_path,
        [
            {"stage": "recipe", "seconds": 0.0, "finished": "t"},
            {"stage": "shape", "seconds": 600.0, "finished": "t"},
            {"stage": "albedo", "seconds": 3000.0, "finished": "t"},
            {"stage": "shape", "seconds": 1200.5, "finished": "t"},
            {"stage": "export", "seconds": 30.0, "finished": "t"},
        ],
    )
    training = bundle_card.record(run, bundle, "a test box")
    assert list(training["stages"]) == ["albedo", "shape", "export"]  # ORDER, zero-second stages left out
    assert training["stages"]["shape"] == {"seconds": 1800.5, "parts": 2, "what": training["stages"]["shape"]["what"]}
    cfg = yaml.safe_load(CONFIG.read_text())
    assert f"{cfg['albedo']['steps']} steps × {cfg['albedo']['batch']}" in training["stages"]["albedo"]["what"]

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["metrics"] == {"x": 1} and manifest["training"]["stages"]["albedo"]["seconds"] == 3000.0
    assert manifest["training"]["final_dir"] == "f"  # what the export recorded stays
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "old" not in card and card.endswith("rest\n")
    assert "| shape |" in card and "| 30 min (2 parts) |" in card  # 1,800.5 s
    assert "| albedo |" in card and "| 50 min |" in card
    assert "| **all** | | **81 min** |" in card  # 4,830.5 s
    assert card.index("| albedo |") < card.index("| shape |") < card.index("| export |")
    assert "Training-time evaluation" not in card  # the run has no eval.json


def test_training_time_evaluation_comes_from_the_stages_eval_files(tmp_path):
    run, bundle = make_run(tmp_path, [{"stage": "shape", "seconds": 60.0, "finished": "t"}])
    final = {
        "step": 1500,
        "num_samples": 32,
        "now_coarse_mm": {"median": 1.2034, "mean": 1.5133},
        "landmark_nme": 0.0583,
    }
    (run / "shape").mkdir()
    (run / "shape" / "eval.json").write_text(json.dumps({"final": final, "protocol": {"samples": "renders of 9"}}))
    training = bundle_card.record(run, bundle, "a test box")
    assert list(training["evaluation"]) == ["shape"] and training["evaluation"]["shape"]["step"] == 1500
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "PyTorch, 32 renders of 9" in card
    assert "| after shape (step 1500) | 1.20 / 1.51 | 0.058 | — | — |" in card


def test_a_broken_times_file_is_a_clear_error(tmp_path, capsys):
    run, bundle = make_run(tmp_path, [{"stage": "shape", "seconds": 5.0}])
    (run / "stage_times.jsonl").write_text('{"stage": "shape", "seconds": 5.0}\nnot json\n')
    assert bundle_card.main(["--run", str(run), "--bundle", str(bundle)]) == 2
    assert "stage_times.jsonl:2" in capsys.readouterr().err
    assert "stages" not in json.loads((bundle / "manifest.json").read_text())["training"]  # nothing half-written
    assert bundle_card.main(["--run", str(tmp_path / "nowhere"), "--bundle", str(bundle)]) == 2


def test_components_are_the_numbers_the_fits_recorded():
    manifest = json.loads((Path(bundle_card.__file__).parents[1] / "service/bundled/default/manifest.json").read_text())
    block = bundle_card.components_block(manifest)
    held = manifest["identity"]["metrics"]["held_out_prior"]
    assert f"{held['centred_ratio']:.3f} centred" in block
    loc = manifest["localiser"]["metrics"]["held_out"]["errors"]
    assert f"{loc['dlib anchors']['mean']:.3f}" in block and f"{loc['pass 2 anchors']['mean']:.3f}" in block
    assert f"{manifest['albedo_latent']['psnr_db']:.2f} dB" in block
    assert f"{1000 * manifest['mouth']['rmse_calibrated_m']:.1f} mm" in block
    assert block.count("\n| ") == 1 + 6  # header + one row per fitted part
    assert f"encoder {manifest['graphs']['encoder']['parity_max_abs']:.1e}" in block
    assert bundle_card.components_block({}).count("\n| ") == 1  # a bundle without fitted parts: header only
