"""Face-embedding networks for the identity and perceptual losses.

Default: :class:`FaceEmbedder`, dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``,
shipped in PyPI ``face-recognition-models`` 0.3.0, 99.38 % on LFW per its author) ported to PyTorch. Its
weights are read straight from dlib's ``.dat`` file by :mod:`facecore.dlib_dat`; nothing is downloaded. The
network (dlib's ``dnn_face_recognition_ex.cpp`` type, 29 convolutions)::

    input_rgb_image_sized<150>: (pixel − avg_rgb) / 256, avg_rgb = (122.782, 117.001, 104.298) read from the file
    con 7×7/2 32 (no padding) → affine → relu → max_pool 3×3/2 (no padding)          150 → 72 → 35
    3 × ares<32>                                                                       35×35×32
    ares_down<64>  + 3 × ares<64>                                                      17×17×64
    ares_down<128> + 2 × ares<128>                                                     8×8×128
    ares_down<256> + 2 × ares<256>                                                     4×4×256
    ares_down<256>                                                                     2×2×256
    avg_pool_everything → fc_no_bias 128

    ares<N>(x)      = relu(affine(con3×3 N(relu(affine(con3×3 N(x))))) + x)
    ares_down<N>(x) = relu(affine(con3×3 N(relu(affine(con3×3/2 N, no padding(x))))) ⊕ avg_pool 2×2/2(x))

dlib conventions kept exactly: strided convolutions and poolings have no padding (dlib's default padding is
``k // 2`` only for stride 1); ``⊕`` is dlib's ``add_prev`` on tensors of different sizes, which zero-pads
both to the larger size at the end of every axis — the skip path has fewer channels (32 → 64 …) and, at
8 → 3/4 and 4 → 1/2, the strided branch is *smaller* than the pooled skip, so only its top-left corner is
added. Batch norm is folded into dlib's ``affine`` layers in the file; it is folded further into the
preceding convolution here (``w·γ``, ``b·γ + β``), which changes nothing but rounding.

Inputs: (B, 3, H, W) RGB in [0, 1], aligned face chips as dlib makes them (:func:`extract_dlib_chip`, i.e.
``dlib.get_face_chip(img, shape, 150, 0.25)``); other square sizes are resized to 150×150 inside with
bilinear interpolation and antialiasing (``F.interpolate(..., antialias=True)``), non-square inputs are
refused. Values are not clipped, so gradients reach every input pixel.

Outputs: ``forward`` gives (B, 128) L2-normalised embeddings (dlib's descriptor divided by its norm, which is
1.3–1.6 on the fixture photos); ``descriptor`` gives dlib's raw descriptor (dlib calls two faces the same
person when their descriptors are < 0.6 apart); ``features`` gives the activations listed in :data:`FEATURE_LAYERS`
for a perceptual loss.

Measured (``python benchmarks/identity_parity.py``, dlib-bin 20.0.1 on the six fixture photos, dlib's own chips
fed to both): cosine to dlib's descriptor ≥ 1 − 4e-13, raw descriptors within 3.1e-7; the numpy chips of
:func:`extract_dlib_chip` equal dlib's bit for bit (also for 68-point landmarks, padding 0, and 3× / 0.4×
rescaled photos, which exercise dlib's image pyramid).

Weights are frozen (``requires_grad=False``) and every embedder stays in eval mode (``train()`` is a no-op),
so wrapping it in a module that is switched to training mode changes nothing.

Alternatives that keep the paper's choice open, loaded from user-supplied files only:
:func:`load_vgg16_face` (VGG16 / VGG-Face in plain PyTorch) and :class:`ArcFaceEmbedder` (insightface IResNet).

Licence of the dlib model: see :data:`DLIB_MODEL_LICENCE`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facecore.detect import model_path, similarity_transform
from facecore.dlib_dat import DlibNet, read_dlib_net
from facecore.dlib_onnx import (
    RESNET_EMBEDDING_DIM,
    RESNET_INPUT_SIZE,
    RESNET_LEVELS,
    RESNET_STEM_FILTERS,
    Conv,
    resnet_spec,
    resnet_weights,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ARCFACE_INPUT_SIZE",
    "DLIB_CHIP_PADDING",
    "DLIB_FILE",
    "DLIB_INPUT_SIZE",
    "DLIB_MODEL_LICENCE",
    "FEATURE_LAYERS",
    "VGG16_FEATURE_LAYERS",
    "ArcFaceEmbedder",
    "FaceEmbedder",
    "VGG16Face",
    "add_zero_padded",
    "dlib_chip_matrix",
    "dlib_resnet_spec",
    "extract_dlib_chip",
    "load_vgg16_face",
    "resize_square",
]

DLIB_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_INPUT_SIZE = RESNET_INPUT_SIZE
DLIB_CHIP_PADDING = 0.25
DLIB_EMBEDDING_DIM = RESNET_EMBEDDING_DIM
DLIB_MODEL_LICENCE = (
    "dlib_face_recognition_resnet_model_v1.dat by Davis King, shipped in PyPI face-recognition-models 0.3.0 "
    "(SHA-256 55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30). Public domain: the dlib-models "
    "README says he released the model files into the public domain ('anyone can do whatever they want with "
    "these model files'); the package README says the models 'are licensed in the public domain or under CC0 "
    "1.0 Universal. See LICENSE', and its LICENSE file is the CC0 1.0 Universal text (its metadata's 'MIT "
    "license' covers the package code). Trained from scratch on ≈ 3 million faces of 7485 identities (FaceScrub, "
    "the VGG face dataset and web images; no LFW identities); those datasets' own terms are not restated by "
    "the model's licence."
)

DLIB_LEVELS = RESNET_LEVELS
DLIB_STEM_FILTERS = RESNET_STEM_FILTERS

FEATURE_LAYERS: tuple[str, ...] = ("stem", "res32", "res64", "res128", "res256")
"""What :meth:`FaceEmbedder.features` returns, in order (shapes for a 150×150 input):

