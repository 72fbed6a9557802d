"""Offline distribution metric for UV albedo maps: KID on fixed, download-free features inside the skin mask.

**Metric.** Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate
of the squared maximum mean discrepancy between two feature sets with the cubic polynomial kernel
``k(x, y) = (x·y / d + 1)³``, averaged over random subsets (mean and standard deviation over the subsets are
reported). Unlike FID it is unbiased, so values from a few hundred samples are comparable across runs of the
same feature extractor and reference set, and it is ≈ 0 (it can be slightly negative) for two samples of the
same distribution.

**Features — why not Inception or the face-embedding net.** Inception weights would have to be downloaded (the
project trains and evaluates offline), and the features of an ImageNet classifier, or of the face-embedding
net of ``models/identity.py`` (trained on photographs of faces, not on unwrapped UV maps), are not calibrated
for UV albedo: they see a texture atlas out of their training distribution. What distinguishes good albedo
maps is known and cheap to measure directly, and every UV map is spatially registered (the same texel is the
same point of the face), so fixed statistics at fixed positions are meaningful. :class:`AlbedoFeatures`
concatenates four groups, all computed only on the face model's skin texels (``texel_sampling``):

1. ``colour``: mean and standard deviation of an orthonormal opponent colour transform (luma, red–green,
   yellow–blue) of the sRGB values — skin tone and its spread.
2. ``layout``: the mean opponent colour in each cell of a ``grid × grid`` partition of the UV square — where
   lips, brows, hair, eyes and stubble are, and whether their colours are right.
3. ``frequency``: log RMS energy of each opponent channel in every level of a Laplacian pyramid — sharpness,
   pores and noise; GAN artefacts (blur, high-frequency noise, checkerboards) show up here.
4. ``random_conv``: the masked means and standard deviations of the activations of a fixed three-layer ReLU
   conv net with seeded Gaussian (He) weights. Random conv features are a generic, rich set of local
   colour/texture statistics (random-weight embeddings track sample quality and diversity usefully, e.g.
   Naeem et al. 2020, "Reliable fidelity and diversity metrics"); they cover what the hand-made groups miss.

The weights of group 4 come from ``torch.Generator().manual_seed(seed)``: fixed for a given torch version.

**Normalisation.** Feature groups live on different scales, so a :class:`ReferenceSet` centres the features on
the reference mean and scales each group (one factor per group) so that every group has the same total
variance over the reference, hence the same share of ``x·y / d``. The unit is therefore this project's own
(not comparable with Inception-KID numbers): values are comparable for the same reference set and extractor
settings, which is what a training curve needs. Two samples of one distribution give ≈ 0 (± the subset
noise); the cubic kernel makes far-off distributions (an untrained generator) score in the tens to
thousands, so plot the curve on a log scale.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facecore import geometry as geo
from facecore.geometry import FaceModelArrays
from models.displacement import DetailedMesh, UVGrid
from models.face.model import FaceModel
from models.render import MeshRenderer, WeakPerspectiveCamera, uv_fragments
from models.shape_model import ShapeModel
from training import losses as L
from training.data.groups import ShapeBatch, SyntheticGroups, ndc_to_pixels
from training.data.images import resize_uv
from training.objectives import FacePipeline, albedo_from_generator, gt_shape_error_mm
from training.shape import NOSE_TIP, NOW_LANDMARKS, DataSection, ShapeTrainConfig

logger = logging.getLogger(__name__)

FEATURE_RESOLUTION = 64
GROUPS = ("colour", "layout", "frequency", "random_conv")

# Orthonormal opponent transform: rows = luma, red–green, yellow–blue.
_OPPONENT = (
    (1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)),
    (1 / math.sqrt(2), -1 / math.sqrt(2), 0.0),
    (1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)),
)


@lru_cache(maxsize=8)
def _skin_mask_np(resolution: int, face_model_path: str | None) -> np.ndarray:
    from facecore.geometry import texel_sampling
    from models.face.model import DEFAULT_FACE_MODEL

    arrays = FaceModelArrays.load(face_model_path or DEFAULT_FACE_MODEL)
    texel, _, _ = texel_sampling(arrays, resolution)
    mask = np.zeros(resolution * resolution, np.float32)
    mask[texel] = 1.0
    return mask.reshape(resolution, resolution)


def skin_mask(resolution: int, face_model_path: str | Path | None = None) -> torch.Tensor:
    """Texels of an R × R UV map whose centre lies on the face model's skin.

    Args:
        resolution: R.
        face_model_path: a ``face_model.npz``; None = the built-in default face model.

    Returns:
        (R, R) float32 mask in {0, 1}; row 0 is v = 1.
    """
    path = None if face_model_path is None else str(face_model_path)
    return torch.from_numpy(_skin_mask_np(int(resolution), path).copy())


# ---------------------------------------------------------------------------------------------------------------
# Features


def _masked_mean_std(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, C, H, W), mask: (H, W) weights → mean and std over the mask, each (B, C)."""
    w = mask / mask.sum()
    mean = (x * w).sum(dim=(2, 3))
    var = ((x - mean[:, :, None, None]).square() * w).sum(dim=(2, 3))
    return mean, (var + 1e-12).sqrt()


