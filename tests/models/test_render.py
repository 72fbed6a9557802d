"""The pure-PyTorch renderer: rasterisation by hand and by brute force, conventions (uv, SH, normal maps,
cameras), gradients against finite differences, the face model's silhouette, batching, CUDA and pytorch3d."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.face.model import FaceModel
from models.face.preview import render_ortho
from models.render import (
    SH_CONSTANTS,
    MeshRenderer,
    PerspectiveCamera,
    WeakPerspectiveCamera,
    interpolate,
    mesh_to_uv,
    normal_map_to_world,
    pytorch3d_backend,
    rasterize,
    sample_texture,
    sample_texture_packed,
    sample_vertex_attrs,
    sh_basis,
    sh_shading,
    uv_fragments,
    vertex_normals,
    zbuffer,
)


# ---------------------------------------------------------------------------------------------- helpers
def uv_sphere(n_lat: int = 5, n_lon: int = 8, dtype=torch.float64):
    """Unit sphere with a seam; faces counter-clockwise from outside, uv with v up (one uv per vertex)."""
    theta = torch.linspace(0, math.pi, n_lat + 1, dtype=dtype)
    phi = torch.linspace(0, 2 * math.pi, n_lon + 1, dtype=dtype)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    verts = torch.stack([t.sin() * p.sin(), t.cos(), t.sin() * p.cos()], -1).reshape(-1, 3)
    uv = torch.stack([p / (2 * math.pi), 1 - t / math.pi], -1).reshape(-1, 2)
    idx = torch.arange((n_lat + 1) * (n_lon + 1)).view(n_lat + 1, n_lon + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    tris = []
    for i in range(n_lat):
        if i < n_lat - 1:
            tris.append(torch.stack([a[i], c[i], d[i]], -1))  # degenerate at the south pole otherwise
        if i > 0:
            tris.append(torch.stack([a[i], d[i], b[i]], -1))  # degenerate at the north pole otherwise
    return verts, torch.cat(tris), uv


def random_rotation(seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    return q * torch.det(q)


def pixel_centres(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    x = (np.arange(W) + 0.5) / W * 2 - 1
    y = 1 - (np.arange(H) + 0.5) / H * 2
    return np.meshgrid(x, y)  # (H, W) each


def brute_force(verts: np.ndarray, faces: np.ndarray, H: int, W: int):
    """Reference z-buffer by testing every pixel centre against every triangle (float64).

    Returns face ids (H, W), barycentrics (H, W, 3) and an 'ambiguous' mask (a centre within 1e-5 of an edge,
    or two candidate depths within 1e-5), where either answer is acceptable.
    """
    X, Y = pixel_centres(H, W)
    p = np.stack([X, Y], -1)[:, :, None]  # (H, W, 1, 2)
    t = verts[faces]  # (F, 3, 3)
    a, b, c = t[:, 0, :2], t[:, 1, :2], t[:, 2, :2]

    def cross(u, v):
        return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

    area = cross(b - a, c - a)
    w0 = cross(b - p, c - p) / area
    w1 = cross(c - p, a - p) / area
    w2 = 1 - w0 - w1
    w = np.stack([w0, w1, w2], -1)  # (H, W, F, 3)
    inside = (w >= 0).all(-1)
    depth = np.where(inside, (w * t[:, :, 2]).sum(-1), -np.inf)
    face = np.where(inside.any(-1), depth.argmax(-1), -1)
    bary = np.take_along_axis(w, np.maximum(face, 0)[..., None, None], 2)[:, :, 0]
    near_edge = (np.abs(w) < 1e-5).any(-1) & (w >= -1e-5).all(-1)
    top2 = np.sort(depth, -1)[..., -2:] if len(faces) > 1 else np.full((H, W, 2), -np.inf)
    finite = np.isfinite(top2).all(-1)
    tie = finite & (np.abs(np.where(finite[..., None], top2, 0.0) @ np.array([1.0, -1.0])) < 1e-5)
    return face, bary, near_edge.any(-1) | tie


@pytest.fixture(scope="module")
def face_model() -> FaceModel:
    return FaceModel.from_file()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------- rasterisation
def test_single_triangle_by_hand():
    # 4×4 image, centres at ±0.25, ±0.75; hypotenuse x + y = 0.1 passes no centre
    verts = torch.tensor([[[-1.0, -1.0, 0.0], [1.1, -1.0, 0.0], [-1.0, 1.1, 0.0]]])
    faces = torch.tensor([[0, 1, 2]])
    frags = rasterize(verts, faces, 4)
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert torch.equal(frags.mask[0, 0], expected.float())
    assert torch.equal(frags.face_id[0], torch.where(expected.bool(), 0, -1))
    # barycentrics reproduce the pixel centre and sum to one
    pos = interpolate(frags, verts[..., :2])[0]
    X, Y = pixel_centres(4, 4)
    m = expected.bool().numpy()
    assert np.allclose(pos[..., 0].numpy()[m], X[m], atol=1e-6) and np.allclose(pos[..., 1].numpy()[m], Y[m], atol=1e-6)
    assert torch.allclose(frags.bary.sum(-1)[0][expected.bool()], torch.ones(()))
    # the same triangle clockwise covers the same pixels (no culling by default)
    assert torch.equal(rasterize(verts, faces[:, [0, 2, 1]], 4).face_id, frags.face_id)
    assert (rasterize(verts, faces[:, [0, 2, 1]], 4, cull_backfaces=True).face_id == -1).all()


def test_single_triangle_non_square_matches_brute_force():
    verts = torch.tensor([[[-0.83, -0.61, 0.2], [0.77, -0.23, 0.1], [-0.12, 0.91, 0.3]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    for H, W in ((7, 13), (16, 9)):
        frags = rasterize(verts, faces, (H, W))
        ref_face, ref_bary, ambiguous = brute_force(verts[0].numpy(), faces.numpy(), H, W)
        assert not ambiguous.any()
        assert frags.face_id.shape == (1, H, W) and frags.mask.shape == (1, 1, H, W)
        assert np.array_equal(frags.face_id[0].numpy(), ref_face)
        assert np.allclose(frags.bary[0].numpy()[ref_face >= 0], ref_bary[ref_face >= 0], atol=1e-12)
        assert 0 < (ref_face >= 0).sum() < H * W
        ref_depth = np.where(ref_face >= 0, ref_bary @ verts[0, :, 2].numpy(), 0.0)
        assert np.allclose(frags.depth[0].numpy(), ref_depth, atol=1e-12)


def test_nearer_triangle_wins_under_overlap():
    big = [[-0.9, -0.9], [0.9, -0.9], [0.0, 0.9]]
    small = [[-0.4, -0.5], [0.4, -0.5], [0.0, 0.3]]
    for z_big, z_small in ((0.0, 0.5), (0.5, 0.0)):
        v = torch.tensor([[[x, y, z_big] for x, y in big] + [[x, y, z_small] for x, y in small]])
        for order in ([[0, 1, 2], [3, 4, 5]], [[3, 4, 5], [0, 1, 2]]):
            faces = torch.tensor(order)
            fid = zbuffer(v, faces, 24)[0]
            small_id = 0 if order[0][0] == 3 else 1
            big_id = 1 - small_id
            inside_small = rasterize(v, faces[small_id : small_id + 1], 24).mask[0, 0].bool()
            inside_big = rasterize(v, faces[big_id : big_id + 1], 24).mask[0, 0].bool()
            assert inside_small.sum() > 20 and bool((inside_big | ~inside_small).all())
            winner = small_id if z_small > z_big else big_id
            assert (fid[inside_small] == winner).all()
            assert (fid[inside_big & ~inside_small] == big_id).all()
            assert (fid[~inside_big] == -1).all()


def test_random_triangles_match_brute_force_and_chunking():
    g = torch.Generator().manual_seed(3)
    F, H, W = 40, 20, 24
    centre = torch.rand(F, 1, 2, generator=g, dtype=torch.float64) * 2 - 1
    corners = centre + 0.45 * torch.randn(F, 3, 2, generator=g, dtype=torch.float64)
    depth = torch.rand(F, 3, 1, generator=g, dtype=torch.float64)  # tilted, intersecting planes
    verts = torch.cat([corners, depth], -1).reshape(1, -1, 3)
    faces = torch.arange(3 * F).view(F, 3)
    ref, ref_bary, ambiguous = brute_force(verts[0].numpy(), faces.numpy(), H, W)
    assert ambiguous.mean() < 0.05
    for max_candidates in (1 << 21, 37):
        frags = rasterize(verts, faces, (H, W), max_candidates=max_candidates)
        got = frags.face_id[0].numpy()
        assert np.array_equal(got[~ambiguous], ref[~ambiguous])
        ok = ~ambiguous & (ref >= 0)
        assert np.allclose(frags.bary[0].numpy()[ok], ref_bary[ok], atol=1e-9)


def test_closed_mesh_backface_culling_changes_nothing():
    verts, faces, _ = uv_sphere(8, 12, torch.float32)
    v = (0.8 * verts @ random_rotation(1).float().T)[None]
    a = zbuffer(v, faces, 32)
    b = zbuffer(v, faces, 32, cull_backfaces=True)
    assert (a >= 0).sum() > 0.4 * 32 * 32
    assert torch.equal(a, b)


def test_interpolate_vertex_corner_and_validation():
    verts, faces, uv = uv_sphere(4, 6)
    v = (0.7 * verts @ random_rotation(2).T)[None].expand(2, -1, -1)
    frags = rasterize(v, faces, 16)
    per_vertex = interpolate(frags, uv[None].expand(2, -1, -1))
    per_corner = interpolate(frags, uv[faces])
    shared = interpolate(frags, uv)
    assert per_vertex.shape == (2, 16, 16, 2)
    assert torch.allclose(per_vertex, per_corner) and torch.allclose(per_vertex, shared)
    assert (per_vertex[frags.face_id < 0] == 0).all()
    with pytest.raises(ValueError, match="neither"):
        interpolate(frags, torch.zeros(2, 5, 1))
    with pytest.raises(ValueError, match="NaN"):
        rasterize(torch.full((1, 3, 3), float("nan")), torch.tensor([[0, 1, 2]]), 8)
    with pytest.raises(ValueError, match="indices"):
        rasterize(torch.zeros(1, 3, 3), torch.tensor([[0, 1, 3]]), 8)


# ---------------------------------------------------------------------------------------------- conventions
def test_sh_basis_constants_at_known_normals():
    # the documented closed forms
    c = SH_CONSTANTS
    assert np.allclose(
        c,
        [
            1 / (2 * math.sqrt(math.pi)),
            math.sqrt(math.pi / 3),
            math.sqrt(math.pi / 3),
            math.sqrt(math.pi / 3),
            math.sqrt(15 * math.pi) / 8,
            math.sqrt(15 * math.pi) / 8,
            math.sqrt(15 * math.pi) / 8,
            math.sqrt(15 * math.pi) / 16,
            math.sqrt(5 * math.pi) / 16,
        ],
    )
    assert np.allclose(c[:4] + c[7:], [0.2820948, 1.0233267, 1.0233267, 1.0233267, 0.4290428, 0.2477080], atol=1e-7)
    n = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    n = torch.nn.functional.normalize(n, dim=-1)
    basis = sh_basis(n)
    expected = torch.tensor(
        [
            [c[0], 0, 0, c[3], 0, 0, 0, 0, 2 * c[8]],
            [c[0], c[1], 0, 0, 0, 0, 0, c[7], -c[8]],
            [c[0], 0, -c[2], 0, 0, 0, 0, -c[7], -c[8]],
            [c[0], c[1] / 2**0.5, c[2] / 2**0.5, 0, c[4] / 2, 0, 0, 0, -c[8]],
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(basis, expected, atol=1e-12)
    # ambient light shades c0·sh0; a light from +z brightens normals facing +z, per colour channel
    sh = torch.zeros(1, 9, 3, dtype=torch.float64)
    sh[0, 0] = torch.tensor([1.0, 2.0, 3.0])
    sh[0, 3, 1] = 1.0
    shade = sh_shading(n[None], sh)[0]
    assert torch.allclose(shade[:, 0], torch.full((4,), c[0], dtype=torch.float64))
    assert torch.allclose(shade[0, 1], torch.tensor(2 * c[0] + c[3], dtype=torch.float64))
    assert torch.allclose(shade[1, 1], torch.tensor(2 * c[0], dtype=torch.float64))


def test_sample_texture_flips_v():
    Ht, Wt = 4, 8
    tex = torch.arange(Ht * Wt, dtype=torch.float32).view(1, 1, Ht, Wt)  # value = 8·row + col; row 0 = top
    rows = torch.tensor([0, 0, 3, 2, 1])
    cols = torch.tensor([0, 7, 0, 5, 3])
    uv = torch.stack([(cols + 0.5) / Wt, 1 - (rows + 0.5) / Ht], -1).view(1, 1, -1, 2)
    got = sample_texture(tex, uv)[0, 0, 0]
    assert torch.equal(got, (8 * rows + cols).float())
    # v = 1 is the top row, v = 0 the bottom row; u, v outside clamp to the border
    corners = torch.tensor([[[[0.0, 1.0], [1.0, 0.0], [-0.5, 2.0]]]])
    assert torch.equal(sample_texture(tex, corners)[0, 0, 0], torch.tensor([0.0, 31.0, 0.0]))
    # halfway between two texel centres along u: the mean
    mid = torch.tensor([[[[2.0 / Wt, 1 - 0.5 / Ht]]]])
    assert torch.allclose(sample_texture(tex, mid)[0, 0, 0], torch.tensor([1.5]))
    # the packed variant (a flat list of points with batch indices) samples the same values
    tex2 = torch.rand(2, 3, Ht, Wt, generator=torch.Generator().manual_seed(0))
    pts = torch.rand(2, 1, 7, 2, generator=torch.Generator().manual_seed(1))
    dense = sample_texture(tex2, pts)[:, :, 0].transpose(1, 2).reshape(-1, 3)
    batch = torch.arange(2).repeat_interleave(7)
    assert torch.allclose(sample_texture_packed(tex2, pts.reshape(-1, 2), batch), dense, atol=1e-6)
    # mesh ← UV: per-vertex sampling uses the same convention
    vals = sample_vertex_attrs(tex.expand(2, -1, -1, -1), uv[0, 0])
    assert vals.shape == (2, 5, 1) and torch.equal(vals[1, :, 0], (8 * rows + cols).float())


def test_uv_space_rasterisation_bakes_texel_centres():
    verts, faces, uv = uv_sphere(6, 8, torch.float32)
    R = 16
    frags = uv_fragments(uv, faces, R)
    assert frags.mask.mean() > 0.8  # the sphere's uv layout covers the unit square but half the polar bands
    baked = mesh_to_uv(frags, uv[None].expand(2, -1, -1), torch.arange(len(uv)))  # (2, 2, R, R)
    col, row = torch.meshgrid(torch.arange(R), torch.arange(R), indexing="xy")
    centre = torch.stack([(col + 0.5) / R, 1 - (row + 0.5) / R])  # texel centres in uv, v up
    m = frags.mask[0, 0].bool()
    assert torch.allclose(baked[1][:, m], centre[:, m], atol=1e-5)
    # sampling the baked map back at texel centres is the identity
    again = sample_texture(baked[:1], centre.permute(1, 2, 0)[None])
    assert torch.allclose(again[0][:, m], centre[:, m], atol=1e-5)


def test_cameras_project_as_documented():
    v = torch.tensor([[[0.1, -0.2, 0.05], [0.0, 0.0, -0.3]]])
    cam = WeakPerspectiveCamera(torch.tensor([2.0]), torch.tensor([[0.1, -0.3]]))
    out = cam.project(v)
    assert torch.allclose(out[0, 0], torch.tensor([0.3, -0.7, 0.05]))
    cam2 = WeakPerspectiveCamera.from_vector(torch.tensor([[2.0, 0.1, -0.3]]))
    assert torch.allclose(cam2.project(v), out)
    # rotation about +y by -90°: the subject's left (+x) turns towards the viewer (+z)
    rot = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    side = WeakPerspectiveCamera.from_rotation(rot, torch.tensor([1.0])).project(torch.tensor([[[1.0, 0, 0]]]))
    assert torch.allclose(side, torch.tensor([[[0.0, 0.0, 1.0]]]), atol=1e-7)
    framed = WeakPerspectiveCamera.framing(v, margin=0.1).project(v)
    assert torch.allclose(framed[..., :2].abs().amax(), torch.tensor(0.9))
    # perspective: a camera 2 m in front of the face looking back at it
    pc = PerspectiveCamera.look_at(
        torch.tensor([[0.0, 0.0, 2.0]]), torch.zeros(1, 3), focal=PerspectiveCamera.focal_from_fov(90)
    )
    p = pc.project(torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.25, 0.0], [0.5, 0.0, 1.0]]]))
    assert torch.allclose(p[0], torch.tensor([[0.0, 0.0, -2.0], [0.25, 0.125, -2.0], [0.5, 0.0, -1.0]]), atol=1e-6)
    with pytest.raises(ValueError, match="scale"):
        WeakPerspectiveCamera(torch.ones(1, 3), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="batch"):
        WeakPerspectiveCamera(torch.ones(3), torch.zeros(3, 2)).project(torch.zeros(2, 2, 3))


def test_perspective_rendering_is_perspective_correct():
    # a square tilted away from the camera: the interpolated world position must re-project onto the pixel
    quad = torch.tensor([[-0.5, -0.5, 0.4], [0.5, -0.5, -0.4], [0.5, 0.5, -0.4], [-0.5, 0.5, 0.4]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    pc = PerspectiveCamera.look_at(torch.tensor([[0.1, 0.05, 2.0]]), torch.zeros(1, 3), focal=3.0)
    ndc = pc.project(quad[None].double())
    frags = rasterize(ndc, faces, 32, perspective_correct=True)
    world = interpolate(frags, quad[None].double())[0]  # (H, W, 3)
    m = frags.mask[0, 0].bool()
    assert m.sum() > 200
    # re-projecting the interpolated world point lands on the pixel centre
    re = pc.project(world[m][None].double())[0]
    X, Y = pixel_centres(32, 32)
    assert np.allclose(re[:, 0].numpy(), X[m.numpy()], atol=1e-9) and np.allclose(re[:, 1].numpy(), Y[m.numpy()])
    # without the correction it is visibly off
    flat = interpolate(rasterize(ndc, faces, 32), quad[None].double())[0]
    assert (pc.project(flat[m][None])[0, :, 0] - torch.from_numpy(X[m.numpy()])).abs().max() > 1e-3


def test_normal_map_rotates_normals_in_the_uv_frame():
    # a quad facing +z with u along +x and v along +y
    verts = torch.tensor([[[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    r = MeshRenderer(faces, uv, faces, 8)
    cam = WeakPerspectiveCamera(torch.tensor([0.9]), torch.zeros(1, 2))
    albedo = torch.ones(1, 3, 4, 4)
    sh = torch.zeros(1, 9, 3)
    sh[0, 0] = 1.0
    a = math.radians(30)
    for nm, expected in (
        ((0.0, 0.0, 1.0), (0.0, 0.0, 1.0)),
        ((math.sin(a), 0.0, math.cos(a)), (math.sin(a), 0.0, math.cos(a))),  # +X of the map is +u = +x
        ((0.0, math.sin(a), math.cos(a)), (0.0, math.sin(a), math.cos(a))),  # +Y of the map is +v = up
    ):
        out = r(verts, cam, albedo, sh, normal_map_uv=torch.tensor(nm).view(1, 3, 1, 1).expand(1, 3, 4, 4))
        n = out.normals[0][:, out.mask[0, 0].bool()]
        assert torch.allclose(n, torch.tensor(expected)[:, None].expand_as(n), atol=1e-6)
    # with a mirrored u the map's +X follows +u, now towards -x
    uv_m = uv.clone()
    uv_m[:, 0] = 1 - uv_m[:, 0]
    out = MeshRenderer(faces, uv_m, faces, 8)(
        verts, cam, albedo, sh, normal_map_uv=torch.tensor([math.sin(a), 0, math.cos(a)]).view(1, 3, 1, 1)
    )
    assert torch.allclose(out.normals[0, :, 4, 4], torch.tensor([-math.sin(a), 0.0, math.cos(a)]), atol=1e-6)
    # the helper alone, with an unnormalised frame
    n = normal_map_to_world(
        torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0, 0, 2.0]), torch.tensor([1.0, 0, 1]), -torch.ones(3)
    )
    assert torch.allclose(n, torch.tensor([0.0, 0.0, 1.0]))


# ---------------------------------------------------------------------------------------------- gradients
def _sphere_scene(dtype=torch.float64):
    verts, faces, uv = uv_sphere(4, 7, dtype)
    verts = 0.75 * verts @ random_rotation(5, dtype).T + torch.tensor([0.05, -0.03, 0.0], dtype=dtype)
    g = torch.Generator().manual_seed(0)
    albedo = torch.rand(1, 3, 6, 6, generator=g, dtype=dtype)
    sh = torch.zeros(1, 9, 3, dtype=dtype)
    sh[0, 0] = 2.5
    sh[0, 1:] = 0.4 * torch.randn(8, 3, generator=g, dtype=dtype)
    background = torch.rand(1, 3, 16, 16, generator=g, dtype=dtype)
    weights = torch.randn(3, 1, 3, 16, 16, generator=g, dtype=dtype)
    return verts[None], faces, uv, albedo, sh, background, weights


def test_gradients_match_finite_differences():
    verts, faces, uv, albedo, sh, background, weights = _sphere_scene()
    renderer = MeshRenderer(faces, uv, faces, 16)
    cam = WeakPerspectiveCamera(torch.tensor([0.9], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64))

    def project(image: torch.Tensor) -> torch.Tensor:
        return (weights * image).flatten(1).sum(1)

    face_id = renderer(verts, cam, albedo, sh).face_id
    assert (face_id >= 0).float().mean() > 0.3

    def f_verts(v):
        out = renderer(v, cam, albedo, sh, background)
        assert torch.equal(out.face_id, face_id)  # the finite differences must not change visibility
        return project(out.image)

    opts = dict(eps=1e-6, atol=1e-5, rtol=1e-4)
    assert torch.autograd.gradcheck(f_verts, (verts.clone().requires_grad_(),), **opts)
    assert torch.autograd.gradcheck(
        lambda s: project(renderer(verts, cam, albedo, s, background).image), (sh.clone().requires_grad_(),), **opts
    )
    assert torch.autograd.gradcheck(
        lambda a: project(renderer(verts, cam, a, sh, background).image), (albedo.clone().requires_grad_(),), **opts
    )
    # vertex gradients also flow with a perspective camera and through a normal map
    pc = PerspectiveCamera.look_at(
        torch.tensor([[0.2, 0.1, 3.0]], dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64), focal=2.2
    )
    nm = torch.nn.functional.normalize(
        torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.3
        + torch.tensor([0, 0, 1.0], dtype=torch.float64).view(1, 3, 1, 1),
        dim=1,
    )
    assert torch.autograd.gradcheck(
        lambda v: project(renderer(v, pc, albedo, sh, background, normal_map_uv=nm).image),
        (verts.clone().requires_grad_(),),
        **opts,
    )


# ---------------------------------------------------------------------------------------------- the face model
def _frontal_setup(face_model: FaceModel, size: int):
    verts = face_model.mean[None]
    lo, hi = verts[0].amin(0), verts[0].amax(0)
    center = ((lo + hi) / 2)[:2]
    extent = float((hi - lo)[:2].max()) * 1.05
    s = 2.0 / extent
    cam = WeakPerspectiveCamera(torch.tensor([s]), (-s * center)[None])
    return verts, cam, center.numpy().astype(np.float64), extent


def test_face_model_silhouette_matches_preview(face_model):
    size = 96
    verts, cam, center, extent = _frontal_setup(face_model, size)
    renderer = MeshRenderer.from_face_model(face_model, size)
    albedo = torch.full((1, 3, 32, 32), 0.7)
    sh = torch.zeros(1, 9, 3)
    sh[0, 0] = 3.0
    sh[0, 3] = 0.5
    out = renderer(verts, cam, albedo, sh)
    view = render_ortho(face_model.mean.double().numpy(), face_model.faces.numpy(), size, center, extent)
    ours, ref = out.face_id[0].numpy() >= 0, view.face >= 0
    iou = (ours & ref).sum() / (ours | ref).sum()
    assert iou > 0.99
    assert (out.face_id[0].numpy() == view.face).mean() > 0.99
    assert torch.equal(out.mask[0, 0] > 0, out.face_id[0] >= 0)
    # frontal light from +z: the face is lit, normals point towards the viewer on average
    m = out.mask[0, 0].bool()
    assert out.normals[0, 2][m].mean() > 0.5
    assert (out.image[0][:, ~m] == 0).all() and out.image[0][:, m].mean() > 0.3


def test_batched_equals_one_by_one(face_model):
    size = 48
    B = 3
    g = torch.Generator().manual_seed(0)
    pose = torch.zeros(B, len(face_model.joint_names), 3)
    pose[:, 0, 1] = torch.tensor([-0.5, 0.0, 0.7])
    with torch.no_grad():
        verts = face_model(torch.randn(B, 10, generator=g), None, pose)
    cam = WeakPerspectiveCamera.framing(verts)
    albedo = torch.rand(B, 3, 16, 16, generator=g)
    sh = torch.rand(B, 9, 3, generator=g)
    background = torch.rand(B, 3, size, size, generator=g)
    renderer = MeshRenderer.from_face_model(face_model, size)
    out = renderer(verts, cam, albedo, sh, background)
    for b in range(B):
        cam_b = WeakPerspectiveCamera(cam.scale[b : b + 1], cam.translation[b : b + 1])
        one = renderer(verts[b : b + 1], cam_b, albedo[b : b + 1], sh[b : b + 1], background[b : b + 1])
        assert torch.equal(one.face_id[0], out.face_id[b])
        for name in ("image", "albedo", "shading", "normals", "mask"):
            assert torch.allclose(getattr(one, name)[0], getattr(out, name)[b], atol=1e-6), name


def _render_on(device: torch.device, face_model: FaceModel):
    size = 64
    fm = face_model.to(device)
    pose = torch.zeros(2, len(fm.joint_names), 3, device=device)
    pose[1, 0, 1] = 0.4
    verts = fm(None, None, pose)
    cam = WeakPerspectiveCamera.framing(verts)
    albedo = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_()
    sh = torch.zeros(2, 9, 3, device=device)
    sh[:, 0] = 3.0
    sh.requires_grad_()
    v = verts.detach().requires_grad_()
    out = MeshRenderer.from_face_model(fm, size).to(device)(v, cam, albedo, sh)
    out.image.mean().backward()
    return out, v.grad, albedo.grad, sh.grad


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    fm = FaceModel.from_file()
    cpu = _render_on(torch.device("cpu"), fm)
    gpu = _render_on(torch.device("cuda"), fm)
    agree = (cpu[0].face_id == gpu[0].face_id.cpu()).float().mean()
    assert agree > 0.999
    same = (cpu[0].face_id == gpu[0].face_id.cpu())[:, None].expand_as(cpu[0].image)
    assert torch.allclose(cpu[0].image[same], gpu[0].image.cpu()[same], atol=1e-4)
    for a, b in zip(cpu[1:], gpu[1:], strict=True):
        assert torch.allclose(a, b.cpu(), rtol=1e-2, atol=1e-6 + 1e-2 * float(a.abs().max()))


@pytest.mark.skipif(not pytorch3d_backend.is_available(), reason="pytorch3d is not installed")
def test_pytorch3d_backend_agrees(face_model):
    size = 64
    pose = torch.zeros(2, len(face_model.joint_names), 3)
    pose[1, 0, 1] = 0.5
    with torch.no_grad():
        verts = face_model(None, None, pose)
    cam = WeakPerspectiveCamera.framing(verts)
    albedo = torch.rand(2, 3, 16, 16)
    sh = torch.rand(2, 9, 3)
    ours = MeshRenderer.from_face_model(face_model, size)(verts, cam, albedo, sh)
    theirs = MeshRenderer.from_face_model(face_model, size, backend="pytorch3d")(verts, cam, albedo, sh)
    same = ours.face_id == theirs.face_id
    assert same.float().mean() > 0.995
    assert torch.allclose(
        ours.image[same[:, None].expand_as(ours.image)], theirs.image[same[:, None].expand_as(ours.image)]
    )


def test_renderer_validates_inputs(face_model):
    r = MeshRenderer.from_face_model(face_model, 16)
    v = face_model.mean[None]
    cam = WeakPerspectiveCamera(torch.tensor([5.0]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="sh"):
        r(v, cam, torch.ones(1, 3, 8, 8), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="albedo_uv"):
        r(v, cam, torch.ones(1, 8, 8), torch.zeros(1, 9, 3))
    with pytest.raises(ValueError, match="background"):
        r(v, cam, torch.ones(1, 3, 8, 8), torch.zeros(1, 9, 3), background=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="batch"):
        r(v, cam, torch.ones(2, 3, 8, 8), torch.zeros(1, 9, 3))
    with pytest.raises(ValueError, match="specular"):
        r(v, cam, torch.ones(1, 3, 8, 8), torch.zeros(1, 9, 3), specular=torch.zeros(1, 6))
    if not pytorch3d_backend.is_available():
        with pytest.raises(ImportError, match="pytorch3d"):
            MeshRenderer.from_face_model(face_model, 16, backend="pytorch3d")
    # vertex normals of the face model agree with the face model's own
    assert torch.allclose(vertex_normals(v, face_model.faces), face_model.vertex_normals(v), atol=1e-6)


def test_a_highlight_peaks_where_the_normal_is_the_half_vector():
    """models.render.shading.specular_packed (the synthetic renders' highlights): Blinn–Phong of one light for a
    viewer along +z, the light's colour, none where the light does not reach the surface."""
    from models.render.shading import specular_packed

    light = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)
    half = torch.nn.functional.normalize(light + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), dim=0)
    colour = torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64)
    spec = torch.cat([light, colour, torch.tensor([20.0], dtype=torch.float64)])[None]
    normals = torch.stack([half, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), -light])
    out = specular_packed(normals, torch.zeros(3, dtype=torch.long), spec)
    torch.testing.assert_close(out[0], colour)  # at the half vector: the full colour
    expected = float(half[2]) ** 20  # n = +z: cos(n, h)^20
    torch.testing.assert_close(out[1], colour * expected)
    assert float(out[2].abs().max()) == 0.0  # facing away from the light