* ``stem``: 7×7/2 convolution + affine + relu, before the max-pool: (B, 32, 72, 72)
* ``res32``: after the three 32-filter residual blocks (dlib ``alevel4``): (B, 32, 35, 35)
* ``res64``: after the 64-filter level (``alevel3``): (B, 64, 17, 17)
* ``res128``: after the 128-filter level (``alevel2``): (B, 128, 8, 8)
* ``res256``: after the first 256-filter level (``alevel1``): (B, 256, 4, 4)

The last level (``alevel0``, 2×2) and the descriptor are left out: they are the identity, not appearance.
"""

# dlib get_face_chip_details templates, in units of the unpadded chip ([0, 1]², x right, y down)
_DLIB_TEMPLATE5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],  # 5-point order: subject's left eye outer corner
        [0.6460604764104, 0.2289674387677],  # left eye inner
        [0.1205750620789, 0.2137274526848],  # right eye outer
        [0.3340850613712, 0.2290642403242],  # right eye inner
        [0.4901123135679, 0.6277975316475],  # bottom of the nose
    ]
)
# mean positions of iBUG points 17–67 (dlib's mean face); the chip uses 27–54 and 60–64 (no brows, no lower lip)
_DLIB_MEAN_FACE_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124, 0.904991, 0.98004, 0.490127,
    0.490127, 0.490127, 0.490127, 0.36688, 0.426036, 0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825,
    0.334606, 0.260918, 0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149, 0.340985,
    0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721, 0.490127, 0.423532, 0.338094, 0.290379,
    0.428096, 0.490127, 0.552157, 0.689874, 0.553364, 0.490127, 0.42689,
)  # fmt: skip
_DLIB_MEAN_FACE_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891, 0.0187482, 0.038915, 0.106454,
    0.203352, 0.307009, 0.409805, 0.515625, 0.587326, 0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758,
    0.179852, 0.231733, 0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099, 0.780233,
    0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805, 0.902192, 0.909281, 0.902192, 0.864805,
    0.784792, 0.778746, 0.785343, 0.778746, 0.784792, 0.824182, 0.831803, 0.824182,
)  # fmt: skip
_DLIB_CHIP68_INDICES = tuple(i for i in range(27, 68) if not (55 <= i <= 59 or 65 <= i <= 67))


# ============================================================================================ functional core
def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: ``a + b`` after zero-padding both (B, C, H, W) tensors to the larger C, H and W.

    The padding goes at the end of each axis (extra channels, bottom rows, right columns), as in dlib's
    ``tt::add`` for tensors of different dimensions.
    """
    if a.shape == b.shape:
        return a + b
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"add_zero_padded: batch sizes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


