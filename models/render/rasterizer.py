"""Deferred rasterisation: a vectorised z-buffer without gradients, then differentiable barycentrics.

1. **Visibility** (no gradients), a scan conversion in flat tensors for the whole batch (no Python loop over
   pixels or triangles; chunks of triangles bound the memory): every (triangle, bounding-box row) computes
   the span of pixel centres between the triangle's edges (``repeat_interleave`` over rows), every pixel of
   every span (``repeat_interleave`` again) gets its depth from the triangle's depth plane, and a packed
   int64 key ``(order-preserving int32 of the depth) << 32 | face`` goes into the pixel with
   ``scatter_reduce(amax)``: the largest depth wins (exact ties go to the larger face index). Enumerating
   spans rather than whole bounding boxes touches only the covered pixels (a third of the box pixels on a
   face mesh).
2. **Barycentrics** (differentiable): for every covered pixel, the barycentric coordinates of its centre are
   recomputed from the projected corners of the winning triangle, so gradients flow to ``verts_ndc``
   (the silhouette itself is not differentiable: a pixel's triangle is fixed within a step).

Pixel (row j, column i) of an H × W image has its centre at NDC ``((i + 0.5) / W · 2 − 1, 1 − (j + 0.5) / H · 2)``;
a pixel is covered when its centre lies inside or on the boundary of a triangle (up to a 1e-6 barycentric
tolerance, so a centre on an edge shared by two triangles is never dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch

_KEY_EMPTY = torch.iinfo(torch.int64).min
_LOW32 = 0xFFFFFFFF
# barycentric tolerance of the coverage test: a centre on a shared edge belongs to both triangles
_INSIDE_EPS = 1e-6


@dataclass(frozen=True, eq=False)
class Fragments:
    """What is visible at every pixel: dense images plus the packed list of covered pixels.

    Attributes:
        face_id: (B, H, W) long index into ``faces`` of the visible triangle, -1 for background.
        mask: (B, 1, H, W) float, 1 where a triangle is visible.
        pixels: (N,) long flat indices ``b·H·W + row·W + col`` of the covered pixels, ascending.
        bary_packed: (N, 3) differentiable barycentric coordinates of those pixel centres in their visible
            triangle; perspective-correct when rasterised with ``perspective_correct=True``.
        depth_packed: (N,) differentiable interpolated depth there (larger is closer).
        face_packed: (N,) their visible triangle.
        batch_packed: (N,) their batch index (ascending).
        faces: (F, 3) long, the triangles that were rasterised.
        n_verts: V, the number of vertices of the rasterised mesh.

    ``bary`` (B, H, W, 3) and ``depth`` (B, H, W), zero on background, are built from the packed values on
    first access (differentiable too).
    """

    face_id: torch.Tensor
    mask: torch.Tensor
    pixels: torch.Tensor
    bary_packed: torch.Tensor
    depth_packed: torch.Tensor
    face_packed: torch.Tensor
    batch_packed: torch.Tensor
    faces: torch.Tensor
    n_verts: int

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.face_id.shape[1]), int(self.face_id.shape[2])

    @property
    def batch_size(self) -> int:
        return int(self.face_id.shape[0])

    @cached_property
    def bary(self) -> torch.Tensor:
        """(B, H, W, 3) barycentrics, zero on background."""
        return scatter_packed(self, self.bary_packed).permute(0, 2, 3, 1)

    @cached_property
    def depth(self) -> torch.Tensor:
        """(B, H, W) depth of the visible surface, zero on background."""
        return scatter_packed(self, self.depth_packed[:, None])[:, 0]


def _image_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        H = W = image_size
    else:
        H, W = (int(s) for s in image_size)
    if H < 1 or W < 1:
        raise ValueError(f"image_size: expected positive sizes, got {image_size!r}")
    return H, W


def _check_mesh(verts_ndc: torch.Tensor, faces: torch.Tensor) -> None:
    if verts_ndc.dim() != 3 or verts_ndc.shape[-1] != 3:
        raise ValueError(f"verts_ndc: expected shape (B, V, 3), got {tuple(verts_ndc.shape)}")
    if not verts_ndc.is_floating_point():
        raise ValueError(f"verts_ndc: expected a floating-point tensor, got {verts_ndc.dtype}")
    if faces.dim() != 2 or faces.shape[1] != 3 or faces.dtype != torch.long:
        raise ValueError(f"faces: expected a (F, 3) long tensor, got {tuple(faces.shape)} {faces.dtype}")
    if faces.device != verts_ndc.device:
        raise ValueError(f"faces on {faces.device} but verts_ndc on {verts_ndc.device}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= verts_ndc.shape[1]):
        raise ValueError(f"faces: indices must lie in [0, {verts_ndc.shape[1]})")
    if not bool(torch.isfinite(verts_ndc).all()):
        raise ValueError("verts_ndc: contains NaN or inf")


def _ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """float32 → int64 with the same order (IEEE bit trick: flip the magnitude bits of negatives)."""
    bits = x.to(torch.float32).contiguous().view(torch.int32)
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)


@torch.no_grad()
def zbuffer(
    verts_ndc: torch.Tensor,
    faces: torch.Tensor,
    image_size: int | tuple[int, int],
    *,
    perspective_correct: bool = False,
    cull_backfaces: bool = False,
    max_candidates: int = 1 << 22,
) -> torch.Tensor:
    """Visible triangle per pixel (no gradients). Arguments as in :func:`rasterize`.

    Returns:
        face_id: (B, H, W) long, -1 for background.
    """
    _check_mesh(verts_ndc, faces)
    H, W = _image_size(image_size)
    B, F = verts_ndc.shape[0], faces.shape[0]
    dev = verts_ndc.device
    # work in float32 pixel units (centres on integers), later relative to each bounding box's corner
    v = verts_ndc.detach().to(torch.float32)
    px = (v[..., 0] + 1.0) * (W / 2) - 0.5
    py = (1.0 - v[..., 1]) * (H / 2) - 0.5
    if perspective_correct:
        key_v = -1.0 / v[..., 2].clamp(max=-1e-12)  # 1/distance: affine in screen space, larger is closer
    else:
        key_v = v[..., 2]
    corner = (faces.reshape(1, -1) + (torch.arange(B, device=dev) * v.shape[1])[:, None]).reshape(-1)
    fx, fy, fz = (t.reshape(-1).index_select(0, corner).view(B * F, 3) for t in (px, py, key_v))

    lo_x = fx.amin(1).clamp(-1.0, W).ceil().clamp(min=0)
    lo_y = fy.amin(1).clamp(-1.0, H).ceil().clamp(min=0)
    nx = (fx.amax(1).clamp(-1.0, W).floor().clamp(max=W - 1) - lo_x + 1).clamp(min=0)
    ny = (fy.amax(1).clamp(-1.0, H).floor().clamp(max=H - 1) - lo_y + 1).clamp(min=0)
    X = fx - lo_x[:, None]  # corners relative to the box's top-left pixel centre
    Y = fy - lo_y[:, None]
    X0, X1, X2 = X.unbind(1)
    Y0, Y1, Y2 = Y.unbind(1)
    area2 = (X1 - X0) * (Y2 - Y0) - (X2 - X0) * (Y1 - Y0)  # negative for counter-clockwise in NDC
    # edge k joins corners k+1 and k+2; on a row it bounds x from below or from above, depending on the
    # sign of its barycentric plane's x slope A_k = dy_k / area2; (near-)horizontal edges bound no x
    # (the box's rows already stop at them)
    dy = torch.stack([Y1 - Y2, Y2 - Y0, Y0 - Y1], 1)
    side = dy * area2.sign()[:, None]
    lower_edge, upper_edge = side > 1e-6, side < -1e-6
    valid = (nx > 0) & (ny > 0) & (area2.abs() > 1e-12) & lower_edge.any(1) & upper_edge.any(1)
    if perspective_correct:
        valid &= (v[..., 2].reshape(-1).index_select(0, corner).view(B * F, 3) < 0).all(1)
    if cull_backfaces:
        valid &= area2 < 0
    tri = valid.nonzero().squeeze(1)  # flat b·F + f
    face_id = torch.full((B * H * W,), _KEY_EMPTY, dtype=torch.int64, device=dev)
    if tri.numel() == 0:
        return face_id.fill_(-1).view(B, H, W)

    # per visible triangle: barycentric planes w_k = A_k·x + B_k·y + C_k (box-relative pixel units), the
    # x bounds they put on a row, the depth plane
    X, Y, fz, dy, area2, lower_edge, upper_edge, nx, ny, lo_x, lo_y = (
        t.index_select(0, tri) for t in (X, Y, fz, dy, area2, lower_edge, upper_edge, nx, ny, lo_x, lo_y)
    )
    X0, X1, X2 = X.unbind(1)
    Y0, Y1, Y2 = Y.unbind(1)
    inv = (1.0 / area2)[:, None]
    A = dy * inv
    Bc = torch.stack([X2 - X1, X0 - X2, X1 - X0], 1) * inv
    C = torch.stack([X1 * Y2 - X2 * Y1, X2 * Y0 - X0 * Y2, X0 * Y1 - X1 * Y0], 1) * inv
    safe_a = torch.where(lower_edge | upper_edge, A, 1.0)
    slope, offset = -Bc / safe_a, -(C + _INSIDE_EPS) / safe_a  # w_k >= -eps  ⇔  x ≷ slope·y + offset

    def edge_pair(mask: torch.Tensor) -> list[torch.Tensor]:
        """Slope and offset of the first and the last edge in ``mask`` (the same edge when only one)."""
        first = mask.to(torch.uint8).argmax(1, keepdim=True)
        last = 2 - mask.flip(1).to(torch.uint8).argmax(1, keepdim=True)
        return [t.gather(1, k)[:, 0] for k in (first, last) for t in (slope, offset)]

    table = torch.stack(
        [
            *edge_pair(lower_edge),
            *edge_pair(upper_edge),
            (A * fz).sum(1),  # depth plane z = Zx·x + Zy·y + Z0
            (Bc * fz).sum(1),
            (C * fz).sum(1),
            nx - 1,
        ],
        0,
    )  # (12, n)
    height = ny.to(torch.int64)
    batch = torch.div(tri, F, rounding_mode="floor")
    base = batch * (H * W) + lo_y.to(torch.int64) * W + lo_x.to(torch.int64)
    face = tri - batch * F

    # chunks of whole triangles with at most ~max_candidates box pixels each (a huge triangle stands alone)
    ends = torch.cumsum(height * (table[11].to(torch.int64) + 1), 0)
    total = int(ends[-1])
    bounds = [0]
    if total > max_candidates:
        cuts = torch.searchsorted(ends, torch.arange(max_candidates, total, max_candidates, device=dev))
        bounds += sorted({int(c) + 1 for c in cuts.tolist()} - {0})
    bounds = sorted(set(bounds + [len(tri)]))
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        _splat(face_id, table[:, s:e], height[s:e], base[s:e], face[s:e], W)
    empty = face_id == _KEY_EMPTY
    return torch.where(empty, -1, face_id & _LOW32).view(B, H, W)


def _expand(count: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``count`` (n,) int64 summing to ``total``: each output's owner ``i`` (repeated ``count[i]`` times,
    like ``repeat_interleave``) and its rank within the owner's run.

    Built from a cumulative sum of run-start markers: ``repeat_interleave``'s CPU kernel parallelises even
    tiny inputs, which costs milliseconds per call on a busy machine.
    """
    start = torch.cumsum(count, 0) - count
    marker = torch.zeros(total + 1, dtype=torch.int64, device=count.device)
    marker.index_add_(0, start, torch.ones_like(count))  # empty runs share the next run's start
    owner = torch.cumsum(marker[:total], 0) - 1
    return owner, torch.arange(total, device=count.device) - start.index_select(0, owner)


