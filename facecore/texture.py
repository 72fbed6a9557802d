"""Texture extraction from a photo into the face model's UV layout (numpy; the service's fast path).

The seed's recipe (AlbedoGAN §1.1) without the fitting loop: given a mesh already aligned with the image
(posed vertices + their pixel positions), every texel centre of the UV map is placed on the surface,
projected into the image and coloured there if it is visible (z-buffer test); texels on the hidden side
take the colour of their mirror texel (u → 1 − u) when that one is visible; the rest get the mean visible
colour. Dividing by the order-2 SH shading at each texel's normal de-lights the colours into albedo.
``training/texture.py`` fits the mesh; both share this unwrapping.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from facecore import geometry as geo

# Order-2 SH basis constants in DECA's convention, the single definition for the torch renderer
# (models/render/shading.py imports them) and this module: Y_lm with the Lambertian factors 2π/3 (l = 1)
# and π/4 (l = 2) folded in; the constant term keeps Y_00 without π.
SH_CONSTANTS: tuple[float, ...] = (
    1.0 / math.sqrt(4.0 * math.pi),
    (2.0 * math.pi / 3.0) * math.sqrt(3.0 / (4.0 * math.pi)),
    (2.0 * math.pi / 3.0) * math.sqrt(3.0 / (4.0 * math.pi)),
    (2.0 * math.pi / 3.0) * math.sqrt(3.0 / (4.0 * math.pi)),
    (math.pi / 4.0) * 3.0 * math.sqrt(5.0 / (12.0 * math.pi)),
    (math.pi / 4.0) * 3.0 * math.sqrt(5.0 / (12.0 * math.pi)),
    (math.pi / 4.0) * 3.0 * math.sqrt(5.0 / (12.0 * math.pi)),
    (math.pi / 4.0) * 1.5 * math.sqrt(5.0 / (12.0 * math.pi)),
    (math.pi / 4.0) * 0.5 * math.sqrt(5.0 / (4.0 * math.pi)),
)


def sh_basis(normals: np.ndarray) -> np.ndarray:
    """(..., 3) unit normals → (..., 9) basis in the order 1, x, y, z, xy, xz, yz, x² − y², 3z² − 1."""
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    c = SH_CONSTANTS
    # written in place, one contiguous plane per term (no stacking copy), then viewed as (..., 9)
    out = np.empty((9, *x.shape), np.result_type(normals, 1.0))
    out[0] = c[0]
    out[1], out[2], out[3] = c[1] * x, c[2] * y, c[3] * z
    out[4], out[5], out[6] = c[4] * x * y, c[5] * x * z, c[6] * y * z
    out[7], out[8] = c[7] * (x * x - y * y), c[8] * (3.0 * z * z - 1.0)
    return np.moveaxis(out, 0, -1)


@dataclass(frozen=True)
class Unwrapped:
    """A texture extracted from a photo.

    Attributes:
        albedo: (R, R, 3) de-lit colours in [0, 1] (row 0 is v = 1).
        colour: (R, R, 3) colours as seen (before de-lighting).
        source: (R, R) uint8: 0 outside the skin, 1 seen in the photo, 2 mirrored, 3 filled with the mean.
        shading: (R, R, 3) the SH shading each texel's colour was divided by (a mirrored texel: its mirror's;
            a mean-filled texel: the shading at its own normal), or None when no light was given.
    """

    albedo: np.ndarray
    colour: np.ndarray
    source: np.ndarray
    shading: np.ndarray | None = None


def unwrap(
    model: geo.FaceModelArrays,
    verts: np.ndarray,
    verts_px: np.ndarray,
    image: np.ndarray,
    resolution: int = 256,
    sh: np.ndarray | None = None,
    depth_tolerance: float = 0.003,
    min_facing: float = 0.05,
) -> Unwrapped:
    """Unwrap ``image`` onto the UV layout.

    Args:
        model: the face model.
        verts: (V, 3) posed vertices in the camera-aligned world frame (+z towards the camera).
        verts_px: (V, 2) their pixel positions (x right, y down; pixel centres at integers).
        image: (H, W, 3) float in [0, 1] or uint8.
        resolution: R of the output maps.
        sh: (9, 3) SH light for de-lighting, or None to keep the seen colours as albedo.
        depth_tolerance: a texel is visible when it is within this many metres of the z-buffer surface.
        min_facing: and when its normal's z (the cosine of its angle to the viewing direction) exceeds this:
            texels seen at grazing angles are blurred and easily mis-registered at the silhouette; raising it
            hands more of the turned-away side to the mirror fill.
    """
    img = _float_image(image)
    H, W = img.shape[:2]
    R = int(resolution)
    texel, px, nrm, visible, _ = _project_texels(model, verts, verts_px, W, H, R, depth_tolerance)
    visible &= nrm[:, 2] > min_facing

    colour_tex = np.zeros((R * R, 3))
    seen = np.zeros(R * R, bool)
    colour_tex[texel[visible]] = geo.sample_map(img, _uv_of_pixels(px[visible], W, H))
    seen[texel[visible]] = True

    source = np.zeros(R * R, np.uint8)
    source[texel] = 3
    source[texel[visible]] = 1
    # hidden side: mirror texel (u → 1 − u, same row)
    rows, cols = np.divmod(texel, R)
    mirror = rows * R + (R - 1 - cols)
    take = ~seen[texel] & seen[mirror]
    colour_tex[texel[take]] = colour_tex[mirror[take]]
    source[texel[take]] = 2
    rest = texel[source[texel] == 3]
    if seen.any():
        colour_tex[rest] = colour_tex[seen].mean(0)

    albedo_tex = colour_tex.copy()
    shading = None
    if sh is not None:
        sh = np.asarray(sh, np.float64)
        if sh.shape != (9, 3) or not np.all(np.isfinite(sh)):
            raise ValueError(f"sh: expected finite (9, 3), got {sh.shape}")
        shading = np.zeros((R * R, 3))
        shading[texel] = sh_basis(nrm) @ sh
        # mirrored texels are de-lit with their mirror's shading (where their colour came from)
        shading[texel[take]] = shading[mirror[take]]
        albedo_tex[texel] = colour_tex[texel] / np.maximum(shading[texel], 0.05)
        # the mean fill stands for unseen skin: it takes the mean de-lit albedo, not the mean colour divided
        # by the light at its own (often averted) normal
        if seen.any():
            albedo_tex[rest] = np.clip(albedo_tex[seen], 0, 1).mean(0)
        shading = shading.reshape(R, R, 3)
    return Unwrapped(
        np.clip(albedo_tex, 0, 1).reshape(R, R, 3),
        np.clip(colour_tex, 0, 1).reshape(R, R, 3),
        source.reshape(R, R),
        shading,
    )


def _float_image(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 (scaled to [0, 1]) or float image as float64, without a copy when it already is."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image: expected (H, W, 3), got {img.shape}")
    return img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else np.asarray(img, np.float64)


def _uv_of_pixels(px: np.ndarray, W: int, H: int) -> np.ndarray:
    """Pixel positions (x right, y down, centres at integers) → the (u, v up) convention of ``sample_map``."""
    return np.stack([(px[:, 0] + 0.5) / W, 1.0 - (px[:, 1] + 0.5) / H], 1)


# ---------------------------------------------------------------------------------------------------------------
# Clean extraction: only the face's skin, seen well; the rest filled without seams
# ---------------------------------------------------------------------------------------------------------------

SOURCE_OUTSIDE, SOURCE_SEEN, SOURCE_MIRRORED, SOURCE_FILLED, SOURCE_REJECTED = 0, 1, 2, 3, 4
""":attr:`CleanTexture.source` codes: outside the skin layout (filled), seen and accepted, mirrored from the other
side, filled from the smooth prior (unseen), seen but rejected (not skin, shadowed, clipped, at the silhouette;
filled like the unseen ones)."""

REGION_NAMES = ("forehead", "cheeks", "nose", "lips", "eyes", "brows", "eye_openings", "nostrils", "lids")


def landmark_uv(model: geo.FaceModelArrays) -> np.ndarray:
    """(68, 2) UV position (v up) of each landmark of the face model's embedding."""
    corners = model.uv[model.uv_faces[model.landmark_faces]].astype(np.float64)  # (68, 3, 2)
    return np.einsum("lk,lkc->lc", model.landmark_bary.astype(np.float64), corners)


# what depends only on the face model and the resolution, keyed like facecore.geometry's samplings: by
# id(model) *and* holding the model, so a collected model's reused id never returns another model's entry
_CACHE: dict[tuple[str, int, int], tuple[geo.FaceModelArrays, Any]] = {}
_CACHE_ENTRIES = 16


def _cached(kind: str, model: geo.FaceModelArrays, R: int, build: Callable[[], Any]) -> Any:
    key = (kind, id(model), R)
    hit = _CACHE.get(key)
    if hit is None or hit[0] is not model:
        if len(_CACHE) >= _CACHE_ENTRIES:
            _CACHE.clear()
        hit = _CACHE[key] = (model, build())
    return hit[1]


def uv_regions(model: geo.FaceModelArrays, resolution: int) -> dict[str, np.ndarray]:
    """(R, R) bool masks of the face's regions in the UV layout, drawn from the model's own 68 landmarks (cached).

    ``forehead``: from just above the brows up to 1.3 brow-to-eye distances above them (below the lowest
    hairline of the synthetic source); ``cheeks``: below the eyes, between the jaw contour and the nose and
    mouth; ``nose``: bridge (27) to the nostrils (31–35), widened to the alae; ``lips``: the outer lip contour
    scaled 1.15×; ``eyes``: each eye contour scaled 2× (lids and surroundings, brows excluded); ``brows``: a
    band along each brow; ``eye_openings``: each eye contour scaled 1.1×; ``nostrils``: 31–35 scaled 1.4×;
    ``lids``: each eye contour scaled 1.5× wide and 2.2× tall, outside the openings (lids, lashes, liner; a
    glasses frame's rims and bridge lie further out). The named regions are disjoint except that ``eye_openings``
    and ``lids`` ⊂ ``eyes`` and ``nostrils`` overlaps ``nose``.
    Only texels of the skin layout (:func:`facecore.geometry.texel_sampling`) are in a region.
    """
    R = int(resolution)
    return _cached("regions", model, R, lambda: _draw_regions(model, R))


def _draw_regions(model: geo.FaceModelArrays, R: int) -> dict[str, np.ndarray]:
    from PIL import Image, ImageDraw

    lm = landmark_uv(model)

    def px(points: np.ndarray) -> list[tuple[float, float]]:
        return [(float(u * R - 0.5), float((1.0 - v) * R - 0.5)) for u, v in points]

    def scaled(idx, fx: float, fy: float | None = None) -> np.ndarray:
        p = lm[list(idx)]
        c = p.mean(0)
        return c + (p - c) * np.array([fx, fx if fy is None else fy])

    def draw(shapes) -> np.ndarray:
        img = Image.new("L", (R, R), 0)
        d = ImageDraw.Draw(img)
        for kind, pts, *width in shapes:
            if kind == "poly":
                d.polygon(px(pts), fill=255)
            else:
                d.line(px(pts), fill=255, width=max(1, int(round(width[0] * R))), joint="curve")
        return np.asarray(img) > 0

    b2e = float(lm[17:27, 1].mean() - lm[36:48, 1].mean())  # brow-to-eye distance in v
    brows = draw([("line", lm[17:22], 0.5 * b2e), ("line", lm[22:27], 0.5 * b2e)])
    lower = lm[17:27].copy()
    lower[:, 1] += 0.3 * b2e
    upper = lm[26:16:-1].copy()
    upper[:, 1] += 1.3 * b2e
    forehead = draw([("poly", np.concatenate([lower, upper]))]) & ~brows
    eyes = draw([("poly", scaled(range(36, 42), 2.0, 2.6)), ("poly", scaled(range(42, 48), 2.0, 2.6))]) & ~brows
    openings = draw([("poly", scaled(range(36, 42), 1.1)), ("poly", scaled(range(42, 48), 1.1))])
    lids = draw([("poly", scaled(range(36, 42), 1.5, 2.2)), ("poly", scaled(range(42, 48), 1.5, 2.2))])
    lids &= eyes & ~openings
    lips = draw([("poly", scaled(range(48, 60), 1.15))])
    nostrils = draw([("poly", scaled(range(31, 36), 1.4))])
    nose_pts = np.concatenate([lm[[27]], scaled([31, 32, 33, 34, 35], 1.5, 1.0), lm[[27]]])
    bridge_l, bridge_r = lm[[39]] * 0.3 + lm[[27]] * 0.7, lm[[42]] * 0.3 + lm[[27]] * 0.7
    nose = draw([("poly", np.concatenate([bridge_l, nose_pts[1:-1], bridge_r]))])
    cheeks = draw([
        ("poly", np.concatenate([lm[[36, 41, 40, 39]] - [0, 0.35 * b2e], lm[[31, 48]], lm[[5, 4, 3, 2, 1]]])),
        ("poly", np.concatenate([lm[[45, 46, 47, 42]] - [0, 0.35 * b2e], lm[[35, 54]], lm[[11, 12, 13, 14, 15]]])),
    ])  # fmt: skip
    nose &= ~eyes & ~lips
    cheeks &= ~eyes & ~nose & ~lips & ~nostrils
    texel = geo.texel_sampling(model, R)[0]
    layout = np.zeros(R * R, bool)
    layout[texel] = True
    layout = layout.reshape(R, R)
    out = {
        "forehead": forehead, "cheeks": cheeks, "nose": nose, "lips": lips, "eyes": eyes, "brows": brows,
        "eye_openings": openings, "nostrils": nostrils, "lids": lids,
    }  # fmt: skip
    out = {k: v & layout for k, v in out.items()}
    for v in out.values():
        v.setflags(write=False)
    return out