def resize_square(images: torch.Tensor, size: int, *, name: str = "images") -> torch.Tensor:
    """Check (B, 3, S, S) float images and resize them to ``size`` (bilinear with antialiasing) if S differs."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected a (B, 3, H, W) tensor of RGB face crops in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor in [0, 1], got {images.dtype}")
    h, w = images.shape[-2:]
    if h != w:
        raise ValueError(f"{name}: expected square aligned face crops, got {h}×{w} (H×W); crop them first")
    if h < 8:
        raise ValueError(f"{name}: {h}×{w} is too small for a face crop")
    if h == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class _Frozen(nn.Module):
    """Base of the embedders: parameters frozen, always in eval mode."""

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _Frozen:
        """No-op: the embedder always stays in eval mode (frozen loss network)."""
        return super().train(False)


# ============================================================================================ dlib ResNet
class _DlibResBlock(nn.Module):
    """dlib ``ares<N>`` (``down=False``) or ``ares_down<N>`` (``down=True``), affine layers folded into the convs."""

    def __init__(self, in_channels: int, filters: int, down: bool):
        super().__init__()
        if not down and in_channels != filters:
            raise ValueError(f"ares<{filters}> needs {filters} input channels, got {in_channels}")
        self.down = down
        self.conv1 = nn.Conv2d(in_channels, filters, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(filters, filters, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_zero_padded(y, skip))


dlib_resnet_spec = resnet_spec


class FaceEmbedder(_Frozen):
    """dlib's face recognition ResNet in PyTorch (see the module docstring). Build it with :meth:`from_dlib_dat`.

    The constructor makes the architecture with zero weights (not usable as is: there is no random init on
    purpose); :meth:`from_dlib_dat` fills it from the ``.dat`` file.
    """

    input_size = DLIB_INPUT_SIZE
    embedding_dim = DLIB_EMBEDDING_DIM
    feature_layers = FEATURE_LAYERS

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("avg_rgb", torch.zeros(3))
        self.stem = nn.Conv2d(3, DLIB_STEM_FILTERS, 7, stride=2, padding=0)
        levels = []
        channels = DLIB_STEM_FILTERS
        for filters, blocks, first_down in DLIB_LEVELS:
            level = []
            for i in range(blocks):
                level.append(_DlibResBlock(channels, filters, down=first_down and i == 0))
                channels = filters
            levels.append(nn.Sequential(*level))
        self.levels = nn.ModuleList(levels)
        self.fc = nn.Linear(channels, DLIB_EMBEDDING_DIM, bias=False)
        for p in self.parameters():
            nn.init.zeros_(p)
        self.freeze()

    # ---------------------------------------------------------------------------------------- loading
    @classmethod
    def from_dlib_dat(cls, path: str | Path | None = None) -> FaceEmbedder:
        """Read the weights from dlib's ``dlib_face_recognition_resnet_model_v1.dat``.

        Args:
            path: the file; None: the one shipped in ``face-recognition-models`` (located on disk without
                importing that package, see :func:`facecore.detect.model_path`).

        Raises:
            FileNotFoundError: no file (and, for the default, a hint to install the package).
            facecore.dlib_dat.DlibFormatError: the file is not this network (names the offending layer).
        """
        if path is None:
            path = model_path(DLIB_FILE)
        net = read_dlib_net(path, dlib_resnet_spec(), loss="loss_metric")
        model = cls()
        model._load_net(net, str(path))
        logger.info("loaded dlib face recognition ResNet from %s", path)
        return model

    def _load_net(self, net: DlibNet, name: str) -> None:
        """Copy a parsed network's weights in (checked layer by layer by :func:`facecore.dlib_onnx.resnet_weights`)."""
        w = resnet_weights(net, name)

        def copy(conv: nn.Conv2d, c: Conv) -> None:
            conv.weight.copy_(torch.from_numpy(c.weight))
            conv.bias.copy_(torch.from_numpy(c.bias))

        with torch.no_grad():
            self.avg_rgb.copy_(torch.from_numpy(w.avg_rgb))
            copy(self.stem, w.stem)
            for module, block in zip((b for level in self.levels for b in level), w.blocks, strict=True):
                copy(module.conv1, block.conv1)
                copy(module.conv2, block.conv2)
            self.fc.weight.copy_(torch.from_numpy(w.fc).T)  # dlib: output = input · W

    # ---------------------------------------------------------------------------------------- forward
    def _run(self, images: torch.Tensor, collect: bool) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        x = resize_square(images, DLIB_INPUT_SIZE)
        x = (x * 255.0 - self.avg_rgb.to(x.dtype)[None, :, None, None]) * (1.0 / 256.0)
        feats: list[torch.Tensor] = []
        x = F.relu(self.stem(x))
        if collect:
            feats.append(x)
        x = F.max_pool2d(x, 3, 2)
        for level in self.levels:
            x = level(x)
            if collect:
                feats.append(x)
                if len(feats) == len(FEATURE_LAYERS):
                    return None, feats
        return self.fc(x.mean(dim=(2, 3))), feats

    def descriptor(self, images: torch.Tensor) -> torch.Tensor:
        """dlib's raw face descriptor (not normalised): (B, 3, H, W) in [0, 1] → (B, 128)."""
        out, _ = self._run(images, collect=False)
        assert out is not None
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Identity embeddings.

        Args:
            images: (B, 3, S, S) RGB in [0, 1], aligned face chips (dlib framing, :func:`extract_dlib_chip`);
                S ≠ 150 is resized with antialiasing.

        Returns:
            (B, 128) unit-length embeddings; differentiable with respect to ``images``.
        """
        return F.normalize(self.descriptor(images), dim=1, eps=1e-8)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Intermediate activations for a perceptual loss, one per :data:`FEATURE_LAYERS` entry (same input)."""
        return self._run(images, collect=True)[1]

    def grid(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1024) where the face's parts are, not only who it is: the first 256-channel level's 4×4 activations
        averaged over 2×2 blocks (a 2×2 grid: upper/lower, left/right half of the chip), flattened channel-major.

        Measured (ridge to the identity code on 1,500 synthetic identities × 2 views, adult-prior held out, face
        region after a similarity alignment as NoW aligns): 0.70 of the mean face's error, against 0.82 for the
        descriptor.
        """
        return F.avg_pool2d(self.features(images)[FEATURE_LAYERS.index("res256")], 2).flatten(1)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 256) the penultimate features: the last level's activations averaged over its 2×2 positions.

        The descriptor is a linear map of them without bias: ``descriptor(x) == fc(pooled(x))``.
        """
        x = resize_square(images, DLIB_INPUT_SIZE)
        x = (x * 255.0 - self.avg_rgb.to(x.dtype)[None, :, None, None]) * (1.0 / 256.0)
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        for level in self.levels:
            x = level(x)
        return x.mean(dim=(2, 3))