def _splat(
    key_img: torch.Tensor,
    table: torch.Tensor,
    height: torch.Tensor,
    base: torch.Tensor,
    face: torch.Tensor,
    W: int,
) -> None:
    """Scan-convert a run of triangles and z-test their pixels into ``key_img``.

    Two flat levels instead of testing every bounding-box pixel: every (triangle, box row) gets the span of
    pixel centres inside the triangle (between its lower and upper x bounds, from the edge half-planes
    ``w_k >= -eps``); then every pixel of every span gets its depth from the triangle's depth plane and its
    packed key.

    Args:
        key_img: (B·H·W,) int64 packed keys, updated in place.
        table: (12, n) per triangle, in pixel units relative to its box's top-left pixel: slope and offset of
            two lower x bounds, of two upper x bounds, the depth plane (Zx, Zy, Z0), and the box width − 1.
        height: (n,) box height in pixels.
        base: (n,) flat index of the box's top-left pixel.
        face: (n,) face index to pack into the key.
        W: image width.
    """
    rows = int(height.sum())
    tri, y_i = _expand(height, rows)
    y = y_i.to(table.dtype)
    col = [table[r].index_select(0, tri) for r in range(12)]
    lower = torch.maximum(torch.addcmul(col[1], col[0], y), torch.addcmul(col[3], col[2], y)).clamp(min=0).ceil()
    upper = torch.minimum(torch.minimum(torch.addcmul(col[5], col[4], y), torch.addcmul(col[7], col[6], y)), col[11])
    count = (upper.floor() - lower + 1).clamp(min=0).to(torch.int64)
    z_first = torch.addcmul(torch.addcmul(col[10], col[9], y), col[8], lower)  # depth at the span's first pixel
    first = base.index_select(0, tri) + y_i * W + lower.to(torch.int64)
    row_face = face.index_select(0, tri)

    n_pix = int(count.sum())
    if n_pix == 0:
        return
    row, local = _expand(count, n_pix)
    depth = torch.addcmul(z_first.index_select(0, row), col[8].index_select(0, row), local.to(table.dtype))
    key = (_ordered_bits(depth) << 32) | row_face.index_select(0, row)
    key_img.scatter_reduce_(0, first.index_select(0, row) + local, key, reduce="amax", include_self=True)