class AlbedoFeatures(nn.Module):
    """Fixed, download-free features of sRGB UV albedo maps (see the module docstring for the groups).

    Args:
        mask: (R, R) skin weights at ``resolution``; None = the default face model's :func:`skin_mask`.
        resolution: working resolution; inputs of any size are resized to it (antialiased).
        seed: seed of the random conv weights.
        grid: cells per side of the ``layout`` group.
        levels: Laplacian-pyramid levels of the ``frequency`` group; None = ``min(4, log2(resolution) − 1)``.
        conv_channels: widths of the three random conv layers.

    Call with images (B, 3, H, W), sRGB-encoded in [0, 1], row 0 = v = 1; returns (B, D) float32 features.
    """

    def __init__(
        self,
        mask: torch.Tensor | None = None,
        resolution: int = FEATURE_RESOLUTION,
        seed: int = 0,
        grid: int = 8,
        levels: int | None = None,
        conv_channels: tuple[int, ...] = (32, 64, 128),
    ) -> None:
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution: expected a power of two >= 8, got {resolution}")
        if levels is None:
            levels = min(4, int(math.log2(resolution)) - 1)
        if not 1 <= levels <= int(math.log2(resolution)) - 1:
            raise ValueError(f"levels: expected 1 … {int(math.log2(resolution)) - 1} at {resolution}², got {levels}")
        if resolution % grid:
            raise ValueError(f"grid {grid} must divide the resolution {resolution}")
        if mask is None:
            mask = skin_mask(resolution)
        mask = mask.to(torch.float32)
        if tuple(mask.shape) != (resolution, resolution):
            mask = F.interpolate(mask[None, None], size=(resolution, resolution), mode="area")[0, 0]
        if float(mask.sum()) < 1:
            raise ValueError("the skin mask is empty")
        self.resolution = resolution
        self.grid = grid
        self.levels = levels
        self.register_buffer("mask", mask)
        self.register_buffer("opponent", torch.tensor(_OPPONENT, dtype=torch.float32))
        cell = F.avg_pool2d(mask[None, None], resolution // grid)[0, 0].flatten()  # coverage per cell
        self.register_buffer("cells", torch.nonzero(cell > 0.25).flatten())  # cells mostly on the skin
        masks = [mask]
        for _ in range(levels - 1):
            masks.append(F.avg_pool2d(masks[-1][None, None], 2)[0, 0])
        # Laplacian energy only where the 5×5 neighbourhood (the footprint of pool + bilinear upsampling) is all
        # skin: no mask-border edges, and texels off the skin never contribute
        for i, m in enumerate(masks):
            inner = -F.max_pool2d(-m[None, None], 5, stride=1, padding=2)[0, 0]
            self.register_buffer(f"band_mask{i}", (inner > 0.999).to(torch.float32))
        g = torch.Generator().manual_seed(seed)
        weights, c_in = [], 3
        for c_out in conv_channels:
            weights.append(torch.randn(c_out, c_in, 3, 3, generator=g) * math.sqrt(2.0 / (9 * c_in)))
            c_in = c_out
        for i, w in enumerate(weights):
            self.register_buffer(f"conv{i}", w)
        self.num_convs = len(weights)
        sizes = {
            "colour": 6,
            "layout": 3 * len(self.cells),
            "frequency": 3 * levels,
            "random_conv": 2 * sum(conv_channels),
        }
        start, self.group_slices = 0, {}
        for name in GROUPS:
            self.group_slices[name] = slice(start, start + sizes[name])
            start += sizes[name]
        self.dim = start

    @torch.no_grad()
    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) sRGB in [0, 1] → (B, D) features."""
        if images01.ndim != 4 or images01.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images01.shape)}")
        x = resize_uv(images01.to(self.mask.device, torch.float32), self.resolution).clamp(0.0, 1.0)
        mask = self.mask
        opp = torch.einsum("oc,bchw->bohw", self.opponent, x)
        mean, std = _masked_mean_std(opp, mask)
        colour = torch.cat([mean, std], 1)

        k = self.resolution // self.grid
        cell_sum = F.avg_pool2d(opp * mask, k).flatten(2)
        cell_w = F.avg_pool2d(mask[None, None], k).flatten(2).clamp_min(1e-6)
        layout = (cell_sum / cell_w)[:, :, self.cells].flatten(1)

        bands, level = [], opp
        for i in range(self.levels):
            if i < self.levels - 1:
                low = F.avg_pool2d(level, 2)
                up = F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
                detail, level = level - up, low
            else:
                detail = level - F.avg_pool2d(level, 3, stride=1, padding=1, count_include_pad=False)
            bm = getattr(self, f"band_mask{i}")
            energy = (detail.square() * bm).sum(dim=(2, 3)) / bm.sum().clamp_min(1.0)
            bands.append(0.5 * torch.log(energy + 1e-10))
        frequency = torch.cat(bands, 1)

        h, stats, m = (x - 0.5) * 2.0 * mask, [], mask
        for i in range(self.num_convs):
            if i > 0:
                h = F.avg_pool2d(h, 2)
                m = F.avg_pool2d(m[None, None], 2)[0, 0]
            h = F.relu(F.conv2d(h, getattr(self, f"conv{i}"), padding=1))
            mu, sd = _masked_mean_std(h, m)
            stats += [mu, sd]
        random_conv = torch.cat(stats, 1)
        return torch.cat([colour, layout, frequency, random_conv], 1)

    def extract(self, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 64) -> torch.Tensor:
        """Features of many images: a (N, 3, H, W) tensor (processed in batches) or an iterable of batches."""
        batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
        out = [self(b).cpu() for b in batches]
        if not out:
            raise ValueError("extract: no images")
        return torch.cat(out)


# ---------------------------------------------------------------------------------------------------------------
# KID


@dataclass(frozen=True)
class KIDResult:
    """KID over random subsets.

    Attributes:
        mean: mean unbiased MMD² over the subsets (report ×10³).
        std: standard deviation over the subsets.
        num_subsets: number of subsets.
        subset_size: samples per subset from each set.
    """

    mean: float
    std: float
    num_subsets: int
    subset_size: int

    def to_dict(self) -> dict[str, float | int]:
        return {"kid": self.mean, "kid_std": self.std, "num_subsets": self.num_subsets, "subset_size": self.subset_size}


def polynomial_mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD² between two samples with the kernel ``k(a, b) = (a·b / d + 1)³``.

    ``MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m−1)) + Σ_{i≠j} k(y_i, y_j) / (n(n−1)) − 2 Σ_{i,j} k(x_i, y_j) / (mn)``

    Args:
        x: (m, d) features, m ≥ 2.
        y: (n, d) features, n ≥ 2.

    Returns:
        () float64.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (m, d) and (n, d), got {tuple(x.shape)}, {tuple(y.shape)}")
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"need at least 2 samples per set, got {m} and {n}")
    x, y = x.to(torch.float64), y.to(torch.float64)
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return sum_xx / (m * (m - 1)) + sum_yy / (n * (n - 1)) - 2 * k_xy.mean()


def kid(
    features_x: torch.Tensor,
    features_y: torch.Tensor,
    num_subsets: int = 100,
    subset_size: int | None = 1000,
    seed: int = 0,
) -> KIDResult:
    """KID between two feature sets: unbiased polynomial MMD² averaged over random subsets.

    Args:
        features_x: (m, d).
        features_y: (n, d).
        num_subsets: subsets drawn (each set sampled without replacement within a subset).
        subset_size: samples per subset; capped at ``min(m, n)``; None = ``min(m, n)``.
        seed: seed of the subset draws (deterministic result).

    Returns:
        :class:`KIDResult`.
    """
    m, n = features_x.shape[0], features_y.shape[0]
    size = min(m, n) if subset_size is None else min(subset_size, m, n)
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {m} and {n}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(num_subsets):
        ix = torch.randperm(m, generator=g)[:size]
        iy = torch.randperm(n, generator=g)[:size]
        values.append(polynomial_mmd2_unbiased(features_x[ix], features_y[iy]))
    v = torch.stack(values)
    std = float(v.std()) if num_subsets > 1 else 0.0
    return KIDResult(float(v.mean()), std, num_subsets, size)


class ReferenceSet:
    """Features of a reference set of albedo maps (e.g. held-out albedos) and the normalisation they define.

    Args:
        extractor: the feature extractor.
        features: (N, D) raw features of the reference images (``extractor.extract``).

    Features are centred on the reference mean and each group is divided by one scale, chosen so that every
    group has the same total variance over the reference set (``D / n_groups``), hence the same share of the
    kernel's ``x·y / d``. One scale per group, not per dimension: a feature that is nearly constant over the
    reference (a texel region that never changes) is not blown up into a dominant direction.
    """

    def __init__(self, extractor: AlbedoFeatures, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != extractor.dim:
            raise ValueError(f"features must be (N, {extractor.dim}), got {tuple(features.shape)}")
        if features.shape[0] < 2:
            raise ValueError("a reference set needs at least 2 images")
        self.extractor = extractor
        self.raw = features.to(torch.float64)
        self.mean = self.raw.mean(0)
        var = self.raw.var(0)
        scale = torch.empty_like(var)
        n_groups = len(extractor.group_slices)
        for sl in extractor.group_slices.values():
            total = float(var[sl].sum())  # the group's total variance → D / n_groups after scaling
            scale[sl] = math.sqrt(max(total, 1e-12) * n_groups / extractor.dim)
        self.scale = scale
        self.features = self.normalise(features)

    @classmethod
    def from_images(
        cls, extractor: AlbedoFeatures, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 64
    ) -> ReferenceSet:
        """Reference from sRGB images in [0, 1]: a (N, 3, H, W) tensor or an iterable of batches."""
        return cls(extractor, extractor.extract(images, batch_size))

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def normalise(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) raw → (N, D) float64, centred and group-scaled."""
        return (features.to(torch.float64) - self.mean) / self.scale

    def kid_features(self, features: torch.Tensor, num_subsets: int = 100, subset_size: int | None = 1000,
                     seed: int = 0) -> KIDResult:  # fmt: skip
        """KID of raw features (N, D) against the reference."""
        return kid(self.normalise(features), self.features, num_subsets, subset_size, seed)

    def kid_images(self, images01: torch.Tensor | Iterable[torch.Tensor], num_subsets: int = 100,
                   subset_size: int | None = 1000, seed: int = 0, batch_size: int = 64) -> KIDResult:  # fmt: skip
        """KID of sRGB images in [0, 1] against the reference."""
        return self.kid_features(self.extractor.extract(images01, batch_size), num_subsets, subset_size, seed)