# ============================================================================================ chip alignment
def dlib_chip_matrix(points: np.ndarray, size: int = DLIB_INPUT_SIZE, padding: float = DLIB_CHIP_PADDING) -> np.ndarray:
    """(2, 3) affine, *chip* pixels → image pixels, of dlib's ``get_face_chip_details(shape, size, padding)``.

    Args:
        points: (5, 2) dlib 5-point or (68, 2) iBUG landmarks, image pixels (pixel centres at integers).
        size: chip side in pixels (dlib's face recognition network: 150).
        padding: border around the template face, as a fraction of it (the network's: 0.25).

    dlib fits a similarity from its template (scaled into the padded chip) onto the landmarks, keeps its angle
    and scale, and maps the chip's corner pixels (0 and size − 1) onto a rectangle of side ``size·scale − 1``
    centred at the image of chip point (size/2, size/2). This reproduces that mapping exactly, including the
    resulting ``(size·scale − 1) / (size − 1)`` pixel pitch and half-pixel offset.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.shape == (5, 2):
        template = _DLIB_TEMPLATE5
    elif points.shape == (68, 2):
        idx = np.array(_DLIB_CHIP68_INDICES) - 17
        template = np.stack([np.array(_DLIB_MEAN_FACE_X)[idx], np.array(_DLIB_MEAN_FACE_Y)[idx]], axis=1)
        points = points[list(_DLIB_CHIP68_INDICES)]
    else:
        raise ValueError(f"points: expected (5, 2) dlib 5-point or (68, 2) iBUG landmarks, got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("points: contain NaN or inf")
    if not (isinstance(size, int | np.integer) and size >= 2) or not (np.isfinite(padding) and padding >= 0):
        raise ValueError(f"size/padding: expected an integer size ≥ 2 and padding ≥ 0, got {size!r}, {padding!r}")
    chip_pts = (padding + template) / (2 * padding + 1) * size
    s = similarity_transform(chip_pts, points)  # chip → image (least squares, as dlib's find_similarity_transform)
    col = s[:, 0]  # image of the chip's x unit vector
    scale = float(np.hypot(*col))
    if scale < 1e-9:
        raise ValueError("points: degenerate landmarks (all at one place)")
    rot = np.array([[col[0], -col[1]], [col[1], col[0]]]) / scale
    centre = s[:, :2] @ np.array([size / 2.0, size / 2.0]) + s[:, 2]
    pitch = (size * scale - 1.0) / (size - 1.0)  # image pixels per chip pixel
    a = rot * pitch
    t = centre - a @ np.full(2, (size - 1) / 2.0)
    return np.concatenate([a, t[:, None]], axis=1)


def _bilinear_truncating(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """dlib's ``interpolate_bilinear`` over an (H, W, 3) uint8 image: 0 where the 2×2 neighbourhood leaves the
    image, values truncated (not rounded) to uint8."""
    h, w = image.shape[:2]
    x0, y0 = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
    x0c, y0c = np.clip(x0, 0, max(w - 2, 0)), np.clip(y0, 0, max(h - 2, 0))
    fx, fy = (xs - x0)[..., None], (ys - y0)[..., None]
    img = image.astype(np.float64)
    tl, tr = img[y0c, x0c], img[y0c, x0c + 1]
    bl, br = img[y0c + 1, x0c], img[y0c + 1, x0c + 1]
    out = (1 - fy) * ((1 - fx) * tl + fx * tr) + fy * ((1 - fx) * bl + fx * br)
    out = np.where(inside[..., None], out, 0.0)
    return np.clip(out, 0, 255).astype(np.uint8)  # astype truncates toward zero, as dlib's static_cast


def _dlib_pyramid_down2(image: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_down<2>`` on an (H, W, 3) uint8 image: separable 5-tap [1 4 6 4 1] filter, every other
    pixel, integer arithmetic (sum / 256, floored). Output ((H − 3) // 2, (W − 3) // 2, 3); output pixel (r, c)
    is centred on input pixel (2r + 2, 2c + 2). Images of ≤ 8 rows or columns give an empty image."""
    h, w = image.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0, 3), dtype=np.uint8)
    taps = (1, 4, 6, 4, 1)
    img = image.astype(np.int64)
    oh, ow = (h - 3) // 2, (w - 3) // 2
    rows = sum(t * img[:, j : j + 2 * ow - 1 : 2] for j, t in enumerate(taps))  # (h, ow)
    out = sum(t * rows[i : i + 2 * oh - 1 : 2] for i, t in enumerate(taps))  # (oh, ow)
    return (out // 256).astype(np.uint8)


def _lround(x: float) -> int:
    """C's ``lround``: nearest integer, halves away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def extract_dlib_chip(
    image: np.ndarray, points: np.ndarray, size: int = DLIB_INPUT_SIZE, padding: float = DLIB_CHIP_PADDING
) -> np.ndarray:
    """The aligned face chip dlib feeds its face recognition network (``dlib.get_face_chip``), in numpy.

    Args:
        image: (H, W, 3) uint8 RGB.
        points: (5, 2) dlib 5-point or (68, 2) iBUG landmarks of one face, image pixels.
        size, padding: see :func:`dlib_chip_matrix`.

    Returns:
        (size, size, 3) uint8 RGB chip; pixels whose source lies outside the image are black.

    Follows dlib's ``extract_image_chips`` step by step: crop the image to the rotated chip rectangle grown by
    a margin, build ``pyramid_down<2>`` levels while the chip would still shrink the face by more than 2×
    (dlib's 5-tap filter and its approximate level mapping ``p / 2 − (1.25, 0.75)``), then bilinear
    interpolation with truncation to uint8. On the fixture photos the result equals dlib's chip exactly.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = (image.shape, image.dtype) if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image: expected an (H, W, 3) uint8 RGB array, got {got}")
    m = dlib_chip_matrix(points, size, padding)  # chip → image
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], dtype=np.float64)
    rotated = corners @ m.T  # (4, 2) image positions of the chip's corner pixels
    centre = m @ np.array([(size - 1) / 2.0, (size - 1) / 2.0, 1.0])
    half = math.sqrt(abs(float(np.linalg.det(m[:, :2])))) * (size - 1) / 2.0
    rect = (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)  # dlib's chip rect, unrotated

    def down(r: tuple[float, ...]) -> tuple[float, ...]:
        return (r[0] / 2 - 1.25, r[1] / 2 - 0.75, r[2] / 2 - 1.25, r[3] / 2 - 0.75)

    def area(r: tuple[float, ...]) -> float:
        return 0.0 if (r[0] > r[2] or r[1] > r[3]) else (r[2] - r[0] + 1) * (r[3] - r[1] + 1)

    depth, grow, r = 0, 2.0, down(rect)
    while area(r) > size * size:
        r, depth, grow = down(r), depth + 1, grow * 2 + 2
    h, w = image.shape[:2]
    lo, hi = rotated.min(axis=0) - grow, rotated.max(axis=0) + grow
    box = [max(lo[0], 0.0), max(lo[1], 0.0), min(hi[0], w - 1.0), min(hi[1], h - 1.0)]
    if box[0] > box[2] or box[1] > box[3]:
        return np.zeros((size, size, 3), dtype=np.uint8)  # the face is entirely outside the image
    x0, y0, x1, y1 = (_lround(v) for v in box)
    src = image[y0 : y1 + 1, x0 : x1 + 1]
    m = m - np.array([[0.0, 0.0, x0], [0.0, 0.0, y0]])  # chip → cropped image
    level, r = -1, (rect[0] - x0, rect[1] - y0, rect[2] - x0, rect[3] - y0)
    while area(down(r)) > size * size:
        level, r = level + 1, down(r)
    for _ in range(level + 1):
        src = _dlib_pyramid_down2(src)
        m = np.concatenate([m[:, :2] / 2, (m[:, 2] / 2 - np.array([1.25, 0.75]))[:, None]], axis=1)
    grid = np.arange(size, dtype=np.float64)
    cx, cy = np.meshgrid(grid, grid)
    xs = m[0, 0] * cx + m[0, 1] * cy + m[0, 2]
    ys = m[1, 0] * cx + m[1, 1] * cy + m[1, 2]
    return _bilinear_truncating(src, xs, ys)