@dataclass(frozen=True)
class SkinModel:
    """A photo's skin colour model over de-lit albedo: a robust Gaussian in log-chroma (log R/G, log B/G) and a
    median log-luminance, estimated from the well-seen cheek, nose and forehead texels.

    Attributes:
        mean: (2,) log-chroma mean; cov: (2, 2) its covariance (with a floor); log_y: median log-luminance;
        log_y_std: robust spread of the log-luminance; count: texels it was estimated from.
    """

    mean: np.ndarray
    cov: np.ndarray
    log_y: float
    log_y_std: float
    count: int

    def colour(self) -> np.ndarray:
        """(3,) the linear colour with the model's mean chroma at its median luminance."""
        rgb = np.exp([self.mean[0], 0.0, self.mean[1]])
        return rgb * math.exp(self.log_y) / float(rgb @ LUMA)

    def distances(self, albedo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) linear albedo → (chroma Mahalanobis distance², log-luminance minus the model's), each (N,)."""
        chroma, log_y = _chroma(albedo)
        d = chroma - self.mean
        d2 = np.einsum("ni,ij,nj->n", d, np.linalg.inv(self.cov), d)
        return d2, log_y - self.log_y


LUMA = np.array([0.2126, 0.7152, 0.0722])
_CHROMA_FLOOR = 0.04  # log-chroma std floor: a very uniform skin must not make the model reject its own shading


def _chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lg = np.log(np.maximum(rgb, 1e-3))
    return np.stack([lg[:, 0] - lg[:, 1], lg[:, 2] - lg[:, 1]], 1), np.log(np.maximum(rgb @ LUMA, 1e-4))


BACKGROUND_RING = (0.03, 0.10)
BACKGROUND_RATIO = 4.0
""":func:`background_like`: the background's colours are sampled in a ring outside the head's projection,
``BACKGROUND_RING`` × the head's size from it; a colour is background-like where the ring's colour histogram is
more than ``BACKGROUND_RATIO`` times the skin's."""
_COLOUR_BINS = ((-1.0, 2.0, 20), (-2.0, 1.0, 20), (-6.0, 0.5, 10))  # log R/G, log B/G, log luminance: lo, hi, n


def _colour_histogram(colours: np.ndarray) -> np.ndarray:
    """Normalised 3-D histogram of (N, 3) linear colours over :data:`_COLOUR_BINS`, each bin averaged with its 26
    neighbours (a colour a bin away is as likely)."""
    shape = tuple(n for *_, n in _COLOUR_BINS)
    h = np.bincount(np.ravel_multi_index(_colour_bins(colours), shape), minlength=math.prod(shape)).reshape(shape)
    padded = np.pad(h.astype(np.float64), 1)
    smooth = sum(
        padded[1 + a : 1 + a + shape[0], 1 + b : 1 + b + shape[1], 1 + c : 1 + c + shape[2]]
        for a in (-1, 0, 1)
        for b in (-1, 0, 1)
        for c in (-1, 0, 1)
    )
    return smooth / max(float(smooth.sum()), 1e-12)


def _colour_bins(colours: np.ndarray) -> tuple[np.ndarray, ...]:
    chroma, log_y = _chroma(np.asarray(colours, np.float64))
    feats = np.concatenate([chroma, log_y[:, None]], 1)
    return tuple(
        np.clip(((feats[:, k] - lo) / (hi - lo) * n).astype(np.int64), 0, n - 1)
        for k, (lo, hi, n) in enumerate(_COLOUR_BINS)
    )


def background_like(
    image: np.ndarray, covered: np.ndarray, size: float, colours: np.ndarray, skin: np.ndarray
) -> np.ndarray:
    """(N,) bool: which of (N, 3) linear photo colours are far more typical of the photo around the head than of
    its skin (``skin``: (M, 3) photo colours of the skin model's seeds), by their colour histograms (log-chroma and
    log-luminance). ``covered``: (H, W) the head's projection; ``size``: its size in pixels. All False with fewer
    than 200 background or skin samples (a head filling the photo)."""
    step = max(1, int(size) // 128)  # the ring on every step-th pixel: a histogram needs no more
    small = covered[::step, ::step]
    lo, hi = (max(1, int(round(f * size / step))) for f in BACKGROUND_RING)
    ring = (_box_sum(small, hi) > 0) & ~(_box_sum(small, lo) > 0)
    background = image[::step, ::step][ring]
    if len(background) < 200 or len(skin) < 200:
        return np.zeros(len(colours), bool)
    p_background, p_skin = _colour_histogram(background), _colour_histogram(skin)
    at = _colour_bins(colours)
    return p_background[at] > BACKGROUND_RATIO * p_skin[at]


def fit_skin_model(albedo: np.ndarray, iterations: int = 4) -> SkinModel | None:
    """Robust :class:`SkinModel` of (N, 3) linear albedo samples (trimmed re-estimation), None under 30 samples.

    Starts from the median and MAD, then re-estimates mean and covariance from the samples within the 90 % chroma
    ellipse and ±2.5 robust σ of luminance, so hair, brows, background or highlights among the seeds (a fringe on
    the forehead, a badly fitted cheek) do not pull the model towards them as long as skin is the majority.
    """
    if len(albedo) < 30:
        return None
    chroma, log_y = _chroma(albedo)
    mean = np.median(chroma, 0)
    mad = np.median(np.abs(chroma - mean), 0) * 1.4826
    cov = np.diag(np.maximum(mad, _CHROMA_FLOOR) ** 2)
    ly = float(np.median(log_y))
    ly_std = max(float(np.median(np.abs(log_y - ly)) * 1.4826), 0.05)
    keep = np.ones(len(albedo), bool)
    for _ in range(iterations):
        d = chroma - mean
        d2 = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
        keep = (d2 < 4.6) & (np.abs(log_y - ly) < 2.5 * ly_std)
        if keep.sum() < 30:
            break
        mean = chroma[keep].mean(0)
        # the trimmed (90 %) Gaussian under-estimates the spread: 1 / 0.62 restores it for a 2-D normal
        cov = np.cov(chroma[keep].T) / 0.62 + np.eye(2) * _CHROMA_FLOOR**2
        ly = float(np.median(log_y[keep]))
        ly_std = max(float(np.std(log_y[keep])) * 1.2, 0.05)
    return SkinModel(mean, cov, ly, ly_std, int(keep.sum()))


HIGHLIGHT_FADE = (0.0, 0.15)
""":func:`remove_highlights` takes a texel's highlight away in full where its de-lit log-luminance is at least the
second number above the skin's median, not at all below the first, in proportion between: a highlight brightens."""


def remove_highlights(albedo: np.ndarray, skin: SkinModel, where: np.ndarray) -> np.ndarray:
    """(N, 3) de-lit colours with the skin's specular highlights taken out (dichromatic reflection: a highlight
    adds the light's colour to the skin's own; after de-lighting by a white-balanced light it is white, a blue sky's
    sheen is bluish).

    A texel where ``where`` (N,) holds is the most of the skin model's colour it can hold (the largest ``m`` with
    ``colour − m · skin ≥ 0`` in every channel) plus a rest, which only a highlight explains; the highlight is that rest
    plus the share of the skin's colour that makes its red equal its green (a white glint on the skin is then found
    exactly; a light's tint shows mostly in blue), at most all but 5 % of ``m``. It is removed as far as the texel is
    brighter than the skin (:data:`HIGHLIGHT_FADE`: skin paler by its own pigment is not much brighter, a glint is), and
    never below the skin's median level. The result has the texel's colour moved towards the skin's (no hue the photo
    did not show); a texel of the skin's colour, or darker than the skin, is left as it is.
    """
    tone = skin.colour()
    if tone[0] < 1.05 * tone[1]:  # a skin hardly redder than green (a greyscale photo, a green cast): no hue tells
        return albedo  # a highlight from the skin there
    most = (albedo / tone).min(1)  # (N,)
    rest = albedo - most[:, None] * tone
    # the skin's share of the highlight (rest + share · skin) that makes its red equal its green: white's, and a
    # light's tint (warm, or a blue sky's) shows mostly in its blue
    share_of_skin = (rest[:, 1] - rest[:, 0]) / float(tone[0] - tone[1])
    highlight = rest + np.clip(share_of_skin, 0.0, 0.95 * most)[:, None] * tone
    level = albedo @ LUMA
    lo, hi = HIGHLIGHT_FADE
    dy = np.log(np.maximum(level, 1e-4)) - skin.log_y
    amount = np.clip((dy - lo) / (hi - lo), 0.0, 1.0) * where
    # never below the skin's median level: a highlight brightens, and what is left under it is skin
    above = np.maximum(level - math.exp(skin.log_y), 0.0)
    amount = np.minimum(amount, above / np.maximum(highlight @ LUMA, 1e-9))
    return albedo - amount[:, None] * highlight


def colour_flags(colours: np.ndarray) -> tuple[str, ...]:
    """Flags for a photo whose skin colours (N, 3, linear, as seen) cannot give a trustworthy albedo.

    ``greyscale``: the channels agree (median |log R/G| and |log B/G| < 0.03 and the 90th percentile of the
    chroma spread < 0.06): a monochrome photo or a desaturated one. ``colour_cast``: the median skin colour lies
    outside what skin under roughly white light looks like: skin has R > G > B in linear RGB (log R/G from
    ~0.1 (very fair, cool light) to ~1.3 (deeply pigmented, warm light), log B/G from ~−1.4 to ~0): a
    blue/green/magenta cast or a strong red/orange one breaks those bounds.
    """
    if len(colours) < 30:
        return ()
    chroma, _ = _chroma(np.asarray(colours, np.float64))
    med = np.median(chroma, 0)
    spread = np.percentile(np.abs(chroma).max(1), 90)
    if abs(med[0]) < 0.03 and abs(med[1]) < 0.03 and spread < 0.06:
        return ("greyscale",)
    if not (0.08 <= med[0] <= 1.4 and -1.6 <= med[1] <= 0.02):
        return ("colour_cast",)
    return ()


@dataclass(frozen=True)
class CleanTexture:
    """A clean UV albedo extracted from a photo (row 0 is v = 1; linear values).

    Attributes:
        albedo: (R, R, 3) de-lit albedo in [0, 1], every texel filled (the layout's gaps too).
        colour: (R, R, 3) the photo's colour at each seen texel (0 elsewhere).
        shading: (R, R, 3) the SH shading at each texel's normal (1 where no light was given; 0 off the layout),
            before the evening out of the face's two sides (``SYMMETRY_REACH``), which ``sh`` does not hold either.
        source: (R, R) uint8 :data:`SOURCE_OUTSIDE` … :data:`SOURCE_REJECTED`.
        weight: (R, R) the photo's share of each texel's albedo (its own sample and its mirror's), in [0, 1].
        accepted: (R, R) bool: seen texels accepted as well-seen skin (or eye/brow/lip feature).
        pixel: (R, R, 2) the photo pixel (x, y) each seen texel sampled (NaN where not seen).
        skin: the photo's :class:`SkinModel`, or None when too little skin was seen to build one.
        flags: ``greyscale`` / ``colour_cast`` (:func:`colour_flags`), ``over_exposed`` / ``under_exposed``
            (:func:`bound_albedo_level`), ``no_skin_model``.
        sh: (9, 3) the light the albedo was de-lit with (``relight``: the fitted one), or None without one.
    """

    albedo: np.ndarray
    colour: np.ndarray
    shading: np.ndarray
    source: np.ndarray
    weight: np.ndarray
    accepted: np.ndarray
    pixel: np.ndarray
    skin: SkinModel | None
    flags: tuple[str, ...]
    sh: np.ndarray | None = None


def achromatic(sh: np.ndarray) -> np.ndarray:
    """(..., 9, 3) SH lights → the same luminance in every channel: a white light of the same shape and brightness.

    The encoder's light colour is a constant guess: on held-out renders (stream 4242) its warm–cool tint (red −
    blue of the frontal shading, relative) is +0.105 ± 0.037 and its green–magenta tint −0.103 ± 0.016 where the
    renders' lights have +0.014 ± 0.055 and +0.011 ± 0.027, uncorrelated with them; de-lit by it, every photo's
    albedo came out tinted green-grey (the fixture photos' lights: magenta −0.08 … −0.15). A photo's white balance
    makes its light white on average, and the skin's colour cannot be told from the light's in one photo."""
    y = np.asarray(sh, np.float64) @ LUMA
    return np.repeat(y[..., None], 3, -1)


def fit_light(
    normals: np.ndarray,
    colours: np.ndarray,
    sh: np.ndarray,
    *,
    prior: float = 0.3,
    iterations: int = 4,
    min_shading: float = 0.15,
    min_lit: float = 0.9,
    colour_prior: float | None = None,
) -> np.ndarray:
    """The SH light (9, 3) whose shape explains a photo's skin at its normals, at ``sh``'s level and colour.

    The encoder's light is a guess from a small crop; where it gets the light's direction wrong, the side it
    thinks lit comes out dark in the albedo and the clean extraction rejects it as not skin (then mirrors the
    other side over it), and the face re-rendered over the photo is lighter than the photo there. Skin albedo
    varies little over the cheeks, forehead and nose, so their luminance is close to ``a · B(n) · L``: a linear
    least-squares problem in ``a · L`` (iteratively reweighted: hair, brows, cast shadows and highlights, which
    no SH light explains, lose their weight), with a ridge of relative strength ``prior`` towards ``sh``'s
    luminance at the skin's scale. Only the constant and linear (directional) terms are fitted: the quadratic
    ones, which the skin's own albedo variation (redder nose and cheeks) can mimic, stay ``sh``'s. The shape is
    fitted on luminance, one for every channel: fitted per channel, the skin's colour variation (a beard, a
    flush) became coloured shading and tinted the albedo magenta or green where it was "explained". The
    albedo's scale cannot be told from the light's: each channel keeps ``sh``'s mean shading over the samples
    (the encoder's brightness and colour of the light, hence its albedo level and tone). The ridge (0.3) costs
    a little on held-out renders against a weaker one (0.05) and keeps real photos, whose skin varies more than
    the renders' (beards, brows, make-up), from having that variation read as light; ``benchmarks/light_fit.py``
    measures the re-fit against the encoder's light. If the fitted light left more than 1 − ``min_lit`` of the
    samples' shading below ``min_shading`` × its mean (a light that leaves the skin it was fitted to unlit
    explains it badly), it is blended back towards ``sh``.

    ``colour_prior``: the light's two sides may differ in colour, as a warm key light beside a cool fill from the
    sky does (fixture 001: log R/G 0.31 on the side in shade, 0.62 on the lit side; de-lit by one light colour, its
    shaded half came out lilac beside a warm half). After the luminance fit, each channel's constant and
    left–right terms are fitted to that channel, with the luminance fit's weights (what no light explains stays
    out) and a ridge of this relative strength towards the luminance shape; the up–down, front and quadratic terms
    stay the luminance shape's, because a face's own colour varies in those directions (a beard or stubble below,
    a flush on both cheeks: fitted per channel they tinted fixture 006's lower face green), not from side to side.
    Each channel then keeps ``sh``'s mean shading over the samples, as above, so the albedo's level and average
    tone are unchanged and only how the light's colour varies across the face is read off the skin. None: one shape
    for every channel.

    Args:
        normals: (N, 3) unit normals of the skin samples (camera space, +z towards the camera).
        colours: (N, 3) their linear colours in the photo.
        sh: (9, 3) the starting light (:func:`sh_basis` convention).

    Returns:
        (9, 3) the fitted light (``sh`` itself when fewer than 50 samples or a degenerate fit).
    """
    sh = np.asarray(sh, np.float64)
    B = sh_basis(np.asarray(normals, np.float64))
    y = np.asarray(colours, np.float64) @ LUMA
    sh_y = sh @ LUMA
    start = (B @ sh).mean(0)  # the starting light's mean shading over the samples, per channel
    if len(B) < 50 or sh_y[0] <= 0 or np.any(start <= 0):
        return sh
    target = sh_y * np.median(y / np.maximum(B @ sh_y, 1e-6))  # the ridge's centre, at the skin's albedo
    w = np.ones(len(B))
    fitted = target.copy()
    k = 4  # the constant and linear terms; the quadratic ones stay the starting light's (at the skin's scale)
    fixed = B[:, k:] @ target[k:]
    for _ in range(iterations):
        A = B[:, :k] * w[:, None]
        lam = prior * w.sum() * np.eye(k) * float((B[:, 0] ** 2).mean())
        fitted[:k] = np.linalg.solve(A.T @ B[:, :k] + lam, A.T @ (y - fixed) + lam @ target[:k])
        r = np.log(np.maximum(y / np.maximum(B @ fitted, 1e-6), 1e-3))  # ≈ 0 on skin the light explains
        spread = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), 0.02)
        w = 1.0 / (1.0 + (r / (2.0 * spread)) ** 2)  # Cauchy weights on the log ratio
    shapes = np.repeat(fitted[:, None], 3, 1)
    if colour_prior is not None:  # each channel's constant and side-to-side terms, towards the luminance shape
        shade = B @ fitted
        free = [0, 1]  # the constant and x (left–right) terms
        rest = B[:, 2:] @ fitted[2:]
        lam = colour_prior * w.sum() * np.eye(len(free)) * float((B[:, 0] ** 2).mean())
        A = B[:, free] * w[:, None]
        for c, colour in enumerate(np.asarray(colours, np.float64).T):
            scale = float((w * colour * shade).sum() / max((w * shade * shade).sum(), 1e-12))  # the albedo's share
            if scale > 0:
                rhs = A.T @ (colour / scale - rest) + lam @ fitted[free]
                shapes[free, c] = np.linalg.solve(A.T @ B[:, free] + lam, rhs)
        shapes += (fitted - shapes @ LUMA)[:, None]  # the colour only: the luminance stays (about) the fitted shape
    # the fitted shape in every channel at the starting light's mean shading over the samples (the constant term
    # alone would not keep the albedo's level: the faces' normals all point forwards); none for a shape that is
    # dark on average
    means = (B @ shapes).mean(0)
    if np.any(means <= 0):
        return sh
    light = shapes * (start / means)[None]
    for alpha in (1.0, 0.5, 0.25):
        blend = sh + alpha * (light - sh)
        shade = B @ blend
        if np.mean(np.all(shade >= min_shading * shade.mean(0), axis=1)) >= min_lit:
            return blend
    return sh