def test_a_cast_shadow_takes_the_key_lights_share_away():
    """MeshRenderer(shadow=(key_sh, visibility)): lit vertices shade as without it; unlit ones lose the key light's
    SH shading (never below 5 % of the full shading); half-lit ones half of it; shapes are checked."""
    verts, faces, uv, albedo, sh, _, _ = _sphere_scene()
    renderer = MeshRenderer(faces, uv, faces, 16)
    cam = WeakPerspectiveCamera(torch.tensor([0.9], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64))
    key_sh = torch.zeros_like(sh)
    key_sh[0, 0] = 0.8
    key_sh[0, 1:4] = sh[0, 1:4]
    V = verts.shape[1]
    plain = renderer(verts, cam, albedo, sh)
    mask = plain.mask[0, 0] > 0
    for value, lost in ((1.0, 0.0), (0.5, 0.5), (0.0, 1.0)):
        out = renderer(verts, cam, albedo, sh, shadow=(key_sh, torch.full((1, V), value, dtype=verts.dtype)))
        key = renderer(verts, cam, albedo, key_sh).shading.clamp_min(0.0)
        expected = torch.maximum(plain.shading - lost * key, 0.05 * plain.shading)
        torch.testing.assert_close(out.shading[..., mask], expected[..., mask])
    with pytest.raises(ValueError, match="shadow"):
        renderer(verts, cam, albedo, sh, shadow=(key_sh[:, :4], torch.ones(1, V, dtype=verts.dtype)))
    with pytest.raises(ValueError, match="shadow"):  # a visibility for other vertices
        renderer(verts, cam, albedo, sh, shadow=(key_sh, torch.ones(1, V - 3, dtype=verts.dtype)))
