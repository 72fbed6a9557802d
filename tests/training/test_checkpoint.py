"""Checkpoints: exact resume (weights, optimiser, RNG), atomicity, pruning, clear errors, and SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint


def make():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    return net, opt


def train(net, opt, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 4)  # data drawn from the global RNG: resuming must restore it
        noise = float(np.random.normal())  # noqa: NPY002 (the legacy global RNG must be restored too)
        loss = ((net(x) - x.sum(1, keepdim=True) - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002
    net, opt = make()
    train(net, opt, 5)
    save_checkpoint(tmp_path, 5, {"net": net}, {"opt": opt}, extra={"epoch": 0, "position": 80})
    expected = train(net, opt, 5)

    net2, opt2 = make()
    step, extra = load_checkpoint(tmp_path, {"net": net2}, {"opt": opt2})
    assert step == 5 and extra == {"epoch": 0, "position": 80}
    assert train(net2, opt2, 5) == expected  # bit-identical losses
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_pruning_latest_and_leftovers(tmp_path):
    net, opt = make()
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, {"net": net}, {"opt": opt}, keep=2)
    names = sorted(p.name for p in tmp_path.glob("ckpt-*"))
    assert names == ["ckpt-00000030", "ckpt-00000040"]
    assert latest_checkpoint(tmp_path).name == "ckpt-00000040"
    # a half-written checkpoint (killed while saving) and a stale pointer do not break resuming
    (tmp_path / ".tmp-ckpt-00000050-123").mkdir()
    (tmp_path / "latest").write_text("ckpt-00000099")
    assert latest_checkpoint(tmp_path).name == "ckpt-00000040"
    assert load_checkpoint(tmp_path, {"net": net})[0] == 40


def test_mismatches_raise_clear_errors(tmp_path):
    net, opt = make()
    save_checkpoint(tmp_path, 1, {"net": net}, {"opt": opt})
    other = torch.nn.Linear(4, 1)
    with pytest.raises(CheckpointError, match="does not match module 'net'"):
        load_checkpoint(tmp_path, {"net": other})
    with pytest.raises(CheckpointError, match="no weights for module 'D'"):
        load_checkpoint(tmp_path, {"D": net})
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing", {"net": net})
    meta = tmp_path / "ckpt-00000001" / "meta.json"
    meta.write_text(json.dumps(dict(json.loads(meta.read_text()), format_version=99)))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(tmp_path, {"net": net})
    with pytest.raises(CheckpointError, match="must be unique"):
        save_checkpoint(tmp_path, 2, {"net": net}, {"net": opt})


SCRIPT = textwrap.dedent(
    """
    import sys, torch, numpy as np
    from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    out, total, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0); np.random.seed(0)
    net = torch.nn.Linear(4, 1); opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    step = 0
    if latest_checkpoint(out):
        step, _ = load_checkpoint(out, {"net": net}, {"opt": opt})
    while step < total:
        x = torch.randn(8, 4)
        loss = ((net(x) - x.sum(1, keepdim=True)) ** 2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        step += 1
        if step % every == 0:
            save_checkpoint(out, step, {"net": net}, {"opt": opt})
        print(step, flush=True)
    torch.save(net.state_dict(), out + "/final.pt")
    """
)


@pytest.mark.slow
def test_sigkill_loses_at_most_one_interval(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    ref = tmp_path / "ref"
    ref.mkdir()
    subprocess.run([sys.executable, str(script), str(ref), "400", "10"], check=True, env=env, capture_output=True)

    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run), "400", "10"], stdout=subprocess.PIPE, text=True, env=env
    )
    for line in proc.stdout:
        if int(line) >= 237:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed_from = int(latest_checkpoint(run).name.split("-")[1])
    assert 237 - resumed_from <= 10  # at most one checkpoint interval lost
    subprocess.run([sys.executable, str(script), str(run), "400", "10"], check=True, env=env, capture_output=True)
    a, b = torch.load(ref / "final.pt"), torch.load(run / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the killed + resumed run ends exactly where the other did
