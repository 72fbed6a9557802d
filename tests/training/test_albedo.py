"""AlbedoGAN pretraining: data sources, augmentation, overfit, exact resume (in-process and SIGKILL), CLI, DDP."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import run as run_cli
from training.albedo import AlbedoTrainConfig, train
from training.augment import diff_augment
from training.checkpoint import latest_checkpoint
from training.data.albedo_maps import EpochSampler, build_data
from training.data.images import ImageFolderAlbedos
from training.weights import load_checkpoint_generator, load_generator, save_generator

REPO = Path(__file__).resolve().parents[2]


def write_albedos(folder: Path, n: int = 16, size: int = 32, seed: int = 0) -> Path:
    """n albedo-like UV maps: skin tone, eyes, lips, a darker hair band, pixel noise (PNG, sRGB)."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        g = np.random.default_rng(seed * 1000 + i)
        img = np.ones((size, size, 3)) * np.array([0.78, 0.58, 0.47]) * g.uniform(0.55, 1.1)
        for cx in (0.38, 0.62):
            img[((xx - cx) ** 2 + (yy - 0.42) ** 2) < 0.003] = 0.12
        img[(abs(xx - 0.5) < 0.1) & (abs(yy - 0.72) < 0.03)] = [0.72, 0.3, 0.3]
        img[yy < 0.15] *= g.uniform(0.2, 0.6)
        img += g.normal(0, 0.02, img.shape)
        Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(folder / f"albedo_{i:03d}.png")
    return folder