# ---------------------------------------------------------------------------------------------------------------
# Generators


@torch.no_grad()
def generate_images(
    generator: nn.Module,
    num_samples: int,
    batch_size: int = 32,
    seed: int = 0,
    truncation_psi: float = 1.0,
    noise_mode: str = "const",
    device: torch.device | str | None = None,
) -> Iterable[torch.Tensor]:
    """Yield batches of generated albedo maps, sRGB in [0, 1] (the generator's [-1, 1] output, mapped).

    The latents come from ``torch.Generator().manual_seed(seed)`` on CPU, so the same seed gives the same z on
    every device (the same z at every evaluation of a training run: a lower-variance curve).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    device = torch.device(device) if device is not None else next(generator.parameters()).device
    g = torch.Generator().manual_seed(seed)
    z_all = torch.randn(num_samples, generator.z_dim, generator=g)
    for z in z_all.split(batch_size):
        img = generator(z.to(device), None, truncation_psi=truncation_psi, noise_mode=noise_mode)
        yield ((img.to(torch.float32) + 1.0) * 0.5).clamp(0.0, 1.0)


def evaluate_generator(
    generator: nn.Module,
    reference: ReferenceSet,
    num_samples: int = 1000,
    *,
    batch_size: int = 32,
    seed: int = 0,
    truncation_psi: float = 1.0,
    num_subsets: int = 100,
    subset_size: int | None = 1000,
    device: torch.device | str | None = None,
) -> KIDResult:
    """KID of a generator's albedo maps against a reference set.

    Args:
        generator: a :class:`models.stylegan2.Generator` (unconditional), output (B, 3, R, R) in [-1, 1].
        reference: the reference set (e.g. held-out albedos).
        num_samples: generated samples (fixed z from ``seed``).
        batch_size: generator batch size.
        seed: latent seed.
        truncation_psi: 1 = the full distribution (what the metric should see).
        num_subsets, subset_size: see :func:`kid`.
        device: where the generator runs (default: its parameters' device).

    Returns:
        :class:`KIDResult`.
    """
    was_training = generator.training
    generator.eval()
    try:
        images = generate_images(generator, num_samples, batch_size, seed, truncation_psi, device=device)
        feats = reference.extractor.extract(images)
    finally:
        generator.train(was_training)
    return reference.kid_features(feats, num_subsets, subset_size, seed)


def evaluate_checkpoints(
    checkpoints: Iterable[Path],
    load_generator: Callable[[Path], nn.Module],
    reference: ReferenceSet,
    **kwargs: object,
) -> Mapping[Path, KIDResult]:
    """KID of the generator of each checkpoint (``load_generator(path)``) against ``reference``."""
    return {Path(p): evaluate_generator(load_generator(Path(p)), reference, **kwargs) for p in checkpoints}


def _safe(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x.abs() > 1e-30, x, torch.full_like(x, 1e-30))


def closest_point_on_triangle(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Closest point of triangle (a, b, c) to p; all (…, 3). Voronoi-region test of the triangle's vertices,
    edges and face (Ericson, *Real-Time Collision Detection* §5.1.5), vectorised with ``where`` in reverse
    priority order."""
    ab, ac = b - a, c - a
    ap, bp, cp = p - a, p - b, p - c
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    denom = _safe(va + vb + vc)
    out = a + ab * (vb / denom)[..., None] + ac * (vc / denom)[..., None]  # inside the face
    e = (d4 - d3) / _safe((d4 - d3) + (d5 - d6))
    out = torch.where(((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0))[..., None], b + (c - b) * e[..., None], out)
    out = torch.where(((vb <= 0) & (d2 >= 0) & (d6 <= 0))[..., None], a + ac * (d2 / _safe(d2 - d6))[..., None], out)
    out = torch.where(((d6 >= 0) & (d5 <= d6))[..., None], c, out)
    out = torch.where(((vc <= 0) & (d1 >= 0) & (d3 <= 0))[..., None], a + ab * (d1 / _safe(d1 - d3))[..., None], out)
    out = torch.where(((d3 >= 0) & (d4 <= d3))[..., None], b, out)
    return torch.where(((d1 <= 0) & (d2 <= 0))[..., None], a, out)


class MeshDistance:
    """Point-to-surface distance for one triangle topology.

    For every query point the ``k`` nearest vertices are found and the exact closest point is taken over their
    incident triangles (exact whenever the closest triangle touches one of those vertices — always the case for
    points near a reasonably even mesh).

    Args:
        faces: (F, 3) long triangles.
        n_verts: V.
        k: nearest vertices per query point.
    """

    def __init__(self, faces: torch.Tensor, n_verts: int, k: int = 8):
        f = faces.detach().cpu().long().numpy()
        incident: list[list[int]] = [[] for _ in range(n_verts)]
        for i, tri in enumerate(f):
            for v in tri:
                incident[v].append(i)
        width = max(1, max(len(x) for x in incident))
        adj = np.full((n_verts, width), -1, np.int64)
        for v, lst in enumerate(incident):
            adj[v, : len(lst)] = lst
        self.faces = torch.from_numpy(f)
        self.adjacency = torch.from_numpy(adj)
        self.k = k

    def closest(
        self, points: torch.Tensor, verts: torch.Tensor, chunk: int = 2048
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """points (P, 3), verts (V, 3) → closest surface points (P, 3) and distances (P,)."""
        faces, adj = self.faces.to(verts.device), self.adjacency.to(verts.device)
        best_pts, best_d = [], []
        k = min(self.k, verts.shape[0])
        for start in range(0, points.shape[0], chunk):
            p = points[start : start + chunk]
            knn = torch.cdist(p, verts).topk(k, largest=False).indices  # (P, k)
            cand = adj[knn].flatten(1)  # (P, k·D), −1 = none
            valid = cand >= 0
            tri = verts[faces[cand.clamp_min(0)]]  # (P, C, 3, 3)
            q = closest_point_on_triangle(p[:, None], tri[..., 0, :], tri[..., 1, :], tri[..., 2, :])
            d = (q - p[:, None]).norm(dim=-1).masked_fill(~valid, float("inf"))
            i = d.argmin(1)
            best_pts.append(q[torch.arange(len(p)), i])
            best_d.append(d[torch.arange(len(p)), i])
        return torch.cat(best_pts), torch.cat(best_d)


def umeyama(
    src: torch.Tensor, dst: torch.Tensor, with_scale: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares similarity (or rigid, ``with_scale=False``) ``dst ≈ s·R·src + t`` for (N, 3) point sets.

    Returns:
        (s, R (3, 3), t (3,)), no reflection (Umeyama 1991).
    """
    src64, dst64 = src.double(), dst.double()
    mu_s, mu_d = src64.mean(0), dst64.mean(0)
    xs, xd = src64 - mu_s, dst64 - mu_d
    cov = xd.T @ xs / len(src64)
    U, S, Vt = torch.linalg.svd(cov)
    d = torch.ones(3, dtype=torch.float64, device=src.device)
    if torch.det(U) * torch.det(Vt) < 0:
        d[2] = -1.0
    R = U @ torch.diag(d) @ Vt
    var_s = xs.square().sum() / len(src64)
    s = (S * d).sum() / var_s if with_scale else torch.ones((), dtype=torch.float64, device=src.device)
    t = mu_d - s * R @ mu_s
    return s.to(src.dtype), R.to(src.dtype), t.to(src.dtype)


def now_scan_to_mesh(
    scan: torch.Tensor,
    scan_landmarks: torch.Tensor,
    verts: torch.Tensor,
    landmarks: torch.Tensor,
    distance: MeshDistance,
    icp_iterations: int = 5,
    icp_points: int = 1500,
) -> torch.Tensor:
    """NoW-style error of one predicted mesh against one scan: (P,) distances in the units of the inputs.

    The mesh is aligned to the scan by the similarity that maps its landmarks onto the scan's (7 NoW
    landmarks), then by ``icp_iterations`` rigid refinements (closest mesh points of the scan points → rigid
    Umeyama); the result is the distance of every scan point to the aligned mesh surface.

    Args:
        scan: (P, 3) scan points.
        scan_landmarks: (L, 3) the scan's landmarks.
        verts: (V, 3) predicted mesh vertices (topology of ``distance``).
        landmarks: (L, 3) the predicted mesh's landmarks.
        distance: the :class:`MeshDistance` of the predicted topology.
        icp_iterations: rigid refinements.
        icp_points: the refinements use an even subset of at most this many scan points.
    """
    s, R, t = umeyama(landmarks, scan_landmarks, with_scale=True)
    v = s * verts @ R.T + t
    subset = scan[:: max(1, -(-scan.shape[0] // icp_points))]  # the rigid fits need no more points
    for _ in range(icp_iterations):
        closest, _ = distance.closest(subset, v)
        _, R, t = umeyama(closest, subset, with_scale=False)
        v = v @ R.T + t
    return distance.closest(scan, v)[1]


@dataclass
class EvalSet:
    """Held-out synthetic renders and what the metrics need of their ground truth (built once per run)."""

    batches: list[ShapeBatch]  # the encoder's inputs (aligned like the training data) + ground truth, on CPU
    scans: list[torch.Tensor]  # per sample (P_i, 3) true neutral outer skin surface near the nose tip
    scan_landmarks: list[torch.Tensor]  # per sample (7, 3)
    seen: list[torch.Tensor]  # per batch (B, 1, Ra, Ra) seen-texel masks


def build_eval_set(cfg: ShapeTrainConfig, face_model: FaceModel, albedo_resolution: int) -> EvalSet:
    """Render ``eval.num_samples`` held-out faces (stream ``eval.seed``, framed and aligned like the synthetic
    training data) and precompute their scans and seen texels."""
    e, d = cfg.eval, cfg.data
    data = DataSection(
        kind="synthetic",
        seed=e.seed,
        groups=e.batch,
        views=1,
        albedo_size=e.albedo_size,
        align=d.align if d.kind == "synthetic" else True,
        align_jitter=d.align_jitter if e.align_jitter is None else e.align_jitter,
        render_scale=d.render_scale,
        face_fill=d.face_fill if d.kind == "synthetic" else None,
    )
    enc = cfg.model.encoder
    source = SyntheticGroups(data, enc.input_size, cfg.loss.chip_size, face_model, "cpu", enc.crop_scale)
    fm = source.faces.face_model
    scanner = UVGrid(fm, e.scan_resolution)
    seen_texels = SeenTexels(fm, albedo_resolution)
    out = EvalSet([], [], [], [])
    for start in range(0, e.num_samples, e.batch):
        batch = source.groups_batch(range(start, min(start + e.batch, e.num_samples)))
        out.batches.append(batch)
        gt = batch.gt
        for scan, scan_lm in now_scans(fm, scanner, gt.codes.shape, e.face_radius_mm):
            out.scans.append(scan)
            out.scan_landmarks.append(scan_lm)
        out.seen.append(seen_texels(gt.camera, gt.verts_world))
    return out


@torch.no_grad()
def now_scans(
    face_model: FaceModel, scanner: UVGrid, shape: torch.Tensor, radius_mm: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """NoW-style "scans" of true identities: per row of ``shape`` (B, K), the neutral outer skin surface sampled
    densely (``scanner``) within ``radius_mm`` of the nose tip, (P, 3) metres, and its 7 NoW landmarks (7, 3)."""
    neutral = face_model(shape)
    lm = face_model.landmarks(neutral)
    surface = scanner(neutral)  # (B, N, 3)
    out = []
    for i in range(len(shape)):
        near = (surface[i] - lm[i, NOSE_TIP]).norm(dim=-1) < radius_mm / 1000.0
        out.append((surface[i][near], lm[i, list(NOW_LANDMARKS)]))
    return out


class SeenTexels:
    """Which albedo texels a render shows: texels whose triangle is visible (z-buffer at 256 px).

    Args:
        face_model: the rendered model (topology and UV layout).
        resolution: the albedo map's side.
    """

    def __init__(self, face_model: FaceModel, resolution: int):
        self.texel_face = uv_fragments(face_model.uv, face_model.uv_faces, resolution).face_id[0]  # (R, R)
        self.renderer = MeshRenderer.from_face_model(face_model, 256)
        self.n_faces = face_model.faces.shape[0]

    @torch.no_grad()
    def __call__(self, camera: WeakPerspectiveCamera, verts_world: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) posed vertices seen through ``camera`` → (B, 1, R, R) float mask of the seen texels."""
        fid = self.renderer.rasterize(camera.project(verts_world)).face_id.flatten(1)  # (B, H·W)
        visible = torch.zeros(len(verts_world), self.n_faces + 1, dtype=torch.bool)
        visible.scatter_(1, fid.cpu() + 1, True)
        seen = visible[:, 1:][:, self.texel_face.clamp_min(0)] & (self.texel_face >= 0)
        return seen[:, None].float()


def _summary(values: torch.Tensor) -> dict[str, float]:
    v = values.double()
    return {"median": float(v.median()), "mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0}


@torch.no_grad()
def evaluate(
    model: ShapeModel,
    generator: nn.Module,
    pipeline: FacePipeline,
    data: EvalSet,
    icp_iterations: int = 5,
) -> dict[str, Any]:
    """The held-out metrics (see the module docstring). The model is put in eval mode and restored.

    Returns:
        ``{"now_coarse_mm": {median, mean, std}, "now_detailed_mm": {…}, "landmark_nme": float,
        "albedo_mae", "albedo_rmse", "albedo_rmse_scale_invariant": float, "gt_shape_mm": float,
        "num_samples": int}``.
    """

    was_training = model.training
    model.eval()
    fm = pipeline.face_model
    device = pipeline.disp_mask.device
    coarse_dist = MeshDistance(fm.faces, fm.n_verts)
    # the detailed mesh as the service exports it, at the displacement map's resolution
    sampling = DetailedMesh(fm, pipeline.sampling.resolution).to(device)
    detailed_dist = MeshDistance(sampling.point_faces, sampling.n_points)
    coarse_all, detailed_all, nme, gt_shape = [], [], [], []
    abs_err, sq_err, si_err, texels = 0.0, 0.0, 0.0, 0.0
    sample = 0
    S = pipeline.image_size
    try:
        for bi, batch in enumerate(data.batches):
            batch = batch.to(device)
            gt = batch.gt
            out = model(batch.image)
            codes = out.codes
            verts = fm(codes.shape, codes.expression, codes.pose)
            lm_px = ndc_to_pixels(pipeline.landmarks_ndc(verts, codes.camera), S)
            nme.append(L.normalised_landmark_error(lm_px, batch.landmarks_px, batch.visibility, reduction="none"))
            gt_shape.append(
                torch.stack(
                    [gt_shape_error_mm(fm, codes.shape[i : i + 1], gt.codes.shape[i : i + 1]) for i in range(len(gt))]
                )
            )
            neutral = fm(codes.shape)
            zeros_e = torch.zeros_like(codes.expression)
            disp0 = model.displacement(codes.detail, zeros_e, torch.zeros_like(codes.pose[:, 0]))
            detailed = sampling(neutral, disp0)
            lm = fm.landmarks(neutral)[:, list(NOW_LANDMARKS)]
            for i in range(len(gt)):
                scan, scan_lm = data.scans[sample].to(device), data.scan_landmarks[sample].to(device)
                coarse_all.append(now_scan_to_mesh(scan, scan_lm, neutral[i], lm[i], coarse_dist, icp_iterations))
                detailed_all.append(now_scan_to_mesh(scan, scan_lm, detailed[i], lm[i], detailed_dist, icp_iterations))
                sample += 1
            albedo = albedo_from_generator(generator.synthesis(out.ws, noise_mode="const"))
            target = resize_uv(gt.albedo_uv, albedo.shape[-1])
            seen = data.seen[bi].to(device)
            diff = (albedo - target) * seen
            abs_err += float(diff.abs().sum())
            sq_err += float(diff.square().sum())
            texels += float(seen.sum()) * 3
            scale = (albedo * target * seen).sum((2, 3), keepdim=True) / _safe(
                (albedo.square() * seen).sum((2, 3), keepdim=True)
            )
            si_err += float(((scale * albedo - target) * seen).square().sum())
    finally:
        model.train(was_training)
    coarse = 1000.0 * torch.cat(coarse_all)
    detailed = 1000.0 * torch.cat(detailed_all)
    n = max(texels, 1.0)
    return {
        "num_samples": sample,
        "now_coarse_mm": _summary(coarse),
        "now_detailed_mm": _summary(detailed),
        "landmark_nme": float(torch.cat(nme).mean()),
        "gt_shape_mm": float(torch.cat(gt_shape).mean()),
        "albedo_mae": abs_err / n,
        "albedo_rmse": math.sqrt(sq_err / n),
        "albedo_rmse_scale_invariant": math.sqrt(si_err / n),
    }


# ---------------------------------------------------------------------------------------------------------------
# Identity: how far two predicted identities are, and the mirror of one (numpy; the service path's codes)
# ---------------------------------------------------------------------------------------------------------------

IDENTITY_RADIUS_MM = 85.0
"""The identity metrics' face region: skin vertices of the mean head within this distance of the nose tip."""


def identity_region(model: FaceModelArrays, radius_mm: float = IDENTITY_RADIUS_MM) -> np.ndarray:
    """(V,) bool: the skin vertices of the mean head within ``radius_mm`` of its nose tip (the NoW-like crop)."""
    mean = np.asarray(model.mean, np.float64)
    tip = geo.landmarks_3d(model, mean[None])[0, NOSE_TIP]
    skin = np.zeros(len(mean), bool)
    skin[np.unique(model.faces[np.asarray(model.face_part) == 0])] = True
    return skin & (np.linalg.norm(mean - tip, axis=1) < radius_mm / 1000.0)


def neutral_vertices(model: FaceModelArrays, shape: np.ndarray) -> np.ndarray:
    """(N, V, 3) identity-only meshes (no expression, rest pose) of (N, K) or (K,) shape codes, metres."""
    shape = np.atleast_2d(np.asarray(shape, np.float64))
    zeros = np.zeros((len(shape), model.n_expr))
    return geo.decode_vertices(model, shape, zeros, np.zeros((len(shape), model.n_joints, 3)))


def mirror_vertex_index(model: FaceModelArrays) -> np.ndarray:
    """(V,) index of each mean-head vertex's left–right mirror (x → −x, nearest vertex)."""
    mean = np.asarray(model.mean, np.float64)
    flipped = mean * np.array([-1.0, 1.0, 1.0])
    index = np.empty(len(mean), np.int64)
    for start in range(0, len(mean), 512):  # chunks keep the distance matrix small
        d = ((flipped[start : start + 512, None] - mean[None]) ** 2).sum(-1)
        index[start : start + 512] = d.argmin(1)
    return index


def mirror_vertices(verts: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(…, V, 3) meshes mirrored left–right in the model frame (x → −x, vertices re-indexed by ``index``)."""
    return verts[..., index, :] * np.array([-1.0, 1.0, 1.0])


def identity_distance_mm(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Mean vertex distance in mm over ``region`` between (…, V, 3) meshes ``a`` and ``b`` (model frame, metres)."""
    return 1000.0 * np.linalg.norm(a[..., region, :] - b[..., region, :], axis=-1).mean(-1)


def identity_stability(
    base: np.ndarray, variants: Mapping[str, np.ndarray], region: np.ndarray
) -> tuple[dict[str, float], float]:
    """How much the identity predicted from photos changes under nuisances, against how much people differ.

    Args:
        base: (P, V, 3) neutral meshes predicted from P photos of P different people.
        variants: name → (P, V, 3) neutral meshes predicted from the same photos altered (mirror results must
            already be mirrored back with :func:`mirror_vertices`).
        region: (V,) bool face region.

    Returns:
        ``({variant: mean distance to base, mm}, mean distance between different people's base meshes, mm)``.
    """
    changes = {name: float(identity_distance_mm(base, v, region).mean()) for name, v in variants.items()}
    P = len(base)
    pairs = [identity_distance_mm(base[i], base[j], region) for i in range(P) for j in range(i + 1, P)]
    return changes, float(np.mean(pairs)) if pairs else float("nan")
