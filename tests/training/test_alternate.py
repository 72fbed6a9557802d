"""Alternate descent: which networks each step changes, exact resume, the CLI stages, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training import run as run_cli
from training.alternate import DistInfo, Trainer, config_from, train
from training.checkpoint import latest_checkpoint
from training.config import load_config
from training.shape import EVAL_FILE, FINAL_DIR
from training.weights import load_final

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"
NO_EMBEDDER = ("shape.weights.identity=0", "shape.weights.perceptual=0", "alternate.albedo_step.weights.identity=0",
               "alternate.albedo_step.weights.perceptual=0")  # fmt: skip


def alternate_config(*overrides: str):
    return config_from(load_config(CONFIGS / "alternate_tiny.yaml", overrides))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_step_changes_only_its_own_networks(tmp_path):
    torch.set_num_threads(1)
    cfg = alternate_config("shape.eval.num_samples=0", "alternate.albedo_step.weights.perceptual=0.1")
    tr = Trainer(cfg, tmp_path, DistInfo(0, 1, torch.device("cpu"), False), "alternate")
    assert [tr.schedule.phase(s) for s in range(6)] == ["shape"] * 3 + ["albedo"] * 2 + ["shape"]
    b = tr.batch(0)
    model0, G0, Ginit0 = snapshot(tr.model), snapshot(tr.G), snapshot(tr.G_init)

    log, _ = tr.shape_step(b)  # shape step: AlbedoGAN bit-identical, the shape model moves
    assert same(snapshot(tr.G), G0) and same(snapshot(tr.G_init), Ginit0)
    model1 = snapshot(tr.model)
    assert not torch.equal(model1["encoder.out.weight"], model0["encoder.out.weight"])
    assert not torch.equal(model1["albedo_head.out.weight"], model0["albedo_head.out.weight"])
    assert all(p.grad is None for p in tr.G.parameters())

    log, _ = tr.albedo_step(b)  # albedo step: the shape model (weights and BN statistics) bit-identical
    assert set(log) >= {"reconstruction", "identity", "perceptual", "albedo_symmetry", "albedo_anchor", "total"}
    assert same(snapshot(tr.model), model1) and same(snapshot(tr.G_init), Ginit0)
    G1 = snapshot(tr.G)
    changed = [k for k in G1 if not torch.equal(G1[k], G0[k])]
    assert changed and all(k.startswith("synthesis.") for k in changed)
    assert not any(p.requires_grad for p in tr.G.parameters())
    # the L2-SP anchor measures the drift from the pretrained weights
    assert float(tr.albedo_anchor()) > 0
    log, _ = tr.albedo_step(b)
    assert log["albedo_anchor"] > 0


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    overrides = (*NO_EMBEDDER, "alternate.schedule.shape_steps=2", "alternate.schedule.albedo_steps=1",
                 "shape.eval.num_samples=0", "shape.checkpoint_every=100")  # fmt: skip
    cfg = alternate_config(*overrides)
    full = train(cfg, tmp_path / "full")
    assert full.done and [r["phase"] for r in full.logs] == ["shape", "shape", "albedo"] * 2
    first = train(alternate_config(*overrides, "shape.max_steps=4"), tmp_path / "cut")
    assert not first.done and first.step == 4
    assert latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "ckpt-00000004"
    rest = train(cfg, tmp_path / "cut")
    assert rest.done and [r["step"] for r in rest.logs] == [4, 5]

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(first.logs) == strip(full.logs[:4])
    assert strip(rest.logs) == strip(full.logs[4:])  # bit-identical losses after the resume
    for name in ("encoder", "displacement", "albedo_head", "generator"):
        a = load_file(str(tmp_path / "full" / FINAL_DIR / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "cut" / FINAL_DIR / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    lines = (tmp_path / "cut" / "losses.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(6))


def check_run_folder(folder: Path, phases: set[str]) -> dict:
    assert latest_checkpoint(folder / "checkpoints") is not None
    assert list((folder / "tb").glob("events.out.tfevents.*"))
    for name in ("encoder", "displacement", "albedo_head", "generator"):
        assert (folder / FINAL_DIR / f"{name}.safetensors").is_file()
        assert json.loads((folder / FINAL_DIR / f"{name}.json").read_text())["format_version"] == 1
    assert {json.loads(x)["phase"] for x in (folder / "losses.jsonl").read_text().splitlines()} == phases
    assert list((folder / "samples").glob("*.png"))
    report = json.loads((folder / EVAL_FILE).read_text())
    for key in ("initial", "final"):
        m = report[key]
        assert m["num_samples"] == 2
        for metric in ("now_coarse_mm", "now_detailed_mm"):
            assert 0 < m[metric]["median"] < 20 and m[metric]["mean"] >= 0
        assert 0 < m["landmark_nme"] < 1 and 0 <= m["albedo_rmse_scale_invariant"] <= m["albedo_rmse"] + 1e-6
    return report


def test_cli_stages_write_checkpoints_tensorboard_weights_and_eval(tmp_path):
    small = ["--set", "shape.eval.num_samples=2", "--set", "shape.eval.batch=2", "--set", "shape.eval.icp_iterations=1"]
    out = tmp_path / "run"
    shape_args = ["--set", "shape.schedule.shape_steps=3"]
    code = run_cli.main(["shape", "--config", str(CONFIGS / "shape_tiny.yaml"), "--out", str(out), *small, *shape_args])
    assert code == 0
    check_run_folder(out / "shape", {"shape"})
    alt_args = ["--set", "alternate.schedule.shape_steps=1", "--set", "alternate.schedule.albedo_steps=1",
                "--set", "alternate.schedule.cycles=1"]  # fmt: skip
    code = run_cli.main(["alternate", "--config", str(CONFIGS / "alternate_tiny.yaml"), "--out", str(out), *small,
                         *alt_args])  # fmt: skip
    assert code == 0
    report = check_run_folder(out / "alternate", {"shape", "albedo"})
    # the alternate stage started from the shape stage's final weights (init_from: auto)
    assert report["init_from"] == str(out / "shape" / FINAL_DIR)
    model, G = load_final(out / "alternate" / FINAL_DIR)
    shape_model, G_shape = load_final(out / "shape" / FINAL_DIR)
    image = torch.rand(2, 3, 32, 32)
    model.eval()
    assert model(image).ws.shape == (2, G.num_ws, G.w_dim)
    # the shape stage never changes AlbedoGAN; the alternate stage's albedo step did
    G_shape_state, G_state = G_shape.state_dict(), G.state_dict()
    assert any(not torch.equal(G_state[k], G_shape_state[k]) for k in G_state)
    assert run_cli.main(["shape", "--config", str(CONFIGS / "shape_tiny.yaml"), "--out", str(tmp_path / "x"),
                         "--set", "shape.albedogan.path=auto"]) == 2  # fmt: skip


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = ["--set", "alternate.schedule.shape_steps=2", "--set", "alternate.schedule.albedo_steps=1",
            "--set", "alternate.schedule.cycles=1", "--set", "shape.eval.num_samples=2", "--set", "shape.eval.batch=2",
            "--set", "shape.data.groups=2"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.run", "alternate", "--config", str(CONFIGS / "alternate_tiny.yaml"),
           "--out", str(tmp_path / "ddp"), *args]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    folder = tmp_path / "ddp" / "alternate"
    meta = json.loads((latest_checkpoint(folder / "checkpoints") / "meta.json").read_text())
    assert meta["extra"]["world_size"] == 2 and meta["step"] == 3
    assert (folder / FINAL_DIR / "generator.safetensors").is_file() and (folder / EVAL_FILE).is_file()
    rows = [json.loads(x) for x in (folder / "losses.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["shape", "shape", "albedo"]
