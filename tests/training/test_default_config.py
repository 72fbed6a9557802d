"""training/configs/default.yaml (the shipped bundle's recipe) runs end to end, shrunk to seconds by overrides."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest

from facecore.bundle import load_bundle
from training import run as run_cli

DEFAULT = Path(__file__).resolve().parents[2] / "training" / "configs" / "default.yaml"
TINY = [
    "extract.synthetic.count=6",
    "albedo.steps=4", "albedo.data.holdout=2", "albedo.metric.every=4", "albedo.metric.num_generated=16",
    "albedo.metric.num_subsets=2", "albedo.checkpoint_every=2", "albedo.sample_every=4",
    "shape.schedule.shape_steps=3", "shape.eval.num_samples=8", "shape.checkpoint_every=2",
    "alternate.schedule.shape_steps=2", "alternate.schedule.albedo_steps=2", "alternate.schedule.cycles=1",
    "localiser.renders=256", "localiser.render_size=96", "localiser.eval_renders=4", "localiser.steps=4",
    "localiser.batch=8", "localiser.input_size=64", "localiser.channels=[8,16,16]", "localiser.checkpoint_every=2",
    "grow.data.num_samples=96", "grow.metric.every=500",
    "identity.identities=8", "identity.eval_identities=3", "identity.test_fraction=0.25",
    "identity.val_fraction=0.2", "identity.image_size=192", "identity.albedo_size=64", "identity.chunk=4",
    "export.albedo_mean_samples=64", "export.latent_identity_samples=48", "export.latent_identity_truth=48",
    "export.mouth_calibration_samples=24", "export.albedo_latent_samples=24", "export.skin_tone_renders=16",
]  # fmt: skip


@pytest.mark.slow
def test_default_recipe_chains_every_stage_into_the_shipped_bundle(tmp_path):
    out = tmp_path / "run"
    argv = ["all", "--config", str(DEFAULT), "--out", str(out)] + [a for kv in TINY for a in ("--set", kv)]
    assert run_cli.main(argv) == 0
    extracted = sorted((out / "extract" / "albedo").glob("*.png"))
    assert len(extracted) == 6
    # AlbedoGAN trained on the synthetic source's true albedos with the learned mean image (issue 14)
    albedo = json.loads((out / "albedo" / "albedo_config.json").read_text())
    assert albedo["data"]["kind"] == "synthetic" and albedo["G"]["synthesis"]["mean_image"]
    assert json.loads((out / "alternate" / "train_config.json").read_text())  # the alternation ran from shape/final
    bundle = load_bundle(out / "export")
    assert bundle.capabilities == {"generate": True, "reconstruct": True}
    assert bundle.manifest.name == "albedogan-default" and bundle.manifest.version == "2.0.0"
    # the 64² generator grown to 256² is the bundle's; the encoder's latent head (of the 64² W space) was cut, and
    # /reconstruct's albedo=generated reads the photo albedo's latent through the refitted albedo_latent graph
    assert bundle.manifest.resolutions.albedo == 256 and bundle.manifest.training["albedo"]["run"].endswith("grow")
    assert "ws" not in bundle.manifest.graphs["encoder"].outputs and "albedo_latent" in bundle.manifest.graphs
    # the identity stage's head reads its feature graph, which came along
    assert bundle.identity_head is not None and "identity_features" in bundle.manifest.graphs
    assert all(g.weights_dtype == "float16" for g in bundle.manifest.graphs.values())
    # the grown generator's mean map was matched to 64 of its training maps (the 2 held-out ones are not among them)
    assert bundle.manifest.albedo_mean["training_maps"] == 64 and bundle.manifest.albedo_mean["samples"] == 64
    # every stage's wall time is in the run folder
    times = [json.loads(line) for line in (out / "stage_times.jsonl").read_text().splitlines()]
    assert [t["stage"] for t in times] == [s for s in run_cli.ORDER for _ in range(2)]  # started, finished
    assert all("started" in t for t in times[::2]) and all(t["seconds"] >= 0 for t in times[1::2])
    # the landmark localiser frames /reconstruct's crops; the mouth was calibrated on those crops, after it
    assert "landmarks" in bundle.manifest.graphs and bundle.manifest.localiser.metrics["steps"] == 4
    assert bundle.manifest.mouth is not None
    # /generate's latent → head graph, fitted after the mean map (which would have dropped it)
    assert "codes" in bundle.manifest.graphs and bundle.manifest.latent_identity["samples"] == 48
    # the photo's skin level and albedo=generated's tone match calibrated last, through the finished bundle
    tone = bundle.manifest.skin_tone
    # (each render counted as drawn and auto-exposed)
    assert tone is not None and 20 <= tone.renders <= 32 and tone.chroma_weight is not None
    assert tone.level_map is not None
    encoder = onnx.load(str(out / "export" / "encoder.onnx"))
    fc = [t for t in encoder.graph.initializer if tuple(t.dims) == (512, 2048)]  # the 2×2-grid fc, stored fp16
    assert len(fc) == 1 and fc[0].data_type == onnx.TensorProto.FLOAT16
    size_mb = sum(p.stat().st_size for p in (out / "export").iterdir()) / 1e6
    assert size_mb < 50, f"bundle is {size_mb:.1f} MB"
    # a rerun resumes every stage instead of redoing the work
    mtime = extracted[0].stat().st_mtime_ns
    assert run_cli.main(argv) == 0
    assert extracted[0].stat().st_mtime_ns == mtime
    # the card's "How it was made" table is this run's: every stage, both runs of it finished, none cut short
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bundle_card

    training = bundle_card.record(out, out / "export", "a test box")
    assert set(training["stages"]) <= set(run_cli.ORDER) and "shape" in training["stages"]
    assert all(e["interrupted"] == 0 for e in training["stages"].values())
    assert load_bundle(out / "export").manifest.training["stages"] == training["stages"]