HAIR_OFF_SKIN = 0.15
GREY_HAIR = 0.35
""":func:`extract`: which texels of the brows' band are hair, not skin with a highlight on it (:func:`_hair_coloured`):
a warm or grey hue, and a log-chroma within ``GREY_HAIR`` × the skin's distance from grey (white, grey hair) or
more than ``HAIR_OFF_SKIN`` off the line from the skin's chroma to grey (blond, red, brown). Such texels are kept as
seen when brighter than the skin (unless like the photo's background) and no highlight is taken out of them: pale
brows had been rejected and filled with the prior's dark ones, or washed to the skin's colour. Held-out renders
(``benchmarks/texture_extraction.py``, service row, brows): seed 2024 27.3 → 27.9 dB, with highlights 25.6 → 26.0,
with cast shadows 27.3 → 27.8 (face 32.3 → 32.5), seed 2025 unchanged. ``HAIR_OFF_SKIN`` 0.05–0.1 scored higher
still on the brows but let fixture 001's glabella highlight through as a pale rectangle. What
colour alone cannot tell: a glint on the brows' band so strong that it is near white (about 3 × the skin's
brightness) is taken for white hair and kept; platinum brows of the skin's own hue are taken for the skin's sheen and
washed out (a held-out render of a very fair face; fading the brows' highlights in later traded its +0.3 dB for
−0.3 dB on the renders with highlights). The test reads the colours before a colour cast's correction."""

#: :func:`extract`: the smooth difference between a face's two sides is taken as the light's and removed, smoothed
#: over boxes of this fraction of the map's width (twice); 0: not
SYMMETRY_REACH = 1 / 24
SYMMETRY_LIMIT = math.log(2.0)
#: :func:`extract`: a mirrored texel takes the gain of the smoothed ratio between the taken texels near it and their
#: mirrors, smoothed over boxes of this fraction of the map's width (twice); 0: copied as it is
SEAM_REACH = 1 / 32
SEAM_FADE = 1 / 8
#: :func:`extract` with ``relight``: :func:`fit_light`'s ``colour_prior`` (None: one light colour in every direction)
LIGHT_COLOUR_PRIOR: float | None = 0.3
#: :func:`extract` with a prior: the log-ratio of what was taken to the prior's guide is spread within ±this,
#: read where the guide's log-luminance is within about ``GUIDE_FEATURE_LEVEL`` of the skin's (not at features)
GUIDE_RATIO_LIMIT = math.log(2.0)
GUIDE_FEATURE_LEVEL = 0.2
#: :func:`extract`: a lip texel this much less red than the skin (log R/G) is a tooth (lips are redder than skin)
TEETH_REDNESS = 0.15
#: :func:`extract`: a lip texel whose chroma is nearer the skin's model than the lips' own is skin where the fit put
#: the lips (not for greyscale photos, whose chroma tells nothing); False keeps such texels as seen
LIPS_SKIN_TEST = True
SKIN_LUMINANCE = (0.05, 0.6)
"""The range of a face's median skin albedo luminance (linear) that :func:`extract` keeps: the procedural skin
model's (``training.data.skin``) draws span 0.053 (deeply pigmented) to 0.60 (very fair; 99th percentile 0.57) over
600 maps of an unseen stream, as measured reflectances of skin do (~0.05–0.6 in the visible)."""


BLOWN_OUT = 0.8
"""A seen texel (outside the eye openings) whose every channel is at least ``BLOWN_OUT`` (linear; sRGB ~0.91) is
blown out, not skin that :func:`extract` can de-light (skin's blue channel is far below its red one): near the top
of a camera's range the tone curve presses the channels together and the JPEG tints the result (fixture 013's lit
cheek: (0.99, 0.96, 0.99) sRGB beside the other cheek's (0.89, 0.81, 0.76)). It is treated as clipped (for the
light's fit too) unless fewer than ``BLOWN_OUT_KEEP`` of the seed area's seen texels would be left: as the majority
of 013's seeds it had become the skin model, and the whole map came out bluish white."""
BLOWN_OUT_KEEP = 0.25
SEED_REGION_SPREAD = math.log(2.5)
"""The seed regions (cheeks, forehead; the nose under dark lenses) whose median luminance in the photo is more than
this log-ratio below the nose's are left out of the skin's colour model and level (:func:`_skin_regions`): hair
and dark lenses cover skin, and are darker than it (a dark fringe down to the brows: the forehead's median
0.02–0.05 beside skin's 0.2–0.5)."""


#: :func:`extract`: take the skin's specular highlights out of the de-lit colours (:func:`remove_highlights`)
REMOVE_HIGHLIGHTS = True

FILL_REACH = 0.05
"""How far (a fraction of the map's width) :func:`extract`'s smooth fill reaches from the texels it has before the
skin's own colour takes over, outside the face's regions (scalp, ears, neck, the back of the head). The pyramid fill
alone gave those the average of whatever was seen at the map's far ends, where a few texels of neck, ear or collar
weigh as much as the whole face (fixture 006: a pink-beige scalp around a dark face). Held-out synthetic renders,
the bare skin outside the face regions: seed 2024 32.6 → 33.6 dB, seed 2025 32.7 → 33.2, the face regions within
±0.2 dB (``benchmarks/texture_extraction.py``, its ``rest`` column)."""


EYE_EDGE_PX = 1.5
"""Pixels beyond a photo's eye contour that may still show its eyeball (:func:`_near_eyes`): the camera's blur and
the texels' bilinear samples mix a pixel or so across the lid's edge."""
EYE_MISREGISTRATION = 0.1
""":func:`extract` with ``eyes``: the lids are kept as seen only around an eye the fitted head's contour meets
within this fraction of the eye's width (mean point distance; the fixture portraits' refined fits: 0.02–0.10,
held-out renders' fits: median 0.05, 90th percentile 0.16, where the eyes are ~13 px wide and a lid off by that
took the iris: measured with the wider eye region, the eye region's PSNR 31.9 → 31.1 dB without this bound,
31.4 with it)."""
LIDS_COVERED = -1.5
""":func:`extract` with ``eyes``: lids whose median de-lit log-luminance is this far below the skin's are covered
(a dark lens, hair), not kept as seen (the fixture portraits' lids: −0.74 to −1.11; their darkest quarter below
−1.5 to −2.3: lashes, liner, the socket's shade)."""