# ============================================================================================ VGG16 (-Face)
VGG16_BLOCKS: tuple[int, ...] = (2, 2, 3, 3, 3)
VGG16_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 512)
VGG16_FEATURE_LAYERS: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
VGG_FACE_MEAN_RGB: tuple[float, float, float] = (129.1863, 104.7624, 93.5940)
VGG16_INPUT_SIZE = 224


def _vgg16_conv_names() -> list[str]:
    return [f"conv{b + 1}_{i + 1}" for b, n in enumerate(VGG16_BLOCKS) for i in range(n)]


class VGG16Face(_Frozen):
    """VGG16 in plain PyTorch with VGG-Face's layer names (``conv1_1`` … ``conv5_3``, ``fc6``, ``fc7``, ``fc8``).

    Args:
        num_classes: outputs of ``fc8`` (VGG-Face: 2622 identities), or None for a network without ``fc8``.
        widths: filters of the five convolution blocks (VGG16: 64, 128, 256, 512, 512).
        fc_dim: outputs of ``fc6`` and ``fc7`` (VGG16: 4096).
        mean_rgb: per-channel mean subtracted from 0–255 pixel values (default: VGG-Face's, in RGB order).
        std_rgb: per-channel divisor after the mean (VGG-Face: 1; an ImageNet VGG16 uses 0.229·255 …).
        bgr: feed the channels in BGR order (Caffe-converted weights) instead of RGB.

    Inputs are (B, 3, S, S) RGB in [0, 1]; S ≠ 224 is resized with antialiasing. ``forward`` returns the
    L2-normalised ``fc7`` activation (after its relu; 4096-d), VGG-Face's identity descriptor; ``features``
    returns the activations named in :data:`VGG16_FEATURE_LAYERS`.
    """

    input_size = VGG16_INPUT_SIZE
    feature_layers = VGG16_FEATURE_LAYERS

    def __init__(
        self,
        num_classes: int | None = 2622,
        *,
        widths: Sequence[int] = VGG16_WIDTHS,
        fc_dim: int = 4096,
        mean_rgb: Sequence[float] = VGG_FACE_MEAN_RGB,
        std_rgb: Sequence[float] = (1.0, 1.0, 1.0),
        bgr: bool = False,
    ):
        super().__init__()
        if len(mean_rgb) != 3 or len(std_rgb) != 3 or min(std_rgb) <= 0:
            raise ValueError(f"mean_rgb/std_rgb: expected 3 values each (std > 0), got {mean_rgb}, {std_rgb}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes: expected ≥ 1 or None, got {num_classes}")
        if len(widths) != len(VGG16_BLOCKS) or min(widths) < 1 or fc_dim < 1:
            raise ValueError(f"widths/fc_dim: expected 5 positive widths and fc_dim ≥ 1, got {widths}, {fc_dim}")
        self.widths = tuple(int(w) for w in widths)
        self.bgr = bool(bgr)
        self.register_buffer("mean_rgb", torch.tensor([float(v) for v in mean_rgb]))
        self.register_buffer("std_rgb", torch.tensor([float(v) for v in std_rgb]))
        in_ch = 3
        for name, width in zip(_vgg16_conv_names(), _expand_widths(self.widths), strict=True):
            self.add_module(name, nn.Conv2d(in_ch, width, 3, padding=1))
            in_ch = width
        self.fc6 = nn.Linear(in_ch * 7 * 7, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.fc8 = nn.Linear(fc_dim, num_classes) if num_classes is not None else None
        self.embedding_dim = fc_dim
        self.freeze()

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_square(images, VGG16_INPUT_SIZE)
        x = (x * 255.0 - self.mean_rgb[None, :, None, None]) / self.std_rgb[None, :, None, None]
        return x.flip(1) if self.bgr else x

    def _convs(self, x: torch.Tensor, collect: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        names = iter(_vgg16_conv_names())
        for n in VGG16_BLOCKS:
            for _ in range(n):
                x = F.relu(getattr(self, next(names))(x))
            if collect:
                feats.append(x)
            x = F.max_pool2d(x, 2, 2)
        return x, feats

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) in [0, 1] → activations at :data:`VGG16_FEATURE_LAYERS` (224 input: 224, 112, 56, 28, 14 px)."""
        return self._convs(self._normalise(images), collect=True)[1]

    def fc7_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 4096) ``relu(fc7)`` activations (not normalised)."""
        x, _ = self._convs(self._normalise(images), collect=False)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 7) if x.shape[-1] != 7 else x, 1)
        return F.relu(self.fc7(F.relu(self.fc6(x))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] → (B, 4096) unit-length ``fc7`` embeddings."""
        return F.normalize(self.fc7_features(images), dim=1, eps=1e-8)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) ``fc8`` outputs (ValueError without ``fc8``)."""
        if self.fc8 is None:
            raise ValueError("this VGG16 has no fc8 (built with num_classes=None)")
        return self.fc8(self.fc7_features(images))


def _expand_widths(widths: Sequence[int]) -> list[int]:
    return [w for w, n in zip(widths, VGG16_BLOCKS, strict=True) for _ in range(n)]


def _torchvision_vgg16_names() -> dict[str, str]:
    """torchvision ``vgg16`` names (``features.N``, ``classifier.N``) → VGG-Face names."""
    mapping, idx = {}, 0
    names = iter(_vgg16_conv_names())
    for n in VGG16_BLOCKS:
        for _ in range(n):
            name = next(names)
            for p in ("weight", "bias"):
                mapping[f"features.{idx}.{p}"] = f"{name}.{p}"
            idx += 2  # conv, relu
        idx += 1  # max-pool
    for i, fc in ((0, "fc6"), (3, "fc7"), (6, "fc8")):
        for p in ("weight", "bias"):
            mapping[f"classifier.{i}.{p}"] = f"{fc}.{p}"
    return mapping


def _read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled code, corrupt files
        raise ValueError(
            f"{path}: not a PyTorch state dict readable with weights_only=True ({type(exc).__name__}: {exc}); "
            "save model.state_dict() (tensors only)"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path}: expected a state dict (name → tensor), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k.removeprefix("module.")] = v
    return out


