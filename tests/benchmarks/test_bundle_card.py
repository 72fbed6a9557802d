"""The card's blocks come from the run and the manifest (issue 18): the "How it was made" wall times are the run's
own stage times (the sum of a stage's finished runs, in training.run's stage order, runs killed before the end
counted as such), the components' numbers are the ones their fits recorded; nothing is written for a bundle that
is not the run's, a card without the blocks, or a manifest that lacks a number."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bundle_card  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "training" / "configs" / "default.yaml"
CARD = (
    "# card\n\n<!-- recipe:begin -->\nold\n<!-- recipe:end -->\n\n<!-- components:begin -->\n<!-- components:end -->\n"
)


def make_run(tmp_path: Path, lines: list[dict], card: str = CARD + "rest\n") -> tuple[Path, Path]:
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    run.mkdir()
    bundle.mkdir()
    (run / "config.yaml").write_text(CONFIG.read_text())
    (run / "stage_times.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    manifest = {"name": "b", "metrics": {"x": 1}, "training": {"final_dir": str(run / "alternate" / "final")}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "MODEL_CARD.md").write_text(card)
    return run, bundle


def started(stage: str) -> dict:
    return {"stage": stage, "started": "t"}


def finished(stage: str, seconds: float) -> dict:
    return {"stage": stage, "seconds": seconds, "finished": "t"}


def test_finished_runs_add_up_in_training_order_and_killed_ones_are_counted(tmp_path):
    lines = [
        {"stage": "recipe", "seconds": 0.0, "finished": "t"},  # an old run's line, without `started`
        started("shape"),  # killed: no finished line
        started("albedo"),
        finished("albedo", 3000.0),
        started("shape"),
        finished("shape", 1200.5),
        started("shape"),  # a rerun of the finished stage: resumes, finishes at once
        finished("shape", 600.0),
        started("export"),
        finished("export", 30.0),
    ]
    run, bundle = make_run(tmp_path, lines)
    training = bundle_card.record(run, bundle, "a test box")
    assert list(training["stages"]) == ["albedo", "shape", "export"]  # ORDER, zero-second stages left out
    shape = training["stages"]["shape"]
    assert shape["seconds"] == 1800.5 and shape["interrupted"] == 1 and training["stages"]["albedo"]["interrupted"] == 0
    cfg = yaml.safe_load(CONFIG.read_text())
    assert shape["what"].endswith(f"1 × ({cfg['shape']['schedule']['shape_steps']} shape) steps")
    albedo = training["stages"]["albedo"]["what"]
    assert f"{cfg['albedo']['steps']} steps × {cfg['albedo']['batch']}" in albedo and "learned mean image" in albedo

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["metrics"] == {"x": 1} and manifest["training"]["stages"]["albedo"]["seconds"] == 3000.0
    assert manifest["training"]["final_dir"].endswith("alternate/final")  # what the export recorded stays
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "old" not in card and card.endswith("rest\n")
    assert "| shape |" in card and "| 30 min (+ 1 run killed and resumed, not counted) |" in card  # 1,800.5 s
    assert "| albedo |" in card and "| 50 min |" in card
    assert "| **all** |  | **81 min** |" in card  # 4,830.5 s
    assert card.index("| albedo |") < card.index("| shape |") < card.index("| export |")
    assert "Training-time evaluation" not in card  # the run has no eval.json
    assert f"--out {run}" in card


def test_durations():
    assert [bundle_card._duration(s) for s in (42, 89 * 60, 7170, 7199, 4 * 3600 + 61)] == [
        "42 s", "89 min", "2 h 00 min", "2 h 00 min", "4 h 01 min"
    ]  # fmt: skip


def test_training_time_evaluation_comes_from_the_stages_eval_files(tmp_path):
    run, bundle = make_run(tmp_path, [started("shape"), finished("shape", 60.0)])
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


def unchanged(bundle: Path, before: dict[str, str]) -> bool:
    return all((bundle / name).read_text() == text for name, text in before.items())


def test_nothing_is_written_unless_everything_can_be(tmp_path, capsys):
    run, bundle = make_run(tmp_path, [started("shape"), finished("shape", 5.0)], card="# card without blocks\n")
    before = {n: (bundle / n).read_text() for n in ("manifest.json", "MODEL_CARD.md")}
    assert bundle_card.main(["--run", str(run), "--bundle", str(bundle)]) == 2  # the card lacks the blocks
    assert "no block recipe, components" in capsys.readouterr().err and unchanged(bundle, before)

    (bundle / "MODEL_CARD.md").write_text(CARD)
    before["MODEL_CARD.md"] = CARD
    manifest = json.loads(before["manifest.json"])
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "albedo_latent": {"pairs": 3}}))  # incomplete
    before["manifest.json"] = (bundle / "manifest.json").read_text()
    assert bundle_card.main(["--run", str(run), "--bundle", str(bundle)]) == 2
    assert "lacks 'psnr_db'" in capsys.readouterr().err and unchanged(bundle, before)

    other = {**manifest, "training": {"final_dir": "runs/default/alternate/final"}}  # another run's export
    (bundle / "manifest.json").write_text(json.dumps(other))
    before["manifest.json"] = (bundle / "manifest.json").read_text()
    assert bundle_card.main(["--run", str(run), "--bundle", str(bundle)]) == 2
    assert "not from the run" in capsys.readouterr().err and unchanged(bundle, before)

    (run / "stage_times.jsonl").write_text('{"stage": "shape", "seconds": 5.0}\nnot json\n')
    assert bundle_card.main(["--run", str(run), "--bundle", str(bundle)]) == 2
    assert "stage_times.jsonl:2" in capsys.readouterr().err and unchanged(bundle, before)
    assert bundle_card.main(["--run", str(tmp_path / "nowhere"), "--bundle", str(bundle)]) == 2
    assert "no stage times" in capsys.readouterr().err


def test_components_are_the_numbers_the_fits_recorded():
    manifest = json.loads((ROOT / "service/bundled/default/manifest.json").read_text())
    block = bundle_card.components_block(manifest)
    held = manifest["identity"]["metrics"]["held_out_prior"]
    assert f"{held['centred_ratio']:.3f} centred" in block
    loc = manifest["localiser"]["metrics"]["held_out"]["errors"]
    assert f"{loc['dlib anchors']['mean']:.3f}" in block and f"{loc['pass 2 anchors']['mean']:.3f}" in block
    assert f"{manifest['albedo_latent']['psnr_db']:.2f} dB" in block
    assert f"{1000 * manifest['mouth']['rmse_calibrated_m']:.1f} mm" in block and "**not held out**" in block
    assert block.count("\n| ") == 1 + 6  # header + one row per fitted part
    assert f"encoder {manifest['graphs']['encoder']['parity_max_abs']:.1e}" in block
    assert "(weights stored as float16)" in block
    assert bundle_card.components_block({}).count("\n| ") == 1  # a bundle without fitted parts: header only
    loc = {k: v for k, v in manifest["localiser"].items() if k != "kept_from"}
    assert "kept from" not in bundle_card.components_block({**manifest, "localiser": loc})
    kept = {**manifest, "localiser": {**loc, "kept_from": "albedogan-default 1.8.1: not better"}}
    assert "**kept from albedogan-default 1.8.1: not better**" in bundle_card.components_block(kept)


def test_components_only_rewrites_that_block_from_the_manifest_alone(tmp_path, capsys):
    """A bundle edited after its run (a graph re-fitted by its own command; the run may be gone): --components-only
    writes the components block from the manifest and leaves the rest of the card alone; a card without the block
    or a folder without a manifest is an error (exit 2), nothing written."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    manifest = json.loads((ROOT / "service/bundled/default/manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "MODEL_CARD.md").write_text(CARD + "rest\n")
    assert bundle_card.main(["--components-only", "--bundle", str(bundle)]) == 0
    card = (bundle / "MODEL_CARD.md").read_text()
    assert bundle_card.components_block(manifest).strip() in card
    assert "<!-- recipe:begin -->\nold\n<!-- recipe:end -->" in card and card.endswith("rest\n")
    capsys.readouterr()
    (bundle / "MODEL_CARD.md").write_text("# card without blocks\n")
    assert bundle_card.main(["--components-only", "--bundle", str(bundle)]) == 2
    assert (bundle / "MODEL_CARD.md").read_text() == "# card without blocks\n"
    assert "nothing written" in capsys.readouterr().err
    assert bundle_card.main(["--components-only", "--bundle", str(tmp_path / "none")]) == 2
    assert "nothing written" in capsys.readouterr().err
