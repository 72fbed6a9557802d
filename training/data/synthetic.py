"""Synthetic faces with full ground truth: procedural UV albedo, random codes, rendered images and landmarks.

Three layers, each usable on its own:

1. **Albedo** (:class:`ProceduralAlbedo`): a seed-deterministic, batched generator of linear UV albedo maps in
   the face model's cylindrical layout. Skin colour comes from a two-chromophore optical model
   (:func:`skin_reflectance_spectrum`): the epidermis absorbs with melanin, the dermis absorbs with blood and
   scatters, and the spectrum is integrated against the CIE observer under D65 into linear sRGB. Spatial
   detail (lips, brows, eyelids, eyes, cheeks, nose, freckles, blotches, pores, stubble, scalp hair) is
   placed with the face model's own layout: the 68 landmarks' UV positions, the eyeball and mouth parts and
   the metric scale of the UV map, never fixed texel positions. Chromophore variations (freckles, blotches,
   redness, lips) are applied as melanin / blood maps and only then turned into colour, so every skin texel
   is a colour the optical model can produce.
2. **Scene codes** (:func:`sample_face_codes`, :func:`sample_sh`, :func:`frame_camera`,
   :func:`render_background`): identity from the face model's generation prior, sparse expressions, head
   pose, SH light, a weak-perspective camera framing the face, and a smooth random background.
3. **Rendered samples** (:class:`SyntheticFaces`): every index has its own random stream (seeded from
   ``(seed, index)``), so a sample is the same whatever batch it is drawn in, training resumes exactly, and
   DDP ranks shard by index. Each batch is a frozen :class:`SyntheticBatch` with the sRGB image, the linear
   albedo, codes, SH, camera, posed vertices, 68 landmarks in pixels with visibility, and the mask.

Randomness only enters through explicit ``torch.Generator`` arguments (drawn on CPU so that a seed gives the
same sample on every device); everything after the draws is a deterministic batched computation on the
target device.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from models.face.model import FaceCodes, FaceModel, axis_angle_to_matrix
from models.render import SH_CONSTANTS, WeakPerspectiveCamera, sh_basis

logger = logging.getLogger(__name__)

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------------------
# Colour science
# ---------------------------------------------------------------------------------------------------------------

WAVELENGTHS_NM: tuple[float, ...] = tuple(float(w) for w in range(400, 701, 10))
"""Sampling of every spectral quantity here: 400–700 nm in 10 nm steps (31 samples)."""

# Molar extinction coefficients of oxy- and deoxy-haemoglobin in cm⁻¹/M at WAVELENGTHS_NM, from S. Prahl's
# compilation "Tabulated molar extinction coefficient for hemoglobin in water" (OMLC, 1999; data of W. B. Gratzer
# and N. Kollias). Absorption of whole blood: μa = ln(10) · ε · c / M with c = 150 g/L and M = 64 500 g/mol.
_HB_O2 = (266232, 466816, 480360, 246072, 102580, 62816, 44480, 33209.2, 26629.2, 23684.4, 20932.8, 20035.2,
          24202.4, 39956.8, 53236, 43016, 32613.2, 44496, 50104, 14400.8, 3200, 1506, 942, 610, 442, 368, 319.6,
          294, 277.6, 276, 290)  # fmt: skip
_HB = (223296, 303956, 407560, 528600, 413280, 103292, 23388.8, 16156.4, 14550, 16684, 20035.2, 25773.6, 31589.6,
       39036.4, 46592, 53788, 53412, 45072, 37020, 28324.4, 14677.2, 9443.6, 6509.6, 5148.8, 4345.2, 3750.12,
       3226.56, 2795.12, 2407.92, 2051.96, 1794.28)  # fmt: skip
# CIE standard illuminant D65, relative spectral power at WAVELENGTHS_NM (CIE 15:2004, table T.1).
_D65 = (82.75, 91.49, 93.43, 86.68, 104.86, 117.01, 117.81, 114.86, 115.92, 108.81, 109.35, 107.80, 104.79, 107.69,
        104.41, 104.05, 100.00, 96.33, 95.79, 88.69, 90.01, 89.60, 87.70, 83.29, 83.70, 80.03, 80.21, 82.28, 78.28,
        69.72, 71.61)  # fmt: skip
# Linear sRGB ← CIE XYZ (IEC 61966-2-1, D65 white).
_XYZ_TO_SRGB = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))

HB_GRAMS_PER_LITRE = 150.0
HB_MOLAR_MASS = 64500.0
EPIDERMIS_CM = 0.006
"""Epidermal thickness (60 µm) through which light passes twice."""
EPIDERMAL_BACKSCATTER = 0.035
"""Diffuse reflectance of the stratum corneum / upper epidermis, above the melanin (achromatic)."""
KM_S_PER_MUS = 0.75
"""Kubelka–Munk scattering coefficient per unit reduced scattering, S = ¾ μs' (diffusion limit)."""

MELANIN_RANGE = (0.01, 0.6)
"""Sampled epidermal melanosome volume fraction (Jacques: 1.3–6.3 % light, 11–16 % moderately pigmented,
18–43 % dark skin; the upper end is extended so that the darkest skin tones, ITA° < −50, occur). Drawn as
``lo · (hi / lo) ** (t ** MELANIN_SKEW)``, t ~ U(0, 1): log-uniform skewed towards pigmented skin, which gives
every ITA° category (very light … dark) 10–25 % of the samples."""
MELANIN_SKEW = 0.75
BLOOD_RANGE = (0.006, 0.04)
"""Sampled dermal blood volume fraction, log-uniform (Jacques: 0.2–7 %, typically 2 %)."""
OXYGENATION_RANGE = (0.6, 0.85)

# Hair fibre absorption per unit melanin concentration, linear RGB (d'Eon et al. 2011, "An energy-conserving hair
# reflectance model"; the values pbrt-v3 uses in HairBSDF::SigmaAFromConcentration).
_EUMELANIN_SIGMA = (0.419, 0.697, 1.37)
_PHEOMELANIN_SIGMA = (0.187, 0.4, 1.05)
_HAIR_PATH = 2.0  # effective path length (fibre diameters) of the diffuse albedo approximation
_HAIR_FLOOR = 0.015  # cuticle back-scatter: black hair is not pitch black


def _cie_cmf(lam: torch.Tensor) -> torch.Tensor:
    """CIE 1931 2° colour matching functions by the multi-lobe Gaussian fit of Wyman, Sloan & Shirley,
    "Simple analytic approximations to the CIE XYZ color matching functions" (JCGT 2013). (N,) → (N, 3)."""

    def g(mu: float, s1: float, s2: float) -> torch.Tensor:
        s = torch.where(lam < mu, torch.full_like(lam, s1), torch.full_like(lam, s2))
        return torch.exp(-0.5 * ((lam - mu) / s) ** 2)

    x = 1.056 * g(599.8, 37.9, 31.0) + 0.362 * g(442.0, 16.0, 26.7) - 0.065 * g(501.1, 20.4, 26.2)
    y = 0.821 * g(568.8, 46.9, 40.5) + 0.286 * g(530.9, 16.3, 31.1)
    z = 1.217 * g(437.0, 11.8, 36.0) + 0.681 * g(459.0, 26.0, 13.8)
    return torch.stack([x, y, z], -1)