def barycentrics(
    verts_ndc: torch.Tensor,
    faces: torch.Tensor,
    face_id: torch.Tensor,
    *,
    perspective_correct: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Differentiable barycentric coordinates of the covered pixel centres in their visible triangles.

    Args:
        verts_ndc: (B, V, 3) projected vertices (x_ndc, y_ndc, depth).
        faces: (F, 3) long.
        face_id: (B, H, W) long from :func:`zbuffer`.
        perspective_correct: weight by 1/distance (depth must be the camera z, negative in front).

    Returns:
        pixels: (N,) flat covered-pixel indices; bary: (N, 3); depth: (N,) interpolated depth;
        face: (N,) visible triangle; batch: (N,) batch index.
    """
    B, H, W = face_id.shape
    V = verts_ndc.shape[1]
    pixels = (face_id.reshape(-1) >= 0).nonzero().squeeze(1)
    face = face_id.reshape(-1).index_select(0, pixels)
    batch = torch.div(pixels, H * W, rounding_mode="floor")
    rem = pixels - batch * (H * W)
    row = torch.div(rem, W, rounding_mode="floor")
    col = rem - row * W
    corner = (faces.index_select(0, face) + (batch * V)[:, None]).reshape(-1)
    tri = verts_ndc.reshape(B * V, 3).index_select(0, corner).view(-1, 3, 3)
    x = (col.to(verts_ndc.dtype) + 0.5) * (2.0 / W) - 1.0
    y = 1.0 - (row.to(verts_ndc.dtype) + 0.5) * (2.0 / H)
    x0, x1, x2 = (tri[..., 0] - x[:, None]).unbind(1)  # corners relative to the pixel centre
    y0, y1, y2 = (tri[..., 1] - y[:, None]).unbind(1)
    # twice the signed areas of (p, corner k+1, corner k+2)
    sub = torch.stack([x1 * y2 - x2 * y1, x2 * y0 - x0 * y2, x0 * y1 - x1 * y0], 1)
    bary = sub / sub.sum(1, keepdim=True)
    if perspective_correct:
        bary = bary / (-tri[..., 2])
        bary = bary / bary.sum(1, keepdim=True)
    return pixels, bary, (bary * tri[..., 2]).sum(1), face, batch


def rasterize(
    verts_ndc: torch.Tensor,
    faces: torch.Tensor,
    image_size: int | tuple[int, int],
    *,
    perspective_correct: bool = False,
    cull_backfaces: bool = False,
    max_candidates: int = 1 << 22,
) -> Fragments:
    """Rasterise a batch of meshes sharing one triangle list.

    Args:
        verts_ndc: (B, V, 3) as (x_ndc, y_ndc, depth), depth larger = closer (see :mod:`.camera`).
        faces: (F, 3) long triangles.
        image_size: H = W, or (H, W).
        perspective_correct: set for :class:`~.camera.PerspectiveCamera` output (depth = camera z < 0):
            depth-tests 1/distance, makes barycentrics perspective-correct and drops triangles with a
            corner at or behind the camera.
        cull_backfaces: drop triangles that are clockwise on screen (faces are counter-clockwise from outside).
        max_candidates: bound on the bounding-box pixels (which bound the covered (pixel, triangle) pairs)
            processed in one chunk; memory ≈ 60 B per covered pair.

    Returns:
        :class:`Fragments`; ``bary`` and ``depth`` carry gradients to ``verts_ndc``.
    """
    H, W = _image_size(image_size)
    face_id = zbuffer(
        verts_ndc,
        faces,
        (H, W),
        perspective_correct=perspective_correct,
        cull_backfaces=cull_backfaces,
        max_candidates=max_candidates,
    )
    return fragments_from_face_id(verts_ndc, faces, face_id, perspective_correct=perspective_correct)


def fragments_from_face_id(
    verts_ndc: torch.Tensor, faces: torch.Tensor, face_id: torch.Tensor, *, perspective_correct: bool = False
) -> Fragments:
    """Complete :class:`Fragments` from a visibility image (from :func:`zbuffer` or another backend)."""
    pixels, bary_p, depth_p, face_p, batch_p = barycentrics(
        verts_ndc, faces, face_id, perspective_correct=perspective_correct
    )
    return Fragments(
        face_id=face_id,
        mask=(face_id >= 0).to(verts_ndc.dtype)[:, None],
        pixels=pixels,
        bary_packed=bary_p,
        depth_packed=depth_p,
        face_packed=face_p,
        batch_packed=batch_p,
        faces=faces,
        n_verts=int(verts_ndc.shape[1]),
    )


AttrKind = Literal["vertex", "corner"]


def _attr_kind(fragments: Fragments, attrs: torch.Tensor, kind: AttrKind | None) -> AttrKind:
    B, V, F = fragments.batch_size, fragments.n_verts, fragments.faces.shape[0]
    if kind is not None:
        if kind not in ("vertex", "corner"):
            raise ValueError(f"kind: expected 'vertex' or 'corner', got {kind!r}")
        return kind
    if attrs.dim() == 2:
        return "vertex"
    if attrs.dim() == 4:
        return "corner"
    if attrs.dim() != 3:
        raise ValueError(f"attrs: expected (B, V, C), (V, C), (F, 3, C) or (B, F, 3, C), got {tuple(attrs.shape)}")
    as_vertex = attrs.shape[0] in (1, B) and attrs.shape[1] == V
    as_corner = tuple(attrs.shape[:2]) == (F, 3)
    if as_vertex and as_corner:
        flat = fragments.faces.reshape(-1)
        if torch.equal(flat, torch.arange(flat.numel(), device=flat.device)):
            return "vertex"  # corner k of face f is vertex 3f + k: both readings agree
        raise ValueError(f"attrs {tuple(attrs.shape)} fits both (B, V, C) and (F, 3, C): pass kind=")
    if as_vertex:
        return "vertex"
    if as_corner:
        return "corner"
    raise ValueError(f"attrs {tuple(attrs.shape)} fits neither (B={B}, V={V}, C) nor (F={F}, 3, C)")


def interpolate_packed(fragments: Fragments, attrs: torch.Tensor, kind: AttrKind | None = None) -> torch.Tensor:
    """Attributes at the covered pixels only. Same arguments as :func:`interpolate`; returns (N, C)."""
    kind = _attr_kind(fragments, attrs, kind)
    face = fragments.face_packed
    B, V = fragments.batch_size, fragments.n_verts
    C = attrs.shape[-1]
    if kind == "vertex":
        idx = fragments.faces.index_select(0, face)  # (N, 3)
        if attrs.dim() == 3 and attrs.shape[0] == B and B > 1:
            idx = idx + (fragments.batch_packed * V)[:, None]
        elif attrs.dim() == 3 and attrs.shape[0] not in (1, B):
            raise ValueError(f"attrs: batch {attrs.shape[0]} does not match {B}")
        if attrs.shape[-2] != V:
            raise ValueError(f"attrs: expected {V} vertices, got {attrs.shape[-2]}")
        vals = attrs.reshape(-1, C).index_select(0, idx.reshape(-1))
    else:
        F = fragments.faces.shape[0]
        if attrs.shape[-3:-1] != (F, 3):
            raise ValueError(f"attrs: expected (F={F}, 3, C) corners, got {tuple(attrs.shape)}")
        if attrs.dim() == 4 and attrs.shape[0] == B and B > 1:
            face = face + fragments.batch_packed * F
        elif attrs.dim() == 4 and attrs.shape[0] not in (1, B):
            raise ValueError(f"attrs: batch {attrs.shape[0]} does not match {B}")
        vals = attrs.reshape(-1, 3 * C).index_select(0, face)
    vals = vals.view(-1, 3, C)
    return (fragments.bary_packed.to(vals.dtype)[:, :, None] * vals).sum(1)


def interpolate(fragments: Fragments, attrs: torch.Tensor, kind: AttrKind | None = None) -> torch.Tensor:
    """Barycentric interpolation of mesh attributes at every pixel.

    Args:
        fragments: from :func:`rasterize`.
        attrs: per-vertex (B, V, C) or shared (V, C); or per triangle corner (F, 3, C) / (B, F, 3, C).
        kind: ``"vertex"`` or ``"corner"``, needed only when the shape fits both readings.

    Returns:
        (B, H, W, C), zero on background pixels.
    """
    packed = interpolate_packed(fragments, attrs, kind)
    B, (H, W) = fragments.batch_size, fragments.image_size
    out = packed.new_zeros(B * H * W, packed.shape[1]).index_put((fragments.pixels,), packed)
    return out.view(B, H, W, -1)


def scatter_packed(fragments: Fragments, packed: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """(N, C) values at the covered pixels → (B, C, H, W) image with ``fill`` on background."""
    B, (H, W) = fragments.batch_size, fragments.image_size
    out = packed.new_full((B * H * W, packed.shape[1]), fill).index_put((fragments.pixels,), packed)
    return out.view(B, H, W, -1).permute(0, 3, 1, 2)
