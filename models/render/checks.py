"""Render checks for the eye, mouth and neck assets (issue 15): numbers a person's eye would agree with.

Used by ``tests/models/test_face_assets.py`` and ``benchmarks/face_assets.py``; numpy only. Luminance is
Rec. 709 luma of the sRGB-encoded render in [0, 1] (what the picture shows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facecore import geometry as geo

_LUMA = np.array([0.2126, 0.7152, 0.0722])
LEFT_EYE = tuple(range(42, 48))  # iBUG-68: the subject's left eye (image right in a frontal view)
RIGHT_EYE = tuple(range(36, 42))
OUTER_LIPS = tuple(range(48, 60))
INNER_LIPS = tuple(range(60, 68))


def luminance(image_srgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 or [0, 1] float sRGB → (H, W) luma in [0, 1]."""
    img = np.asarray(image_srgb, dtype=np.float64)
    if img.max() > 1.0:
        img = img / 255.0
    return img @ _LUMA


def polygon_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixel centres inside the polygon ``points`` (K, 2) in pixels (x right, y down)."""
    H, W = shape
    ys, xs = np.mgrid[0:H, 0:W]
    centres = np.stack([xs.ravel(), ys.ravel()], 1)
    return geo.inside_polygon(centres, np.asarray(points, np.float64)).reshape(H, W)


@dataclass(frozen=True)
class EyeCheck:
    """The pupil blob of one eye region.

    Attributes:
        pixels: pixels of the eye opening (the lid contour's polygon).
        pupil: mean luma of the dark blob (the connected dark pixels around the darkest one).
        surround: median luma of the opening's pixels 1.5–4 blob radii from its centre (iris and sclera).
        contrast: ``surround - pupil``.
        sides: how many of the 4 quadrants around the blob hold surround pixels (a blob *inside* the eye has
            lighter pixels on at least 3 sides; one at the lid's edge does not).
    """

    pixels: int
    pupil: float
    surround: float
    contrast: float
    sides: int


def eye_check(image_srgb: np.ndarray, contour_px: np.ndarray) -> EyeCheck:
    """Find the dark pupil blob inside an eye contour (6 landmarks, pixels) and measure its contrast."""
    lum = luminance(image_srgb)
    mask = polygon_mask(np.asarray(contour_px, np.float64), lum.shape)
    n = int(mask.sum())
    if n < 12:
        return EyeCheck(n, float("nan"), float("nan"), 0.0, 0)
    vals = lum[mask]
    dark = mask & (lum <= np.percentile(vals, 12))
    # the connected (4-neighbour) dark blob around the darkest pixel
    ys, xs = np.nonzero(mask)
    start = int(np.argmin(vals))
    blob = np.zeros_like(mask)
    stack = [(ys[start], xs[start])]
    while stack:
        y, x = stack.pop()
        if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and dark[y, x] and not blob[y, x]:
            blob[y, x] = True
            stack += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]
    by, bx = np.nonzero(blob)
    cy, cx = by.mean(), bx.mean()
    r = max(np.sqrt(len(by) / np.pi), 1.0)
    dy, dx = ys - cy, xs - cx
    dist = np.hypot(dy, dx)
    ring = (dist >= 1.5 * r) & (dist <= 4.0 * r)
    if not ring.any():
        return EyeCheck(n, float(lum[blob].mean()), float("nan"), 0.0, 0)
    quadrant = (np.abs(dx) >= np.abs(dy)) * (1 + (dx > 0)) + (np.abs(dx) < np.abs(dy)) * (3 + (dy > 0))
    sides = len(np.unique(quadrant[ring]))
    pupil = float(lum[blob].mean())
    surround = float(np.median(vals[ring]))
    return EyeCheck(n, pupil, surround, surround - pupil, sides)


def mouth_margin(image_srgb: np.ndarray, landmarks_px: np.ndarray) -> tuple[float, float, float]:
    """(lips, interior, margin): median luma of the lips (outer lip polygon minus the inner one, shrunk by the
    inner polygon) and of the mouth interior (inner lip polygon), and ``lips - interior``."""
    lum = luminance(image_srgb)
    lm = np.asarray(landmarks_px, np.float64)
    inner = polygon_mask(lm[list(INNER_LIPS)], lum.shape)
    outer = polygon_mask(lm[list(OUTER_LIPS)], lum.shape)
    lips = outer & ~inner
    if inner.sum() < 4 or lips.sum() < 4:
        return float("nan"), float("nan"), 0.0
    a, b = float(np.median(lum[lips])), float(np.median(lum[inner]))
    return a, b, a - b


def _bottom_rows(mask: np.ndarray, fraction: float) -> tuple[int, int] | None:
    """(first, last) row of the lowest ``fraction`` of the silhouette's height; None for an empty mask."""
    rows = np.flatnonzero(mask.any(1))
    if len(rows) == 0:
        return None
    top, bottom = int(rows[0]), int(rows[-1])
    return int(np.floor(bottom - fraction * (bottom - top + 1))) + 1, bottom


def bottom_gaps(mask: np.ndarray, fraction: float = 0.05) -> tuple[int, int]:
    """(gaps, rows): background pixels enclosed between covered pixels of the same row in the lowest
    ``fraction`` of the silhouette's height (notches and holes in the neck's edge), and the rows looked at."""
    m = np.asarray(mask, bool)
    span = _bottom_rows(m, fraction)
    if span is None:
        return 0, 0
    start, bottom = span
    gaps = 0
    for r in range(start, bottom + 1):
        cols = np.flatnonzero(m[r])
        if len(cols):
            gaps += int((~m[r, cols[0] : cols[-1] + 1]).sum())
    return gaps, bottom - start + 1


def bottom_notches(image_srgb: np.ndarray, mask: np.ndarray, fraction: float = 0.05, tolerance: float = 0.12):
    """Pixels of the lowest ``fraction`` of the silhouette whose luma differs from that band's median by more
    than ``tolerance`` (a differently coloured band or notches at the neck's edge), and the band's size."""
    m = np.asarray(mask, bool)
    span = _bottom_rows(m, fraction)
    if span is None:
        return 0, 0
    start, bottom = span
    band = np.zeros_like(m)
    band[start : bottom + 1] = m[start : bottom + 1]
    lum = luminance(image_srgb)[band]
    return int((np.abs(lum - np.median(lum)) > tolerance).sum()), int(band.sum())


def teeth_penetration(model, verts: np.ndarray, yaw: float = 0.0, pixel_m: float = 2e-4) -> tuple[float, int]:
    """Teeth showing through the skin, seen from the front (turned by ``yaw`` radians about the vertical).

    An orthographic z-buffer over the teeth's box (``pixel_m`` pixels) of the face without the teeth and of
    the teeth alone (:class:`facecore.assets.Teeth`): where the face's nearest surface is outer skin facing
    the camera (not the eyes, the mouth cavity, the skin folded inside the lips or the inside of the head
    seen through the mouth) and the teeth lie in front of it, they poke through the lips or the chin.

    Args:
        model: :class:`facecore.geometry.FaceModelArrays`; verts: (V, 3) its posed vertices.

    Returns:
        ``(depth, pixels)``: how far (metres) the teeth come out in front of the skin at most (≤ 0 when they
        never do: then minus the least clearance) and how many pixels they do so by more than 0.1 mm.
    """
    from facecore import assets as fa

    a = fa.face_assets(model)
    if a.teeth is None:
        return float("-inf"), 0
    v = np.asarray(verts, np.float64)
    diff = fa.teeth_over_skin(model, v, a.teeth.vertices(v), a.teeth.faces, yaw, pixel_m)
    if not len(diff):
        return float("-inf"), 0
    return float(diff.max()), int((diff > 1e-4).sum())


def render_face(
    face_model,
    verts: np.ndarray,
    albedo_srgb: np.ndarray,
    size: int = 256,
    crop_scale: float = 1.6,
    assets: bool = True,
    iris_srgb=None,
    teeth: bool = True,
    shape: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render posed vertices (V, 3) with an sRGB albedo map on 18 % grey, framed like the service's face crop,
    under a soft frontal light. ``face_model``: a :class:`models.face.model.FaceModel`. ``assets`` False
    renders the eyes and mouth from the albedo map (the look before issue 15); ``teeth`` draws the teeth
    (:class:`facecore.assets.Teeth`) with the assets, fitted behind the lips of identity ``shape`` when given (as
    the service's exports draw them: :func:`facecore.assets.head_teeth`).

    Returns:
        ``(image (S, S, 3) uint8 sRGB, mask (S, S) bool, landmarks (68, 2) pixels)``.
    """
    import torch

    from facecore import color
    from facecore import geometry as geo
    from facecore.assets import with_head_teeth
    from models.encoder import alignment_camera
    from models.render import MeshRenderer, WeakPerspectiveCamera

    if teeth and assets and shape is not None:
        verts = with_head_teeth(face_model.arrays, verts, shape)
    key = (id(face_model), size, assets, teeth)
    renderer = _RENDERERS.get(key)
    if renderer is None:
        renderer = _RENDERERS[key] = MeshRenderer.from_face_model(face_model, size, assets=assets, teeth=teeth)
    s, tx, ty = alignment_camera(face_model.arrays, crop_scale)
    cam = WeakPerspectiveCamera(torch.tensor([s]).float(), torch.tensor([[tx, ty]]).float())
    sh = np.zeros((9, 3))
    sh[0], sh[3], sh[2] = 0.75 / 0.2820948, 0.25 / 1.0233, 0.12 / 1.0233  # ambient + a little from front/above
    albedo = torch.as_tensor(color.srgb_to_linear(np.asarray(albedo_srgb, np.float64)), dtype=torch.float32)
    back = torch.full((1, 3, size, size), 0.18)
    tex = None if iris_srgb is None or not assets else MeshRenderer.asset_textures(face_model, [iris_srgb])
    with torch.no_grad():
        out = renderer(
            torch.as_tensor(np.asarray(verts), dtype=torch.float32)[None], cam, albedo.permute(2, 0, 1)[None],
            torch.as_tensor(sh, dtype=torch.float32)[None], background=back, asset_texture=tex,
        )  # fmt: skip
    img = color.linear_to_srgb(out.image[0].permute(1, 2, 0).clamp(0, 1).numpy())
    lm = geo.landmarks_3d(face_model.arrays, np.asarray(verts, np.float64)[None])[0]
    px = np.stack([(s * lm[:, 0] + tx + 1.0) / 2.0 * size - 0.5, (1.0 - (s * lm[:, 1] + ty)) / 2.0 * size - 0.5], 1)
    return (img * 255.0 + 0.5).clip(0, 255).astype(np.uint8), out.mask[0, 0].numpy() > 0.5, px


_RENDERERS: dict = {}
