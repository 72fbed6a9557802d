"""facecore.dlib_onnx: dlib's CNN detector and recogniser as ONNX graphs give what dlib's own runtime gives."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecore import detect
from facecore import dlib_onnx as D
from facecore.dlib_dat import DlibFormatError, DlibNet, read_dlib_net
from facecore.identity import RECOGNISER_FILE, get_recogniser

PHOTOS = Path(__file__).resolve().parents[1] / "fixtures" / "photos"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("face_recognition_models") is None, reason="face-recognition-models not installed"
)


def _photos() -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(PHOTOS.glob("*.jpg"))]


def test_mmod_finds_dlibs_boxes_and_scores():
    dlib = detect._import_dlib()
    theirs_net = dlib.cnn_face_detection_model_v1(str(detect.model_path(detect.CNN_DETECTOR_FILE)))
    ours = D.get_mmod(detect.model_path(detect.CNN_DETECTOR_FILE))
    images = _photos()
    # a landscape copy (the pyramid's second column differs), a portrait one, a face cut off at the border
    # (boxes past the image: dlib's rounding of negative coordinates)
    images += [np.pad(images[1], ((0, 0), (0, 120), (0, 0))), images[2][:, 100:400], images[0][120:, 190:]]
    compared = 0
    for image in images:
        small, _, _ = detect._downscaled(np.ascontiguousarray(image), 256)
        theirs = [(np.array([d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()]), d.confidence)
                  for d in theirs_net(small, 0)]  # fmt: skip
        mine = ours(small)
        assert len(mine) == len(theirs) >= 1
        for (box, score), (tbox, tscore) in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(box, tbox)
            assert score == pytest.approx(tscore, abs=2e-4)
            compared += 1
    assert compared >= 8


def test_mmod_on_images_without_a_face():
    ours = D.get_mmod(detect.model_path(detect.CNN_DETECTOR_FILE))
    rng = np.random.default_rng(0)
    assert ours(np.full((200, 300, 3), 128, np.uint8)) == []
    assert ours(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) == []  # smaller than the detector window


def test_pyramid_layout_is_dlibs():
    # 500×500: levels 5/6 apart down to 5 px; the first column holds the levels until the rest fit beside them
    rects, rows, cols = D._pyramid_rects(500, 500, 10, 11)
    sizes = [(w, h) for _, _, w, h in rects]
    assert sizes[:3] == [(500, 500), (416, 416), (346, 346)] and sizes[-1][1] >= 5
    assert cols == 522 and rows == 1852  # what dlib's tiled tensor measured for the fixture photos
    boxes = [(x, y, x + w - 1, y + h - 1) for x, y, w, h in rects]
    for i, a in enumerate(boxes):  # inside the tiled image, never overlapping
        assert 0 <= a[0] and a[2] < cols and 0 <= a[1] and a[3] < rows
        for b in boxes[i + 1 :]:
            assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def test_recogniser_matches_dlibs_descriptors():
    dlib = detect._import_dlib()
    theirs = dlib.face_recognition_model_v1(str(detect.model_path(RECOGNISER_FILE)))
    rec = get_recogniser()
    chips = []
    for image in _photos():
        face = detect.largest_face(detect.detect_landmarks5(image), image.shape)
        chips.append(rec.chip(image, face.points))
    chips = np.stack(chips)
    want = np.array([np.asarray(d) for d in theirs.compute_face_descriptor(list(chips))])
    got = rec.describe_chips(chips)
    assert got.shape == (len(chips), 128)
    np.testing.assert_allclose(got, want, atol=2e-6)
    # batching changes nothing
    np.testing.assert_allclose(
        np.concatenate([rec.describe_chips(chips[:1]), rec.describe_chips(chips[1:])]), got, atol=1e-6
    )
    # different people stay apart by dlib's own measure (its 0.6 same-person radius)
    d = np.linalg.norm(got[:, None] - got[None], axis=2)[np.triu_indices(len(chips), 1)]
    assert d.min() > 0.3


def test_weights_refuse_the_wrong_network():
    path = detect.model_path(detect.CNN_DETECTOR_FILE)
    net = read_dlib_net(path, D.mmod_spec(), loss="loss_mmod")
    assert net.loss.attrs["detector_windows"] == [(80, 80, "")]
    bad = DlibNet(net.loss, (net.layers[0], *net.layers[4:]))  # the first convolution block missing
    with pytest.raises(DlibFormatError, match="convolution"):
        D.mmod_weights(bad, "test")
    with pytest.raises(DlibFormatError):
        read_dlib_net(path, D.resnet_spec())  # the detector file is not the recognition network
