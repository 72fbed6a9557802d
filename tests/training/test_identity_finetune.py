"""training.identity_finetune: the chips it trains on are the service's chips, a run trains, resumes and exports."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest
import torch

from facecore.detect import DLIB5_TO_IBUG68
from facecore.identity import chips_input, get_recogniser, pair_features
from models.face.model import FaceCodes, FaceModel
from training.data.synthetic import SyntheticConfig, SyntheticFaces
from training.identity_finetune import (
    CHECKPOINT,
    METRICS_FILE,
    NET_FILE,
    FinetuneConfig,
    _Draws,
    export_features,
    load_net,
    make_chips,
    run,
)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(
        importlib.util.find_spec("face_recognition_models") is None, reason="face-recognition-models not installed"
    ),
]


def test_training_chips_are_the_service_chips():
    """The stream's chips (torch, on the render device) match dlib's chip of the same 8-bit render on the same five
    points (what /reconstruct cuts), pixel for pixel within rounding, and give the same descriptors."""
    faces = SyntheticFaces(SyntheticConfig(image_size=224, albedo_size=64), FaceModel.from_file())
    draws = _Draws(faces, FinetuneConfig(batch=4), 0, 1)[0]
    chips, shapes = make_chips(faces, draws, augment=False)
    np.testing.assert_array_equal(shapes.numpy(), draws["shapes"].numpy())
    scene = draws["scene"]
    scene = dataclasses.replace(scene, codes=FaceCodes(draws["shapes"], scene.codes.expression, scene.codes.pose))
    out = faces.render(draws["indices"], draws["albedo"], scene, eyes=draws["eyes"])
    images = (out.image_srgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    points = out.landmarks_px.double().numpy()[:, list(DLIB5_TO_IBUG68)]
    recogniser = get_recogniser()
    service = np.stack([recogniser.chip(im, p) for im, p in zip(images, points, strict=True)])
    ours = np.round(chips.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    diff = np.abs(ours.astype(float) - service).mean((1, 2, 3))
    assert diff.max() < 3.0, diff  # measured 0.6–2.2 of 255 (dlib rounds the points, resamples via a pyramid)
    dist = np.linalg.norm(recogniser.describe_chips(ours) - recogniser.describe_chips(service), axis=1)
    assert dist.max() < 0.06, dist  # same-person radius is 0.6


def test_run_trains_resumes_and_exports(tmp_path):
    cfg = FinetuneConfig(steps=2, batch=2, eval_identities=2, eval_every=1, checkpoint_every=1, workers=0,
                         image_size=160, albedo_size=64, warmup=1)  # fmt: skip
    first = run(cfg, tmp_path, "cpu")
    assert [c["step"] for c in first["curve"]] == [0, 1, 2]
    before = load_net(tmp_path / NET_FILE)
    initial = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert initial["step"] == 2
    # a rerun with more steps resumes at the checkpoint, not at step 0
    more = run(dataclasses.replace(cfg, steps=3), tmp_path, "cpu")
    assert [c["step"] for c in more["curve"]] == [0, 1, 2, 3]
    assert json.loads((tmp_path / METRICS_FILE).read_text())["curve"][-1]["step"] == 3
    after = load_net(tmp_path / NET_FILE)
    moved = [
        not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values(), strict=True)
    ]
    assert any(moved)  # the third step trained the network itself, not only the read-out
    for entry in more["curve"]:
        assert 0 < entry["centred_mm"] and entry["centred_ratio"] == pytest.approx(
            entry["centred_mm"] / entry["prior_mean_mm"]
        )

    # the exported graph gives the network's features on the service's chip layout (fp16 weights, as stored)
    graph, parity = export_features(tmp_path / NET_FILE, tmp_path / "features.onnx")
    assert parity < 1e-3
    import onnxruntime as ort

    chips = np.random.default_rng(0).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(tmp_path / "features.onnx"), providers=["CPUExecutionProvider"])
    onnx = pair_features(session.run(None, {"chips": chips_input(chips)})[0])
    with torch.no_grad():
        x = torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 255
        torch_f = after.descriptor(x).numpy()
        torch_m = after.descriptor(x.flip(-1)).numpy()
    np.testing.assert_allclose(onnx[:, 0], torch_f, atol=1e-3 * np.abs(torch_f).max())
    np.testing.assert_allclose(onnx[:, 1], torch_m, atol=1e-3 * np.abs(torch_m).max())