def load_vgg16_face(
    path: str | Path,
    *,
    widths: Sequence[int] = VGG16_WIDTHS,
    fc_dim: int = 4096,
    mean_rgb: Sequence[float] = VGG_FACE_MEAN_RGB,
    std_rgb: Sequence[float] = (1.0, 1.0, 1.0),
    bgr: bool = False,
) -> VGG16Face:
    """A :class:`VGG16Face` with the weights of a user-supplied PyTorch state dict.

    Accepted names (``module.`` prefixes and a ``state_dict`` / ``model`` nesting are removed):

    * VGG-Face style: ``conv1_1.weight`` / ``.bias`` … ``conv5_3``, ``fc6``, ``fc7``, optional ``fc8``;
    * torchvision style: ``features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.*`` and ``classifier.{0,3,6}.*``.

    ``fc8`` may be absent (then the model has none) and sets ``num_classes`` from its shape; every other tensor
    must have the shape of a VGG16 with ``widths`` / ``fc_dim`` (standard VGG16 by default). Preprocessing is
    not stored in such files: pass ``mean_rgb`` / ``std_rgb`` / ``bgr`` to match how the weights were trained
    (defaults: VGG-Face, RGB mean subtraction on 0–255 values).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, missing/unexpected keys or wrong shapes (each named with both shapes).
    """
    path = Path(path)
    state = _read_state_dict(path, "VGG16")
    tv = _torchvision_vgg16_names()
    if any(k in tv for k in state):
        state = {tv.get(k, k): v for k, v in state.items()}
    fc8 = state.get("fc8.weight")
    num_classes = int(fc8.shape[0]) if isinstance(fc8, torch.Tensor) and fc8.ndim == 2 else None
    model = VGG16Face(num_classes, widths=widths, fc_dim=fc_dim, mean_rgb=mean_rgb, std_rgb=std_rgb, bgr=bgr)
    expected = {k: v for k, v in model.state_dict().items() if k not in ("mean_rgb", "std_rgb")}
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a VGG16 state dict: missing {missing[:8]}{' …' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' …' if len(unexpected) > 8 else ''} (expected conv1_1…conv5_3, "
            "fc6, fc7[, fc8] or torchvision features.N / classifier.N names)"
        )
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs VGG16 {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"{path}: tensors of the wrong shape: " + "; ".join(wrong))
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(state[k].to(v.dtype))
    logger.info("loaded VGG16 weights from %s (fc8: %s)", path, num_classes)
    return model