@lru_cache(maxsize=8)
def _spectral_tables(device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Absorption / scattering spectra of skin and the spectrum → linear sRGB matrix, on a device."""
    lam = torch.tensor(WAVELENGTHS_NM, dtype=torch.float64)
    ln10 = math.log(10.0)
    hb_scale = ln10 * HB_GRAMS_PER_LITRE / HB_MOLAR_MASS
    tables = {
        # melanosome interior absorption, cm⁻¹ (Jacques 1998, "Skin optics", OMLC News)
        "mu_melanin": 6.6e11 * lam**-3.33,
        # melanin- and blood-free tissue baseline, cm⁻¹ (Jacques 1998)
        "mu_baseline": 0.244 + 85.3 * torch.exp(-(lam - 154.0) / 66.2),
        "mu_oxy": torch.tensor(_HB_O2, dtype=torch.float64) * hb_scale,
        "mu_deoxy": torch.tensor(_HB, dtype=torch.float64) * hb_scale,
        # dermal reduced scattering, Mie + Rayleigh, cm⁻¹ (Jacques 1998; Jacques 2013, Phys. Med. Biol. 58 R37)
        "mus_dermis": 2e5 * lam**-1.5 + 2e12 * lam**-4,
    }
    # reflectance spectrum → XYZ under D65 (Y of a perfect white = 1) → linear sRGB, white-balanced so that a
    # perfect white reflector maps to exactly (1, 1, 1)
    weights = _cie_cmf(lam) * torch.tensor(_D65, dtype=torch.float64)[:, None]
    weights = weights / weights[:, 1].sum()
    to_rgb = weights @ torch.tensor(_XYZ_TO_SRGB, dtype=torch.float64).T  # (31, 3)
    to_rgb = to_rgb / to_rgb.sum(0, keepdim=True)
    tables["spectrum_to_rgb"] = to_rgb
    return {k: v.to(device=device, dtype=dtype) for k, v in tables.items()}


def skin_reflectance_spectrum(
    melanin: torch.Tensor, blood: torch.Tensor, oxygenation: torch.Tensor | float = 0.75
) -> torch.Tensor:
    """Diffuse reflectance spectrum of skin from its two chromophores.

    A two-layer model: an epidermis that only absorbs (melanin over the tissue baseline, Jacques 1998),
    traversed twice, over a semi-infinite dermis that absorbs (blood over the baseline; haemoglobin spectra
    from Prahl) and scatters (μs' of Jacques), whose reflectance is the Kubelka–Munk R∞ with K = 2 μa and
    S = ¾ μs' (van Gemert et al. 1989, "Skin optics", IEEE TBME 36:1146). An achromatic back-scatter of the
    upper epidermis (``EPIDERMAL_BACKSCATTER``) sits on top:

    ``R(λ) = r_sc + (1 − r_sc) · exp(−2 μa_epi d) · (1 + K/S − √((K/S)² + 2 K/S))``

    Args:
        melanin: (...) epidermal melanosome volume fraction in [0, 1].
        blood: (...) dermal blood volume fraction in [0, 1].
        oxygenation: (...) haemoglobin oxygen saturation in [0, 1].

    Returns:
        (..., 31) reflectance at :data:`WAVELENGTHS_NM`.
    """
    melanin, blood = torch.as_tensor(melanin), torch.as_tensor(blood)
    dtype = melanin.dtype if melanin.is_floating_point() else torch.float32
    t = _spectral_tables(str(melanin.device), dtype)
    oxygenation = torch.as_tensor(oxygenation, dtype=dtype, device=melanin.device)
    fm, fb, so = melanin[..., None], blood[..., None], oxygenation[..., None]
    mua_epi = fm * t["mu_melanin"] + (1.0 - fm) * t["mu_baseline"]
    mu_blood = so * t["mu_oxy"] + (1.0 - so) * t["mu_deoxy"]
    mua_derm = fb * mu_blood + (1.0 - fb) * t["mu_baseline"]
    ks = 2.0 * mua_derm / (KM_S_PER_MUS * t["mus_dermis"])
    r_dermis = 1.0 + ks - torch.sqrt(ks * ks + 2.0 * ks)
    return EPIDERMAL_BACKSCATTER + (1.0 - EPIDERMAL_BACKSCATTER) * torch.exp(-2.0 * mua_epi * EPIDERMIS_CM) * r_dermis


def spectrum_to_linear_srgb(spectrum: torch.Tensor) -> torch.Tensor:
    """(..., 31) reflectance → (..., 3) linear sRGB under D65 (CIE 1931 observer; white → (1, 1, 1))."""
    t = _spectral_tables(str(spectrum.device), spectrum.dtype)
    return spectrum @ t["spectrum_to_rgb"]


def skin_linear_rgb(
    melanin: torch.Tensor, blood: torch.Tensor, oxygenation: torch.Tensor | float = 0.75
) -> torch.Tensor:
    """(...) chromophore fractions → (..., 3) linear sRGB diffuse albedo of skin."""
    return spectrum_to_linear_srgb(skin_reflectance_spectrum(melanin, blood, oxygenation))


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Linear [0, 1] → sRGB-encoded [0, 1] (IEC 61966-2-1 transfer function; input is clamped)."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded [0, 1] → linear [0, 1] (inverse of :func:`linear_to_srgb`)."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def linear_srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) linear sRGB → (..., 3) CIELAB (L*, a*, b*) with the D65 white."""
    m = torch.linalg.inv(torch.tensor(_XYZ_TO_SRGB, dtype=torch.float64)).to(rgb)
    xyz = rgb @ m.T
    white = torch.ones(3, dtype=rgb.dtype, device=rgb.device) @ m.T
    r = xyz / white
    d = 6.0 / 29.0
    f = torch.where(r > d**3, r.clamp_min(1e-12) ** (1.0 / 3.0), r / (3 * d * d) + 4.0 / 29.0)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def individual_typology_angle(rgb: torch.Tensor) -> torch.Tensor:
    """ITA° = atan((L* − 50) / b*) in degrees (Chardon et al. 1991) of (..., 3) linear sRGB skin colours.

    Categories (Del Bino & Bernerd 2013): > 55 very light, 41–55 light, 28–41 intermediate, 10–28 tan,
    −30–10 brown, < −30 dark.
    """
    lab = linear_srgb_to_lab(rgb)
    return torch.rad2deg(torch.atan2(lab[..., 0] - 50.0, lab[..., 2]))


def hair_linear_rgb(eumelanin: torch.Tensor, pheomelanin: torch.Tensor) -> torch.Tensor:
    """(...) melanin concentrations → (..., 3) linear diffuse albedo of hair.

    ``floor + (1 − floor) · exp(−L (c_eu σ_eu + c_pheo σ_pheo))`` with the absorption coefficients of d'Eon et
    al. (2011): c_eu ≈ 0.3 blond, 1.3–3 brown, 8 black; pheomelanin adds red.
    """
    eu = torch.as_tensor(eumelanin)[..., None]
    ph = torch.as_tensor(pheomelanin, dtype=eu.dtype, device=eu.device)[..., None]
    s_eu = torch.tensor(_EUMELANIN_SIGMA, dtype=eu.dtype, device=eu.device)
    s_ph = torch.tensor(_PHEOMELANIN_SIGMA, dtype=eu.dtype, device=eu.device)
    return _HAIR_FLOOR + (1.0 - _HAIR_FLOOR) * torch.exp(-_HAIR_PATH * (eu * s_eu + ph * s_ph))


# iris colour anchors (linear sRGB) along ``iris_melanin`` 0 → 3: blue (stromal scattering, little melanin),
# green, hazel / light brown, dark brown. Artistic anchors, not an optical model.
_IRIS_ANCHORS = ((0.10, 0.17, 0.28), (0.08, 0.12, 0.06), (0.13, 0.075, 0.03), (0.035, 0.018, 0.008))


def iris_linear_rgb(iris_melanin: torch.Tensor) -> torch.Tensor:
    """(...) in [0, 3] → (..., 3) linear iris colour (piecewise-linear between blue, green, hazel, dark brown)."""
    anchors = torch.tensor(_IRIS_ANCHORS, dtype=iris_melanin.dtype, device=iris_melanin.device)
    x = iris_melanin.clamp(0.0, 3.0)
    i = x.floor().clamp(max=2).long()
    w = (x - i)[..., None]
    return anchors[i] * (1 - w) + anchors[i + 1] * w


# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------


def _map_tensors(obj: T, fn: Callable[[torch.Tensor], torch.Tensor]) -> T:
    """Apply ``fn`` to every tensor of a (nested) frozen dataclass."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)  # type: ignore[return-value]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: _map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)}
        )
    return obj


def _cat_tree(objs: Sequence[T]) -> T:
    """Concatenate equal-structured dataclasses along the batch dimension."""
    first = objs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(objs), 0)  # type: ignore[return-value]
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(
            first, **{f.name: _cat_tree([getattr(o, f.name) for o in objs]) for f in dataclasses.fields(first)}
        )
    if first is None:
        return first
    raise TypeError(f"cannot concatenate {type(first).__name__}")


class _Batched:
    """Batch helpers for frozen dataclasses whose tensors all have the batch as their first dimension."""

    def to(self: T, device: torch.device | str) -> T:
        return _map_tensors(self, lambda t: t.to(device))

    def select(self: T, index: torch.Tensor | slice | int) -> T:
        """Rows ``index`` of every tensor (an int keeps a batch dimension of 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return _map_tensors(self, lambda t: t[index])

    @classmethod
    def cat(cls: type[T], items: Sequence[T]) -> T:
        if not items:
            raise ValueError("cat: nothing to concatenate")
        return _cat_tree(items)


def _uniform(g: torch.Generator, lo: float, hi: float, n: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=g.device, dtype=torch.float64)


def _log_uniform(g: torch.Generator, lo: float, hi: float, n: int = 1) -> torch.Tensor:
    return torch.exp(_uniform(g, math.log(lo), math.log(hi), n))


def _bernoulli(g: torch.Generator, p: float | torch.Tensor) -> bool:
    return bool(torch.rand(1, generator=g, device=g.device, dtype=torch.float64).item() < float(p))


def _index_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for sample ``index`` of stream ``seed`` (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, int(index) & 0xFFFFFFFF, int(index) >> 32])
    lo, hi = state.generate_state(2, dtype=np.uint32)
    return (int(hi) << 31) ^ int(lo)


def _sigmoid_step(x: torch.Tensor, width: float) -> torch.Tensor:
    """A soft step from 0 (x ≪ 0) to 1 (x ≫ 0) over about ``width``."""
    return torch.sigmoid(x * (4.0 / width))


def _catmull_rom(points: np.ndarray, closed: bool, per_segment: int = 8) -> np.ndarray:
    """Uniform Catmull–Rom spline through (N, 2) points → (M, 2) polyline (ends extrapolated when open)."""
    p = np.asarray(points, np.float64)
    if closed:
        ext = np.concatenate([p[-1:], p, p[:2]])
        n_seg = len(p)
    else:
        ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
        n_seg = len(p) - 1
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(n_seg):
        p0, p1, p2, p3 = ext[i], ext[i + 1], ext[i + 2], ext[i + 3]
        out.append(
            0.5
            * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        )
    if not closed:
        out.append(p[-1:])
    return np.concatenate(out)


def _polyline_distance(pts: np.ndarray, line: np.ndarray, closed: bool = False) -> tuple[np.ndarray, ...]:
    """Distance from (N, 2) points to a polyline.

    Returns:
        dist (N,), arc (N,) arc-length fraction of the nearest point in [0, 1], side (N,) signed distance
        to the nearest segment's supporting line (positive on the left of the direction of travel).
    """
    a_all = line if not closed else np.concatenate([line, line[:1]])
    seg_len = np.linalg.norm(np.diff(a_all, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    total = max(cum[-1], 1e-12)
    best = np.full(len(pts), np.inf)
    arc = np.zeros(len(pts))
    side = np.zeros(len(pts))
    for i in range(len(a_all) - 1):
        a, b = a_all[i], a_all[i + 1]
        ab = b - a
        L2 = max(float(ab @ ab), 1e-24)
        t = np.clip(((pts - a) @ ab) / L2, 0.0, 1.0)
        d = np.linalg.norm(pts - (a + t[:, None] * ab), axis=1)
        upd = d < best
        best = np.where(upd, d, best)
        arc = np.where(upd, (cum[i] + t * seg_len[i]) / total, arc)
        cross = (ab[0] * (pts[:, 1] - a[1]) - ab[1] * (pts[:, 0] - a[0])) / math.sqrt(L2)
        side = np.where(upd, cross, side)
    return best, arc, side


def _inside_polygon(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """(N,) bool: crossing-number point-in-polygon test."""
    inside = np.zeros(len(pts), bool)
    x, y = pts[:, 0], pts[:, 1]
    for i in range(len(poly)):
        (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % len(poly)]
        if y0 == y1:
            continue
        cond = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / (y1 - y0) + x0)
        inside ^= cond
    return inside


def _signed_distance(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """(N,) distance to a closed polygon's boundary, positive inside."""
    d, _, _ = _polyline_distance(pts, poly, closed=True)
    return np.where(_inside_polygon(pts, poly), d, -d)


def _piecewise_linear(xk: torch.Tensor, yk: torch.Tensor, x: torch.Tensor, smooth: bool = False) -> torch.Tensor:
    """Interpolate per-sample knot values. xk: (K,) ascending, yk: (B, K), x: (N,) → (B, N) (clamped ends).

    ``smooth`` eases in and out of every knot (smoothstep weights) instead of joining them with straight lines.
    """
    x = x.clamp(float(xk[0]), float(xk[-1]))
    i = torch.searchsorted(xk, x.contiguous(), right=True).clamp(1, len(xk) - 1)
    x0, x1 = xk[i - 1], xk[i]
    w = ((x - x0) / (x1 - x0).clamp_min(1e-12))[None]
    if smooth:
        w = w * w * (3 - 2 * w)
    return yk[:, i - 1] * (1 - w) + yk[:, i] * w


# ---------------------------------------------------------------------------------------------------------------
# The UV layout: where the features are, derived from the face model
# ---------------------------------------------------------------------------------------------------------------


def _lid_openings(
    verts: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    uv_faces: np.ndarray,
    part: np.ndarray,
    eye_parts: Sequence[int],
    m_u: float,
    m_v: float,
    pixel_m: float = 0.0002,
    n_bins: int = 72,
) -> np.ndarray:
    """(len(eye_parts), n_bins, 2) UV outlines of where each eyeball is seen from the front (see FaceLayout)."""
    from models.face.preview import render_ortho

    eyes = np.isin(part, eye_parts)
    vid = np.unique(faces[eyes])
    lo, hi = verts[vid, :2].min(0) - 0.005, verts[vid, :2].max(0) + 0.005
    centroid = verts[faces, :2].mean(1)
    near = np.all((centroid > lo) & (centroid < hi), axis=1)  # everything that can cover the eyes
    extent = float(max(hi - lo))
    view = render_ortho(verts, faces[near], int(extent / pixel_m), (lo + hi) / 2, extent)
    hit = view.face >= 0
    face = np.flatnonzero(near)[view.face[hit]]
    pts_uv = np.einsum("nk,nkc->nc", view.bary[hit], uv[uv_faces[face]])
    scale = np.array([m_u, m_v])
    outlines = []
    for p in eye_parts:
        pts = pts_uv[part[face] == p] * scale
        if len(pts) < 20:
            raise ValueError(f"face model: part {p} is hardly visible from the front ({len(pts)} pixels)")
        c = pts.mean(0)
        d = pts - c
        ang = np.arctan2(d[:, 1], d[:, 0])
        rad = np.linalg.norm(d, axis=1)
        bins = np.floor((ang + np.pi) / (2 * np.pi) * n_bins).astype(np.int64) % n_bins
        r = np.zeros(n_bins)
        np.maximum.at(r, bins, rad)
        have = r > 0
        centres = (np.arange(n_bins) + 0.5) / n_bins * 2 * np.pi - np.pi
        r = np.interp(centres, centres[have], r[have], period=2 * np.pi)
        r = (np.roll(r, 1) + 2 * r + np.roll(r, -1)) / 4  # light smoothing
        outline = c + (r + 0.5 * pixel_m)[:, None] * np.stack([np.cos(centres), np.sin(centres)], 1)
        outlines.append(outline / scale)
    return np.stack(outlines)


@dataclass(frozen=True)
class FaceLayout:
    """Resolution-independent facts about a face model's UV layout (computed once per face model).

    Distances are "face metres": u and v scaled by the metric size of one UV unit across the face
    (``metres_per_u``, ``metres_per_v``), so feature sizes can be given in millimetres.

    Attributes:
        metres_per_u, metres_per_v: surface metres per UV unit on the face (medians over face triangles).
        v_per_metre_y: dv/dy of the cylindrical map (v is linear in the mean head's height).
        landmarks_uv: (68, 2) landmark UV positions.
        mouth_uv: (2,) the single UV point of the mouth cavity part.
        iris_centre_uv: (2, 2) UV of each eyeball's front pole (row 0: subject's right eye, landmarks 36–41).
        eye_to_uv: (2, 2, 2) per eye, the affine map from frontal (x, y) metres around the pole to UV.
        eye_outline_uv: (2, N, 2) per eye, the lid opening in UV: the outline of the texels that the
            eyeballs show through the lids of the mean head seen from the front (a star-shaped polygon).
        ear_uv: (2, 2, 2) per ear (right, left) the UV box [[u_min, v_min], [u_max, v_max]].
    """

    metres_per_u: float
    metres_per_v: float
    v_per_metre_y: float
    landmarks_uv: np.ndarray
    mouth_uv: np.ndarray
    iris_centre_uv: np.ndarray
    eye_to_uv: np.ndarray
    eye_outline_uv: np.ndarray
    ear_uv: np.ndarray

    @classmethod
    def from_face_model(cls, fm: FaceModel) -> FaceLayout:
        a = fm.arrays
        verts = np.asarray(a.mean, np.float64)
        uv = np.asarray(a.uv, np.float64)
        faces, uv_faces, part = np.asarray(a.faces), np.asarray(a.uv_faces), np.asarray(a.face_part)
        uv_vertex = np.asarray(a.uv_vertex)
        part_index = {name: i for i, name in enumerate(a.part_names)}
        for need in ("eyeball_left", "eyeball_right"):
            if need not in part_index:
                raise ValueError(f"face model: part {need!r} is missing (parts: {a.part_names}); the albedo needs it")
        lm_uv = np.einsum("lkc,lk->lc", uv[uv_faces[a.landmark_faces]], np.asarray(a.landmark_bary, np.float64))

        skin = np.flatnonzero(part == 0)
        t_skin = np.unique(uv_faces[skin])
        slope = np.polyfit(verts[uv_vertex[t_skin], 1], uv[t_skin, 1], 1)[0]
        # metric size of a UV unit over the face (triangles around the landmarks)
        P, U = verts[faces[skin]], uv[uv_faces[skin]]
        e1, e2, d1, d2 = P[:, 1] - P[:, 0], P[:, 2] - P[:, 0], U[:, 1] - U[:, 0], U[:, 2] - U[:, 0]
        det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
        ok = np.abs(det) > 1e-10
        dpdu = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2])[ok] / det[ok, None]
        dpdv = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1])[ok] / det[ok, None]
        c = U[ok].mean(1)
        lo, hi = lm_uv.min(0), lm_uv.max(0)
        face = np.all((c > lo) & (c < hi), axis=1)
        m_u = float(np.median(np.linalg.norm(dpdu[face], axis=1)))
        m_v = float(np.median(np.linalg.norm(dpdv[face], axis=1)))

        mouth = np.flatnonzero(part == part_index.get("mouth_interior", -1))
        mouth_uv = uv[uv_faces[mouth]].reshape(-1, 2).mean(0) if len(mouth) else lm_uv[60:68].mean(0)

        centres, maps = [], []
        names = ("eyeball_right", "eyeball_left")
        for name in names:
            f = np.flatnonzero(part == part_index[name])
            t_idx = np.unique(uv_faces[f])
            vid = uv_vertex[t_idx]
            centre = verts[vid].mean(0)
            radius = np.linalg.norm(verts[vid] - centre, axis=1).mean()
            front = verts[vid, 2] > centre[2] + 0.5 * radius
            pole = int(np.argmax(verts[vid, 2]))
            xy = verts[vid[front], :2] - verts[vid[pole], :2]
            duv = uv[t_idx[front]] - uv[t_idx[pole]]
            A, *_ = np.linalg.lstsq(xy, duv, rcond=None)  # duv ≈ xy @ A
            centres.append(uv[t_idx[pole]])
            maps.append(A.T)
        ears = []
        for sign in (-1.0, 1.0):
            xs = sign * verts[:, 0]
            side = np.flatnonzero(xs > 0)
            tip = side[np.argmax(xs[side])]
            ear_v = side[xs[side] > xs[tip] - 0.012]
            t_ear = np.flatnonzero(np.isin(uv_vertex, ear_v))
            ears.append(np.stack([uv[t_ear].min(0), uv[t_ear].max(0)]))
        return cls(
            metres_per_u=m_u,
            metres_per_v=m_v,
            v_per_metre_y=float(slope),
            landmarks_uv=lm_uv,
            mouth_uv=mouth_uv,
            iris_centre_uv=np.stack(centres),
            eye_to_uv=np.stack(maps),
            eye_outline_uv=_lid_openings(verts, faces, uv, uv_faces, part, [part_index[n] for n in names], m_u, m_v),
            ear_uv=np.stack(ears),
        )

    def to_metric(self, uv: np.ndarray) -> np.ndarray:
        """(..., 2) uv → (..., 2) face metres (x right across the face, y up)."""
        return np.stack([(uv[..., 0] - 0.5) * self.metres_per_u, uv[..., 1] * self.metres_per_v], -1)


@dataclass(frozen=True)
class AlbedoParams(_Batched):
    """The random parameters of a batch of procedural albedos; all tensors (B,) float32 unless stated.

    Attributes:
        melanin: epidermal melanosome volume fraction.
        blood: dermal blood volume fraction.
        oxygenation: haemoglobin oxygen saturation.
        blotch: amplitude of low-frequency chromophore variation (log units).
        freckles: freckle amount (0 none).
        pores: pore darkening amount.
        cheek_redness, nose_redness: extra blood (log units) on the cheeks and nose.
        lip_blood: lip blood gain (log units); lip_melanin: lip melanin ratio.
        eye_shadow: periorbital pigmentation (log units).
        male: 1 for male-ish samples (stubble, brows, hairline), else 0.
        hair_eumelanin, hair_pheomelanin: hair pigment concentrations; hair_grey: fraction of white hair.
        hair_cover: scalp hair density (0 bald, ~0.3–0.6 buzz cut, ~0.85–1 hair).
        hairline_height: hairline height above the brows, metres (vertical); temple_recession: metres.
        sideburn: how far the sideburns reach below landmark 0's height, metres.
        brow_thickness: metres; brow_density: 0–1.
        stubble: beard stubble density (0 none).
        iris_melanin: 0 blue … 3 dark brown; pupil_radius: metres.
        mole_uv: (B, M, 2) positions; mole_radius: (B, M) metres; mole_strength: (B, M) (0 = no mole).
        noise_seed: (B,) int64 seeds of the per-sample noise lattices.
    """

    melanin: torch.Tensor
    blood: torch.Tensor
    oxygenation: torch.Tensor
    blotch: torch.Tensor
    freckles: torch.Tensor
    pores: torch.Tensor
    cheek_redness: torch.Tensor
    nose_redness: torch.Tensor
    lip_blood: torch.Tensor
    lip_melanin: torch.Tensor
    eye_shadow: torch.Tensor
    male: torch.Tensor
    hair_eumelanin: torch.Tensor
    hair_pheomelanin: torch.Tensor
    hair_grey: torch.Tensor
    hair_cover: torch.Tensor
    hairline_height: torch.Tensor
    temple_recession: torch.Tensor
    sideburn: torch.Tensor
    brow_thickness: torch.Tensor
    brow_density: torch.Tensor
    stubble: torch.Tensor
    iris_melanin: torch.Tensor
    pupil_radius: torch.Tensor
    mole_uv: torch.Tensor
    mole_radius: torch.Tensor
    mole_strength: torch.Tensor
    noise_seed: torch.Tensor

    def __len__(self) -> int:
        return int(self.melanin.shape[0])

    def skin_rgb(self) -> torch.Tensor:
        """(B, 3) linear base skin colour (before any spatial variation)."""
        return skin_linear_rgb(self.melanin, self.blood, self.oxygenation)


N_MOLES = 3
MOLE_UV_BOX = ((0.3, 0.2), (0.7, 0.75))
"""Moles are placed uniformly in this UV box (the face and the front of the neck)."""


def sample_albedo_params(n: int, generator: torch.Generator) -> AlbedoParams:
    """Draw ``n`` albedo parameter sets (float32 on the generator's device), one after the other.

    Skin: melanin over :data:`MELANIN_RANGE` (skewed log-uniform, see there; Fitzpatrick I–VI), blood
    log-uniform over :data:`BLOOD_RANGE`.
    Hair and eye colour follow skin melanin (fair skin: any hair colour, a few redheads; pigmented skin: dark
    hair and brown eyes); stubble and receding temples only on male-ish samples.
    """
    if n < 1:
        raise ValueError(f"n: expected at least 1, got {n}")
    rows = [_sample_albedo_row(generator) for _ in range(n)]
    return AlbedoParams(**{k: torch.stack([r[k] for r in rows]) for k in rows[0]})


def _sample_albedo_row(g: torch.Generator) -> dict[str, torch.Tensor]:
    def u(lo: float, hi: float) -> float:
        return float(_uniform(g, lo, hi))

    lo, hi = MELANIN_RANGE
    melanin = lo * (hi / lo) ** (float(_uniform(g, 0.0, 1.0)) ** MELANIN_SKEW)
    blood = float(_log_uniform(g, *BLOOD_RANGE))
    fair = min(max((0.08 - melanin) / 0.06, 0.0), 1.0)  # 1 for fair skin, 0 from moderately pigmented on
    male = _bernoulli(g, 0.5)
    if _bernoulli(g, 0.06 * fair):  # red hair
        eu, ph = u(0.2, 0.7), u(1.5, 4.0)
    else:
        eu_lo = 0.2 if fair > 0.5 else (1.0 if melanin < 0.15 else 3.0)
        eu = float(_log_uniform(g, eu_lo, 10.0))
        ph = u(0.0, 0.4) * min(eu, 2.0)
    grey = u(0.2, 1.0) if _bernoulli(g, 0.15) else 0.0
    style = u(0.0, 1.0)
    p_bald = 0.2 if male else 0.03
    cover = 0.0 if style < p_bald else (u(0.3, 0.6) if style < p_bald + 0.15 else u(0.85, 1.0))
    row = {
        "melanin": melanin,
        "blood": blood,
        "oxygenation": u(*OXYGENATION_RANGE),
        "blotch": u(0.03, 0.15),
        "freckles": u(0.3, 1.0) if _bernoulli(g, 0.1 + 0.35 * fair) else 0.0,
        "pores": u(0.03, 0.1),
        "cheek_redness": u(0.0, 0.8) * (0.5 + 0.5 * fair),
        "nose_redness": u(0.0, 0.5),
        "lip_blood": u(math.log(4.0), math.log(10.0)),
        "lip_melanin": u(0.5, 0.9),
        "eye_shadow": u(0.0, 0.5),
        "male": float(male),
        "hair_eumelanin": eu,
        "hair_pheomelanin": ph,
        "hair_grey": grey,
        "hair_cover": cover,
        "hairline_height": u(0.035, 0.055),
        "temple_recession": u(0.0, 0.02) if male else u(0.0, 0.005),
        "sideburn": u(-0.005, 0.015) if male else u(-0.01, 0.005),
        "brow_thickness": u(0.007, 0.011) if male else u(0.005, 0.009),
        "brow_density": u(0.55, 0.9),
        "stubble": u(0.2, 0.8) if male and _bernoulli(g, 0.5) else 0.0,
        "iris_melanin": u(2.0 if melanin > 0.1 else 0.0, 3.0),
        "pupil_radius": u(0.0015, 0.003),
    }
    out = {k: torch.tensor(v, dtype=torch.float32, device=g.device) for k, v in row.items()}
    (u0, v0), (u1, v1) = MOLE_UV_BOX
    out["mole_uv"] = torch.stack([_uniform(g, u0, u1, N_MOLES), _uniform(g, v0, v1, N_MOLES)], -1).float()
    out["mole_radius"] = _uniform(g, 0.0008, 0.002, N_MOLES).float()
    strength = [u(0.6, 1.6) if _bernoulli(g, 0.3) else 0.0 for _ in range(N_MOLES)]
    out["mole_strength"] = torch.tensor(strength, dtype=torch.float32, device=g.device)
    out["noise_seed"] = torch.randint(0, 2**62, (), generator=g, device=g.device, dtype=torch.int64)
    return out


@dataclass(frozen=True)
class _Region:
    """A rectangle of texels and the per-texel fields a feature needs there, (1, 1, h, w) each."""

    rows: slice
    cols: slice
    f: dict[str, torch.Tensor]

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.rows, self.cols]