def tiny(folder: Path | None, **overrides) -> dict:
    """A tiny CPU configuration (16², 32-channel nets) on a folder of PNGs."""
    cfg = {
        "resolution": 16,
        "batch": 8,
        "steps": 12,
        "seed": 0,
        "pl_weight": 2.0,
        "r1_interval": 4,
        "progress": False,
        "sample_every": 0,
        "checkpoint_every": 4,
        "mean_w_samples": 256,
        "G": {
            "z_dim": 32,
            "w_dim": 32,
            "mapping": {"num_layers": 2},
            "synthesis": {"channel_base": 256, "channel_max": 32},
        },
        "D": {"channel_base": 256, "channel_max": 32},
        "data": {"kind": "folder", "path": str(folder), "holdout": 0},
        "augment": {"policy": ["color", "translation", "cutout"], "probability": 0.5},
        "metric": {"every": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def losses(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # wall time differs run to run


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def albedo_dir(tmp_path_factory) -> Path:
    return write_albedos(tmp_path_factory.mktemp("albedos"))


# ---------------------------------------------------------------------------------------------------------- data


def test_folder_source_resizes_any_image_deterministically(tmp_path, caplog):
    folder = tmp_path / "maps"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / "b.png")
    Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA").save(folder / "sub" / "c.png")
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(folder / "a.PNG")
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(folder / "d.jpg")
    (folder / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.INFO, logger="training.data.images"):
        ds = ImageFolderAlbedos(folder, 16)
    assert [p.relative_to(folder).as_posix() for p in ds.files] == ["a.PNG", "b.png", "d.jpg", "sub/c.png"]
    batch = ds.batch([0, 1, 2, 3])
    assert batch.shape == (4, 3, 16, 16) and batch.dtype == torch.float32
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0
    assert torch.equal(batch[0, 0], batch[0, 1])  # greyscale → equal channels
    assert torch.allclose(batch[2], torch.full_like(batch[2], 200 / 255), atol=2 / 255)  # a flat JPEG stays flat
    uncached = ImageFolderAlbedos(folder, 16, cache=False, check=False)
    assert torch.equal(uncached.batch([3, 1]), ds.batch([3, 1]))  # cache or not: bit-identical
    assert "not square" in caplog.text


def test_folder_source_errors_are_clear(tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="not found"):
        ImageFolderAlbedos(tmp_path / "missing", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no albedo images"):
        ImageFolderAlbedos(tmp_path / "empty", 16)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="all 1 image files"):
        ImageFolderAlbedos(bad, 16)
    write_albedos(bad, n=2, size=8)
    png = (bad / "albedo_001.png").read_bytes()
    (bad / "truncated.png").write_bytes(png[: len(png) // 2])
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderAlbedos(bad, 8)
    assert len(ds) == 2 and "truncated.png" in caplog.text and "x.png" in caplog.text
    with pytest.raises(IndexError):
        ds.load_uint8(2)


def test_epoch_sampler_visits_every_sample_once_per_epoch():
    s = EpochSampler(10, seed=3)
    first, second = s.indices(0, 10), s.indices(10, 10)
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    assert s.indices(7, 6) == first[7:] + second[:3] == EpochSampler(10, seed=3).indices(7, 6)


def test_folder_holdout_is_disjoint_and_mirror_doubles_the_set(albedo_dir):
    cfg = AlbedoTrainConfig.from_dict(tiny(albedo_dir, data={"holdout": 4, "mirror": True}))
    train_set, held = build_data(cfg.data, cfg.resolution)
    assert len(train_set) == 2 * 12 and held is not None and len(held) == 4
    assert not set(train_set.indices) & set(held.indices)
    assert sorted(train_set.indices + held.indices) == list(range(16))
    assert torch.equal(train_set.load_uint8(12 + 3), train_set.load_uint8(3).flip(-1))
    batch = train_set.batch([0, 12])
    assert batch.shape == (2, 3, 16, 16) and -1.0 <= float(batch.min()) and float(batch.max()) <= 1.0
    assert build_data(cfg.data, cfg.resolution)[1].indices == held.indices  # the split is seeded
    with pytest.raises(ValueError, match="leaves no training maps"):
        build_data(AlbedoTrainConfig.from_dict(tiny(albedo_dir, data={"holdout": 16})).data, 16)


def test_config_is_validated():
    cfg = AlbedoTrainConfig.from_dict(tiny(Path("x")))
    assert cfg.G.img_resolution == cfg.D.img_resolution == 16 and cfg.gamma == pytest.approx(0.0002 * 256 / 8)
    assert AlbedoTrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys.*'stepz'"):
        AlbedoTrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="albedo.data: unknown keys"):
        AlbedoTrainConfig.from_dict({"data": {"kind": "synthetic", "pth": "x"}})
    with pytest.raises(ValueError, match="data.path"):
        AlbedoTrainConfig.from_dict({"data": {"kind": "folder"}})
    with pytest.raises(ValueError, match="unknown operations"):
        AlbedoTrainConfig.from_dict({"augment": {"policy": ["rotate"]}})
    with pytest.raises(ValueError, match="img_resolution"):
        AlbedoTrainConfig.from_dict({"G": {"img_resolution": 32}})
    with pytest.raises(ValueError, match="power of two"):
        AlbedoTrainConfig.from_dict({"resolution": 48})


def test_diff_augment_is_reproducible_differentiable_and_gated():
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    policy = ("color", "translation", "cutout")

    def aug(seed: int, p: float = 0.5, inp: torch.Tensor = x) -> torch.Tensor:
        return diff_augment(inp, policy, torch.Generator().manual_seed(seed), probability=p)

    assert torch.equal(aug(1), aug(1)) and not torch.equal(aug(1), aug(2))
    assert torch.equal(aug(1, p=0.0), x)  # gates closed: identity
    y = aug(1, p=1.0)
    assert y.shape == x.shape and not torch.allclose(y, x)
    leaf = x.clone().requires_grad_(True)
    aug(1, p=1.0, inp=leaf).square().sum().backward()
    assert leaf.grad is not None and float(leaf.grad.abs().sum()) > 0
    # translation alone moves content by whole texels
    img = torch.zeros(1, 1, 8, 8)
    img[0, 0, 4, 4] = 1.0
    moved = diff_augment(img, ("translation",), torch.Generator().manual_seed(5), probability=1.0, translation=0.25)
    assert float(moved.sum()) in (0.0, 1.0) and moved.max() in (0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------- training


def test_short_overfit_on_16_albedos_learns(albedo_dir, tmp_path):
    cfg = tiny(
        albedo_dir,
        steps=60,
        checkpoint_every=60,
        augment={"policy": []},
        metric={"every": 60, "num_generated": 64, "num_subsets": 20, "resolution": 32},
    )
    result = train(AlbedoTrainConfig.from_dict(cfg), tmp_path / "run")
    assert result.done and [m["step"] for m in result.metrics] == [0, 60]
    kid_start, kid_end = result.metrics[0]["kid"], result.metrics[-1]["kid"]
    assert kid_end < kid_start / 4, (kid_start, kid_end)  # G_ema moved towards the 16 maps
    log = losses(tmp_path / "run")
    d_first = log[0]["loss_D"]
    d_last = float(np.mean([r["loss_D"] for r in log[-20:]]))
    assert d_last < 0.8 * d_first, (d_first, d_last)  # D learned to separate (its loss fell from ~2 ln 2)
    assert all(np.isfinite([r["loss_G"], r["loss_D"]]).all() for r in log)


def test_resume_after_a_stop_reproduces_the_uninterrupted_run_exactly(albedo_dir, tmp_path):
    cfg = tiny(albedo_dir, steps=12, checkpoint_every=4)
    full = train(AlbedoTrainConfig.from_dict(cfg), tmp_path / "full")
    assert full.done and full.step == 12
    # "killed" after step 10 without a checkpoint: the last one is at step 8 (one interval lost at most)
    cut = train(AlbedoTrainConfig.from_dict({**cfg, "max_steps": 10, "checkpoint_on_stop": False}), tmp_path / "cut")
    assert not cut.done and cut.step == 10
    assert latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "ckpt-00000008"
    assert not (tmp_path / "cut" / "generator.safetensors").exists()
    resumed = train(AlbedoTrainConfig.from_dict(cfg), tmp_path / "cut")
    assert resumed.done
    a, b = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert [r["step"] for r in b] == list(range(12))  # the log was cut back to the checkpoint, then continued
    assert a == b  # every loss, R1 and PL value bit-identical (steps 8–11 were recomputed after the resume)
    assert any(r["r1"] is not None for r in a[8:]) and any(r["pl"] is not None for r in a[8:])
    assert (tmp_path / "full" / "generator.safetensors").read_bytes() == (
        tmp_path / "cut" / "generator.safetensors"
    ).read_bytes()
    # a finished run started again only re-exports
    again = train(AlbedoTrainConfig.from_dict(cfg), tmp_path / "cut")
    assert again.done and losses(tmp_path / "cut") == a


def test_export_loads_strictly_and_checkpoint_mismatch_is_refused(albedo_dir, tmp_path):
    cfg = tiny(albedo_dir, steps=4, pl_weight=0.0)
    train(AlbedoTrainConfig.from_dict(cfg), tmp_path / "run")
    G = load_generator(tmp_path / "run")
    assert G.config.img_resolution == 16
    w_avg = G.mapping.w_avg.clone()
    assert float(w_avg.abs().sum()) > 0  # mean_w ran
    info = json.loads((tmp_path / "run" / "generator.json").read_text())
    assert info["training"]["step"] == 4 and info["training"]["mean_w_samples"] == 256
    img = G(torch.randn(2, 32), truncation_psi=0.0)
    assert img.shape == (2, 3, 16, 16) and torch.allclose(img[0], img[1], atol=1e-5)
    ema = load_checkpoint_generator(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert ema.config == G.config
    with pytest.raises(FileNotFoundError, match="generator.json"):
        (tmp_path / "copy").mkdir()
        (tmp_path / "copy" / "generator.safetensors").write_bytes(b"")
        load_generator(tmp_path / "copy")
    other = tiny(albedo_dir, G={"w_dim": 16})
    with pytest.raises(ValueError, match="other G/D hyperparameters"):
        train(AlbedoTrainConfig.from_dict({**other, "steps": 8}), tmp_path / "run")
    save_generator(G, tmp_path / "bad")
    cfg_json = json.loads((tmp_path / "bad" / "generator.json").read_text())
    cfg_json["w_dim"] = 16
    (tmp_path / "bad" / "generator.json").write_text(json.dumps(cfg_json))
    with pytest.raises(ValueError, match="does not match"):
        load_generator(tmp_path / "bad" / "generator.safetensors")


def test_cli_trains_on_a_png_folder_and_on_synthetic_albedos(albedo_dir, tmp_path):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"albedo": tiny(albedo_dir, steps=6, sample_every=3, metric={"every": 3})}))
    out = tmp_path / "folder_run"
    assert run_cli.main(["albedo", "--config", str(config), "--out", str(out)]) == 0
    run = out / "albedo"
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert latest_checkpoint(run / "checkpoints").name == "ckpt-00000006"
    assert (run / "generator.safetensors").is_file() and (run / "samples" / "fakes00000006.png").is_file()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 3, 6]
    assert _tb_tags(run / "tb") >= {"Loss/G", "Loss/D", "Loss/r1_penalty", "Loss/pl_penalty", "Scores/real",
                                    "Scores/fake", "Speed/images_per_s", "Metric/kid"}  # fmt: skip

    out = tmp_path / "synthetic_run"
    argv = ["albedo", "--config", str(REPO / "training" / "configs" / "albedo_tiny.yaml"), "--out", str(out)]
    sets = ["albedo.steps=4", "albedo.progress=false", "albedo.data.num_samples=16", "albedo.data.holdout=8"]
    sets += ["albedo.metric.every=4", "albedo.checkpoint_every=2", "albedo.mean_w_samples=64"]
    assert run_cli.main(argv + [x for s in sets for x in ("--set", s)]) == 0
    run = out / "albedo"
    assert latest_checkpoint(run / "checkpoints").name == "ckpt-00000004"
    assert list((run / "tb").glob("events.out.tfevents.*")) and (run / "samples" / "reals.png").is_file()
    assert load_generator(run).config.img_resolution == 16


def test_cli_reports_a_bad_folder_cleanly(tmp_path, caplog):
    code = run_cli.main(["albedo", "--out", str(tmp_path / "r"), "--set", "albedo.data.kind=folder",
                         "--set", f"albedo.data.path={tmp_path / 'nothing'}"])  # fmt: skip
    assert code == 2 and "albedo image folder not found" in caplog.text


def _tb_tags(folder: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for f in folder.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


# ---------------------------------------------------------------------------------------------------------- processes


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # as in-process (see one_torch_thread); every run of a comparison uses the same
    return env


def _write_config(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"albedo": cfg}))
    return path