def bound_albedo_level(
    normals: np.ndarray, colours: np.ndarray, sh: np.ndarray, bounds: tuple[float, float] = SKIN_LUMINANCE
) -> tuple[float, tuple[str, ...]]:
    """The factor that scales ``sh`` so the skin it de-lights has a median luminance within ``bounds``, and the
    flag saying so.

    One photo cannot tell the albedo's level from the light's (and the camera's exposure): the encoder guesses the
    light's brightness from a small crop. On an over-exposed or high-key portrait (a pale face on white, the light
    far brighter than the encoder's guess) the de-lit skin came out above any skin's reflectance, clipped at 1 in
    every channel and white; an under-exposed one gives a near-black albedo. Then the light takes the excess, so
    the albedo keeps the photo's skin chroma at the nearest plausible level (the render over the photo is the same:
    albedo × light is unchanged), and the result says ``over_exposed`` / ``under_exposed``: the level is a bound,
    not a measurement.

    Args:
        normals: (N, 3) unit normals of the skin samples (camera space); colours: (N, 3) their linear colours.
        sh: (9, 3) the light.

    Returns:
        (the factor, ``()`` or ``("over_exposed",)`` or ``("under_exposed",)``); 1 with fewer than 50 samples or
        where ``sh`` leaves them unlit.
    """
    shading = sh_basis(np.asarray(normals, np.float64)) @ (np.asarray(sh, np.float64) @ LUMA)
    lit = shading > 1e-3
    if lit.sum() < 50:
        return 1.0, ()
    level = float(np.median((np.asarray(colours, np.float64) @ LUMA)[lit] / shading[lit]))
    lo, hi = bounds
    if level > hi:
        return level / hi, ("over_exposed",)
    if 0 < level < lo:
        return level / lo, ("under_exposed",)
    return 1.0, ()