@dataclass(frozen=True)
class _TexelMaps:
    """Per-texel fields of one resolution (see :meth:`ProceduralAlbedo._build_maps`)."""

    size: int
    texel_m: float
    u: torch.Tensor  # (1, 1, H, W)
    v: torch.Tensor
    w_cols: torch.Tensor  # (W,) |u - 0.5| of the texel columns
    smooth: torch.Tensor  # (len(_SMOOTH_WEIGHTS), H·W) smooth region weights over the whole texture
    freckle_w: torch.Tensor  # (1, 1, H, W) where freckles go
    regions: dict[str, _Region]


# noise lattices: name → (cell size along u in metres, along v, channels). Anisotropic cells make strokes.
_LATTICES: tuple[tuple[str, float, float, int], ...] = (
    ("coarse", 0.025, 0.025, 3),  # blotches (melanin, blood), hair shade
    ("medium", 0.008, 0.008, 2),
    ("small", 0.003, 0.003, 2),  # melanin, blood
    ("freckles", 0.002, 0.002, 1),
    ("strands", 0.002, 0.015, 1),  # scalp hair, running up/down in UV
    ("brow", 0.005, 0.0015, 1),  # brow hairs, running along u
    ("fine", 0.0011, 0.0011, 1),  # pores (textures of ~400 texels and more)
    ("grain", 0.0017, 0.0017, 1),  # stubble
    ("hairline", 0.012, 1.0, 1),  # hairline jitter (a 1-D noise along u)
)
_SMOOTH_WEIGHTS = ("upper_lid", "under_eye", "cheek", "nose", "ear")
_IRIS_LATTICE = (4, 48)  # radial × angular cells of the iris streaks
IRIS_RADIUS_M = 0.0058


