"""Face-embedding networks (models.identity) and the dlib .dat reader (facecore.dlib_dat).

The dlib parity tests compare against dlib itself (PyPI dlib-bin) on the shared fixture photos; they skip when
dlib, the model package or the photos are missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facecore.dlib_dat import DlibFormatError, DlibLayer, DlibNet, parse_dlib_net, read_dlib_net
from models import identity as idm
from models.encoder import IResNet

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "tests" / "fixtures" / "photos"  # CC0, shipped in the repository
NAMES = ("001", "002", "006", "013", "018", "028")

HAS_DLIB = importlib.util.find_spec("dlib") is not None
HAS_MODELS = importlib.util.find_spec("face_recognition_models") is not None
needs_models = pytest.mark.skipif(not HAS_MODELS, reason="face-recognition-models (the dlib .dat files) not installed")
needs_dlib = pytest.mark.skipif(
    not (HAS_DLIB and HAS_MODELS), reason="dlib-bin / face-recognition-models not installed (serve/train extras)"
)
needs_photos = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"fixture photos not found at {PHOTOS}")


# ================================================================================ a minimal dlib-format writer
def w_int(v: int) -> bytes:
    a = abs(int(v))
    body = a.to_bytes(max(1, (a.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def w_str(s: str) -> bytes:
    return w_int(len(s)) + s.encode()


def w_bool(b: bool) -> bytes:
    return b"1" if b else b"0"


def w_float(x: float) -> bytes:
    m, e = math.frexp(x)
    return w_int(int(m * 2**53)) + w_int(e - 53)


def w_tensor(a: np.ndarray | None = None) -> bytes:
    a = np.zeros((0, 0, 0, 0), np.float32) if a is None else np.asarray(a, np.float32)
    shape = (a.shape + (1, 1, 1, 1))[:4] if a.ndim < 4 else a.shape
    return w_int(2) + b"".join(w_int(d) for d in shape) + a.astype("<f4").tobytes()


def w_alias(shape: tuple[int, int, int, int]) -> bytes:
    return w_int(1) + b"".join(w_int(d) for d in shape)


def w_mults() -> bytes:
    return b"".join(w_float(v) for v in (1.0, 1.0, 1.0, 0.0))


def con_details(weight: np.ndarray, bias: np.ndarray, stride: int, padding: int, version: str = "con_5") -> bytes:
    n, k, nr, nc = weight.shape
    params = np.concatenate([weight.ravel(), bias.ravel()]).reshape(-1, 1)
    out = w_str(version) + w_tensor(params) + w_int(n) + w_int(nr) + w_int(nc)
    out += w_int(stride) * 2 + w_int(padding) * 2 + w_alias((n, k, nr, nc)) + w_alias((1, n, 1, 1)) + w_mults()
    return (
        out + (w_bool(True) if version in ("con_5", "con_6") else b"") + (w_bool(False) if version == "con_6" else b"")
    )


def bn_details(gamma, beta, mean, var, eps) -> bytes:
    n = len(gamma)
    out = w_str("bn_con2") + w_tensor(np.concatenate([gamma, beta]).reshape(-1, 1))
    out += w_alias((1, n, 1, 1)) * 2 + w_tensor() * 2 + w_tensor(mean.reshape(1, n)) + w_tensor(var.reshape(1, n))
    return out + w_int(100) + w_int(1000) + w_mults() + w_float(eps)


def tiny_net_bytes(rng: np.random.Generator) -> tuple[bytes, dict]:
    """input(rgb 8×8) → con 3→4 3×3/1 → bn_con2 → relu → tag1 → con 4→4 → add_prev1 → max_pool 2/2 → fc (bias)."""
    v = {
        "w1": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "b1": rng.normal(size=4).astype(np.float32),
        "gamma": rng.normal(size=4).astype(np.float32),
        "beta": rng.normal(size=4).astype(np.float32),
        "mean": rng.normal(size=4).astype(np.float32),
        "var": rng.uniform(0.5, 2, size=4).astype(np.float32),
        "w2": rng.normal(size=(4, 4, 3, 3)).astype(np.float32),
        "b2": rng.normal(size=4).astype(np.float32),
        "fcw": rng.normal(size=(64, 5)).astype(np.float32),
        "fcb": rng.normal(size=5).astype(np.float32),
    }
    state = w_bool(True) + w_bool(True) + w_bool(False) + w_tensor() + w_tensor()
    data = w_int(1) + w_str("loss_metric_2") + w_float(0.04) + w_float(0.6)
    # wrapper versions from the output down: add_layer 2, tag 1, the add_layer on the input 3
    data += w_int(2)  # fc
    data += w_int(2)  # max_pool
    data += w_int(2)  # add_prev
    data += w_int(2)  # con 2
    data += w_int(1)  # tag
    data += w_int(2)  # relu
    data += w_int(2)  # affine
    data += w_int(3)  # con 1, on the input
    data += w_str("input_rgb_image_sized") + w_float(122.782) + w_float(117.001) + w_float(104.298)
    data += w_int(8) + w_int(8)
    data += con_details(v["w1"], v["b1"], 1, 1) + state + w_tensor() + w_int(1)  # grad_final, expansion factor
    data += bn_details(v["gamma"], v["beta"], v["mean"], v["var"], 1e-5) + state + w_tensor()
    data += w_str("relu_2") + w_bool(False) + state + w_tensor()
    data += con_details(v["w2"], v["b2"], 1, 1, "con_4") + state + w_tensor()
    data += w_str("add_prev_") + state + w_tensor()
    data += w_str("max_pool_2") + w_int(2) + w_int(2) + w_int(2) * 2 + w_int(0) * 2 + state + w_tensor()
    fc_params = np.concatenate([v["fcw"].ravel(), v["fcb"]]).reshape(65, 5)
    data += w_str("fc_3") + w_int(5) + w_int(64) + w_tensor(fc_params) + w_alias((64, 5, 1, 1)) + w_alias((1, 5, 1, 1))
    data += w_int(0) + w_mults() + w_bool(True) + state + w_tensor()
    return data, v


TINY_SPEC = ["input_rgb_image_sized", "con", "affine", "relu", "tag", "con", "add_prev", "max_pool", "fc"]


# ================================================================================ facecore.dlib_dat
def test_parser_reads_every_field_of_a_written_network():
    data, v = tiny_net_bytes(np.random.default_rng(0))
    net = parse_dlib_net(data, TINY_SPEC)
    assert [layer.kind for layer in net.layers] == TINY_SPEC
    assert net.loss.attrs["margin"] == pytest.approx(0.04) and net.loss.attrs["dist_thresh"] == pytest.approx(0.6)
    inp, con1, aff, relu, tag, con2, add, pool, fc = net.layers
    np.testing.assert_allclose(inp.params["avg_rgb"], [122.782, 117.001, 104.298], rtol=1e-7)
    assert (inp.attrs["nr"], inp.attrs["nc"]) == (8, 8)
    np.testing.assert_array_equal(con1.params["weight"], v["w1"])
    np.testing.assert_array_equal(con1.params["bias"], v["b1"])
    assert con1.attrs["stride"] == (1, 1) and con1.attrs["padding"] == (1, 1) and con1.version == "con_5"
    gamma = v["gamma"] / np.sqrt(v["var"].astype(np.float64) + 1e-5)  # batch norm folded as dlib does
    np.testing.assert_allclose(aff.params["gamma"], gamma, rtol=1e-6)
    np.testing.assert_allclose(aff.params["beta"], v["beta"] - gamma * v["mean"], rtol=1e-5, atol=1e-6)
    assert relu.attrs["disabled"] is False and tag.version == "" and add.kind == "add_prev"
    np.testing.assert_array_equal(con2.params["weight"], v["w2"])
    assert pool.attrs == {"nr": 2, "nc": 2, "stride": (2, 2), "padding": (0, 0)}
    np.testing.assert_array_equal(fc.params["weight"], v["fcw"])
    np.testing.assert_array_equal(fc.params["bias"], v["fcb"])
    assert fc.attrs == {"num_outputs": 5, "num_inputs": 64, "use_bias": True}


def test_parser_fails_clearly_on_unexpected_bytes():
    data, _ = tiny_net_bytes(np.random.default_rng(1))
    with pytest.raises(DlibFormatError, match="file ends early"):
        parse_dlib_net(data[:-7], TINY_SPEC)
    with pytest.raises(DlibFormatError, match="1 unexpected bytes after the network"):
        parse_dlib_net(data + b"\x00", TINY_SPEC)
    # the type differs: a tag where the file has an add_layer (version 2, not a tag's 1)
    with pytest.raises(DlibFormatError, match=r"layer 3 \(tag\) wrapper.*version 2, expected one of \(1,\)"):
        parse_dlib_net(
            data, ["input_rgb_image_sized", "con", "affine", "tag", "tag", "con", "add_prev", "max_pool", "fc"]
        )
    # a relu where the file has the batch norm
    with pytest.raises(DlibFormatError, match=r"layer 2 \(relu\).*expected a relu layer.*found 'bn_con2'"):
        parse_dlib_net(
            data, ["input_rgb_image_sized", "con", "relu", "relu", "tag", "con", "add_prev", "max_pool", "fc"]
        )
    with pytest.raises(DlibFormatError, match="expected a loss_metric layer"):
        parse_dlib_net(w_int(1) + w_str("loss_mmod_") + data[20:], TINY_SPEC)
    broken = data.replace(w_str("con_4"), w_str("con_9"))
    with pytest.raises(DlibFormatError, match=r"layer 5 \(con\).*found 'con_9'"):
        parse_dlib_net(broken, TINY_SPEC)
    with pytest.raises(ValueError, match="spec"):
        parse_dlib_net(data, ["con", "fc"])


def test_parser_checks_params_against_their_aliases():
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(2, 3, 3, 3)).astype(np.float32), np.zeros(2, np.float32)
    good = con_details(w, b, 1, 1)
    bad = good.replace(w_alias((2, 3, 3, 3)), w_alias((2, 3, 5, 5)))
    state = w_bool(True) * 2 + w_bool(False) + w_tensor() * 3 + w_int(1)
    head = w_int(1) + w_str("loss_metric_") + w_int(3) + w_str("input_rgb_image_sized")
    head += b"".join(w_float(x) for x in (1.0, 2.0, 3.0)) + w_int(8) + w_int(8)
    spec = ["input_rgb_image_sized", "con"]
    assert parse_dlib_net(head + good + state, spec).layers[1].params["weight"].shape == (2, 3, 3, 3)
    with pytest.raises(DlibFormatError, match="filters alias"):
        parse_dlib_net(head + bad + state, spec)
    truncated_params = good.replace(w_alias((1, 2, 1, 1)), w_alias((1, 3, 1, 1)))
    with pytest.raises(DlibFormatError, match="biases alias"):
        parse_dlib_net(head + truncated_params + state, spec)


@needs_models
def test_the_shipped_dat_is_dlibs_29_conv_resnet():
    from facecore.detect import model_path

    net = read_dlib_net(model_path(idm.DLIB_FILE), idm.dlib_resnet_spec())
    convs = net.of_kind("con")
    assert len(convs) == 29 and len(net.of_kind("affine")) == 29
    assert [c.attrs["num_filters"] for c in convs[:1]] == [32] and convs[0].attrs["nr"] == 7
    assert sum(c.attrs["stride"] == (2, 2) for c in convs) == 5  # stem + four ares_down
    assert all(c.attrs["padding"] == ((0, 0) if c.attrs["stride"] == (2, 2) else (1, 1)) for c in convs)
    np.testing.assert_allclose(net.layers[0].params["avg_rgb"], [122.782, 117.001, 104.298], rtol=1e-6)
    fc = net.layers[-1]
    assert fc.attrs == {"num_outputs": 128, "num_inputs": 256, "use_bias": False}
    assert sum(p.size for layer in net.layers for p in layer.params.values()) == 5_614_595


@needs_models
def test_other_dlib_files_and_bad_files_are_refused(tmp_path):
    from facecore.detect import CNN_DETECTOR_FILE, model_path

    with pytest.raises(DlibFormatError, match="loss_metric"):
        idm.FaceEmbedder.from_dlib_dat(model_path(CNN_DETECTOR_FILE))  # dlib's MMOD detector: another network
    data = model_path(idm.DLIB_FILE).read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(DlibFormatError, match="file ends early"):
        idm.FaceEmbedder.from_dlib_dat(cut)
    with pytest.raises(FileNotFoundError):
        idm.FaceEmbedder.from_dlib_dat(tmp_path / "missing.dat")


@needs_models
def test_loader_checks_every_layer_against_the_network():
    from facecore.detect import model_path

    net = read_dlib_net(model_path(idm.DLIB_FILE), idm.dlib_resnet_spec())

    def with_layer(index: int, **attrs) -> DlibNet:
        layers = list(net.layers)
        layers[index] = dataclasses.replace(layers[index], attrs={**layers[index].attrs, **attrs})
        return DlibNet(loss=net.loss, layers=tuple(layers))

    cases = [
        (with_layer(1, stride=(1, 1)), r"layer 1 \(con con_4\): convolution"),
        (with_layer(3, disabled=True), r"layer 3 \(relu.*disabled relu"),
        (with_layer(4, padding=(1, 1)), r"layer 4 \(max_pool.*\(nr, nc, stride, padding\)"),
        (with_layer(len(net.layers) - 1, use_bias=True), r"fc.*\(num_inputs, num_outputs, bias\)"),
        (with_layer(0, nr=160), "input size 160"),
    ]
    for bad, message in cases:
        with pytest.raises(DlibFormatError, match=message):
            idm.FaceEmbedder()._load_net(bad, "test")
    affine = next(i for i, layer in enumerate(net.layers) if layer.kind == "affine")
    with pytest.raises(DlibFormatError, match="per-channel affine"):
        idm.FaceEmbedder()._load_net(with_layer(affine, channels=16), "test")
    assert isinstance(net.layers[affine], DlibLayer)


# ================================================================================ FaceEmbedder
@pytest.fixture(scope="module")
def embedder() -> idm.FaceEmbedder:
    if not HAS_MODELS:
        pytest.skip("face-recognition-models (the dlib .dat files) not installed")
    return idm.FaceEmbedder.from_dlib_dat()


def test_add_zero_padded_is_dlibs_add_prev():
    a = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    b = torch.ones(2, 2, 4, 4)
    out = idm.add_zero_padded(a, b)
    assert out.shape == (2, 2, 4, 4)
    expected = b.clone()
    expected[:, :1, :3, :3] += a  # a sits at the top-left of the first channel, zeros elsewhere
    assert torch.equal(out, expected)
    assert torch.equal(idm.add_zero_padded(b, a), expected)


def test_embedder_contract(embedder):
    assert not embedder.training and all(not p.requires_grad for p in embedder.parameters())
    embedder.train()
    assert not embedder.training  # stays in eval mode
    torch.manual_seed(0)
    x = torch.rand(2, 3, 150, 150, requires_grad=True)
    emb = embedder(x)
    assert emb.shape == (2, 128) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    (1 - (emb[0] * emb[1]).sum()).backward()  # an identity loss: gradients reach the input pixels
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in embedder.parameters())
    feats = embedder.features(x.detach())
    assert [tuple(f.shape) for f in feats] == [
        (2, 32, 72, 72),
        (2, 32, 35, 35),
        (2, 64, 17, 17),
        (2, 128, 8, 8),
        (2, 256, 4, 4),
    ]
    assert len(feats) == len(idm.FEATURE_LAYERS)
    with pytest.raises(ValueError, match="square"):
        embedder(torch.rand(1, 3, 150, 120))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        embedder(torch.rand(3, 150, 150))


# ================================================================================ parity with dlib
@pytest.fixture(scope="module")
def dlib_faces():
    """Per photo: (image, 5 points as dlib predicts them, dlib's chip, dlib's descriptor of that chip)."""
    if not (HAS_DLIB and HAS_MODELS):
        pytest.skip("dlib-bin / face-recognition-models not installed (serve/train extras)")
    if not PHOTOS.is_dir():
        pytest.skip(f"fixture photos not found at {PHOTOS}")
    import dlib

    from facecore import detect

    rec = dlib.face_recognition_model_v1(str(detect.model_path(idm.DLIB_FILE)))
    predictor = dlib.shape_predictor(str(detect.model_path(detect.PREDICTOR5_FILE)))
    out = {}
    for name in NAMES:
        image = np.asarray(Image.open(PHOTOS / f"cc0-interfaces-{name}.jpg").convert("RGB"))
        box = detect.detect_landmarks5(image)[0].box
        shape = predictor(image, dlib.rectangle(*(int(round(v)) for v in box)))
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        chip = dlib.get_face_chip(image, shape, size=150, padding=0.25)
        out[name] = (image, points, chip, np.array(rec.compute_face_descriptor(chip)))
    return out


def to_tensor(chips: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack(chips))).permute(0, 3, 1, 2).float() / 255.0


@needs_dlib
@needs_photos
def test_descriptors_match_dlib_on_the_fixture_photos(embedder, dlib_faces):
    chips = [dlib_faces[n][2] for n in NAMES]
    theirs = np.stack([dlib_faces[n][3] for n in NAMES])
    with torch.no_grad():
        ours = embedder.descriptor(to_tensor(chips)).numpy()
        unit = embedder(to_tensor(chips)).numpy()
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    print("cosine vs dlib:", dict(zip(NAMES, np.round(cos, 7).tolist(), strict=True)))
    assert np.all(cos >= 0.999), cos
    np.testing.assert_allclose(ours, theirs, atol=1e-4)  # the raw descriptor itself, not only its direction
    np.testing.assert_allclose(unit, theirs / np.linalg.norm(theirs, axis=1, keepdims=True), atol=1e-4)


@needs_dlib
@needs_photos
def test_numpy_chip_is_dlibs_chip(dlib_faces):
    for name in NAMES:
        image, points, chip, _ = dlib_faces[name]
        ours = idm.extract_dlib_chip(image, points)
        assert ours.shape == (150, 150, 3) and ours.dtype == np.uint8
        assert np.abs(ours.astype(int) - chip).max() <= 1, name
    # a 3× larger photo goes through dlib's image pyramid (two levels)
    import dlib

    image, points, _, _ = dlib_faces["001"]
    big = np.asarray(Image.fromarray(image).resize((1500, 1500), Image.Resampling.BILINEAR))
    big_points = np.round((points + 0.5) * 3 - 0.5)
    shape = dlib.full_object_detection(
        dlib.rectangle(0, 0, 1499, 1499), [dlib.point(int(x), int(y)) for x, y in big_points]
    )
    theirs = dlib.get_face_chip(big, shape, size=150, padding=0.25)
    assert np.abs(idm.extract_dlib_chip(big, big_points).astype(int) - theirs).max() <= 1


@needs_dlib
@needs_photos
def test_same_person_is_closer_than_different_people(embedder, dlib_faces):
    chips, flipped, smaller = [], [], []
    for name in NAMES:
        image, points, chip, _ = dlib_faces[name]
        chips.append(chip)
        flipped.append(chip[:, ::-1])  # the mirrored face, aligned the same way
        small = np.asarray(Image.fromarray(image).resize((350, 350), Image.Resampling.BILINEAR))
        smaller.append(idm.extract_dlib_chip(small, (points + 0.5) * 0.7 - 0.5))
    with torch.no_grad():
        e, ef, es = (embedder(to_tensor(c)) for c in (chips, flipped, smaller))
        d = embedder.descriptor(to_tensor(chips + flipped))
    same = torch.cat([(e * ef).sum(1), (e * es).sum(1)])
    cross = (e @ e.T)[~torch.eye(len(NAMES), dtype=torch.bool)]
    print(f"same person cos ≥ {same.min():.4f}, different people cos ≤ {cross.max():.4f}")
    assert same.min() > cross.max() + 0.03
    assert (d[: len(NAMES)] - d[len(NAMES) :]).norm(dim=1).max() < 0.6  # dlib's own same-person threshold


def test_grid_keeps_where_the_face_parts_are(embedder, dlib_faces):
    """The grid is the res256 level's 2×2 block means: its four cells average to the level's mean; they differ
    from each other (the upper and lower, left and right halves of the face)."""
    chip = dlib_faces[NAMES[0]][2]
    x = to_tensor([chip, chip[:, ::-1]])
    with torch.no_grad():
        grid = embedder.grid(x)
        level = embedder.features(x)[idm.FEATURE_LAYERS.index("res256")]
    assert grid.shape == (2, 1024)
    cells = grid.reshape(2, 256, 2, 2)
    torch.testing.assert_close(cells.mean((2, 3)), level.mean((2, 3)), rtol=1e-5, atol=1e-5)
    upper, lower = cells[0, :, 0].mean(-1), cells[0, :, 1].mean(-1)
    assert (upper - lower).norm() > 0.2 * upper.norm()


def test_resizing_other_crop_sizes(embedder):
    torch.manual_seed(1)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 30, 30), size=150, mode="bilinear", align_corners=False)
    big = torch.nn.functional.interpolate(x, size=300, mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert (embedder(x) * embedder(big)).sum() > 0.99  # 300 px crops are resized with antialiasing
    assert idm.resize_square(x, 150) is x


# ================================================================================ chip geometry
def test_chip_matrix_maps_the_template_into_the_padded_chip():
    template = (0.25 + idm._DLIB_TEMPLATE5) / 1.5 * 150  # dlib's 5-point template in the padded 150 px chip
    angle, scale, shift = 0.3, 1.7, np.array([210.0, 180.0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) * scale
    points = template @ rot.T + shift  # a face exactly on the template, rotated, scaled and moved
    m = idm.dlib_chip_matrix(points)  # chip → image
    pitch = (150 * scale - 1) / 149  # dlib's corner-to-corner pixel pitch
    np.testing.assert_allclose(m[:, :2], rot / scale * pitch, atol=1e-9)
    # the chip's centre pixel (74.5, 74.5) lands where the template puts chip point (75, 75)
    np.testing.assert_allclose(m @ [74.5, 74.5, 1.0], rot @ [75.0, 75.0] + shift, atol=1e-9)
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        idm.dlib_chip_matrix(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="uint8"):
        idm.extract_dlib_chip(np.zeros((10, 10, 3)), points)


# ================================================================================ VGG16 / ArcFace loaders
THIN = {"widths": (4, 4, 8, 8, 8), "fc_dim": 16}


def vgg_state(num_classes: int | None = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = idm.VGG16Face(num_classes, **THIN)
    return {k: torch.randn_like(v) * 0.1 for k, v in model.state_dict().items() if k not in ("mean_rgb", "std_rgb")}


def test_vgg16_face_loads_both_naming_schemes(tmp_path):
    state = vgg_state()
    assert "conv5_3.weight" in state and "fc8.bias" in state
    path = tmp_path / "vgg_face.pth"
    torch.save(state, path)
    model = idm.load_vgg16_face(path, **THIN)
    assert model.fc8 is not None and model.fc8.out_features == 10
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 112, 112, requires_grad=True)
    emb = model(x)
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    emb.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    feats = model.features(x.detach())
    assert [tuple(f.shape[1:]) for f in feats] == [(4, 224, 224), (4, 112, 112), (8, 56, 56), (8, 28, 28), (8, 14, 14)]
    # relu1_2 by hand from the file's tensors
    x224 = idm.resize_square(x.detach(), 224) * 255 - torch.tensor(idm.VGG_FACE_MEAN_RGB)[None, :, None, None]
    h = torch.relu(torch.nn.functional.conv2d(x224, state["conv1_1.weight"], state["conv1_1.bias"], padding=1))
    h = torch.relu(torch.nn.functional.conv2d(h, state["conv1_2.weight"], state["conv1_2.bias"], padding=1))
    torch.testing.assert_close(feats[0], h, rtol=1e-4, atol=1e-4)
    # torchvision names, DDP prefix and no fc8
    tv = {v: k for k, v in idm._torchvision_vgg16_names().items()}
    renamed = {f"module.{tv[k]}": v for k, v in state.items() if not k.startswith("fc8")}
    torch.save({"state_dict": renamed}, path)
    model2 = idm.load_vgg16_face(path, **THIN)
    assert model2.fc8 is None
    torch.testing.assert_close(model2(x.detach()), model(x.detach()))
    with pytest.raises(ValueError, match="no fc8"):
        model2.logits(x.detach())


def test_vgg16_face_rejects_wrong_files(tmp_path):
    state = vgg_state()
    path = tmp_path / "bad.pth"
    torch.save({**state, "conv3_1.weight": torch.zeros(8, 5, 3, 3)}, path)
    with pytest.raises(ValueError, match=r"conv3_1\.weight: file \(8, 5, 3, 3\) vs VGG16 \(8, 4, 3, 3\)"):
        idm.load_vgg16_face(path, **THIN)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"conv1_1\.weight: file \(4, 3, 3, 3\) vs VGG16 \(64, 3, 3, 3\)"):
        idm.load_vgg16_face(path)  # a thin file is not a standard VGG16
    torch.save({k: v for k, v in state.items() if k != "fc6.bias"}, path)
    with pytest.raises(ValueError, match=r"missing \['fc6\.bias'\]"):
        idm.load_vgg16_face(path, **THIN)
    torch.save({**state, "classifier.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="unexpected"):
        idm.load_vgg16_face(path, **THIN)
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(ValueError, match="weights_only"):
        idm.load_vgg16_face(path, **THIN)
    with pytest.raises(FileNotFoundError):
        idm.load_vgg16_face(tmp_path / "missing.pth")


def test_arcface_embedder_from_a_written_file(tmp_path):
    torch.manual_seed(5)
    backbone = IResNet(18)
    state = {}
    for k, v in backbone.state_dict().items():
        if k.endswith("running_var"):
            v = torch.rand_like(v) + 0.5
        elif v.is_floating_point() and not k.startswith("features.weight"):
            v = v + 0.01 * torch.randn_like(v)
        state[k] = v
    path = tmp_path / "arcface_r18.pth"
    torch.save(state, path)
    emb = idm.ArcFaceEmbedder.from_file(path)  # depth inferred from the block counts
    assert emb.backbone.depth == 18 and emb.embedding_dim == 512
    assert all(torch.equal(emb.backbone.state_dict()[k], v) for k, v in state.items())
    assert not emb.training and all(not p.requires_grad for p in emb.parameters())
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    out = emb(x)
    assert out.shape == (2, 512) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    out[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert [tuple(f.shape[1:]) for f in emb.features(x.detach())] == [
        (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)
    ]  # fmt: skip
    torch.save({**state, "fc.weight": torch.zeros(512, 100)}, path)
    with pytest.raises(ValueError, match=r"fc\.weight: file \(512, 100\) vs model \(512, 25088\)"):
        idm.ArcFaceEmbedder.from_file(path, depth=18)
    small = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if k.startswith(("conv1", "layer1.0.", "layer4.0."))}, small)
    with pytest.raises(ValueError, match=r"block counts \(1, 0, 0, 1\) match no IResNet depth"):
        idm.ArcFaceEmbedder.from_file(small)
    with pytest.raises(TypeError, match="IResNet"):
        idm.ArcFaceEmbedder(torch.nn.Linear(2, 2))


def test_licence_is_recorded():
    assert "CC0 1.0" in idm.DLIB_MODEL_LICENCE and "public domain" in idm.DLIB_MODEL_LICENCE