def extract(
    model: geo.FaceModelArrays,
    verts: np.ndarray,
    verts_px: np.ndarray,
    image: np.ndarray,
    resolution: int = 256,
    sh: np.ndarray | None = None,
    *,
    depth_tolerance: float = 0.003,
    min_facing: float = 0.35,
    min_shading: float = 0.15,
    clip_level: float = 0.995,
    silhouette_margin: float = 0.03,
    chroma_limit: float = 9.0,
    luminance_range: tuple[float, float] = (-0.6, 0.45),
    lip_luminance: float = 0.4,
    relight: bool = False,
    skin_luminance: tuple[float, float] | None = SKIN_LUMINANCE,
    level_map: tuple[float, ...] | None = None,
    level_chroma: np.ndarray | None = None,
    fill_reach: float = FILL_REACH,
    prior: np.ndarray | None = None,
    eyes: np.ndarray | None = None,
) -> CleanTexture:
    """Unwrap ``image`` (linear) onto the UV layout keeping only the face's skin, seen well; fill the rest.

    1. Every texel centre is placed on the posed mesh and projected; it is *seen* when it passes the z-buffer,
       faces the camera (normal·view ≥ ``min_facing``) and lies at least ``silhouette_margin`` × the head's
       projected size inside the head's silhouette (a fit a few pixels off puts background there).
    2. De-lighting divides by the SH shading; a seen texel is *accepted* when it is lit (shading ≥
       ``min_shading``), not clipped (< ``clip_level``; skin blown out to near white counts as clipped:
       :data:`BLOWN_OUT`) and looks like this photo's skin: a :class:`SkinModel`
       is fitted to the seen nose, and the cheeks and forehead where their luminance is not far below the nose's
       (:data:`SEED_REGION_SPREAD`: not under a fringe or long hair), and a texel is kept when its chroma Mahalanobis
       distance² is below ``chroma_limit`` and its log-luminance is within ``luminance_range`` of the skin's
       (hair, eyewear, hands, background fail; specular highlights fail the upper bound). Brows, eye openings,
       lips and nostrils are kept as seen (the face's own features, whose colours are not skin's; an eye
       opening's colour is capped at 0.8 so a de-lit sclera never turns white), except brows under hair that
       reaches down to them from the scalp, and the lips' outliers: lip texels clearly less red than the skin
       (:data:`TEETH_REDNESS`) are teeth; the lips get a colour model of their own (from their texels redder
       than the skin), and texels off it in chroma (``chroma_limit``) or log-luminance (``lip_luminance`` or
       2.5 σ) show teeth or the mouth's interior through a fitted mouth that opens or closes differently from
       the photo's. Rejected areas grow by ~1 % of the map (mixed pixels at their
       edges), except *specks*: rejected areas too thin to hold a square of ~3 % of the map, in skin that was
       otherwise taken (a highlight on a wrinkle, a pore, a stray hair), which grow by one texel. The skin's
       highlights are taken out of its de-lit colours, outside the eye openings, the lips and the brows' pale hair
       (:func:`remove_highlights`, with :data:`REMOVE_HIGHLIGHTS`; which texels are skin is judged on the colours as
       de-lit: a bright texel of another colour is not made skin by it). Brow texels brighter than the skin and off
       its chroma are kept only when hair-coloured (:data:`GREY_HAIR`: grey, white, blond) and not like the photo's
       background.
    3. Each accepted texel's weight fades in with its facing angle and away from rejected areas (feathering);
       what is missing takes its mirror texel (u → 1 − u) with the mirror's weight (not around specks: the
       skin around them is the better guess, the mirror side's light and wrinkles differ), the rest a pull-push fill
       of everything accepted (a smooth prior: local averages that widen until they reach data), blended by
       weight, so there are no seams, holes, or black texels anywhere in the map. Outside the face's regions, further
       than about ``fill_reach`` of the map from data, the fill is the skin model's colour. With a ``prior`` map,
       the fill follows it over the features' regions instead (:func:`_fill_guide`: its brows, lids, nostrils and
       lips in this skin's tone, the log-ratio of the data to it filled smoothly).

    Args:
        model, verts, verts_px, image, resolution, sh, depth_tolerance: as :func:`unwrap` (``image`` linear).
        min_facing, min_shading, clip_level, silhouette_margin, chroma_limit, luminance_range, lip_luminance:
            see above.
        relight: re-fit the light's shape to the photo's skin before de-lighting (:func:`fit_light`; needs
            ``sh``); the light used is :attr:`CleanTexture.sh`.
        skin_luminance: the skin albedo's plausible median luminance; with ``sh``, a light that de-lights the
            skin outside it is scaled to its bound (:func:`bound_albedo_level`); None: never.
        fill_reach: see :data:`FILL_REACH`; 0: the pyramid fill alone.
        level_map: ``(intercept, slope[, c_rg, c_bg])``: the de-lit skin's log-luminance ``y`` (its
            :class:`SkinModel`'s) becomes ``intercept + slope · y + c_rg · log R/G + c_bg · log B/G`` (the skin
            model's chroma; within ``skin_luminance``), the whole map scaled by one factor and the light by its
            inverse. A light guessed from one photo regresses to the mean (dark skin comes out too light, fair skin
            too dark) and a camera's exposure moves the photo's level, while the skin's chroma follows its pigment
            and is left alone by exposure; a bundle stores the least-squares map to the truth's level on held-out
            renders (``SkinToneCalibration.level_map``, :mod:`training.skin_tone`). None: as de-lit.
        level_chroma: (2,) log R/G, log B/G of skin as people have it (e.g. the :func:`map_skin_model` chroma of a
            bundle's mean map): a grey or colour-cast photo (:data:`UNTRUSTED_CHROMA`) shows no chroma of its skin,
            and the level map's chroma terms read this instead (grey reads as paler than any skin: greyscale copies
            of 34 held-out renders, ``benchmarks/skin_tone.py --greyscale``: log-luminance bias +0.84 → +0.12,
            median error 0.69 → 0.28); a colour-cast photo's map takes this chroma (the light the inverse gains).
            None: the photo's own.
        eyes: (12, 2) the photo's own eye contours (points 36–47 of the 68-point scheme, e.g. a landmark
            localiser's) in ``image`` pixels. Given, the lids and the skin around the eyes are kept as seen when no
            brighter than the skin (lashes, liner, the crease's and the socket's shade fail the skin's colour
            model but are the face's own), except where they may see the photo's eyeball (inside a contour or
            near it: a fitted lid a little off the photo's shows the iris), around an eye the fit misses by more
            than :data:`EYE_MISREGISTRATION`, or when most of them are far darker than lids (:data:`LIDS_COVERED`);
            None: they are judged as skin.
        prior: a (S, S, 3) linear albedo map of the layout (any S: resampled; a face's features at their texels,
            e.g. the bundle's AlbedoGAN at its mean latent) the fill follows where the photo gave nothing (step 3);
            None: the smooth fill alone. Used only when a skin model was fitted.

    Returns:
        :class:`CleanTexture`.
    """
    img = _float_image(image)
    if prior is not None:
        _check_prior(prior)
    if sh is not None:
        sh = np.asarray(sh, np.float64)
        if sh.shape != (9, 3) or not np.all(np.isfinite(sh)):
            raise ValueError(f"sh: expected finite (9, 3), got {sh.shape}")
    H, W = img.shape[:2]
    R = int(resolution)
    N = R * R
    texel, px, nrm, visible, covered = _project_texels(model, verts, verts_px, W, H, R, depth_tolerance)
    layout = _layout(model, R)
    # the head's silhouette, shrunk by the margin: texels projecting closer to it than that are not trusted
    size = math.sqrt(max(float(covered.sum()), 1.0))
    margin = max(1, int(round(silhouette_margin * size)))
    inner = _box_sum(covered, margin) == (2 * margin + 1) ** 2
    col = np.clip(np.rint(px[:, 0]).astype(np.int64), 0, W - 1)
    row = np.clip(np.rint(px[:, 1]).astype(np.int64), 0, H - 1)
    seen = visible & (nrm[:, 2] >= min_facing) & inner[row, col]
    at = texel[seen]  # the seen texels' indices in the map, ascending
    eyeball = registered = None  # seen texels that may show the photo's eyeball; near an eye the fit registers
    if eyes is not None:
        eyeball, registered = np.zeros(N, bool), np.zeros(N, bool)
        fitted = geo.landmarks_3d(model, np.asarray(verts_px, np.float64)[None])[0]
        eyeball[at], registered[at] = _near_eyes(px[seen], eyes, fitted)

    seen_colour = geo.sample_map(img, _uv_of_pixels(px[seen], W, H))
    # blown-out skin (every channel near the top: a camera's tone curve has pressed its colour to white) is no
    # measurement of the albedo, nor of the light: treated as clipped, unless it is most of the seed area's skin or
    # of the nose's and cheeks' (an over-exposed photo keeps what it has; bound_albedo_level flags it: with the
    # blown skin dropped, a fringe over the forehead had been what was left). Not in the eye openings: a sclera may
    # be that white (it is toned down below, not dropped)
    unclipped = seen_colour.max(1) < clip_level
    blown = (seen_colour.min(1) >= BLOWN_OUT) & ~layout.openings[at]
    seed_seen = unclipped & layout.seed_area[at]
    below = unclipped & (layout.seed_regions[0] | layout.seed_regions[1])[at]  # nose and cheeks (not a fringe's)
    if (seed_seen & ~blown).sum() >= BLOWN_OUT_KEEP * seed_seen.sum() and (
        (below & ~blown).sum() >= BLOWN_OUT_KEEP * below.sum()
    ):
        unclipped &= ~blown
    # the skin's samples for its colour model and level: the seed regions (nose, cheeks, forehead) not far darker
    # than the nose (_skin_regions: a fringe over the forehead had become the skin model, and the light was dimmed
    # to near black to make that "skin" the level of skin)
    skin_area = np.zeros(N, bool)
    skin_area[at] = _skin_regions(layout, at, seen_colour @ LUMA, unclipped)
    exposure: tuple[str, ...] = ()
    level = 1.0  # the light's factor that brings the skin's albedo level within skin_luminance
    fitted_on = None  # the normals a light whose colour differs by direction was fitted on
    if sh is not None and (relight or skin_luminance is not None):
        facing_samples = (nrm[seen, 2] > 0.3) & unclipped
        if relight:  # the light's shape from the photo's own skin (fit_light: what no light explains loses weight)
            samples = layout.seed_area[at] & facing_samples
            sh = fit_light(nrm[seen][samples], seen_colour[samples], sh, colour_prior=LIGHT_COLOUR_PRIOR)
            fitted_on = nrm[seen][samples] if LIGHT_COLOUR_PRIOR is not None else None
        if skin_luminance is not None:  # its level within skin's (bound_albedo_level)
            samples = skin_area[at] & facing_samples
            level, exposure = bound_albedo_level(nrm[seen][samples], seen_colour[samples], sh, skin_luminance)
    texel_shading = np.ones((len(texel), 3)) if sh is None else sh_basis(nrm) @ sh
    if fitted_on is not None and len(fitted_on) >= 50:
        # a light whose colour differs by direction is known only over the normals it was fitted on: elsewhere
        # (the side turned away, a nose bridge seen edge-on) its colour is not extrapolated beyond theirs
        texel_shading = _chroma_within(texel_shading, sh_basis(fitted_on) @ sh)
    seen_shading = texel_shading[seen]
    # which texels are lit is the light's shape, judged before its level is bounded: a bound that dims the light
    # (an under-exposed photo) must not leave the whole face "in shadow"
    lit = (seen_shading.min(1) >= min_shading) & unclipped
    if sh is not None:
        sh, texel_shading, seen_shading = sh * level, texel_shading * level, seen_shading * level
    raw = seen_colour / np.maximum(seen_shading, 0.05 * level)
    idx = at[lit]
    # the skin model's features: the de-lit colours, unclipped (clipping would distort their chroma); the photo's
    # own chroma wherever the light is white, the light's colour taken out where it is not (fit_light's
    # colour_prior: the skin on a face's cool side in shade is still skin)
    colour_ok = seen_colour[lit]
    feature = raw[lit]
    facing = np.zeros(N)
    facing[texel] = nrm[:, 2]
    seeds = skin_area[idx] & (facing[idx] > 0.5)
    skin = fit_skin_model(feature[seeds])
    flags = colour_flags(colour_ok[seeds])
    clean = raw
    if skin is not None and REMOVE_HIGHLIGHTS:
        # the skin's highlights out of the map, but not the eye openings' or the lips' own colours (a sclera is
        # white, lips have a colour of their own), nor the brows' hair: dark hair is left as it is by
        # remove_highlights itself, pale hair here (_hair_coloured); the skin the brows' band
        # covers loses its sheen as the skin beside it does (left in, a brow band's end over a shiny glabella showed
        # as a pale, straight-edged patch: fixture 001). Which texels are skin is judged on the colours as de-lit,
        # as the skin model was fitted (with its spread)
        hairy = layout.brows[at]
        hairy[hairy] = _hair_coloured(raw[hairy], skin)
        clean = remove_highlights(raw, skin, ~(layout.openings | layout.lips)[at] & ~hairy)
    if skin is not None and level_map is not None:
        # the skin's de-lit level mapped to the truth's expected level (the light takes the inverse factor, so
        # albedo × light, the render over the photo, is unchanged), within the skin bound
        bounds = np.log(skin_luminance) if skin_luminance is not None else (-np.inf, np.inf)
        if len(level_map) not in (2, 4):
            raise ValueError(f"level_map: (intercept, slope[, c_rg, c_bg]), not {len(level_map)} numbers")
        a, b, *c = level_map
        chroma = skin.mean
        if level_chroma is not None and UNTRUSTED_CHROMA & set(flags):
            # a grey or colour-cast photo's chroma is not its skin's (grey read as the palest skin there is: the
            # map's chroma term alone lifted a dark-skinned face in a black-and-white portrait to the bound)
            chroma = np.asarray(level_chroma, np.float64)
        target = float(np.clip(a + b * skin.log_y + (np.dot(c, chroma) if c else 0.0), *bounds))
        k = math.exp(target - skin.log_y)
        raw, feature, clean = raw * k, feature * k, clean * k
        texel_shading = texel_shading / k
        if sh is not None:
            sh = sh / k
        skin = replace(skin, log_y=target)
    if skin is not None and level_chroma is not None and "colour_cast" in flags:
        # a cast (the skin off any skin's chroma under white light: a blue or green one) is the light's or the
        # camera's, not the person's: the map takes people's skin chroma (``level_chroma``) at the skin's level,
        # the light the inverse gains, so albedo × light, the render over the photo, is unchanged (the probe's
        # cool- and green-cast portraits had come out with blue- and green-grey skin)
        shift = np.asarray(level_chroma, np.float64) - skin.mean
        gains = np.exp([shift[0], 0.0, shift[1]])
        gains /= float((skin.colour() * gains) @ LUMA) / float(skin.colour() @ LUMA)
        raw, feature, clean = raw * gains, feature * gains, clean * gains
        texel_shading = texel_shading / gains
        if sh is not None:
            sh = sh / gains
        skin = replace(skin, mean=np.asarray(level_chroma, np.float64).copy())

    colour = np.zeros((N, 3))
    colour[at] = seen_colour
    pixel = np.full((N, 2), np.nan)
    pixel[at] = px[seen]
    shading = np.zeros((N, 3))
    shading[texel] = texel_shading
    seen_map = np.zeros(N, bool)
    seen_map[at] = True
    ok = np.zeros(N, bool)
    ok[idx] = True
    # clipped per texel, as the map stores it: an over-bright texel must not lift its neighbours' fill
    delit = np.zeros((N, 3))
    delit[at] = np.clip(clean, 0.0, 1.0)

    # the eye openings show the eyeball (iris, sclera): kept, but a sclera de-lit to white is toned down
    opening = layout.openings & seen_map
    delit[opening] *= np.minimum(1.0, 0.8 / np.maximum(delit[opening].max(1), 1e-6))[:, None]
    # the lips: kept as seen, but not what shows through them (teeth, the mouth's dark interior where the fit's
    # lips close over an opening, or open over closed ones): the outliers of the lips' own colour model, fitted on
    # the lip texels redder than the skin. Lips, even when lighter than a dark skin, are redder than it; texels
    # clearly less red are teeth, lit or in the mouth's shade (an open mouth fitted closed shows mostly teeth,
    # which had become the lips' model: white lips on synthetic faces with open mouths). Texels nearer the skin's
    # chroma than the lips' are skin the fit's lips landed on (a lip height off, an open mouth fitted closed): taken
    # as seen they made skin-coloured lips; filled, the lips follow the prior's in this skin's tone (held-out
    # synthetic lips 29.1 → 30.8 dB on seed 2024, 29.1 → 29.7 on seed 2025, the other regions unchanged)
    lip_texels = layout.lips[idx]
    lip = None
    if skin is not None:
        redness = _chroma(feature[lip_texels])[0][:, 0] - skin.mean[0]
        ok[idx[lip_texels][redness < -TEETH_REDNESS]] = False
        lip = fit_skin_model(feature[lip_texels][redness > 0])
        lip_texels = lip_texels & ok[idx]
    if lip is None:
        lip = fit_skin_model(feature[lip_texels])
    if lip is not None:
        d2, dy = lip.distances(feature[lip_texels])
        band = max(lip_luminance, 2.5 * lip.log_y_std)
        off = np.zeros((R, R), bool)
        bad = (d2 >= chroma_limit) | (np.abs(dy) >= band)
        if skin is not None and LIPS_SKIN_TEST and "greyscale" not in flags:
            bad |= skin.distances(feature[lip_texels])[0] < d2
        off.flat[idx[lip_texels][bad]] = True
        ok &= ~((_box_sum(off, 1) > 0).reshape(-1) & layout.lips)
    accepted = ok
    local = np.zeros(N, bool)  # texels around specks of rejected skin: filled from around them, not mirrored
    flags = (*flags, *exposure)
    if skin is None:
        flags = (*flags, "no_skin_model")
    else:
        d2, dy = skin.distances(feature)
        lo, hi = luminance_range
        lo = min(lo, -2.5 * skin.log_y_std)
        hi = max(hi, 2.5 * skin.log_y_std)
        good = (d2 < chroma_limit) & (dy < hi) & (dy > lo)
        # outside the face's regions, where a fit wider than the head reaches past it: colours more typical of
        # the photo just outside the head than of this face's skin are background (fixture 006's temples: the
        # graffiti behind him passed his broad skin model and drew white marks beside both eyes)
        outer = layout.rest[idx]
        bright_brows = layout.brows[idx] & (d2 >= chroma_limit) & (dy > 0)
        tested = outer | bright_brows
        background = np.zeros(len(idx), bool)
        background[tested] = background_like(img, covered, size, colour_ok[tested], colour_ok[seeds])
        good &= ~(background & outer)
        # brows are hair: kept as seen when skin-like or darker than the skin; brighter and off its chroma only when
        # hair-coloured (_hair_coloured: grey, white, blond, which rejected had been filled with the prior's dark
        # brows) and not like the photo's background (a wide fit puts a brow's tail over it), never a blue hat
        keep = layout.keep_as_seen.copy()
        pale_hair = np.zeros(len(idx), bool)
        pale_hair[bright_brows] = _hair_coloured(feature[bright_brows], skin)
        keep[idx[bright_brows & (background | ~pale_hair)]] = False
        if eyeball is not None:
            # the lids and the skin around the eyes are the face's own whatever their colour when no brighter than
            # the skin: lashes, liner, the crease's and the socket's shade (which the light's low orders do not
            # hold) fail the skin's chroma and level, and rejected they were filled with the prior's paler lids in
            # patches (the fixture portraits' eyes ringed with fill); brighter and off the skin's chroma is a lens's
            # glare, still rejected, and so is whatever shows the photo's eyeball (a fitted lid a little off the
            # photo's: its iris kept as a lid drew dark blots round held-out renders' eyes)
            # (not where most of them are far darker than lids are: a dark lens or hair over the eyes)
            lid = layout.lids[idx] & registered[idx]
            if lid.any() and np.median(dy[lid]) > LIDS_COVERED:
                good &= ~(lid & eyeball[idx])
                keep[idx[lid & ~eyeball[idx] & ((dy <= 0) | good)]] = True
        # ... nor hair over them: brow and lid texels darker than the skin's range that connect, through seen texels as
        # dark (not background), to such texels on the scalp above the brows are that hair (a fringe down over
        # them, a strand across a temple: fixture 013's dark blots at both brows, mirrored; 001's auburn strand)
        dark = np.zeros(N, bool)
        dark[idx[(dy <= lo) & ~background]] = True
        hair = _reached(dark.reshape(R, R), (dark & layout.scalp).reshape(R, R), max(1, R // 128)).reshape(-1)
        keep[hair & (layout.brows | layout.lids)] = False
        good |= keep[idx]
        rejected = np.zeros((R, R), bool)
        rejected.flat[idx[~good]] = True
        grow = max(1, int(round(R / 128)))
        # specks: rejected areas too thin to hold a (2·speck + 1)² square (a highlight on a wrinkle or the nose, a
        # pore, a stray hair): their surroundings are the best guess of the skin under them, not the mirror side,
        # whose light and wrinkles differ (mirrored squares on 006's forehead); grown by one texel only. What
        # survives the opening is hair, eyewear, background: grown by a disc of `grow` + 1 (mixed pixels at their
        # edges; a disc, as a box grew a small rejection into a square of fill).
        speck = max(1, int(round(R / 64)))
        reach = grow + 2 * max(1, int(round(R / 96)))  # about as far as the feathering below lowers a weight
        thin = rejected & ~(_box_sum(_box_sum(rejected, speck) == (2 * speck + 1) ** 2, speck) > 0)
        # ... and isolated: in skin that was otherwise taken (not the lids' and lashes' rejections around an eye)
        specks = thin & (_box_mean(rejected | ~ok.reshape(R, R), reach) < 0.1)
        large = rejected & ~specks
        grown = _dilate_disc(large, grow + 1) | _dilate_disc(specks, 1)
        accepted = ok & ~(grown.reshape(-1) & ~keep)
        local = ((_box_sum(specks, reach) > 0) & ~(_box_sum(large, reach) > 0)).reshape(-1)
    # weights: facing fade-in and feathering away from everything not accepted
    feather = max(1, int(round(R / 96)))
    inside = _box_mean(_box_mean(accepted.reshape(R, R), feather), feather).reshape(-1)
    facing_well = accepted * np.clip((facing - min_facing) / 0.2, 0.0, 1.0)
    w = facing_well * np.clip(2.0 * inside - 0.5, 0.0, 1.0)
    w = np.where(layout.keep_as_seen & accepted, np.maximum(w, 0.8 * accepted), w)
    # the skin taken on both sides (not the features, which the layout does not mirror exactly), by how squarely
    # each side faced the camera (a side seen edge-on is the least reliable)
    pair = facing_well * _mirror(facing_well, R) * ~layout.keep_as_seen * ~_mirror(layout.keep_as_seen, R)
    if SYMMETRY_REACH > 0:
        # what differs smoothly between the face's two sides is the light's (the albedo's smooth variation is
        # symmetric): both sides to their geometric mean
        # (not in the eye openings, whose sclera was toned down above; within [0, 1], as the map stores it)
        gain = np.where(layout.openings[:, None], 0.0, -0.5 * _side_ratio(delit, pair, R, SYMMETRY_REACH))
        delit = np.clip(delit * np.exp(gain), 0.0, 1.0)
    # the mirror never carries an eye opening onto skin or skin into an opening (the layout is not exactly
    # symmetric: the other eye's white would land on these lids)
    w_m = (1.0 - w) * _mirror(w, R) * (layout.openings == _mirror(layout.openings, R)) * ~local
    weight = w + w_m
    mirrored = _mirror(delit, R)
    if SEAM_REACH > 0:
        # a mirrored texel takes the ratio of the taken texels near it to their mirrors: where one side was not
        # taken, the copy of the other meets the taken skin at its level and colour, whatever made the sides differ
        # there (light bounced off hair onto one temple, a shadow's edge: fixture 001's forehead and cheek)
        mirrored = mirrored * np.exp(_side_ratio(delit, pair, R, SEAM_REACH, SEAM_FADE))
    mixed = w[:, None] * delit + w_m[:, None] * mirrored
    value = np.where(weight[:, None] > 0, mixed / np.maximum(weight, 1e-12)[:, None], 0.0)
    # weight · value + (1 − weight) · (the pyramid's smooth completion): seamless by construction. The eye
    # openings are no source of that completion (their sclera and iris would spread onto the lids around them);
    # they take their own colour over the completion from the skin around them.
    sources = np.where(layout.openings, 0.0, weight)
    guide = None if prior is None or skin is None else _fill_guide(model, prior, skin, R, "greyscale" in flags)
    if guide is not None:
        # the fill follows a face: the prior's features (brows, lids, nostrils, lips) wherever the photo gave
        # nothing, at the photo's own tone: the log-ratio of what was taken to the guide is filled smoothly
        # (pull-push) and multiplies the guide, so the fill meets the taken texels without a seam and, far from
        # data outside the face's regions, is the skin's colour (the guide's there; a faint source of ratio 1).
        # The ratio is read where the guide is skin (where it is a feature, a lip or a brow that may not meet the
        # photo's, the ratio is the misregistration's, not the tone's: pale lips with bright edges) and clamped
        # (a skin texel over a darker feature of the prior, spread onto hidden skin, would whiten it); the taken
        # texels keep their own colour by their weight
        ratio = np.clip(np.log(np.maximum(value, 1e-3)) - np.log(guide), -GUIDE_RATIO_LIMIT, GUIDE_RATIO_LIMIT)
        skin_like = np.exp(-(((np.log(guide @ LUMA) - skin.log_y) / GUIDE_FEATURE_LEVEL) ** 2))
        filled = _fill(ratio, sources * skin_like, 0.0, layout, R, fill_reach)
        albedo = sources[:, None] * value + (1.0 - sources[:, None]) * guide * np.exp(filled)
    else:
        albedo = _fill(value, sources, None if skin is None else skin.colour(), layout, R, fill_reach)
    albedo[layout.openings] += weight[layout.openings, None] * (value - albedo)[layout.openings]

    source = np.zeros(N, np.uint8)
    source[texel] = SOURCE_FILLED
    source[seen_map & ~accepted] = SOURCE_REJECTED
    source[(w_m > 0.5 * weight) & (weight > 0.25) & (source > 0)] = SOURCE_MIRRORED
    source[accepted & (w >= 0.5 * weight)] = SOURCE_SEEN
    return CleanTexture(
        albedo=np.clip(albedo, 0.0, 1.0).reshape(R, R, 3),
        colour=np.clip(colour, 0.0, 1.0).reshape(R, R, 3),
        shading=shading.reshape(R, R, 3),
        source=source.reshape(R, R),
        weight=weight.reshape(R, R),
        accepted=accepted.reshape(R, R),
        pixel=pixel.reshape(R, R, 2),
        skin=skin,
        flags=flags,
        sh=sh,
    )


#: flags under which the photo's skin chroma is not the skin's (:func:`extract`'s level map reads ``level_chroma``)
UNTRUSTED_CHROMA = frozenset({"greyscale", "colour_cast"})
#: flags under which a photo's skin colour is not the person's (:func:`colour_flags`; :func:`bound_albedo_level`:
#: the level is a bound, and clipping washes an over-exposed skin's chroma out: fixture 013's is near grey)
UNTRUSTED_COLOUR = ("greyscale", "colour_cast", "over_exposed", "under_exposed", "no_skin_model")


def match_skin_tone(
    model: geo.FaceModelArrays,
    albedo: np.ndarray,
    skin: SkinModel,
    level_offset: float = 0.0,
    level_tolerance: float = 0.0,
    limit: float = math.log(4.0),
    chroma_weight: float = 1.0,
    level_weight: float = 1.0,
) -> np.ndarray | None:
    """``albedo`` (R, R, 3, linear) recoloured towards ``skin``'s tone by one gain per channel over the map (the eye
    openings excepted: the eyeball's colour is not the skin's): the log-chroma (R/G, B/G) of its cheeks, nose and
    forehead (the texels a photo's :class:`SkinModel` is fitted on) moved to the model's at the map's own level,
    then that level (the trimmed median log-luminance) to within ``level_tolerance`` of the model's plus
    ``level_offset`` (``inf``: chroma only); each log-gain within ±``limit``. ``chroma_weight`` and
    ``level_weight`` move each only that fraction of the way (the photo's share where both it and the map's own
    tone are estimates with errors: the bundle's calibration). None when there is nothing to match (fewer than 30
    skin texels, or not finite).

    For a map that is right in structure but not in colour: AlbedoGAN's map at a latent read off a photo keeps the
    generator's features and skin texture, but the latent misses the tone of faces unlike its training pairs (a dark
    skin came out 2.3× too light). A photo's skin chroma is a good measurement; its level is not (the light's
    brightness and the albedo's trade off): the offset corrects its bias and the tolerance leaves the map's own
    level where the two agree within the photo's error (``benchmarks/skin_tone.py`` measures both;
    :mod:`training.skin_tone` calibrates a bundle's shares). One gain per channel keeps the map's own contrasts
    (brows, lips, hair against skin).
    """
    R = albedo.shape[0]
    layout = _layout(model, R)
    flat = np.asarray(albedo, np.float64).reshape(-1, 3)
    own = map_skin_model(model, albedo)
    if own is None or not all(np.isfinite([*own.mean, own.log_y, *skin.mean, skin.log_y])):
        return None
    d_rg, d_bg = np.clip(chroma_weight * (skin.mean - own.mean), -limit, limit)
    gains = np.exp([d_rg, 0.0, d_bg])
    chroma = fit_skin_model(flat[layout.seed_area] * gains)  # the chroma moved; its level, back to the map's own
    gap = skin.log_y + level_offset - own.log_y
    move = level_weight * math.copysign(max(abs(gap) - level_tolerance, 0.0), gap)
    gains = gains * math.exp(own.log_y + float(np.clip(move, -limit, limit)) - chroma.log_y)
    toned = np.where(layout.openings[:, None], flat, flat * gains)
    return np.clip(toned, 0.0, 1.0).reshape(albedo.shape)


def _fill(value: np.ndarray, weight: np.ndarray, far: Any, layout: _Layout, R: int, fill_reach: float) -> np.ndarray:
    """The pull-push completion of (R², C) ``value`` taken with (R², ) ``weight`` in [0, 1]; with ``far`` (None:
    without), a faint source of it on every texel outside the face's regions: what lies further than ~``fill_reach``
    of the map from any data takes ``far``, not the average of whatever was seen at the map's far ends (bits of
    neck, ear or collar weigh as much as the whole face at the pyramid's coarse levels)."""
    if far is not None and fill_reach > 0:
        faint = np.where(layout.rest, 1.0 / (fill_reach * R) ** 2, 0.0)
        faint = np.minimum(faint, np.maximum(1.0 - weight, 0.0))  # the pyramid's weights stay within [0, 1]
        value = (weight[:, None] * value + faint[:, None] * far) / np.maximum(weight + faint, 1e-12)[:, None]
        weight = weight + faint
    return _pull_push(value.reshape(R, R, -1), weight.reshape(R, R)).reshape(R * R, -1)


def _fill_guide(
    model: geo.FaceModelArrays, prior: np.ndarray, skin: SkinModel, R: int, grey: bool = False
) -> np.ndarray | None:
    """(R², 3) what :func:`extract` fills towards: ``prior`` (a linear albedo map of the layout, any square size:
    a face's features at their texels) in ``skin``'s tone (one gain per channel takes the prior's own skin colour,
    a :class:`SkinModel` of its cheeks, nose and forehead, to ``skin``'s; the eye openings keep the eyeball's) over
    the regions of the face's features (brows, eyes, nose, lips), the skin's colour elsewhere (cheeks, forehead: the
    photo's own skin is the better guess; scalp, ears, neck: a prior's hair would be a guess), fading out over ~6 %
    of the map outside them; ``grey`` (a greyscale photo): the prior's luminance only, in the skin's colour (its
    lips are not to come out pink in a grey map). None when the prior has no skin to model."""
    prepared = _prepared_prior(model, prior, R)
    if prepared is None:
        return None
    at, scaled, own_colour, weight, opening = prepared
    colour = skin.colour()
    if grey:  # (the eye openings too)
        toned = np.clip((scaled @ LUMA)[:, None] * (colour / float(own_colour @ LUMA)), 0.0, 1.0)
    else:
        toned = np.where(opening[:, None], scaled, np.clip(scaled * (colour / own_colour), 0.0, 1.0))
    guide = np.empty((R * R, 3))
    guide[:] = colour
    guide[at] = weight * toned + (1.0 - weight) * colour
    return np.maximum(guide, 1e-3)


def map_skin_model(model: geo.FaceModelArrays, albedo: np.ndarray) -> SkinModel | None:
    """The :class:`SkinModel` of a (S, S, 3) linear map's skin (its cheeks, nose and forehead: the texels a photo's
    skin model is seeded from), or None when it has too little skin to model."""
    flat = np.asarray(albedo, np.float64).reshape(-1, 3)
    return fit_skin_model(flat[_layout(model, np.shape(albedo)[0]).seed_area])


def _check_prior(prior: np.ndarray) -> None:
    """A ValueError naming what ``prior`` should be, unless it is a finite (S, S, 3) map."""
    arr = np.asarray(prior)
    if arr.ndim != 3 or arr.shape[0] != arr.shape[1] or arr.shape[2] != 3 or not np.all(np.isfinite(arr)):
        raise ValueError(f"prior: expected a finite (S, S, 3) map, got {arr.shape}")


def _prepared_prior(model: geo.FaceModelArrays, prior: np.ndarray, R: int) -> tuple[np.ndarray, ...] | None:
    """Where ``prior``'s features weigh in the map (flat indices), its colour there, its skin's colour (3,), the
    features' (n, 1) weight and which of those texels are eye openings (:func:`_fill_guide`), or None; cached per
    face model and resolution for the last prior given (the same object: a service's one mean map)."""
    key = ("prior", id(model), R)
    hit = _CACHE.get(key)  # one read: other threads may replace the entry
    if hit is not None and hit[0] is model and hit[1][0] is prior:
        return hit[1][1]
    from PIL import Image

    arr = np.asarray(prior, np.float64)  # (validated by extract)
    if arr.shape[0] != R:
        arr = _resample(arr, R, Image.BILINEAR)
    scaled = np.clip(arr, 0.0, 1.0).reshape(-1, 3).astype(np.float64)
    own = map_skin_model(model, scaled.reshape(R, R, 3))
    prepared = None
    if own is not None:
        reg = uv_regions(model, R)
        face = reg["brows"] | reg["eyes"] | reg["nose"] | reg["lips"] | reg["nostrils"]
        k = max(1, int(round(R / 64)))
        grown = (_box_sum(face, 2 * k) > 0).astype(np.float64)  # whole inside the regions, fading outside
        weight = _box_mean(_box_mean(grown, k), k).reshape(-1)
        at = np.flatnonzero(weight > 0)
        prepared = (at, scaled[at], own.colour(), weight[at, None], _layout(model, R).openings[at])
    if len(_CACHE) >= _CACHE_ENTRIES:
        _CACHE.clear()
    _CACHE[key] = (model, (prior, prepared))
    return prepared


def delighting_gain(model: geo.FaceModelArrays, clean: CleanTexture) -> np.ndarray:
    """(3,) the factor de-lighting applied at the eye openings: 1 / the light's shading there (the median over the
    openings' texels, whose normals face about as the irises do), which turns the colour the photo shows between
    the lids into an albedo (:func:`facecore.assets.paint_iris`). Ones without a light."""
    R = clean.shading.shape[0]
    at = clean.shading.reshape(-1, 3)[_layout(model, R).openings]
    if not len(at):
        return np.ones(3)
    return 1.0 / np.maximum(np.median(at, axis=0), 0.05)


WARP_LANDMARKS = np.arange(17, 68)  # brows, nose, eyes, mouth: points of the face itself (the jaw line is a contour)


def landmark_warp(
    points: np.ndarray,
    fitted: np.ndarray,
    detected: np.ndarray,
    *,
    sigma: float = 0.35,
    smoothing: float = 0.5,
    max_shift: float = 0.15,
) -> np.ndarray:
    """``points`` (N, 2) pixels moved by the smooth field that takes the fitted landmarks onto the detected ones.

    A fit leaves residuals of a few pixels (its mesh cannot bend everywhere the photo's face does, and the prior
    pulls it towards the mean); unwrapping through it puts the photo's lips, lids and brows a few texels off
    their texels in the layout. This field (Gaussian radial basis functions on the inner landmarks, iBUG 17–67,
    width ``sigma`` × the inter-ocular distance, ridge-regularised by ``smoothing`` so that one noisy point
    cannot fold the map, each residual clipped to ``max_shift`` × the inter-ocular distance so a bad detection
    cannot drag it far) is zero far from the face and follows the detections on it; sampling the photo at
    ``points + field(points)`` registers its features to the layout's.

    Args:
        points: (N, 2) pixel positions to move (e.g. every vertex's projection).
        fitted: (68, 2) the fitted model's landmarks, same pixels.
        detected: (68, 2) the landmarks the fit was fitted to.
    """
    points = np.asarray(points, np.float64)
    fitted = np.asarray(fitted, np.float64)[WARP_LANDMARKS]
    detected = np.asarray(detected, np.float64)[WARP_LANDMARKS]
    if not (np.all(np.isfinite(fitted)) and np.all(np.isfinite(detected))):
        raise ValueError("landmarks: contain NaN or inf")
    iod = float(np.linalg.norm(fitted[42 - 17 : 48 - 17].mean(0) - fitted[36 - 17 : 42 - 17].mean(0)))
    if iod < 1e-6:
        return points.copy()
    residual = detected - fitted
    length = np.linalg.norm(residual, axis=1, keepdims=True)
    residual *= np.minimum(1.0, max_shift * iod / np.maximum(length, 1e-12))

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2 / (2.0 * (sigma * iod) ** 2))

    weights = np.linalg.solve(kernel(fitted, fitted) + smoothing * np.eye(len(fitted)), residual)
    out = points.copy()
    for s in range(0, len(points), 65536):  # (chunk, 51) kernels: bounded memory for big meshes
        out[s : s + 65536] += kernel(points[s : s + 65536], fitted) @ weights
    return out


def _project_texels(
    model: geo.FaceModelArrays, verts: np.ndarray, verts_px: np.ndarray, W: int, H: int, R: int, depth_tolerance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Texel centres on the posed mesh: (texel, px (N, 2), unit normal (N, 3), z-buffer-visible (N,), and the
    (H, W) bool image of the pixels the mesh covers)."""
    verts = np.asarray(verts, np.float64)
    verts_px = np.asarray(verts_px, np.float64)
    if verts.shape != (model.n_verts, 3) or verts_px.shape != (model.n_verts, 2):
        raise ValueError(f"verts/verts_px: expected ({model.n_verts}, 3) and ({model.n_verts}, 2)")
    if not (np.all(np.isfinite(verts)) and np.all(np.isfinite(verts_px))):
        raise ValueError("verts/verts_px: contain NaN or inf")
    layout = _layout(model, R)
    # depth (1), pixel (2) and normal (3) of every texel centre in one interpolation
    normals = geo.vertex_normals(verts, model.faces)
    at = np.einsum("nk,nkc->nc", layout.bary, np.concatenate([verts[:, 2:], verts_px, normals], 1)[layout.corners])
    depth, px, nrm = at[:, 0], at[:, 1:3], at[:, 3:]
    nrm /= np.maximum(np.sqrt(np.einsum("nc,nc->n", nrm, nrm)), 1e-12)[:, None]
    zbuf = _zbuffer(verts_px[model.faces], verts[model.faces, 2], W, H)
    col = np.rint(px[:, 0]).astype(np.int64)
    row = np.rint(px[:, 1]).astype(np.int64)
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
    surface = np.full(len(layout.texel), -np.inf)
    surface[inside] = zbuf[row[inside] * W + col[inside]]
    visible = inside & (depth >= surface - depth_tolerance)
    return layout.texel, px, nrm, visible, np.isfinite(zbuf).reshape(H, W)


@dataclass(frozen=True, eq=False)
class _Layout:
    """What extraction at one resolution needs of the face model alone (:func:`_layout`, cached).

    Attributes:
        texel, corners, bary: (n,) flat index of each texel centre on the skin layout, (n, 3) the vertices of
            its triangle, (n, 3) float64 barycentric coordinates (:func:`facecore.geometry.texel_sampling`).
        keep_as_seen: (R²,) brows, eye openings, lips, nostrils (:func:`uv_regions`); ``openings``: the eye
            openings; ``lips``: the lips; ``seed_area``: cheeks, forehead and nose, where the skin model's
            samples come from (``seed_regions``: the nose, the cheeks, the forehead, each alone); ``brows``: the
            brows; ``lids``: the lids around the openings (:func:`uv_regions`); ``rest``:
            the layout's texels outside every region (scalp, ears, neck, the back of the head); ``scalp``: the
            rest's texels above the brows.
    """

    texel: np.ndarray
    corners: np.ndarray
    bary: np.ndarray
    keep_as_seen: np.ndarray
    openings: np.ndarray
    lips: np.ndarray
    seed_area: np.ndarray
    seed_regions: tuple[np.ndarray, ...]
    brows: np.ndarray
    lids: np.ndarray
    rest: np.ndarray
    scalp: np.ndarray


def prepare(model: geo.FaceModelArrays, resolution: int) -> None:
    """Build what :func:`extract` needs of the face model alone at ``resolution`` now (a service's warm-up)."""
    _layout(model, int(resolution))


def _layout(model: geo.FaceModelArrays, R: int) -> _Layout:
    def build() -> _Layout:
        texel, face, bary = geo.texel_sampling(model, R)
        reg = {k: v.reshape(-1) for k, v in uv_regions(model, R).items()}
        keep = reg["brows"] | reg["eye_openings"] | reg["lips"] | reg["nostrils"]
        seed_area = reg["cheeks"] | reg["forehead"] | reg["nose"]
        rest = np.zeros(R * R, bool)
        rest[texel] = True
        rest &= ~np.any(list(reg.values()), 0)
        rows = np.arange(R * R) // R
        scalp = rest & (rows < rows[reg["brows"]].min())
        return _Layout(
            texel,
            model.faces[face],
            bary.astype(np.float64),
            keep,
            reg["eye_openings"],
            reg["lips"],
            seed_area,
            (reg["nose"], reg["cheeks"], reg["forehead"]),
            reg["brows"],
            reg["lids"],
            rest,
            scalp,
        )

    return _cached("layout", model, R, build)


def light_visibility(
    verts: np.ndarray, faces: np.ndarray, direction: np.ndarray, size: int = 256, offset_px: float = 1.5
) -> np.ndarray:
    """(V,) how much of a distant light from ``direction`` (3,) reaches each vertex past the mesh itself, in [0, 1]:
    1 lit, 0 in the shadow the mesh casts on itself (a nose's on the cheek, a brow ridge's in the socket, the jaw's
    on the neck); between at a shadow's edge. Only what the mesh hides counts: a vertex turned away from the light
    is 1 (its shading, the light's clamped cosine, already has none), and the occlusion fades in with the cosine
    over 0–0.2 (at grazing light the test would read the vertex's own neighbours as a shadow, and a shading step
    would mark the terminator).

    An orthographic z-buffer of the mesh seen from the light (``size`` pixels across its bounding sphere); each
    vertex is tested ``offset_px`` pixels out along its normal (so its own triangles do not hide it) against the
    3 × 3 pixels around it (the share that do not hide it: a soft edge about a pixel wide).
    """
    v = np.asarray(verts, np.float64)
    faces = np.asarray(faces, np.int64)
    d = np.asarray(direction, np.float64)
    if d.shape != (3,) or not np.all(np.isfinite(d)) or np.linalg.norm(d) < 1e-9:
        raise ValueError(f"direction: expected a finite, non-zero (3,) vector, got {d!r}")
    d = d / np.linalg.norm(d)
    normals = geo.vertex_normals(v, faces)
    centre = 0.5 * (v.min(0) + v.max(0))
    radius = max(float(np.linalg.norm(v - centre, axis=1).max()), 1e-9)
    px_size = 2.0 * radius / size
    a = np.cross(d, [1.0, 0.0, 0.0] if abs(d[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(d, a)

    def to_px(p: np.ndarray) -> np.ndarray:
        return (np.stack([p @ a, p @ b], -1) / radius + 1.0) * (0.5 * size) - 0.5

    zbuf = _zbuffer(to_px(v[faces] - centre), (v[faces] - centre) @ d, size, size)
    probe = v - centre + offset_px * px_size * normals
    at = np.rint(to_px(probe)).astype(np.int64)
    depth = probe @ d
    lit = np.zeros(len(v))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            col, row = np.clip(at[:, 0] + dx, 0, size - 1), np.clip(at[:, 1] + dy, 0, size - 1)
            lit += depth >= zbuf[row * size + col] - 0.5 * px_size
    return 1.0 - (1.0 - lit / 9.0) * np.clip(normals @ d / 0.2, 0.0, 1.0)


def _zbuffer(tri_xy: np.ndarray, tri_depth: np.ndarray, width: int, height: int) -> np.ndarray:
    """(height · width,) the largest depth of the triangles covering each pixel centre, -inf where none does.

    Scanline z-buffer, vectorised: each triangle's pixel rows, on each row the span between its edges'
    crossings (depth interpolated along the edges, then along the span), the maximum per pixel. Covers the
    same pixels as :func:`facecore.geometry.rasterize_nodes` (boundary inclusive, degenerate triangles
    dropped) without testing every pixel of each triangle's bounding box.

    Args:
        tri_xy: (F, 3, 2) triangle corners in pixels (x right, y down, centres at integers).
        tri_depth: (F, 3) depth of each corner; larger wins.
    """
    eps = 1e-9
    x, y, z = tri_xy[..., 0], tri_xy[..., 1], tri_depth
    area2 = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    keep = np.abs(area2) > 1e-14
    order = np.argsort(y[keep], axis=1)
    x, y, z = (np.take_along_axis(c[keep], order, 1) for c in (x, y, z))  # corners from top to bottom
    top = np.maximum(np.ceil(y[:, 0] - eps).astype(np.int64), 0)
    bottom = np.minimum(np.floor(y[:, 2] + eps).astype(np.int64), height - 1)
    tri, k = _runs(top, bottom)
    row = top[tri] + k
    ry = row.astype(np.float64)

    def crossing(p: int | np.ndarray, q: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each row meets the edge from corner p to q of its triangle (clamped to its ends): x, depth."""
        xp, yp, zp = x[tri, p], y[tri, p], z[tri, p]
        dy = y[tri, q] - yp
        t = np.clip(np.divide(ry - yp, dy, out=np.zeros_like(dy), where=dy > 1e-12), 0.0, 1.0)
        return xp + t * (x[tri, q] - xp), zp + t * (z[tri, q] - zp)

    # a row meets the long edge (top → bottom) and the upper or the lower short edge; along a flat top or
    # bottom edge, the lower edge's start or end is that edge's other corner
    x_long, z_long = crossing(0, 2)
    lower = (ry >= y[tri, 1]).astype(np.int64)
    x_short, z_short = crossing(lower, lower + 1)
    swap = x_short < x_long
    left, right = np.where(swap, x_short, x_long), np.where(swap, x_long, x_short)
    z_left = np.where(swap, z_short, z_long)
    first = np.maximum(np.ceil(left - eps), 0).astype(np.int64)
    last = np.minimum(np.floor(right + eps), width - 1).astype(np.int64)
    run = right - left
    slope = np.divide(np.where(swap, z_long, z_short) - z_left, run, out=np.zeros_like(run), where=run > 1e-12)
    # the depth at each span's first pixel, then one slope per pixel (a span reaching two pixels is ≥ 1 − 2 eps
    # wide, so the last pixel overshoots its end's depth by ≤ eps · slope)
    start = z_left + slope * np.clip(first - left, 0.0, np.maximum(run, 0.0))
    span, step = _runs(first, last)
    zbuf = np.full(height * width, -np.inf)
    np.maximum.at(zbuf, (row * width + first)[span] + step, start[span] + slope[span] * step)
    return zbuf


def _runs(first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The integers of each range ``first[i] … last[i]`` (none when last < first), as (i, offset from first[i])."""
    count = np.maximum(last - first + 1, 0)
    owner = np.repeat(np.arange(len(first)), count)
    return owner, np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)


def _box_sum(a: np.ndarray, radius: int) -> np.ndarray:
    """Sum of (H, W) ``a`` over the (2r+1)² box around each element (zero padding: borders count as 0); exact
    integer counts for a bool or integer ``a``."""
    r = int(radius)
    k = 2 * r + 1
    c = np.pad(a.astype(np.int64 if a.dtype.kind in "bui" else np.float64), ((r + 1, r), (r + 1, r)))
    c = c.cumsum(0).cumsum(1)
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]


def _dilate_disc(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) bool ``mask`` dilated by the disc of ``radius`` texels (every texel within that Euclidean distance of
    one in the mask): each row of the disc a horizontal run, as a running sum."""
    r = int(radius)
    H, W = mask.shape
    rows = np.pad(mask, ((r, r), (0, 0)))
    out = np.zeros((H, W), bool)
    for dy in range(-r, r + 1):
        half = math.isqrt(r * r - dy * dy)
        k = 2 * half + 1
        c = np.pad(rows[r + dy : r + dy + H].astype(np.int32), ((0, 0), (half + 1, half))).cumsum(1)
        out |= (c[:, k:] - c[:, :-k]) > 0
    return out


def _box_mean(a: np.ndarray, radius: int) -> np.ndarray:
    """Mean of (H, W) ``a`` over the (2r+1)² box around each element (zero padding: borders count as 0)."""
    return _box_sum(a, radius) / (2 * int(radius) + 1) ** 2


def _reached(mask: np.ndarray, seeds: np.ndarray, step: int) -> np.ndarray:
    """(H, W) the texels of ``mask`` connected (8-neighbourhood) to ``seeds`` within it, traced on ``step`` × ``step``
    blocks (a block is in the mask when any of its texels is; gaps narrower than a block are bridged)."""
    H, W = mask.shape
    h, w = -(-H // step), -(-W // step)

    def blocks(a: np.ndarray) -> np.ndarray:
        padded = np.zeros((h * step, w * step), bool)
        padded[:H, :W] = a
        return padded.reshape(h, step, w, step).any(axis=(1, 3))

    allowed, reached = blocks(mask), blocks(seeds & mask)
    while True:
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        grown &= allowed
        if (grown == reached).all():
            break
        reached = grown
    return np.repeat(np.repeat(reached, step, 0), step, 1)[:H, :W] & mask


def _chroma_within(shading: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N, 3) ``shading`` with each one's chroma (each channel over its luminance) clipped to the 2nd–98th
    percentile of the (M, 3) ``reference`` shadings', its luminance kept."""
    ref = reference / np.maximum(reference @ LUMA, 1e-9)[:, None]
    y = shading @ LUMA
    out = np.clip(shading / np.maximum(y, 1e-9)[:, None], *np.percentile(ref, [2.0, 98.0], axis=0))
    out *= (y / np.maximum(out @ LUMA, 1e-9))[:, None]
    return np.where(((shading > 0).all(1) & (y > 0))[:, None], out, shading)


def _side_ratio(delit: np.ndarray, pair: np.ndarray, R: int, reach: float, fade: float = 0.0) -> np.ndarray:
    """(R², 3) the log-ratio of each texel's value to its mirror's, smoothed over boxes of ``reach`` of the map
    (twice), weighted by (R²,) ``pair`` (the texels taken on both sides, by how well), completed smoothly
    (pull-push) beyond them and within ±:data:`SYMMETRY_LIMIT`; antisymmetric (its mirror is its negative). Zero
    without pairs. A smooth field: worked out on 4 × 4 blocks (bilinearly upsampled) where the map's size allows."""
    if not pair.any():
        return np.zeros((R * R, 3))
    log = np.log(np.maximum(delit, 1e-3))
    diff = (log - _mirror(log, R)) * pair[:, None]
    f = 4 if R % 4 == 0 and R >= 128 else 1  # blocks that the mirror maps onto blocks
    n = R // f

    def blocks(a: np.ndarray) -> np.ndarray:
        return a.reshape(n, f, n, f, -1).sum(3).sum(1) / (f * f)

    weight, diff = blocks(pair)[..., 0], blocks(diff)
    r = max(1, int(round(n * reach)))

    def smooth(a: np.ndarray) -> np.ndarray:
        return _box_mean(_box_mean(a, r), r)

    density = smooth(weight)
    ratio = np.stack([smooth(diff[..., c]) for c in range(3)], -1) / np.maximum(density, 1e-9)[..., None]
    confidence = np.clip(2.0 * density, 0.0, 1.0)  # full where the neighbourhood is at least half pairs
    filled = _pull_push(ratio, confidence)
    if fade > 0:  # towards 0 further than ~fade of the map from the pairs
        g = max(1, int(round(n * fade / 2)))
        filled = filled * np.clip(4.0 * _box_mean(_box_mean(np.clip(weight, 0.0, 1.0), g), g), 0.0, 1.0)[..., None]
    # antisymmetric: the pyramid is not mirror-symmetric where a level's size is odd; made so on the blocks, which the
    # mirror maps onto blocks, as bilinear doubling (edges clamped) commutes with the mirror
    filled = 0.5 * (filled - filled[:, ::-1])
    while filled.shape[0] < R:
        filled = _upsample(filled, (2 * filled.shape[0], 2 * filled.shape[1]))
    return np.clip(filled.reshape(R * R, 3), -SYMMETRY_LIMIT, SYMMETRY_LIMIT)


def _hair_coloured(colours: np.ndarray, skin: SkinModel) -> np.ndarray:
    """(N,) bool: which (N, 3) de-lit colours look like hair rather than the skin with a highlight on it: of a warm or
    grey hue (not blue, green or purple: a hat, the background) and either near grey (white or grey hair:
    :data:`GREY_HAIR`) or off the line from the skin's chroma to grey (blond, red, brown hair: :data:`HAIR_OFF_SKIN`),
    along which a highlight, the light's colour added to the skin's, moves a texel."""
    c = _chroma(np.asarray(colours, np.float64))[0]
    s = np.asarray(skin.mean, np.float64)
    t = np.clip(c @ s / max(float(s @ s), 1e-12), 0.0, 1.0)
    off = np.linalg.norm(c - t[:, None] * s, axis=1)
    warm = (c[:, 0] >= -0.05) & (c[:, 1] <= 0.05)
    return warm & ((np.linalg.norm(c, axis=1) < GREY_HAIR * np.linalg.norm(s)) | (off > HAIR_OFF_SKIN))


def _skin_regions(layout: _Layout, at: np.ndarray, luminance: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """(len(at),) bool: which of the seen texels ``at`` (their photo ``luminance``; ``usable``: not clipped) are in
    the seed regions not far darker (:data:`SEED_REGION_SPREAD`) than the nose, which hair, a beard or a hand rarely
    covers, or, when the nose is that much darker than both the cheeks and the forehead (dark lenses over its
    bridge), than the darker of those two. A region showing fewer than 30 usable texels is kept; with the nose
    among them, the whole seed area is."""
    nose, *others = (region[at] & usable for region in layout.seed_regions)
    if nose.sum() < 30:
        return layout.seed_area[at]
    log_y = np.log(np.maximum(luminance, 1e-6))
    medians = [float(np.median(log_y[m])) if m.sum() >= 30 else None for m in others]
    ref = float(np.median(log_y[nose]))
    if all(m is not None and m > ref + SEED_REGION_SPREAD for m in medians):
        ref = min(medians)  # type: ignore[type-var]
    keep = nose if ref - float(np.median(log_y[nose])) <= SEED_REGION_SPREAD else np.zeros(len(at), bool)
    for region, median in zip(others, medians, strict=True):
        if median is None or median >= ref - SEED_REGION_SPREAD:
            keep = keep | region
    return keep


def _near_eyes(points: np.ndarray, eyes: np.ndarray, fitted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of the (N, 2) pixel ``points`` may show the photo's eyeball, and which are nearer an eye the fit
    registers well, each (N,) bool.

    May show it: inside either of the photo's 6-point eye contours ``eyes`` (12, 2), or within :data:`EYE_EDGE_PX`
    plus that eye's misregistration (the mean distance of the fitted head's contour points, ``fitted`` (68, 2), to
    the photo's) of the contour. Registered well: that misregistration is at most :data:`EYE_MISREGISTRATION` of the
    eye's width (corner to corner).
    """
    eyes = np.asarray(eyes, np.float64)
    if eyes.shape != (12, 2) or not np.all(np.isfinite(eyes)):
        raise ValueError(f"eyes: expected finite (12, 2) points, got {eyes.shape}")
    eyeball = np.zeros(len(points), bool)
    nearest = np.argmin([np.linalg.norm(points - c.mean(0), axis=1) for c in (eyes[:6], eyes[6:])], 0)
    registered = np.zeros(len(points), bool)
    for k, (contour, fit) in enumerate(((eyes[:6], fitted[36:42]), (eyes[6:], fitted[42:48]))):
        miss = float(np.linalg.norm(fit - contour, axis=1).mean())
        registered |= (nearest == k) & (miss <= EYE_MISREGISTRATION * np.linalg.norm(contour[3] - contour[0]))
        a, b = contour, np.roll(contour, -1, 0)  # the contour's 6 edges a → b
        d = points[:, None] - a[None]  # (N, 6, 2)
        e = b - a
        t = np.clip((d * e).sum(-1) / np.maximum((e * e).sum(-1), 1e-12), 0.0, 1.0)
        near = (np.linalg.norm(d - t[..., None] * e, axis=-1) <= EYE_EDGE_PX + miss).any(1)
        eyeball |= near | geo.inside_polygon(points, contour)
    return eyeball, registered


def _mirror(a: np.ndarray, R: int) -> np.ndarray:
    """A flat (R², …) texel array at each texel's mirror texel (u → 1 − u, same row)."""
    return a.reshape(R, R, *a.shape[1:])[:, ::-1].reshape(a.shape)


def _pull_push(value: np.ndarray, weight: np.ndarray, levels: int = 12) -> np.ndarray:
    """Smooth fill of (R, R, C) ``value`` with (R, R) ``weight`` in [0, 1] (pull-push, Gortler et al. 1996).

    Pull: 2 × 2 weighted averages up a pyramid (weights saturate at 1); push: each level is completed from the
    coarser one, bilinearly upsampled, by its missing weight. Where there is data the result is a local average
    of it; far from any data it is a wide average, so large unseen areas get the surrounding skin's colour.
    """
    vals, wts = [value * weight[..., None]], [weight]
    for _ in range(levels):
        v, w = vals[-1], wts[-1]
        if min(w.shape) <= 1:
            break
        sw, sv = _sum2x2(w), _sum2x2(v)
        # normalise to a mean colour with a weight of at most 1 (premultiplied)
        norm = np.maximum(sw, 1e-12)
        wn = np.minimum(sw, 1.0)
        vals.append(sv / norm[..., None] * wn[..., None])
        wts.append(wn)
    # push: complete from coarse to fine
    filled = vals[-1] / np.maximum(wts[-1], 1e-12)[..., None]
    if wts[-1].max() <= 0:
        filled = np.zeros_like(filled)
    for v, w in zip(vals[-2::-1], wts[-2::-1], strict=True):
        up = _upsample(filled, w.shape)
        filled = v + (1.0 - w)[..., None] * up
    return filled


def _sum2x2(a: np.ndarray) -> np.ndarray:
    """Sums of the 2 × 2 blocks of (h, w, …) ``a``, zero-padded to even sides."""
    h, w = a.shape[:2]
    if h % 2 or w % 2:
        a = np.pad(a, ((0, h % 2), (0, w % 2)) + ((0, 0),) * (a.ndim - 2))
    return a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]


def _upsample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear ×2 upsampling of (h, w, C) to ``shape`` (≤ 2h × 2w), texel centres aligned, edges clamped."""
    return _upsample_axis(_upsample_axis(a, 1, shape[1]), 0, shape[0])


def _upsample_axis(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Bilinear ×2 along ``axis`` (0 or 1), cut to ``size``: output 2i and 2i + 1 lie at input i − 1/4 and
    i + 1/4, so they take 1/4 and 3/4 of their two nearest inputs (the first and last one clamped)."""

    def at(s: int | slice) -> tuple[int | slice, ...]:
        return (slice(None),) * axis + (s,)

    n = a.shape[axis]
    out = np.empty(a.shape[:axis] + (2 * n,) + a.shape[axis + 1 :])
    lo, hi = a[at(slice(None, -1))], a[at(slice(1, None))]
    out[at(0)] = a[at(0)]
    out[at(slice(2, None, 2))] = lo * 0.25 + hi * 0.75
    out[at(slice(1, -1, 2))] = lo * 0.75 + hi * 0.25
    out[at(-1)] = a[at(-1)] * 0.75 + a[at(-1)] * 0.25
    return out[at(slice(None, size))]


def box_downsample(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) float map → (size, size, C) float32 area average (exact box means when H and W are multiples of
    ``size``, else PIL's area resampling per channel)."""
    h, w, c = image.shape
    if h % size == 0 and w % size == 0:
        return image.reshape(size, h // size, size, w // size, c).mean((1, 3)).astype(np.float32)
    from PIL import Image

    return _resample(image, size, Image.BOX)


def _resample(image: np.ndarray, size: int, resample: int) -> np.ndarray:
    """(H, W, C) float → (size, size, C) float32, each channel resampled by PIL's ``resample`` filter."""
    from PIL import Image

    planes = [Image.fromarray(np.ascontiguousarray(image[..., i], np.float32), mode="F") for i in range(image.shape[2])]
    return np.stack([np.asarray(p.resize((size, size), resample)) for p in planes], -1).astype(np.float32)