def test_ddp_two_cpu_processes_with_gloo(albedo_dir, tmp_path):
    config = _write_config(tmp_path / "c.yaml", tiny(albedo_dir, steps=6, metric={"every": 6, "num_generated": 16}))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.run", "albedo", "--config", str(config), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "albedo"
    assert latest_checkpoint(run / "checkpoints").name == "ckpt-00000006"
    meta = json.loads((run / "checkpoints" / "ckpt-00000006" / "meta.json").read_text())
    assert meta["extra"]["world_size"] == 2 and meta["extra"]["data_position"] == 48
    assert [r["step"] for r in losses(run)] == list(range(6))  # rank 0 alone writes the log
    G = load_generator(run)
    assert G(torch.randn(3, 32)).shape == (3, 3, 16, 16)


@pytest.mark.slow
def test_sigkill_mid_interval_then_resume_continues_exactly(albedo_dir, tmp_path):
    cfg = tiny(albedo_dir, steps=40, checkpoint_every=10, metric={"every": 20, "num_generated": 16})
    config = _write_config(tmp_path / "c.yaml", cfg)

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "training.run", "albedo", "--config", str(config), "--out", str(out)]

    ref = subprocess.run(command(tmp_path / "ref"), cwd=REPO, env=_env(), capture_output=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(command(out), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "albedo" / "losses.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 25:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = latest_checkpoint(out / "albedo" / "checkpoints")
    assert ckpt is not None and ckpt.name in ("ckpt-00000020", "ckpt-00000030")

    again = subprocess.run(command(out), cwd=REPO, env=_env(), capture_output=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert losses(out / "albedo") == losses(tmp_path / "ref" / "albedo")
    metrics = [json.loads(line) for line in (out / "albedo" / "metrics.jsonl").read_text().splitlines()]
    ref_metrics = [
        json.loads(line) for line in (tmp_path / "ref" / "albedo" / "metrics.jsonl").read_text().splitlines()
    ]
    assert metrics == ref_metrics and [m["step"] for m in metrics] == [0, 20, 40]
    assert (out / "albedo" / "generator.safetensors").read_bytes() == (
        tmp_path / "ref" / "albedo" / "generator.safetensors"
    ).read_bytes()


def test_grow_from_a_lower_resolution_run_starts_as_its_upsampled_generator(albedo_dir, tmp_path):
    """init_from: a 32² run starts from a 16² run's G_ema and D; the grown G draws the small one's images."""
    import torch.nn.functional as F

    from models.stylegan2 import Discriminator, Generator
    from training.albedo import grow_from
    from training.checkpoint import latest_checkpoint, load_checkpoint

    assert train(AlbedoTrainConfig.from_dict(tiny(albedo_dir, steps=4)), tmp_path / "small").done
    small = Generator.from_config(AlbedoTrainConfig.from_dict(tiny(albedo_dir)).G)
    load_checkpoint(latest_checkpoint(tmp_path / "small" / "checkpoints"), {"G_ema": small}, restore_rng=False)
    cfg = AlbedoTrainConfig.from_dict(tiny(albedo_dir, resolution=32, init_from=str(tmp_path / "small")))
    torch.manual_seed(1)
    G, D = Generator.from_config(cfg.G), Discriminator.from_config(cfg.D)
    fresh = Generator.from_config(cfg.G)
    grow_from(cfg.init_from, G, D)
    for key, value in small.state_dict().items():
        assert torch.equal(G.state_dict()[key], value), key  # every 16² tensor carried over
    z = torch.randn(4, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = small(z, None, noise_mode="const")
        grown = F.avg_pool2d(G(z, None, noise_mode="const"), 2)
        other = F.avg_pool2d(fresh(z, None, noise_mode="const"), 2)
    err, err_fresh = (grown - ref).abs().mean().item(), (other - ref).abs().mean().item()
    assert grown.shape == ref.shape and err < 0.05 and err < 0.2 * err_fresh, (err, err_fresh)
    with pytest.raises(FileNotFoundError, match="no albedo checkpoint"):
        grow_from(tmp_path / "nowhere", G, D)


def test_grown_run_warms_up_d_then_trains_only_gs_new_tensors(albedo_dir, tmp_path):
    """grow_d_warmup: the first steps leave G as grown; grow_freeze_steps: then only G's new tensors (the 32²
    blocks) move, the mapping and the carried blocks stay at the source's values; after that, everything trains.
    The carried names survive a checkpoint (a resumed run keeps freezing them)."""
    from safetensors.torch import load_file

    from training.albedo import AlbedoTrainer, DistInfo

    assert train(AlbedoTrainConfig.from_dict(tiny(albedo_dir, steps=4)), tmp_path / "small").done
    cfg = AlbedoTrainConfig.from_dict(
        tiny(albedo_dir, resolution=32, steps=6, init_from=str(tmp_path / "small"), grow_d_warmup=2,
             grow_freeze_steps=4, pl_weight=0.0)
    )  # fmt: skip
    trainer = AlbedoTrainer(cfg, tmp_path / "big", DistInfo(0, 1, torch.device("cpu"), False))
    carried = set(trainer.carried)
    names = {k for k, _ in trainer.G.named_parameters()}
    assert carried and carried < names and not any(".b32." in k for k in carried)
    assert {k for k in names - carried if k.startswith("mapping.")} == set()  # the whole mapping was carried
    snap = lambda: {k: v.detach().clone() for k, v in trainer.G.named_parameters()}  # noqa: E731
    start = snap()
    D_start = {k: v.detach().clone() for k, v in trainer.D.named_parameters()}
    logs = []
    for _ in range(2):
        logs.append(trainer.train_step())
        trainer.step += 1
    after_warmup = snap()
    assert all(torch.equal(after_warmup[k], start[k]) for k in names)  # G untouched during D's warm-up
    assert any(not torch.equal(v, D_start[k]) for k, v in trainer.D.named_parameters())
    assert [log["loss_G"] for log in logs] == [None, None]
    for _ in range(2):
        logs.append(trainer.train_step())
        trainer.step += 1
    frozen = snap()
    assert all(torch.equal(frozen[k], start[k]) for k in carried)
    assert any(not torch.equal(frozen[k], start[k]) for k in names - carried)
    assert logs[-1]["loss_G"] is not None
    trainer.train_step()
    trainer.step += 1
    assert any(not torch.equal(trainer.G.get_parameter(k), start[k]) for k in carried)
    assert set(trainer.checkpoint_extra()["carried"]) == carried
    assert set(load_file(str(latest_checkpoint(tmp_path / "small" / "checkpoints") / "G_ema.safetensors"))) >= carried


def test_mean_image_starts_the_generator_at_the_training_maps_average(albedo_dir, tmp_path):
    """G.synthesis.mean_image: G's average output is the average training map from step 0 (eyes dark at their
    texels), where a plain G's average is far off, and its scale is the maps' per-texel spread; the learned images
    train, checkpoint and reload."""
    from training.albedo import AlbedoTrainer, DistInfo

    synthesis = {"channel_base": 256, "channel_max": 32}

    def mean_output(G: torch.nn.Module) -> torch.Tensor:
        z = torch.randn(256, 32, generator=torch.Generator().manual_seed(11))  # other z than the start used
        with torch.no_grad():
            return G(z, None, noise_mode="const").mean(0)

    info = DistInfo(0, 1, torch.device("cpu"), False)
    with_image = AlbedoTrainer(
        AlbedoTrainConfig.from_dict(tiny(albedo_dir, G={"synthesis": {**synthesis, "mean_image": True}})),
        tmp_path / "a", info,
    )  # fmt: skip
    plain = AlbedoTrainer(AlbedoTrainConfig.from_dict(tiny(albedo_dir)), tmp_path / "b", info)
    data = with_image.train_set.batch(range(len(with_image.train_set))).mean(0)
    err = (mean_output(with_image.G_ema) - data).abs().mean().item()
    err_plain = (mean_output(plain.G_ema) - data).abs().mean().item()
    assert err < 0.06 and err < 0.1 * err_plain, (err, err_plain)
    eye = mean_output(with_image.G_ema)[:, 7, 6]  # (x 0.38, y 0.42) of 16²: the dark eye of every map
    assert eye.max().item() < -0.4, eye
    spread = with_image.train_set.batch(range(len(with_image.train_set))).std(0, unbiased=False).clamp_min(0.02)
    torch.testing.assert_close(with_image.G_ema.synthesis.img_scale[0], spread, atol=1e-4, rtol=1e-4)

    cfg = AlbedoTrainConfig.from_dict(tiny(albedo_dir, steps=4, G={"synthesis": {**synthesis, "mean_image": True}}))
    assert train(cfg, tmp_path / "run").done
    G = load_checkpoint_generator(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert G.synthesis.img_bias is not None and G.config.synthesis.mean_image
    assert not torch.equal(G.synthesis.img_bias, with_image.G_ema.synthesis.img_bias)  # it trained


def test_growing_a_mean_image_run_keeps_its_images_and_adds_the_mean_detail(albedo_dir, tmp_path):
    """init_from with mean_image on both sides: the grown G (step 0) draws the small run's images, colours
    included (its learned bias and scale carried over upsampled), and its mean holds the maps' full-resolution
    mean detail that the small run could not."""
    import torch.nn.functional as F

    from training.albedo import AlbedoTrainer, DistInfo

    synthesis = {"channel_base": 256, "channel_max": 32, "mean_image": True}
    small_cfg = tiny(albedo_dir, steps=8, augment={"policy": []}, G={"synthesis": synthesis})
    assert train(AlbedoTrainConfig.from_dict(small_cfg), tmp_path / "small").done
    small = load_checkpoint_generator(latest_checkpoint(tmp_path / "small" / "checkpoints"))
    info = DistInfo(0, 1, torch.device("cpu"), False)
    grown = AlbedoTrainer(
        AlbedoTrainConfig.from_dict({**small_cfg, "resolution": 32, "init_from": str(tmp_path / "small")}),
        tmp_path / "big", info,
    ).G_ema  # fmt: skip
    z = torch.randn(64, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, big = small(z, None, noise_mode="const"), grown(z, None, noise_mode="const")
    err = (F.avg_pool2d(big, 2) - ref).abs().mean().item()
    assert err < 0.05, err
    assert grown.synthesis.img_bias.shape[-1] == 32
    from training.data.albedo_maps import DataConfig

    maps, _ = build_data(DataConfig(kind="folder", path=str(albedo_dir), holdout=0), 32)  # the maps at 32²

    def detail(x: torch.Tensor) -> torch.Tensor:  # what a 16² map cannot hold
        return x - F.interpolate(F.avg_pool2d(x[None], 2), scale_factor=2, mode="bilinear")[0]

    want = detail(maps.batch(range(len(maps))).mean(0))
    got = (detail(big.mean(0)) - want).abs().mean().item()
    without = (detail(F.interpolate(ref, scale_factor=2, mode="bilinear").mean(0)) - want).abs().mean().item()
    assert got < 0.5 * without, (got, without)
