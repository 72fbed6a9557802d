"""Procedural UV albedo with full ground truth (:class:`ProceduralAlbedo`, :func:`sample_albedo_params`).

A seed-deterministic, batched generator of linear UV albedo maps in the face model's cylindrical layout. Skin
colour comes from the two-chromophore optical model of :mod:`training.data.skin`. Spatial detail (lips, brows,
eyelids, eyes, cheeks, nose, freckles, blotches, pores, stubble, scalp hair) is placed with the face model's own
layout (:class:`training.data.face_layout.FaceLayout`), never fixed texel positions. Chromophore variations
(freckles, blotches, redness, lips) are applied as melanin / blood maps and only then turned into colour, so
every skin texel is a colour the optical model can produce.

Randomness only enters through explicit ``torch.Generator`` arguments (:func:`sample_albedo_params`, drawn on
CPU by :class:`training.data.synthetic.SyntheticFaces`); the albedo itself is a deterministic batched
computation on the target device.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from facecore import geometry as geo
from models.face.model import FaceModel
from training.data.face_layout import FaceLayout
from training.data.sampling import Batched, bernoulli, log_uniform, uniform
from training.data.skin import hair_linear_rgb, iris_linear_rgb, skin_linear_rgb

logger = logging.getLogger(__name__)

MELANIN_RANGE = (0.01, 0.6)
"""Sampled epidermal melanosome volume fraction (Jacques: 1.3–6.3 % light, 11–16 % moderately pigmented,
18–43 % dark skin; the upper end is extended so that the darkest skin tones, ITA° < −50, occur). Drawn as
``lo · (hi / lo) ** (t ** MELANIN_SKEW)``, t ~ U(0, 1): log-uniform skewed towards pigmented skin, which gives
every ITA° category (very light … dark) 10–25 % of the samples."""
MELANIN_SKEW = 0.75
BLOOD_RANGE = (0.006, 0.04)
"""Sampled dermal blood volume fraction, log-uniform (Jacques: 0.2–7 %, typically 2 %)."""
OXYGENATION_RANGE = (0.6, 0.85)


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


def _signed_distance(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """(N,) distance to a closed polygon's boundary, positive inside."""
    d, _, _ = _polyline_distance(pts, poly, closed=True)
    return np.where(geo.inside_polygon(pts, poly), d, -d)


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


@dataclass(frozen=True)
class AlbedoParams(Batched):
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
        return float(uniform(g, lo, hi))

    lo, hi = MELANIN_RANGE
    melanin = lo * (hi / lo) ** (float(uniform(g, 0.0, 1.0)) ** MELANIN_SKEW)
    blood = float(log_uniform(g, *BLOOD_RANGE))
    fair = min(max((0.08 - melanin) / 0.06, 0.0), 1.0)  # 1 for fair skin, 0 from moderately pigmented on
    male = bernoulli(g, 0.5)
    if bernoulli(g, 0.06 * fair):  # red hair
        eu, ph = u(0.2, 0.7), u(1.5, 4.0)
    else:
        eu_lo = 0.2 if fair > 0.5 else (1.0 if melanin < 0.15 else 3.0)
        eu = float(log_uniform(g, eu_lo, 10.0))
        ph = u(0.0, 0.4) * min(eu, 2.0)
    grey = u(0.2, 1.0) if bernoulli(g, 0.15) else 0.0
    style = u(0.0, 1.0)
    p_bald = 0.2 if male else 0.03
    cover = 0.0 if style < p_bald else (u(0.3, 0.6) if style < p_bald + 0.15 else u(0.85, 1.0))
    row = {
        "melanin": melanin,
        "blood": blood,
        "oxygenation": u(*OXYGENATION_RANGE),
        "blotch": u(0.03, 0.15),
        "freckles": u(0.3, 1.0) if bernoulli(g, 0.1 + 0.35 * fair) else 0.0,
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
        "stubble": u(0.2, 0.8) if male and bernoulli(g, 0.5) else 0.0,
        "iris_melanin": u(2.0 if melanin > 0.1 else 0.0, 3.0),
        "pupil_radius": u(0.0015, 0.003),
    }
    out = {k: torch.tensor(v, dtype=torch.float32, device=g.device) for k, v in row.items()}
    (u0, v0), (u1, v1) = MOLE_UV_BOX
    out["mole_uv"] = torch.stack([uniform(g, u0, u1, N_MOLES), uniform(g, v0, v1, N_MOLES)], -1).float()
    out["mole_radius"] = uniform(g, 0.0008, 0.002, N_MOLES).float()
    strength = [u(0.6, 1.6) if bernoulli(g, 0.3) else 0.0 for _ in range(N_MOLES)]
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
