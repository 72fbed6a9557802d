"""The localiser stage: its crops are the service's, its mirror augmentation swaps sides, it learns, it resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facecore import detect, localise
from models.landmarks import IBUG68_FLIP
from training.localiser import (
    METRICS_FILE,
    WEIGHTS_FILE,
    LocaliserStageConfig,
    LocaliserTrainer,
    crop_batch,
    load_localiser,
    mirror,
    run,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SECTION = {
    "renders": 256,
    "render_size": 128,
    "eval_renders": 8,
    "eval_seed": 99,
    "input_size": 64,
    "channels": [8, 16, 16],
    "steps": 12,
    "batch": 8,
    "checkpoint_every": 4,
    "progress": False,
    "log_every": 4,
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("localiser")
    run({"localiser": {**SECTION, "max_steps": 6}}, out)  # stopped (as if killed) after a checkpoint
    assert not (out / WEIGHTS_FILE).exists()
    run({"localiser": SECTION}, out)  # resumed to the end
    return out


def test_the_stage_resumes_and_writes_weights_and_held_out_numbers(tiny_run):
    steps = [json.loads(line)["step"] for line in (tiny_run / "losses.jsonl").read_text().splitlines()]
    assert steps == list(range(12))  # every step once: the second call resumed at 6
    metrics = json.loads((tiny_run / METRICS_FILE).read_text())
    assert metrics["held_out"]["renders"] == 8 and metrics["config"]["eval_seed"] == 99
    for row in metrics["held_out"]["errors"].values():
        assert np.isfinite([row["mean"], row["median"], row["p90"]]).all()
    net, c = load_localiser(tiny_run)
    assert c.input_size == 64 and net(torch.rand(2, 3, 64, 64)).shape == (2, 68, 2)


def test_training_crops_are_the_service_crops(tiny_run):
    c = LocaliserStageConfig(**SECTION)
    trainer = LocaliserTrainer(c, tiny_run, render_data(tiny_run, c))
    units, matrices = trainer._targets(np.arange(4))
    images = torch.as_tensor(trainer.data["image"][:4]).permute(0, 3, 1, 2).float() / 255.0
    got = crop_batch(images, matrices, 64).permute(0, 2, 3, 1).numpy() * 255.0
    want = np.stack([detect.warp_crop(trainer.data["image"][i], matrices[i], 64).crop for i in range(4)])
    assert np.abs(got - want).mean() < 3.0  # of 255: bilinear at 2× + 2×2 means vs PIL's box-reduce + bilinear
    # the targets are the true landmarks in that crop's units
    px = detect.transform_points(trainer.data["landmarks"][1], matrices[1])
    np.testing.assert_allclose(units[1], localise.pixels_to_units(px, 64), atol=1e-5)


def test_mirroring_a_crop_is_cropping_the_mirrored_photo(tiny_run):
    c = LocaliserStageConfig(**SECTION)
    data = render_data(tiny_run, c)
    trainer = LocaliserTrainer(c, tiny_run, data)
    units, matrices = trainer._targets(np.arange(3))
    images = torch.as_tensor(data["image"][:3]).permute(0, 3, 1, 2).float() / 255.0
    crops, target = mirror(crop_batch(images, matrices, 64), torch.as_tensor(units, dtype=torch.float32))
    # the photo mirrored, its landmarks mirrored and renamed (the subject's right eye is now on the image's right)
    width = data["image"].shape[2]
    for i in range(3):
        image = np.ascontiguousarray(data["image"][i, :, ::-1])
        points = data["landmarks"][i][IBUG68_FLIP] * [-1, 1] + [width - 1, 0]
        matrix = detect.anchors_matrix(detect.alignment_anchors(points), 64, localise.CROP_SCALE)
        want = localise.pixels_to_units(detect.transform_points(points, matrix), 64)
        np.testing.assert_allclose(target[i].numpy(), want, atol=1e-4)
        got = crops[i].permute(1, 2, 0).numpy() * 255.0
        assert np.abs(got - detect.warp_crop(image, matrix, 64).crop).mean() < 3.0


def test_a_fixed_batch_is_learned(tiny_run):
    c = LocaliserStageConfig(**{**SECTION, "steps": 60, "lr": 3e-3})
    trainer = LocaliserTrainer(c, tiny_run / "scratch", render_data(tiny_run, c))
    crops, target = trainer.batch(0)
    trainer.batch = lambda step: (crops, target)
    losses = []
    for step in range(60):
        trainer.step = step
        losses.append(trainer.train_step()["loss"])
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def render_data(run_dir, c):
    from training.localiser import render_set

    return render_set(run_dir / "renders", c.seed, c.renders, c.render_size, c.face_fill)


def test_cli_puts_a_finished_run_into_a_bundle_and_refuses_an_unfinished_one(tiny_run, tiny_bundle, tmp_path, capsys):
    from facecore.bundle import load_bundle
    from training.localiser import main

    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "b")])
    assert exc.value.code == 2 and "has the localiser stage finished" in capsys.readouterr().err
    assert main([str(tiny_run), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "b"), "--no-refine"]) == 0
    spec = load_bundle(tmp_path / "b").manifest
    assert spec.localiser.refine is False and spec.graphs[localise.GRAPH].inputs["image"].shape == [None, 3, 64, 64]
    assert spec.localiser.metrics["steps"] == 12


def test_cli_keeps_another_bundles_localiser_as_it_is(tiny_run, tiny_bundle, tmp_path, capsys):
    """--keep-from: the predecessor's graph byte for byte and its own numbers, marked with where and why."""
    from facecore.bundle import load_bundle
    from training.localiser import main

    assert main([str(tiny_run), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "old")]) == 0
    args = ["--keep-from", str(tmp_path / "old"), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "new")]
    with pytest.raises(SystemExit) as exc:  # no reason given
        main(args)
    assert exc.value.code == 2 and "say why" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a bundle without a localiser has none to keep
        main(["--keep-from", str(tiny_bundle), *args[2:], "--why", "x"])
    assert exc.value.code == 2 and "has no localiser" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a reason without a bundle to keep from
        main([str(tiny_run), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "x"), "--why", "x"])
    assert exc.value.code == 2 and "--why goes with --keep-from" in capsys.readouterr().err
    assert main([*args, "--why", "  the retrained one was not better "]) == 0
    old, new = load_bundle(tmp_path / "old"), load_bundle(tmp_path / "new")
    name = old.manifest.graphs[localise.GRAPH].file
    assert (new.root / name).read_bytes() == (old.root / name).read_bytes()
    assert new.manifest.localiser.metrics == old.manifest.localiser.metrics
    why = "the retrained one was not better"
    assert new.manifest.localiser.kept_from == f"{old.manifest.name} {old.manifest.version}: {why}"
    assert new.manifest.version == load_bundle(tiny_bundle).manifest.version  # the rest is the retrained bundle's


def test_a_run_resumes_only_with_the_renders_it_started_on(tmp_path):
    """pitch_max_deg (the training renders' pitch limit) is part of what a checkpoint must match; checkpoints
    written before the key existed count as the default."""
    import types

    from facecore.config import section_dict

    wide = LocaliserStageConfig(pitch_max_deg=35.0)
    me = types.SimpleNamespace(c=wide)
    LocaliserTrainer.check_resumable(me, tmp_path, {"config": section_dict(wide)})  # the same: fine
    with pytest.raises(ValueError, match="pitch_max_deg changed"):
        LocaliserTrainer.check_resumable(me, tmp_path, {"config": section_dict(LocaliserStageConfig())})
    old = {k: v for k, v in section_dict(LocaliserStageConfig()).items() if k != "pitch_max_deg"}
    LocaliserTrainer.check_resumable(types.SimpleNamespace(c=LocaliserStageConfig()), tmp_path, {"config": old})
    with pytest.raises(ValueError, match="pitch_max_deg changed"):
        LocaliserTrainer.check_resumable(me, tmp_path, {"config": old})