# ============================================================================================ ArcFace
ARCFACE_INPUT_SIZE = 112


class ArcFaceEmbedder(_Frozen):
    """A user's insightface ArcFace IResNet (``models.encoder.IResNet``) as a frozen identity embedder.

    Build it with :meth:`from_file`. Inputs (B, 3, S, S) RGB in [0, 1], ArcFace-aligned (112×112 framing; other
    sizes resized with antialiasing); mapped to [-1, 1] as insightface does. ``forward`` returns (B, 512)
    unit-length embeddings; ``features`` the outputs of ``layer1`` … ``layer4`` (56, 28, 14, 7 px).
    """

    input_size = ARCFACE_INPUT_SIZE
    feature_layers = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, backbone: nn.Module):
        super().__init__()
        from models.encoder import IResNet

        if not isinstance(backbone, IResNet):
            raise TypeError(f"backbone: expected a models.encoder.IResNet, got {type(backbone).__name__}")
        self.backbone = backbone
        self.embedding_dim = backbone.fc.out_features
        self.freeze()

    @classmethod
    def from_file(cls, path: str | Path, depth: int | None = None) -> ArcFaceEmbedder:
        """Load an insightface ``iresnet{18,34,50,100}`` state dict (``.pth``).

        Args:
            path: the file (read with ``weights_only=True``).
            depth: the IResNet depth; None: inferred from the file's ``layerN.i`` block counts.

        Raises:
            FileNotFoundError, ValueError: from :func:`models.arcface_loader.load_arcface_weights` (missing or
                unexpected keys, wrong shapes, unreadable file) or when the depth cannot be inferred.
        """
        from models.arcface_loader import load_arcface_weights, read_arcface_state_dict
        from models.encoder import IRESNET_LAYERS, IResNet

        if depth is None:
            state = read_arcface_state_dict(path)
            blocks = [0, 0, 0, 0]
            for key in state:
                m = re.match(r"layer([1-4])\.(\d+)\.", key)
                if m:
                    blocks[int(m.group(1)) - 1] = max(blocks[int(m.group(1)) - 1], int(m.group(2)) + 1)
            found = [d for d, layout in IRESNET_LAYERS.items() if tuple(blocks) == layout]
            if not found:
                raise ValueError(
                    f"{path}: its layer1..4 block counts {tuple(blocks)} match no IResNet depth "
                    f"({ {d: v for d, v in IRESNET_LAYERS.items()} }); pass depth= explicitly"
                )
            depth = found[0]
        backbone = IResNet(depth=depth)
        load_arcface_weights(backbone, path)
        return cls(backbone)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return resize_square(images, ARCFACE_INPUT_SIZE) * 2.0 - 1.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] → (B, 512) unit-length embeddings."""
        return F.normalize(self.backbone(self._normalise(images)), dim=1, eps=1e-8)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of ``layer1`` … ``layer4`` of the backbone."""
        b = self.backbone
        x = b.prelu(b.bn1(b.conv1(self._normalise(images))))
        feats = []
        for name in self.feature_layers:
            x = getattr(b, name)(x)
            feats.append(x)
        return feats
