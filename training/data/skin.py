"""Colour of skin, hair and eyes from their pigments, and the torch colour transforms of the synthetic data.

Skin colour comes from a two-chromophore optical model (:func:`skin_reflectance_spectrum`): the epidermis
absorbs with melanin, the dermis absorbs with blood and scatters, and the spectrum is integrated against the
CIE observer under D65 into linear sRGB. Hair colour follows the melanin absorption of d'Eon et al.; iris colour
is interpolated between artistic anchors. :func:`linear_to_srgb` / :func:`srgb_to_linear` are the torch
(differentiable) twins of the numpy definitions in :mod:`facecore.color`; :func:`individual_typology_angle`
measures skin tone (ITA°).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

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
