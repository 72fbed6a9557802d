"""The export stage takes a trained shape/alternate run to a bundle the service accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from facecore.bundle import load_bundle
from training import run as run_cli

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


@pytest.mark.slow
def test_alternate_run_exports_a_servable_bundle(tmp_path):
    out = tmp_path / "run"
    assert run_cli.main(["alternate", "--config", str(CONFIGS / "alternate_tiny.yaml"), "--out", str(out)]) == 0
    assert run_cli.main(["export", "--out", str(out)]) == 0
    bundle = load_bundle(out / "export")
    assert bundle.capabilities == {"generate": True, "reconstruct": True}
    assert set(bundle.manifest.graphs) == {"mapping", "albedo", "encoder", "displacement"}
    assert all(g.parity_max_abs <= 1e-4 for g in bundle.manifest.graphs.values())
    assert bundle.manifest.training["final_dir"].endswith("alternate/final")


def test_export_without_trained_weights_fails_cleanly(tmp_path, caplog):
    assert run_cli.main(["export", "--out", str(tmp_path / "run")]) == 2
    assert "no trained weights" in caplog.text