class ProceduralAlbedo:
    """Procedural linear UV albedo in a face model's layout (deterministic given :class:`AlbedoParams`).

    Args:
        face_model: whose UV layout, landmarks and parts place the features.

    Call it with parameters from :func:`sample_albedo_params` and a resolution; the per-resolution texel
    fields are built on first use and cached per device (a second or so at 1024², once).

    Layers, all placed from :class:`FaceLayout`: skin from melanin / blood maps (base tone, blotches at 25, 8
    and 3 mm, freckles on the nose and cheeks, moles, periorbital pigment, pink upper lids, cheek / nose /
    ear redness, lips) through the optical model; pores (texture ≥ ~384 texels); nostrils; scalp hair on the
    crown above a hairline that runs over the forehead, the temples, sideburns and around the ears (bald,
    buzz-cut or hair, by ``hair_cover``); brows; stubble; the dark line between the lips and the mouth
    cavity's texel; lash lines; sclera, iris and pupil in the lid openings, which is where the eyeballs'
    UVs land.
    """

    SKIN_LUT_SIZE = 48
    LOG_MELANIN_RANGE = (math.log(0.002), math.log(0.9))
    LOG_BLOOD_RANGE = (math.log(0.001), math.log(0.6))

    def __init__(self, face_model: FaceModel):
        self.layout = FaceLayout.from_face_model(face_model)
        self._cache: dict[tuple[int, str], _TexelMaps] = {}
        self._grids: dict[tuple[str, int, str], torch.Tensor] = {}

    # -- noise lattices ------------------------------------------------------------------------------------------

    def lattice_shape(self, name: str) -> tuple[int, int, int]:
        """(channels, rows along v, columns along u) of a named noise lattice."""
        for n, cu, cv, ch in _LATTICES:
            if n == name:
                lu = max(4, round(self.layout.metres_per_u / cu))
                lv = max(1, round(self.layout.metres_per_v / cv))
                return ch, lv, lu
        raise KeyError(name)

    def _draw_lattices(self, seeds: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """Per-sample noise lattices from the per-sample seeds (drawn on CPU, so identical on every device)."""
        per: dict[str, list[torch.Tensor]] = {n: [] for n, *_ in _LATTICES}
        per["iris"] = []
        for s in seeds.tolist():
            g = torch.Generator().manual_seed(int(s))
            for name, *_ in _LATTICES:
                per[name].append(torch.randn(self.lattice_shape(name), generator=g))
            per["iris"].append(torch.randn((1, *_IRIS_LATTICE), generator=g))
        return {k: torch.stack(v).to(device) for k, v in per.items()}

    def _lattice_grid(self, name: str, maps: _TexelMaps, device: torch.device) -> torch.Tensor:
        """(1, H, W, 2) ``grid_sample`` coordinates (align_corners=True) of the texels in a u-periodic lattice."""
        key = (name, maps.size, str(device))
        grid = self._grids.get(key)
        if grid is None:
            _, lv, lu = self.lattice_shape(name)
            pad = 2
            x = maps.u[0, 0] * lu + pad  # lattice node k sits at u = k / lu; two wrapped nodes each side
            y = (1.0 - maps.v[0, 0]) * (lv - 1)
            grid = torch.stack([2 * x / (lu + 2 * pad - 1) - 1, 2 * y / max(lv - 1, 1) - 1], -1)[None]
            self._grids[key] = grid
        return grid

    def _noise(
        self, lat: torch.Tensor, name: str, maps: _TexelMaps, region: _Region | None = None, mode: str = "bilinear"
    ) -> torch.Tensor:
        """Sample a (B, C, Lv, Lu) lattice at every texel (of a region) → (B, C, h, w)."""
        B = lat.shape[0]
        padded = torch.cat([lat[..., -2:], lat, lat[..., :2]], -1)
        grid = self._lattice_grid(name, maps, lat.device)
        if region is not None:
            grid = grid[:, region.rows, region.cols]
        return F.grid_sample(padded, grid.expand(B, -1, -1, -1), mode=mode, padding_mode="border", align_corners=True)

    # -- texel maps ----------------------------------------------------------------------------------------------

    def _maps(self, size: int, device: torch.device) -> _TexelMaps:
        key = (size, str(device))
        maps = self._cache.get(key)
        if maps is None:
            maps = self._build_maps(size, device)
            self._cache[key] = maps
        return maps

    def _build_maps(self, size: int, device: torch.device) -> _TexelMaps:
        """Distances to the layout's features at the texel centres (numpy, once per resolution).

        Smooth region weights cover the whole texture; every feature's fields are computed only inside its
        window (the UV box of its landmarks / outlines plus a margin), which is where it is drawn.
        """
        logger.debug("building albedo texel maps at %d² on %s", size, device)
        L = self.layout
        k = L.v_per_metre_y
        metres = np.array([L.metres_per_u, L.metres_per_v])
        c = (np.arange(size) + 0.5) / size
        lm = L.to_metric(L.landmarks_uv)
        luv = L.landmarks_uv

        def window(lo_uv: np.ndarray, hi_uv: np.ndarray, margin_m: float = 0.0) -> tuple[slice, slice, np.ndarray]:
            lo, hi = np.asarray(lo_uv) - margin_m / metres, np.asarray(hi_uv) + margin_m / metres
            cols = np.flatnonzero((c >= lo[0]) & (c <= hi[0]))
            rows = np.flatnonzero((1 - c >= lo[1]) & (1 - c <= hi[1]))
            if len(rows) == 0 or len(cols) == 0:
                rows = cols = np.array([0])
            rs = slice(max(int(rows[0]) - 2, 0), min(int(rows[-1]) + 3, size))
            cs = slice(max(int(cols[0]) - 2, 0), min(int(cols[-1]) + 3, size))
            uu, vv = np.meshgrid(c[cs], 1 - c[rs])
            return rs, cs, np.stack([uu.ravel(), vv.ravel()], 1)

        def region(win: tuple[slice, slice, np.ndarray], fields: dict[str, np.ndarray]) -> _Region:
            rs, cs, _ = win
            shape = (1, 1, rs.stop - rs.start, cs.stop - cs.start)
            f = {n: torch.as_tensor(x.reshape(shape), dtype=torch.float32, device=device) for n, x in fields.items()}
            return _Region(rs, cs, f)

        def gauss(P: np.ndarray, centre: np.ndarray, sx: float, sy: float) -> np.ndarray:
            return np.exp(-0.5 * (((P[:, 0] - centre[0]) / sx) ** 2 + ((P[:, 1] - centre[1]) / sy) ** 2))

        # lips: outer contour (48–54 upper, 54–59–48 lower) and the line between the inner lips (60–67)
        upper = _catmull_rom(lm[48:55], closed=False)
        lower = _catmull_rom(lm[[54, 55, 56, 57, 58, 59, 48]], closed=False)
        lips = np.concatenate([upper[:-1], lower[:-1]])
        inner = np.concatenate([_catmull_rom(lm[60:65], False)[:-1], _catmull_rom(lm[[64, 65, 66, 67, 60]], False)])
        mouth_pts = np.concatenate([luv[48:68], L.mouth_uv[None]])
        win = window(mouth_pts.min(0), mouth_pts.max(0), 0.005)
        P = L.to_metric(win[2])
        mouth = region(
            win,
            {
                "lip_sd": _signed_distance(P, lips),
                "lip_line_d": _polyline_distance(P, inner, closed=True)[0],
                "mouth_d": np.linalg.norm(P - L.to_metric(L.mouth_uv), axis=1),
                "lip_x": P[:, 0],
            },
        )

        # brows, ordered medial → lateral; the landmarks follow the brow's upper part
        win = window(luv[17:27].min(0), luv[17:27].max(0), 0.014)
        P = L.to_metric(win[2])
        brow_d = np.full(len(P), np.inf)
        brow_off, brow_arc, brow_end = np.zeros(len(P)), np.zeros(len(P)), np.zeros(len(P))
        for idx in ([21, 20, 19, 18, 17], [22, 23, 24, 25, 26]):
            line = _catmull_rom(lm[idx], closed=False)
            d, arc, side = _polyline_distance(P, line)
            if idx[0] == 21:  # this one runs towards -x, where the left of travel is down: make + up
                side = -side
            chord = line[-1] - line[0]
            length = float(np.linalg.norm(chord))
            along = (P - line[0]) @ (chord / length)
            end = np.maximum(-along, 0.0) + np.maximum(along - length, 0.0)
            closer = d < brow_d
            brow_d = np.where(closer, d, brow_d)
            brow_off = np.where(closer, side, brow_off)
            brow_arc = np.where(closer, arc, brow_arc)
            brow_end = np.where(closer, end, brow_end)
        brows = region(win, {"off": brow_off, "arc": brow_arc, "end": brow_end})

        # eyes: the lid openings where the eyeballs are seen, their upper / lower lid chains, iris coordinates
        outlines = L.eye_outline_uv.reshape(-1, 2)
        win = window(outlines.min(0), outlines.max(0), 0.007)
        uv, P = win[2], L.to_metric(win[2])
        eye_sd = np.full(len(P), -np.inf)
        upper_d, lower_d, caruncle = (np.full(len(P), np.inf) for _ in range(3))
        rho, theta = np.full(len(P), np.inf), np.zeros(len(P))
        for e in range(2):
            outline = L.to_metric(L.eye_outline_uv[e])
            eye_sd = np.maximum(eye_sd, _signed_distance(P, outline))
            left, right = outline[np.argmin(outline[:, 0])], outline[np.argmax(outline[:, 0])]
            t = (outline[:, 0] - left[0]) / max(right[0] - left[0], 1e-9)
            above = outline[:, 1] > left[1] + t * (right[1] - left[1])
            for chain, dist in ((above, upper_d), (~above, lower_d)):
                pts = outline[chain]
                pts = np.concatenate([[left], pts[np.argsort(pts[:, 0])], [right]])
                np.minimum(dist, _polyline_distance(P, pts)[0], out=dist)
            corner = left if abs(left[0]) < abs(right[0]) else right  # the inner corner
            caruncle = np.minimum(caruncle, np.linalg.norm(P - corner, axis=1))
            # frontal metres around the eyeball's pole, through the inverse of the eyeball's UV map
            xy = (uv - L.iris_centre_uv[e]) @ np.linalg.inv(L.eye_to_uv[e]).T
            this = (uv[:, 0] < 0.5) == (e == 0)
            rho = np.where(this, np.linalg.norm(xy, axis=1), rho)
            theta = np.where(this, np.arctan2(xy[:, 1], xy[:, 0]), theta)
        eye_fields = {"eye_sd": eye_sd, "upper_d": upper_d, "lower_d": lower_d, "rho": rho, "theta": theta}
        eyes = region(win, {**eye_fields, "caruncle_d": caruncle})

        win = window(luv[31:36].min(0), luv[31:36].max(0), 0.006)
        P = L.to_metric(win[2])
        nostril_w = np.maximum(
            gauss(P, 0.5 * (lm[31] + lm[33]) + [0.0, 0.0015], 0.0032, 0.0017),
            gauss(P, 0.5 * (lm[35] + lm[33]) + [0.0, 0.0015], 0.0032, 0.0017),
        )
        nostrils = region(win, {"w": nostril_w})

        win = window(MOLE_UV_BOX[0], MOLE_UV_BOX[1], 0.01)
        moles = region(win, {"u": win[2][:, 0], "v": win[2][:, 1]})

        # beard: the lower face from the sideburns down to 1.6 cm past the jaw contour (see _beard_top_v)
        v_chin, v_side = float(luv[8, 1]), float(luv[[0, 16], 1].mean())
        win = window([luv[:17, 0].min(), v_chin - 0.06 * k], [luv[:17, 0].max(), v_side + 0.02], 0.025)
        P = L.to_metric(win[2])
        jaw_off = _polyline_distance(P, _catmull_rom(lm[:17], closed=False))[2]  # + on the face's side
        beard = region(win, {"v": win[2][:, 1], "lip_sd": _signed_distance(P, lips), "jaw_off": jaw_off})

        # scalp: everything above the lowest hairline any parameters give (see _hairline_v)
        win = window([0.0, float(L.ear_uv[:, 0, 1].mean()) - 0.045 * k], [1.0, 1.0])
        scalp = region(win, {"v": win[2][:, 1]})

        # smooth weights over the whole texture
        uu, vv = np.meshgrid(c, 1 - c)
        uv = np.stack([uu.ravel(), vv.ravel()], 1)
        P = L.to_metric(uv)
        upper_w, under_w, ear_w = np.zeros(len(P)), np.zeros(len(P)), np.zeros(len(P))
        for outline in L.to_metric(L.eye_outline_uv):
            centre = outline.mean(0)
            is_above = P[:, 1] > centre[1]
            upper_w = np.maximum(upper_w, np.where(is_above, gauss(P, centre, 0.016, 0.011), 0.0))
            under_w = np.maximum(under_w, np.where(is_above, 0.0, gauss(P, centre - [0.0, 0.006], 0.014, 0.007)))
        for box in L.ear_uv:
            mid, half = L.to_metric(box.mean(0)), 0.5 * (L.to_metric(box[1]) - L.to_metric(box[0]))
            ear_w = np.maximum(ear_w, gauss(P, mid, max(half[0], 0.004), max(half[1], 0.004)))
        smooth = {
            "upper_lid": upper_w,
            "under_eye": under_w,
            "cheek": np.maximum(
                gauss(P, [0.5 * (lm[41, 0] + lm[2, 0]), lm[30, 1] - 0.004], 0.017, 0.014),
                gauss(P, [0.5 * (lm[46, 0] + lm[14, 0]), lm[30, 1] - 0.004], 0.017, 0.014),
            ),
            "nose": np.maximum.reduce(
                [gauss(P, lm[30], 0.007, 0.008), gauss(P, lm[31], 0.005, 0.005), gauss(P, lm[35], 0.005, 0.005)]
            ),
            "ear": ear_w,
        }
        freckle_w = gauss(P, 0.5 * (lm[29] + lm[30]), 0.04, 0.03)

        def full(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(x.reshape(1, 1, size, size), dtype=torch.float32, device=device)

        return _TexelMaps(
            size=size,
            texel_m=L.metres_per_u / size,
            u=full(uv[:, 0]),
            v=full(uv[:, 1]),
            w_cols=torch.as_tensor(np.abs(c - 0.5), dtype=torch.float32, device=device),
            smooth=torch.as_tensor(np.stack([smooth[n] for n in _SMOOTH_WEIGHTS]), dtype=torch.float32, device=device),
            freckle_w=full(freckle_w),
            regions={
                "mouth": mouth,
                "brows": brows,
                "eyes": eyes,
                "nostrils": nostrils,
                "moles": moles,
                "beard": beard,
                "scalp": scalp,
            },
        )

    # -- hair and beard outlines -------------------------------------------------------------------------------

    def _hairline_v(self, p: AlbedoParams, w_cols: torch.Tensor) -> torch.Tensor:
        """(B, W) v of the scalp hairline over columns at |u − 0.5| = ``w_cols``.

        Knots (by |u − 0.5|): forehead (brows + ``hairline_height``), receding temples, the temple corner, the
        sideburn at landmark 0/16, the front of the ear, above the ear, behind it, the nape.
        """
        L = self.layout
        lm, ear, k = L.landmarks_uv, L.ear_uv, L.v_per_metre_y
        dev = p.melanin.device
        w_side = float(np.abs(lm[[0, 16], 0] - 0.5).mean())
        w_temple = float(np.abs(lm[[17, 26], 0] - 0.5).mean())
        w_ear_lo = float(np.mean([0.5 - ear[0, 1, 0], ear[1, 0, 0] - 0.5]))  # front edge of the ears
        w_ear_hi = float(np.mean([0.5 - ear[0, 0, 0], ear[1, 1, 0] - 0.5]))
        v_ear_top, v_ear_bottom = float(ear[:, 1, 1].mean()), float(ear[:, 0, 1].mean())
        v_brow = float(lm[17:27, 1].max())
        v_side = float(lm[[0, 16], 1].mean())
        xs = [
            0.0,
            0.08,
            w_temple - 0.01,
            w_side,
            w_side + 0.03,
            w_ear_lo,
            0.5 * (w_ear_lo + w_ear_hi),
            w_ear_hi + 0.02,
            0.5,
        ]
        xk = torch.tensor(np.maximum.accumulate(xs) + np.arange(len(xs)) * 1e-4, dtype=torch.float32, device=dev)
        one = torch.ones_like(p.melanin)
        front = v_brow + k * p.hairline_height
        side = v_side + k * (0.01 - p.sideburn)
        yk = torch.stack(
            [
                front,
                front + k * p.temple_recession,
                v_brow + k * (0.5 * p.hairline_height + 0.5 * p.temple_recession),
                side,
                side,
                (v_ear_top + 0.008 * k) * one,
                (v_ear_top + 0.012 * k) * one,
                v_ear_top * one,
                (v_ear_bottom - 0.015 * k) * one,
            ],
            1,
        )
        return _piecewise_linear(xk, yk, w_cols, smooth=True)

    def _beard_top_v(self, w_cols: torch.Tensor) -> torch.Tensor:
        """(W,) upper outline of the beard area (v; no stubble above it) over columns at |u − 0.5| = ``w_cols``."""
        lm, k = self.layout.landmarks_uv, self.layout.v_per_metre_y

        def w(i: int, j: int) -> float:
            return float(abs(lm[i, 0] - 0.5) + abs(lm[j, 0] - 0.5)) / 2

        def h(i: int, j: int) -> float:
            return float(lm[i, 1] + lm[j, 1]) / 2

        knots = [
            (0.0, h(33, 33) - 0.002 * k),  # under the nose
            (w(31, 35), h(31, 35) - 0.004 * k),
            (w(48, 54) + 0.02, h(48, 54) + 0.008 * k),  # beside the mouth corners
            (w(3, 13), h(3, 13) + 0.012 * k),  # cheek line
            (w(1, 15), h(1, 15) + 0.004 * k),
            (w(0, 16), h(0, 16) - 0.002 * k),  # joins the sideburns; behind them the jaw offset limits it
            (0.5, h(0, 16) - 0.002 * k),
        ]
        return self._knots(knots, w_cols)

    @staticmethod
    def _knots(knots: list[tuple[float, float]], w_cols: torch.Tensor) -> torch.Tensor:
        xs = np.maximum.accumulate([x for x, _ in knots]) + np.arange(len(knots)) * 1e-4
        xk = torch.tensor(xs, dtype=torch.float32, device=w_cols.device)
        yk = torch.tensor([[y for _, y in knots]], dtype=torch.float32, device=w_cols.device)
        return _piecewise_linear(xk, yk, w_cols)[0]

    # -- the albedo ------------------------------------------------------------------------------------------

    def skin_lut(self, oxygenation: torch.Tensor) -> torch.Tensor:
        """(B,) oxygenation → (B, 3, Nb, Nm) linear skin colour over log-blood (rows) × log-melanin (columns)."""
        n = self.SKIN_LUT_SIZE
        dev = oxygenation.device
        mel = torch.linspace(*self.LOG_MELANIN_RANGE, n, device=dev).exp()
        blood = torch.linspace(*self.LOG_BLOOD_RANGE, n, device=dev).exp()
        rgb = skin_linear_rgb(mel[None, None, :], blood[None, :, None], oxygenation[:, None, None].float())
        return rgb.permute(0, 3, 1, 2).contiguous()

    def __call__(self, params: AlbedoParams, size: int = 256) -> torch.Tensor:
        """Albedo maps.

        Args:
            params: from :func:`sample_albedo_params` (any device; the output follows it).
            size: texture resolution H = W, 64–1024.

        Returns:
            (B, 3, size, size) linear albedo in [0, 1]; row 0 is v = 1.
        """
        if isinstance(size, bool) or not isinstance(size, int) or not 64 <= size <= 1024:
            raise ValueError(f"size: expected an int in 64–1024 texels, got {size!r}")
        p = params
        dev = p.melanin.device
        B = len(p)
        maps = self._maps(size, dev)
        R = maps.regions
        lat = self._draw_lattices(p.noise_seed, dev)
        k = self.layout.v_per_metre_y

        def col(x: torch.Tensor) -> torch.Tensor:
            return x.float().view(B, 1, 1, 1)

        def use(name: str) -> bool:  # band limit: drop lattices finer than about 1.3 texels
            _, lv, lu = self.lattice_shape(name)
            return lu <= size * 0.75 and lv <= size * 0.75

        def rgb(*values: float) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=dev).view(1, 3, 1, 1)

        soft = max(0.0004, 0.7 * maps.texel_m)  # edge width of masks: at least ~a texel (no aliasing)
        coarse = self._noise(lat["coarse"], "coarse", maps, mode="bicubic")
        medium = self._noise(lat["medium"], "medium", maps)

        # chromophore maps: channel 0 is log melanin, channel 1 log blood (volume fractions)
        zero, one = torch.zeros_like(p.blotch), torch.ones_like(p.blotch)
        coef = torch.stack(  # per sample, the weight of each of _SMOOTH_WEIGHTS in log melanin / log blood
            [
                torch.stack([0.5 * p.eye_shadow, p.eye_shadow, zero, zero, zero], 1),
                torch.stack([0.45 * one, 0.5 * p.eye_shadow, p.cheek_redness, p.nose_redness, 0.5 * one], 1),
            ],
            1,
        )
        chrom = (coef @ maps.smooth).view(B, 2, size, size)
        noise = coarse[:, :2] * 0.8 + medium * 0.6
        if use("small"):
            noise = noise + 0.35 * self._noise(lat["small"], "small", maps)
        base = torch.stack([p.melanin.log(), p.blood.log()], 1).view(B, 2, 1, 1)
        chrom = torch.addcmul(chrom + base, noise, col(p.blotch))
        if use("freckles"):
            freckle = F.relu(self._noise(lat["freckles"], "freckles", maps) - 0.6) * maps.freckle_w
            chrom[:, :1] += 2.0 * col(p.freckles) * freckle

        reg = R["moles"]
        du = (reg.f["u"][..., None] - p.mole_uv[:, None, None, None, :, 0]) * self.layout.metres_per_u
        dv = (reg.f["v"][..., None] - p.mole_uv[:, None, None, None, :, 1]) * self.layout.metres_per_v
        r2 = p.mole_radius.clamp_min(soft)[:, None, None, None, :] ** 2
        moles = (p.mole_strength[:, None, None, None, :] * torch.exp(-0.5 * (du * du + dv * dv) / r2)).sum(-1)
        chrom[:, :1, reg.rows, reg.cols] += moles

        reg = R["mouth"]
        lip = _sigmoid_step(reg.f["lip_sd"], soft)
        stria = 0.12 * torch.cos(reg.f["lip_x"] * (2 * math.pi / 0.0012)) if soft < 0.0006 else 0.0
        chrom[:, :1, reg.rows, reg.cols] += lip * col(p.lip_melanin).log()
        chrom[:, 1:, reg.rows, reg.cols] += lip * (col(p.lip_blood) + stria)

        (lo_m, hi_m), (lo_b, hi_b) = self.LOG_MELANIN_RANGE, self.LOG_BLOOD_RANGE
        scale = torch.tensor([2 / (hi_m - lo_m), 2 / (hi_b - lo_b)], device=dev).view(1, 2, 1, 1)
        offset = torch.tensor([-1 - 2 * lo_m / (hi_m - lo_m), -1 - 2 * lo_b / (hi_b - lo_b)], device=dev)
        grid = torch.addcmul(offset.view(1, 2, 1, 1), chrom, scale).permute(0, 2, 3, 1)
        albedo = F.grid_sample(
            self.skin_lut(p.oxygenation), grid, mode="bilinear", padding_mode="border", align_corners=True
        )
        if use("fine"):
            fine = self._noise(lat["fine"], "fine", maps)
            albedo = albedo * (1.0 - col(p.pores) * F.relu(fine - 0.5).clamp(max=1.5))
        reg = R["nostrils"]
        albedo[..., reg.rows, reg.cols] *= 1.0 - 0.6 * reg.f["w"]

        # hair colour: melanin pigments, greying towards white
        grey = col(p.hair_grey)
        hair = hair_linear_rgb(p.hair_eumelanin, p.hair_pheomelanin)[:, :, None, None].lerp(rgb(0.55, 0.55, 0.55), grey)

        # scalp hair above the hairline (with a jittered outline and strands)
        reg = R["scalp"]
        jitter = self._noise(lat["hairline"], "hairline", maps, _Region(slice(0, 1), reg.cols, {}), "bicubic")
        hairline = self._hairline_v(p, maps.w_cols[reg.cols])[:, None, None, :] + 0.003 * k * jitter
        scalp = _sigmoid_step(reg.f["v"] - hairline, max(0.003 * k, 2.0 / size))
        shade = 0.85 + 0.2 * reg.crop(coarse[:, 2:3])
        if use("strands"):
            shade = shade + 0.25 * self._noise(lat["strands"], "strands", maps, reg).clamp(-1, 1)
        density = col(p.hair_cover) * scalp
        albedo[..., reg.rows, reg.cols] = torch.lerp(reg.crop(albedo), hair * shade, density)

        # brows: thick medially, tapering laterally; the centre line sits below the landmark line
        reg = R["brows"]
        t = col(p.brow_thickness)
        half = 0.5 * t * (0.45 + 0.55 * (1 - reg.f["arc"]).clamp(0, 1).sqrt())
        dist = (reg.f["off"] + 0.35 * t).abs() - half + 1.5 * reg.f["end"]
        density = col(p.brow_density) * _sigmoid_step(-dist, max(0.0015, soft))
        if use("brow"):
            density = density * (0.75 + 0.35 * self._noise(lat["brow"], "brow", maps, reg)).clamp(0, 1.2)
        albedo[..., reg.rows, reg.cols] = torch.lerp(reg.crop(albedo), hair, density.clamp(0, 1))

        # stubble below the beard outline, fading out down the neck and sparing the lips
        reg = R["beard"]
        top = self._beard_top_v(maps.w_cols[reg.cols])
        v = reg.f["v"]
        beard = _sigmoid_step(top - v, 0.004 * k) * _sigmoid_step(reg.f["jaw_off"] + 0.016, 0.006)  # past the jaw
        beard = beard * (1 - _sigmoid_step(reg.f["lip_sd"] + 0.0012, soft))
        grain = 0.85 + 0.15 * reg.crop(medium[:, 1:2])  # patchy growth
        if use("grain"):
            grain = grain * (0.8 + 0.2 * self._noise(lat["grain"], "grain", maps, reg)).clamp(0.4, 1.2)
        if use("fine"):  # follicles
            grain = grain * (0.6 + 0.6 * F.relu(self._noise(lat["fine"], "fine", maps, reg))).clamp(max=1.3)
        grain = 0.6 * grain
        albedo[..., reg.rows, reg.cols] = torch.lerp(reg.crop(albedo), 0.6 * hair, col(p.stubble) * beard * grain)

        # the line between the lips and the mouth cavity's texel: a shadowed, redder skin tone
        reg = R["mouth"]
        cavity = p.skin_rgb()[:, :, None, None] * rgb(0.5, 0.38, 0.36)
        line = torch.maximum(
            torch.exp(-0.5 * (reg.f["lip_line_d"] / max(0.0005, 0.5 * maps.texel_m)) ** 2),
            _sigmoid_step(0.0012 - reg.f["mouth_d"], soft),
        )
        albedo[..., reg.rows, reg.cols] = torch.lerp(reg.crop(albedo), cavity, 0.85 * line)

        # eyes: lash lines on the lids, then sclera / iris / pupil inside the lid openings. Lid margins share
        # a thin band of texels with the eyeballs' edges; the eye colours stop just short of it (an eyeball edge
        # in skin colour reads as lid thickness, a lid margin in sclera colour does not).
        reg = R["eyes"]
        f = reg.f
        crop = reg.crop(albedo)
        lash = torch.maximum(
            torch.exp(-0.5 * (f["upper_d"] / max(0.0007, 0.5 * maps.texel_m)) ** 2),
            0.5 * torch.exp(-0.5 * (f["lower_d"] / max(0.0004, 0.5 * maps.texel_m)) ** 2),
        ) * (1 - _sigmoid_step(f["eye_sd"], soft))
        crop = torch.lerp(crop, 0.3 * hair * (1 - grey) + 0.01, 0.9 * lash)
        eye = torch.lerp(
            rgb(0.60, 0.55, 0.50), rgb(0.45, 0.18, 0.16), torch.exp(-0.5 * (f["caruncle_d"] / 0.0035) ** 2)
        )
        eye = eye * (0.6 + 0.4 * _sigmoid_step(f["eye_sd"] - 0.0012, 0.0015))  # the lids shade the sclera
        iris_lat = lat["iris"]
        n_a = iris_lat.shape[-1]
        polar = torch.cat(  # angle → x over the middle n_a of n_a + 2 wrapped cells; radius → y
            [f["theta"] * (n_a / (math.pi * (n_a + 2))), (f["rho"] / IRIS_RADIUS_M).clamp(0, 1) * 2 - 1], 1
        ).permute(0, 2, 3, 1)
        padded = torch.cat([iris_lat[..., -1:], iris_lat, iris_lat[..., :1]], -1)
        streak = F.grid_sample(
            padded, polar.expand(B, -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False
        )
        rho = f["rho"]
        iris = iris_linear_rgb(p.iris_melanin)[:, :, None, None] * (0.9 + 0.35 * streak.clamp(-1.5, 1.5))
        iris = iris * (1 - 0.55 * _sigmoid_step(rho - 0.82 * IRIS_RADIUS_M, max(0.0006, soft)))
        eye = torch.lerp(eye, iris, _sigmoid_step(IRIS_RADIUS_M - rho, max(0.0003, soft)))
        eye = torch.lerp(eye, rgb(0.008, 0.008, 0.008), _sigmoid_step(col(p.pupil_radius) - rho, max(0.0003, soft)))
        albedo[..., reg.rows, reg.cols] = torch.lerp(
            crop, eye, _sigmoid_step(f["eye_sd"] - 0.0003, soft)
        )  # slightly inside: see below
        return albedo.clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Scene: face codes, light, camera, background
# ---------------------------------------------------------------------------------------------------------------


def euler_to_axis_angle(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Head rotation ``R = Ry(yaw) · Rx(pitch) · Rz(roll)`` (radians) as an axis-angle vector. (...) → (..., 3).

    Yaw turns the face (+z) towards +x (the subject's left), pitch about +x, roll about +z.
    """

    def quat(axis: int, angle: torch.Tensor) -> torch.Tensor:
        q = torch.zeros(*angle.shape, 4, dtype=angle.dtype, device=angle.device)
        q[..., 0] = torch.cos(angle / 2)
        q[..., 1 + axis] = torch.sin(angle / 2)
        return q

    def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        w1, x1, y1, z1 = a.unbind(-1)
        w2, x2, y2, z2 = b.unbind(-1)
        return torch.stack(
            [
                w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
                w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
            ],
            -1,
        )

    q = mul(mul(quat(1, yaw), quat(0, pitch)), quat(2, roll))
    q = torch.where(q[..., :1] < 0, -q, q)
    vec = q[..., 1:]
    s = vec.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, q[..., :1])
    return torch.where(s > 1e-12, vec * angle / s.clamp_min(1e-12), 2 * vec)


def head_angles_deg(pose: torch.Tensor) -> torch.Tensor:
    """(B, J, 3) pose → (B, 3) yaw, pitch, roll in degrees of the root joint (inverse of
    :func:`euler_to_axis_angle`)."""
    R = axis_angle_to_matrix(pose[:, 0].double())
    yaw = torch.atan2(R[:, 0, 2], R[:, 2, 2])
    pitch = torch.asin((-R[:, 1, 2]).clamp(-1, 1))
    roll = torch.atan2(R[:, 1, 0], R[:, 1, 1])
    return torch.rad2deg(torch.stack([yaw, pitch, roll], -1)).float()


@dataclass(frozen=True)
class PoseRanges:
    """Head pose limits in degrees (the sampler never exceeds them)."""

    yaw_max_deg: float = 60.0
    pitch_max_deg: float = 20.0
    roll_max_deg: float = 10.0

    def __post_init__(self) -> None:
        for name in ("yaw_max_deg", "pitch_max_deg", "roll_max_deg"):
            value = getattr(self, name)
            if not 0.0 <= value <= 90.0:
                raise ValueError(f"{name}: expected 0–90 degrees, got {value}")


def _expression_units(names: Sequence[str]) -> list[tuple[int, ...]]:
    """Expression indices grouped into mirrored Left/Right pairs and singles; eye-gaze shapes are left out."""
    index = {n: i for i, n in enumerate(names)}
    units: list[tuple[int, ...]] = []
    for n, i in index.items():
        if n.startswith("eyeLook"):
            continue  # gaze comes from the eye joints
        if n.endswith("Right") and n[: -len("Right")] + "Left" in index:
            continue
        if n.endswith("Left") and n[: -len("Left")] + "Right" in index:
            units.append((i, index[n[: -len("Left")] + "Right"]))
        else:
            units.append((i,))
    return units


_EXPRESSION_EVENTS: tuple[tuple[float, float, float, tuple[str, ...]], ...] = (
    (0.25, 0.35, 1.0, ("mouthSmileLeft", "mouthSmileRight")),  # (probability, weight range, ARKit names)
    (0.2, 0.2, 0.8, ("jawOpen",)),
    (0.05, 0.5, 1.0, ("eyeBlinkLeft", "eyeBlinkRight")),
)


def sample_face_codes(
    face_model: FaceModel, n: int, generator: torch.Generator, ranges: PoseRanges = PoseRanges()
) -> FaceCodes:
    """Random identity, expression and pose codes (float32 on the generator's device).

    - identity: the face model's generation prior (``shape_prior_mean`` + ``shape_prior_chol`` · ε);
    - expression: sparse and mostly small (each ARKit action, mirrored pairs together, is active with
      probability 0.06 at weight U(0,1)²·0.6), plus occasional strong events: a smile (p 0.25), an open jaw
      (p 0.2), a blink (p 0.05); weights in [0, 1];
    - pose: root joint yaw (half uniform in ±yaw_max, half N(0, yaw_max/3) clipped), pitch and roll
      (N(0, max/2.5) clipped); jaw mostly nearly closed, sometimes open; a small common eye gaze; every joint
      within the model's ``joint_limits``.
    """
    if n < 1:
        raise ValueError(f"n: expected at least 1, got {n}")
    dev = generator.device
    K, E = face_model.n_shape, face_model.n_expr
    names = list(face_model.expr_names)
    index = {name: i for i, name in enumerate(names)}
    units = _expression_units(names)
    joints = {name: j for j, name in enumerate(face_model.joint_names)}
    limits = face_model.joint_limits.detach().to(dev, torch.float64)
    prior_mean = face_model.shape_prior_mean.detach().to(dev, torch.float64)
    prior_chol = face_model.shape_prior_chol.detach().to(dev, torch.float64)

    def r(lo: float = 0.0, hi: float = 1.0) -> float:
        return float(_uniform(generator, lo, hi))

    def normal(std: float, bound: float) -> float:  # N(0, std) clipped to ±bound
        return min(
            max(float(torch.randn((), generator=generator, device=dev, dtype=torch.float64)) * std, -bound), bound
        )

    shapes, exprs, poses = [], [], []
    for _ in range(n):
        eps = torch.randn(K, generator=generator, device=dev, dtype=torch.float64)
        shapes.append(prior_mean + prior_chol @ eps)
        psi = torch.zeros(E, dtype=torch.float64, device=dev)
        for unit in units:
            if _bernoulli(generator, 0.06):
                w = r() ** 2 * 0.6
                for i in unit:
                    psi[i] = w * r(0.75, 1.0)

        for p, lo, hi, keys in _EXPRESSION_EVENTS:
            if _bernoulli(generator, p):
                w = r(lo, hi)
                for key in keys:
                    if key in index:
                        psi[index[key]] = w * r(0.85, 1.0)
        exprs.append(psi.clamp(0.0, 1.0))

        pose = torch.zeros(len(joints), 3, dtype=torch.float64, device=dev)
        ymax, pmax, rmax = (math.radians(x) for x in (ranges.yaw_max_deg, ranges.pitch_max_deg, ranges.roll_max_deg))
        yaw = r(-ymax, ymax) if _bernoulli(generator, 0.5) else normal(ymax / 3, ymax)
        pitch, roll = normal(pmax / 2.5, pmax), normal(rmax / 2.5, rmax)
        yaw, pitch, roll = (torch.tensor(x, dtype=torch.float64, device=dev) for x in (yaw, pitch, roll))
        pose[0] = euler_to_axis_angle(yaw, pitch, roll)
        if "jaw" in joints:
            opening = r(0.0, 0.2) if _bernoulli(generator, 0.2) else r(0.0, 0.03)
            pose[joints["jaw"]] = torch.tensor([opening, normal(0.02, 0.06), normal(0.01, 0.03)], dtype=torch.float64)
        gaze = torch.tensor([normal(0.06, 0.15), normal(0.08, 0.2), 0.0], dtype=torch.float64)
        for eye in ("eye_left", "eye_right"):
            if eye in joints:
                pose[joints[eye]] = gaze
        pose[1:] = torch.minimum(torch.maximum(pose[1:], limits[1:, :, 0]), limits[1:, :, 1])
        poses.append(pose)
    return FaceCodes(
        shape=torch.stack(shapes).float(), expression=torch.stack(exprs).float(), pose=torch.stack(poses).float()
    )


_SH_FIT_POINTS = 512


@lru_cache(maxsize=4)
def _sh_fit(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fibonacci-sphere normals (N, 3) and the least-squares map (9, N) from irradiance samples to SH."""
    i = torch.arange(_SH_FIT_POINTS, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / _SH_FIT_POINTS
    phi = math.pi * (1 + 5**0.5) * i
    rxy = torch.sqrt(1 - z * z)
    normals = torch.stack([rxy * torch.cos(phi), rxy * torch.sin(phi), z], -1)
    basis = sh_basis(normals)
    return normals.to(device), torch.linalg.pinv(basis).to(device)


def sh_from_lights(ambient: torch.Tensor, direction: torch.Tensor, directional: torch.Tensor) -> torch.Tensor:
    """Order-2 SH (the renderer's convention) of an ambient plus one directional light.

    The irradiance ``E(n) = ambient + directional · max(0, n · direction)`` is projected by least squares on
    the renderer's basis (:func:`models.render.sh_basis`) over a dense set of normals, i.e. its order-2
    truncation; the constant term is then raised where needed so that the shading stays ≥ 5 % of the ambient
    everywhere (the truncated clamped cosine dips slightly below zero behind the light).

    Args:
        ambient: (B, 3) RGB ambient irradiance.
        direction: (B, 3) unit direction towards the light (world frame; +z towards the camera).
        directional: (B, 3) RGB irradiance of the light at normal incidence.

    Returns:
        (B, 9, 3) SH coefficients.
    """
    normals, fit = _sh_fit(str(ambient.device))
    dtype = ambient.dtype
    normals, fit = normals.to(dtype), fit.to(dtype)
    cos = (direction @ normals.T).clamp_min(0.0)  # (B, N)
    target = ambient[:, None, :] + directional[:, None, :] * cos[..., None]  # (B, N, 3)
    sh = fit @ target  # (B, 9, 3)
    shading = sh_basis(normals) @ sh
    floor = 0.05 * ambient
    lift = (floor - shading.amin(1)).clamp_min(0.0)  # (B, 3)
    sh = sh.clone()
    sh[:, 0] += lift / SH_CONSTANTS[0]
    return sh


def sample_sh(n: int, generator: torch.Generator) -> torch.Tensor:
    """Plausible random SH light, (n, 9, 3) float32 on the generator's device.

    A light from the front half (azimuth ±75° about +z, elevation −20…+60°) with a fraction U(0.2, 0.7) of
    the irradiance ``E0 ~ U(0.8, 1.3)`` seen by a normal facing it, the rest ambient; the key light is tinted
    warm or cool by up to ±12 %, the ambient by a few %. See :func:`sh_from_lights`.
    """
    dev = generator.device
    amb, dirs, key = [], [], []
    for _ in range(n):
        e0, frac = float(_uniform(generator, 0.8, 1.3)), float(_uniform(generator, 0.2, 0.7))
        az, el = math.radians(float(_uniform(generator, -75, 75))), math.radians(float(_uniform(generator, -20, 60)))
        tau = float(_uniform(generator, -0.12, 0.12))
        tint_key = torch.tensor([1 + tau, 1.0, 1 - tau], dtype=torch.float64, device=dev)
        tint_key = tint_key * (1 + 0.02 * torch.randn(3, generator=generator, device=dev, dtype=torch.float64))
        tint_amb = 1 + 0.04 * torch.randn(3, generator=generator, device=dev, dtype=torch.float64)
        amb.append(e0 * (1 - frac) * tint_amb / tint_amb.mean())
        key.append(e0 * frac * tint_key / tint_key.mean())
        dirs.append(
            torch.tensor([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)], dtype=torch.float64)
        )
    return sh_from_lights(torch.stack(amb), torch.stack(dirs).to(dev), torch.stack(key)).float()


def frame_camera(landmarks_world: torch.Tensor, fill: torch.Tensor, offset: torch.Tensor) -> WeakPerspectiveCamera:
    """The weak-perspective camera that frames the 68 landmarks.

    Args:
        landmarks_world: (B, 68, 3) posed landmarks.
        fill: (B,) fraction of the image width / height that the larger side of the landmarks' box spans.
        offset: (B, 2) NDC position of the box centre.

    Returns:
        camera with ``x_ndc = s · x + t`` (isotropic ``s``).
    """
    lo, hi = landmarks_world[..., :2].amin(1), landmarks_world[..., :2].amax(1)
    size = (hi - lo).amax(1).clamp_min(1e-6)
    scale = 2 * fill.to(size) / size
    translation = offset.to(size) - scale[:, None] * (lo + hi) / 2
    return WeakPerspectiveCamera(scale, translation)


@dataclass(frozen=True)
class BackgroundParams(_Batched):
    """Random backgrounds: a linear colour gradient modulated by coloured multi-scale noise.

    Attributes:
        colors: (B, 2, 3) linear RGB at the two ends of the gradient.
        direction: (B, 2) unit gradient direction in the image (x right, y down).
        noise: (B,) relative amplitude of the noise.
        noise_seed: (B,) int64.
    """

    colors: torch.Tensor
    direction: torch.Tensor
    noise: torch.Tensor
    noise_seed: torch.Tensor


def sample_background_params(n: int, generator: torch.Generator) -> BackgroundParams:
    """Backgrounds of random brightness (linear 0.02–0.7) and saturation, gradient and texture strength."""
    dev = generator.device
    rows = []
    for _ in range(n):
        colors = []
        for _ in range(2):
            brightness = float(_log_uniform(generator, 0.02, 0.7))
            hue = torch.randn(3, generator=generator, device=dev, dtype=torch.float64)
            sat = float(_uniform(generator, 0.0, 0.6))
            colors.append((brightness * (1 + sat * (hue - hue.mean()) / hue.std().clamp_min(1e-6))).clamp(0.0, 1.0))
        angle = float(_uniform(generator, 0.0, 2 * math.pi))
        rows.append(
            (
                torch.stack(colors),
                torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64, device=dev),
                _uniform(generator, 0.0, 0.5)[0],
                torch.randint(0, 2**62, (), generator=generator, device=dev, dtype=torch.int64),
            )
        )
    return BackgroundParams(
        colors=torch.stack([r[0] for r in rows]).float(),
        direction=torch.stack([r[1] for r in rows]).float(),
        noise=torch.stack([r[2] for r in rows]).float(),
        noise_seed=torch.stack([r[3] for r in rows]),
    )


_BACKGROUND_OCTAVES = (3, 7, 17)


def render_background(params: BackgroundParams, size: int | tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) linear background images, deterministic given the parameters."""
    H, W = (size, size) if isinstance(size, int) else size
    dev = params.colors.device
    B = params.colors.shape[0]
    y, x = torch.meshgrid(torch.linspace(-1, 1, H, device=dev), torch.linspace(-1, 1, W, device=dev), indexing="ij")
    t = (x[None] * params.direction[:, 0, None, None] + y[None] * params.direction[:, 1, None, None]) * 0.5 + 0.5
    image = torch.lerp(params.colors[:, 0, :, None, None], params.colors[:, 1, :, None, None], t[:, None])
    lattices = []
    for s in params.noise_seed.tolist():
        g = torch.Generator().manual_seed(int(s))
        lattices.append([torch.randn(3, c, c, generator=g) for c in _BACKGROUND_OCTAVES])
    # the octaves are smooth: sum them at a quarter of the size, then upsample once
    small = (max(H // 4, 8), max(W // 4, 8))
    noise = torch.zeros(B, 3, *small, device=dev)
    for o in range(len(_BACKGROUND_OCTAVES)):
        lat = torch.stack([lt[o] for lt in lattices]).to(dev)
        noise = noise + F.interpolate(lat, size=small, mode="bicubic", align_corners=True) / (o + 1)
    noise = F.interpolate(noise, size=(H, W), mode="bilinear", align_corners=False)
    return (image * (1 + params.noise[:, None, None, None] * noise)).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Rendered samples
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneParams(_Batched):
    """Everything random about a batch except the albedo.

    Attributes:
        codes: identity (B, K), expression (B, E) and pose (B, J, 3).
        sh: (B, 9, 3) SH light.
        face_fill: (B,) fraction of the image spanned by the larger side of the landmarks' box.
        face_offset: (B, 2) NDC centre of that box.
        background: background parameters.
    """

    codes: FaceCodes
    sh: torch.Tensor
    face_fill: torch.Tensor
    face_offset: torch.Tensor
    background: BackgroundParams


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of :class:`SyntheticFaces`.

    Attributes:
        image_size: rendered images are image_size × image_size pixels.
        albedo_size: UV albedo resolution (64–1024).
        seed: stream seed; sample ``i`` depends only on ``(seed, i)``.
        length: number of samples an epoch has (``len()``); any index ≥ 0 works.
        pose: head pose limits.
        face_fill: range of the fraction of the image spanned by the larger side of the landmarks' box.
        landmark_depth_tolerance: a landmark is visible when it lies at most this far (metres) behind the
            visible surface at its pixel (plus four pixels' worth of depth slope).
    """

    image_size: int = 224
    albedo_size: int = 256
    seed: int = 0
    length: int = 1_000_000
    pose: PoseRanges = PoseRanges()
    face_fill: tuple[float, float] = (0.6, 0.8)
    landmark_depth_tolerance: float = 0.003

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 4096:
            raise ValueError(f"image_size: expected 16–4096 pixels, got {self.image_size}")
        if not 64 <= self.albedo_size <= 1024:
            raise ValueError(f"albedo_size: expected 64–1024 texels, got {self.albedo_size}")
        if self.length < 1:
            raise ValueError(f"length: expected at least 1, got {self.length}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed: expected 0 <= seed < 2**63, got {self.seed}")
        lo, hi = self.face_fill
        if not 0.05 <= lo <= hi <= 0.95:
            raise ValueError(f"face_fill: expected 0.05 <= low <= high <= 0.95, got {self.face_fill}")


@dataclass(frozen=True)
class SyntheticBatch(_Batched):
    """A rendered batch with its ground truth.

    Attributes:
        index: (B,) long sample indices.
        image_srgb: (B, 3, H, W) the render over its background, sRGB-encoded in [0, 1] (like a photo;
            :func:`srgb_to_linear` gives back the linear render, clipped to [0, 1]).
        mask: (B, 1, H, W) 1 where the head is visible.
        albedo_uv: (B, 3, Hu, Wu) linear albedo in the face model's UV layout (row 0 is v = 1).
        codes: identity, expression and pose codes.
        sh: (B, 9, 3) SH light (:mod:`models.render.shading` convention).
        camera: the weak-perspective camera (scale (B,), translation (B, 2)).
        verts_world: (B, V, 3) posed vertices, metres.
        landmarks_px: (B, 68, 2) projected 3-D landmarks in pixels (x right, y down; pixel (col, row) has
            its centre at integer (col, row)).
        landmarks_visible: (B, 68) bool, the landmark is inside the image and not hidden (z-buffer test).
        albedo_params: the albedo's parameters.
    """

    index: torch.Tensor
    image_srgb: torch.Tensor
    mask: torch.Tensor
    albedo_uv: torch.Tensor
    codes: FaceCodes
    sh: torch.Tensor
    camera: WeakPerspectiveCamera
    verts_world: torch.Tensor
    landmarks_px: torch.Tensor
    landmarks_visible: torch.Tensor
    albedo_params: AlbedoParams

    def __len__(self) -> int:
        return int(self.index.shape[0])


class SyntheticFaces:
    """Rendered synthetic faces with full ground truth; sample ``i`` is a pure function of ``(seed, i)``.

    Args:
        config: sizes, seed, pose and framing ranges.
        face_model: the face model (default: the built-in one).
        device: where albedo, geometry and rendering run (the random draws are always on CPU).

    Use :meth:`batch` for explicit indices, :meth:`batches` to stream (resumable, DDP-shardable), or index it
    like a dataset (``ds[i]`` is a batch of one; :meth:`SyntheticBatch.cat` collates).
    """

    def __init__(
        self,
        config: SyntheticConfig = SyntheticConfig(),
        face_model: FaceModel | None = None,
        device: torch.device | str = "cpu",
    ):
        from models.render import MeshRenderer

        self.config = config
        self.device = torch.device(device)
        fm = face_model if face_model is not None else FaceModel.from_file()
        on = fm.mean.device
        # the caller's model is never moved: codes are drawn with a CPU copy, rendering uses one on `device`
        self._sampling_model = fm if on.type == "cpu" else FaceModel(fm.arrays)
        self.face_model = fm if on == self.device else FaceModel(fm.arrays).to(self.device)
        self.albedo = ProceduralAlbedo(self.face_model)
        self.renderer = MeshRenderer.from_face_model(self.face_model, config.image_size).to(self.device)

    def __len__(self) -> int:
        return self.config.length

    def __getitem__(self, index: int) -> SyntheticBatch:
        if not isinstance(index, int | np.integer) or index < 0:
            raise IndexError(f"index: expected a non-negative int, got {index!r}")
        return self.batch([int(index)])

    def generator(self, index: int) -> torch.Generator:
        """The CPU generator of sample ``index`` (freshly seeded)."""
        return torch.Generator().manual_seed(_index_seed(self.config.seed, index))

    def sample_params(self, indices: Sequence[int]) -> tuple[AlbedoParams, SceneParams]:
        """All random draws of the given samples (CPU), in a fixed order per sample."""
        albedo, scenes = [], []
        lo, hi = self.config.face_fill
        for i in indices:
            g = self.generator(int(i))
            albedo.append(sample_albedo_params(1, g))
            codes = sample_face_codes(self._sampling_model, 1, g, self.config.pose)
            sh = sample_sh(1, g)
            fill = _uniform(g, lo, hi).float()
            offset = ((torch.rand(1, 2, generator=g, dtype=torch.float64) * 2 - 1) * 0.6 * (1 - fill - 0.04)).float()
            background = sample_background_params(1, g)
            scenes.append(SceneParams(codes=codes, sh=sh, face_fill=fill, face_offset=offset, background=background))
        return AlbedoParams.cat(albedo), SceneParams.cat(scenes)

    def batch(self, indices: Sequence[int]) -> SyntheticBatch:
        """Render the samples ``indices`` as one batch."""
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0:
            raise ValueError(f"indices: expected a non-empty list of non-negative ints, got {indices}")
        albedo_params, scene = self.sample_params(indices)
        return self.render(torch.tensor(indices), albedo_params.to(self.device), scene.to(self.device))

    @torch.no_grad()
    def render(self, index: torch.Tensor, albedo_params: AlbedoParams, scene: SceneParams) -> SyntheticBatch:
        """Turn drawn parameters into a :class:`SyntheticBatch` (deterministic)."""
        cfg = self.config
        fm = self.face_model
        albedo = self.albedo(albedo_params, cfg.albedo_size)
        codes = scene.codes
        verts = fm(codes.shape, codes.expression, codes.pose)
        lm_world = fm.landmarks(verts)
        camera = frame_camera(lm_world, scene.face_fill, scene.face_offset)
        background = render_background(scene.background, cfg.image_size)
        out = self.renderer(verts, camera, albedo, scene.sh, background)
        H = W = cfg.image_size
        lm = camera.project(lm_world)
        px = torch.stack([(lm[..., 0] + 1) * 0.5 * W - 0.5, (1 - lm[..., 1]) * 0.5 * H - 0.5], -1)
        col, row = torch.floor(px[..., 0] + 0.5).long(), torch.floor(px[..., 1] + 0.5).long()
        inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
        b = torch.arange(len(index), device=verts.device)[:, None].expand_as(col)
        flat = (b * H + row.clamp(0, H - 1)) * W + col.clamp(0, W - 1)
        face = out.face_id.reshape(-1)[flat]
        depth = out.fragments.depth.reshape(-1)[flat]
        pixel_m = 2.0 / (camera.scale[:, None] * W)
        visible = inside & (face >= 0) & (lm[..., 2] >= depth - cfg.landmark_depth_tolerance - 4 * pixel_m)
        return SyntheticBatch(
            index=index.to(verts.device),
            image_srgb=linear_to_srgb(out.image),
            mask=out.mask,
            albedo_uv=albedo,
            codes=codes,
            sh=scene.sh,
            camera=camera,
            verts_world=verts,
            landmarks_px=px,
            landmarks_visible=visible,
            albedo_params=albedo_params,
        )

    def batches(
        self,
        batch_size: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_batches: int | None = None,
    ) -> Iterator[SyntheticBatch]:
        """Stream batches: step ``s`` of rank ``r`` renders indices ``(s·world_size + r)·batch_size + [0, batch_size)``.

        Args:
            batch_size: samples per batch (per rank).
            start: first step (resume by passing the number of steps already done).
            rank, world_size: DDP sharding; ranks never share an index.
            num_batches: stop after this many batches (default: run through ``len(self)`` samples, then stop).
        """
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or start < 0:
            raise ValueError(f"batches: bad arguments {batch_size=}, {start=}, {rank=}, {world_size=}")
        stop = num_batches if num_batches is not None else max(0, -(-len(self) // (batch_size * world_size)) - start)
        for s in range(start, start + stop):
            yield self.batch(self.batch_indices(s, batch_size, rank, world_size))

    @staticmethod
    def batch_indices(step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """The sample indices of step ``step`` on rank ``rank`` (see :meth:`batches`)."""
        first = (step * world_size + rank) * batch_size
        return list(range(first, first + batch_size))
