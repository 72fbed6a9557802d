"""Identity from face-recognition features, torch-free: dlib's recogniser on the 5-point chip → a linear head.

The service (``/reconstruct``) and the training stage (``training.identity``) compute features with the same
code here, so what the head was fitted on is what it sees:

* :class:`FaceRecogniser`: dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat`` from
  PyPI ``face-recognition-models``, public domain / CC0; the same network :class:`models.identity.FaceEmbedder`
  ports to torch) on dlib's 150-px face chip (padding 0.25) aligned on the 5 points of
  :func:`facecore.detect.detect_landmarks5`, its weights run by onnxruntime (:mod:`facecore.dlib_onnx`).
  Output: dlib's raw 128-d descriptor of the chip and of its mirror image (2, 128).
* Or a bundle graph on the same chips (:data:`FEATURES_GRAPH`, :func:`graph_features`): dlib's network (its own
  weights, or fine-tuned to predict the face's shape by ``training.identity_finetune``) computing its descriptor
  or the 2×2 grid of a middle level (:meth:`models.identity.FaceEmbedder.grid`: where the face's parts are), run
  on the chip and its mirror image (:func:`chips_input`, :func:`pair_features`).
* :class:`IdentityHead`: ``f(x) = ((x − x_mean) / x_std) · weight + y_mean``, the ridge regression
  descriptor → shape code fitted by ``training.identity`` on synthetic identities, applied to both descriptors:
  ``shape = (f(x) + mirror(f(x_mirrored))) / 2`` where ``mirror`` maps a code to its left–right mirror image's
  (linear, from the face model). A photo and its mirror image then give mirrored heads (measured on the
  fixture photos: a plain head changed by 2.7–2.9 mm between a photo and its mirror, more than between some
  people), and the two estimates average out part of the descriptor's noise. Stored as an ``.npz``.

Why the descriptor and not the torch port's 256-d penultimate features (measured, ridge, one view per row,
trained on prior + 2× prior + wide 0.5 identities, held-out ratio to each set's spread): the 256-d features are
0.025–0.04 better (prior 0.88 vs 0.91, 2× prior 0.81 vs 0.83, wide 0.90 vs 0.94), not enough to give up a
feature that dlib itself defines and checks (the parity of :mod:`facecore.dlib_onnx` is measured against it).
The graph is built from the ``.dat`` file the service already has on disk, so the bundle carries no copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from facecore.detect import _import_dlib, model_path
from facecore.geometry import pull_within

RECOGNISER_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150
CHIP_PADDING = 0.25
DESCRIPTOR_DIM = 128
#: what the head's input is; a head fitted on other features is refused
FEATURES = (
    f"dlib:{RECOGNISER_FILE}:descriptor{DESCRIPTOR_DIM}:chip{CHIP_SIZE}:padding{CHIP_PADDING}:points5:and_mirrored"
)
#: a bundle graph of dlib's network (its own weights, or trained further by ``training.identity_finetune``) on the
#: same chips
FEATURES_GRAPH = "identity_features"
FEATURES_GRAPH_INPUT = "chips"  # (N, 3, 150, 150) float32 RGB in [0, 1] (:func:`chips_input`)
FEATURES_GRAPH_OUTPUT = "features"  # (N, D)
#: what the graph computes (models.identity.FaceEmbedder): dlib's descriptor, or the 2×2 grid of a middle level
GRAPH_OUTPUTS = {"descriptor": DESCRIPTOR_DIM, "grid": 1024}


def graph_features(output: str) -> str:
    """The ``features`` string of a head that reads :data:`FEATURES_GRAPH` computing ``output`` (see
    :data:`GRAPH_OUTPUTS`)."""
    if output not in GRAPH_OUTPUTS:
        raise ValueError(f"output: expected one of {tuple(GRAPH_OUTPUTS)}, got {output!r}")
    dim = GRAPH_OUTPUTS[output]
    return f"graph:{FEATURES_GRAPH}:{output}{dim}:chip{CHIP_SIZE}:padding{CHIP_PADDING}:points5:and_mirrored"


#: an identity stage run's files (``training.identity``), which ``training.export --add-identity`` puts into a bundle
HEAD_FILE = "identity_head.npz"
GRAPH_FILE = f"{FEATURES_GRAPH}.onnx"
IDENTITY_METRICS_FILE = "metrics.json"

#: the features a head may read in this service, and their dimension
SERVICE_FEATURES = {FEATURES: DESCRIPTOR_DIM, **{graph_features(o): d for o, d in GRAPH_OUTPUTS.items()}}


def reads_graph(features: str) -> bool:
    """Whether a head with these ``features`` reads the bundle's :data:`FEATURES_GRAPH` (else dlib's runtime)."""
    return features != FEATURES and features in SERVICE_FEATURES


RECOGNISER_LICENCE = (
    f"{RECOGNISER_FILE} by Davis King (PyPI face-recognition-models 0.3.0): public domain / CC0 1.0 (see "
    "models.identity.DLIB_MODEL_LICENCE). Trained on ≈ 3 million faces of 7485 identities."
)


class FaceRecogniser:
    """dlib's face-recognition network: dlib's chips, the descriptors from dlib's weights on onnxruntime
    (:class:`facecore.dlib_onnx.Recogniser`: within 4e-7 of dlib's own runtime, ~30× faster here)."""

    #: chips per onnxruntime call (bounds the activations' memory: ~40 MB a chip)
    BATCH = 32

    def __init__(self) -> None:
        self._dlib = _import_dlib()

    @functools.cached_property
    def _net(self):  # noqa: ANN202 (facecore.dlib_onnx's recogniser)
        """dlib's network, loaded on first use: a head on a bundle graph needs only the chip."""
        from facecore.dlib_onnx import get_recogniser as onnx_recogniser

        return onnx_recogniser(model_path(RECOGNISER_FILE))

    def chip(self, image: np.ndarray, points5: np.ndarray) -> np.ndarray:
        """dlib's (150, 150, 3) uint8 face chip of ``image`` (H, W, 3) uint8 RGB on the (5, 2) points of
        :func:`facecore.detect.detect_landmarks5` (rounded to whole pixels, dlib's point type)."""
        points5 = np.asarray(points5, np.float64)
        if points5.shape != (5, 2) or not np.all(np.isfinite(points5)):
            raise ValueError(f"points5: expected (5, 2) finite dlib 5-point landmarks, got {points5.shape}")
        pts = [self._dlib.point(int(round(x)), int(round(y))) for x, y in points5]
        x0, y0 = np.floor(points5.min(0)).astype(int)
        x1, y1 = np.ceil(points5.max(0)).astype(int)
        shape = self._dlib.full_object_detection(self._dlib.rectangle(x0, y0, x1, y1), pts)
        return np.asarray(self._dlib.get_face_chip(np.ascontiguousarray(image), shape, CHIP_SIZE, CHIP_PADDING))

    def describe_chips(self, chips: np.ndarray) -> np.ndarray:
        """(N, 128) float64 descriptors of (N, 150, 150, 3) uint8 chips (:meth:`chip`)."""
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or chips.dtype != np.uint8:
            raise ValueError(f"chips: expected (N, {CHIP_SIZE}, {CHIP_SIZE}, 3) uint8, got {chips.shape} {chips.dtype}")
        if len(chips) == 0:
            return np.zeros((0, DESCRIPTOR_DIM))
        return np.concatenate([self._net(chips[i : i + self.BATCH]) for i in range(0, len(chips), self.BATCH)])

    def describe(self, image: np.ndarray, points5: np.ndarray) -> np.ndarray:
        """(2, 128) float64 descriptors of the face at ``points5`` in ``image``: its :meth:`chip` and the chip's
        mirror image (:func:`describe_with_mirror`)."""
        return self.describe_with_mirror(self.chip(image, points5)[None])[0]

    def describe_with_mirror(self, chips: np.ndarray) -> np.ndarray:
        """(N, 2, 128) descriptors of (N, 150, 150, 3) chips and of their left–right mirror images."""
        both = self.describe_chips(np.concatenate([chips, np.asarray(chips)[:, :, ::-1]]))
        return np.stack([both[: len(chips)], both[len(chips) :]], 1)


def chips_input(chips: np.ndarray) -> np.ndarray:
    """(N, 150, 150, 3) uint8 chips and their mirror images → the (2N, 3, 150, 150) float32 input of
    :data:`FEATURES_GRAPH` (chips first, then the mirror images: :func:`pair_features` splits them)."""
    chips = np.asarray(chips)
    if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or chips.dtype != np.uint8:
        raise ValueError(f"chips: expected (N, {CHIP_SIZE}, {CHIP_SIZE}, 3) uint8, got {chips.shape} {chips.dtype}")
    both = np.concatenate([chips, chips[:, :, ::-1]])
    return np.ascontiguousarray(both.transpose(0, 3, 1, 2), np.float32) / np.float32(255.0)


def pair_features(features: np.ndarray) -> np.ndarray:
    """:data:`FEATURES_GRAPH`'s (2N, D) output on :func:`chips_input` → (N, 2, D) float64 (chip, mirror image),
    the layout :meth:`FaceRecogniser.describe_with_mirror` gives and :class:`IdentityHead` reads."""
    features = np.asarray(features, np.float64)
    n = len(features) // 2
    return np.stack([features[:n], features[n:]], 1)


@functools.cache
def get_recogniser() -> FaceRecogniser:
    """The shared, lazily loaded recogniser (loading takes ≈ 0.3 s)."""
    return FaceRecogniser()


@dataclass(frozen=True, eq=False)
class IdentityHead:
    """Linear map from recognition features to the face model's shape code.

    Attributes:
        x_mean, x_std: (D,) feature standardisation.
        weight: (D, K) the map on standardised features.
        y_mean: (K,) the shape code of the average feature.
        mirror, mirror_offset: (K, K) and (K,): ``code · mirror + mirror_offset`` is the code of the left–right
            mirror image of ``code``'s head.
        prior_mean, prior_chol, max_prior_radius: (K,), (K, K), (): the face model's generation prior (plausible
            adults, ``code = prior_mean + prior_chol · ε``) and the largest ``‖ε‖`` a prediction may have; one
            further out is pulled back along ``ε`` onto that radius. Real photos lie outside the synthetic
            training features, and the fitted map extrapolates them to implausible heads (measured on the
            fixture photos: ``‖ε‖`` 17–86 where adults have 12.2 ± 0.7, faces 15 % smaller than the prior's
            mean); held-out synthetic faces lose nothing at a radius of 14.5 (0.881 vs 0.882 of the spread).
        features: what ``x`` is (one of :data:`SERVICE_FEATURES` for heads the service can run).
    """

    x_mean: np.ndarray
    x_std: np.ndarray
    weight: np.ndarray
    y_mean: np.ndarray
    mirror: np.ndarray
    mirror_offset: np.ndarray
    prior_mean: np.ndarray
    prior_chol: np.ndarray
    max_prior_radius: np.ndarray
    features: str = FEATURES

    def __post_init__(self) -> None:
        arrays = {f.name: np.asarray(getattr(self, f.name), np.float64) for f in fields(self) if f.name != "features"}
        D, K = arrays["weight"].shape if arrays["weight"].ndim == 2 else (0, 0)
        want = {
            "x_mean": (D,),
            "x_std": (D,),
            "weight": (D, K),
            "y_mean": (K,),
            "mirror": (K, K),
            "mirror_offset": (K,),
            "prior_mean": (K,),
            "prior_chol": (K, K),
            "max_prior_radius": (),
        }
        for name, value in arrays.items():
            if D == 0 or value.shape != want[name] or not np.all(np.isfinite(value)):
                raise ValueError(f"identity head: '{name}' must be finite with shape {want[name]}, got {value.shape}")
            object.__setattr__(self, name, value)
        if not np.all(self.x_std > 0) or not self.max_prior_radius > 0:
            raise ValueError("identity head: 'x_std' and 'max_prior_radius' must be positive")
        try:
            object.__setattr__(self, "_whiten", np.linalg.inv(self.prior_chol).T)
        except np.linalg.LinAlgError as exc:
            raise ValueError("identity head: 'prior_chol' is singular") from exc

    @property
    def n_features(self) -> int:
        return self.weight.shape[0]

    @property
    def n_shape(self) -> int:
        return self.weight.shape[1]

    def single(self, x: np.ndarray) -> np.ndarray:
        """(…, D) descriptors of single chips → (…, K) shape codes (the fitted linear map alone)."""
        return ((np.asarray(x, np.float64) - self.x_mean) / self.x_std) @ self.weight + self.y_mean

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(…, 2, D) descriptors of a chip and its mirror image (:meth:`FaceRecogniser.describe`) → (…, K)."""
        x = np.asarray(x, np.float64)
        if x.ndim < 2 or x.shape[-2:] != (2, self.n_features):
            raise ValueError(f"identity head: expected (..., 2, {self.n_features}) features, got {x.shape}")
        code = 0.5 * (self.single(x[..., 0, :]) + self.single(x[..., 1, :]) @ self.mirror + self.mirror_offset)
        return self.limit(code)

    def limit(self, code: np.ndarray) -> np.ndarray:
        """(…, K) codes with ``‖ε‖`` (whitened by the prior) above ``max_prior_radius`` pulled back onto it."""
        radius = np.linalg.norm((code - self.prior_mean) @ self._whiten, axis=-1, keepdims=True)
        return pull_within(code, self.prior_mean, radius, float(self.max_prior_radius))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        arrays = {f.name: np.asarray(getattr(self, f.name), np.float32) for f in fields(self) if f.name != "features"}
        np.savez(path, features=np.array(self.features), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> IdentityHead:
        """Read a head written by :meth:`save`; ValueError naming the file for anything malformed."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                values = {f.name: data[f.name] for f in fields(cls)}
            return cls(**{**values, "features": str(values["features"])})
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not an identity head ({exc})") from exc
