"""Texture unwrapping: a face rendered from a known albedo (and light) is unwrapped back to that albedo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facecore import color, texture
from facecore import geometry as geo
from models.face.preview import render_ortho

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "face" / "data" / "anny_head.npz"
R = 128


@pytest.fixture(scope="module")
def model():
    return geo.FaceModelArrays.load(DEFAULT)


def known_albedo(res: int) -> np.ndarray:
    v, u = np.mgrid[0:res, 0:res] / res
    return np.stack([0.5 + 0.3 * np.sin(6 * u), 0.4 + 0.2 * np.cos(5 * v), 0.3 + 0.2 * u * v], -1)


def render(model, verts, albedo, size=256, sh=None):
    """Orthographic numpy render: each pixel samples the albedo at its surface point's UV (times SH shading)."""
    lo, hi = verts.min(0), verts.max(0)
    view = render_ortho(verts, model.faces, size, (lo[:2] + hi[:2]) / 2, float(max(hi[:2] - lo[:2])) * 1.05)
    mask = view.face >= 0
    f = view.face[mask]
    uv = np.einsum("nk,nkc->nc", view.bary[mask], model.uv[model.uv_faces[f]])
    colour = geo.sample_map(albedo, uv)
    if sh is not None:
        vn = geo.vertex_normals(verts, model.faces)
        n = np.einsum("nk,nkc->nc", view.bary[mask], vn[model.faces[f]])
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        colour = colour * (texture.sh_basis(n) @ sh)
    img = np.zeros((size, size, 3))
    img[mask] = colour
    return img, view.to_pixel(verts[:, :2])


def test_unwrap_recovers_the_albedo_where_it_was_seen(model):
    verts = geo.decode_vertices(model)[0]
    truth = known_albedo(R)
    img, px = render(model, verts, truth)
    out = texture.unwrap(model, verts, px, img, resolution=R)
    seen = out.source == 1
    assert 0.2 < seen.mean() < 0.6  # the front half of the head
    err = np.abs(out.albedo[seen] - truth[seen]).mean()
    assert err < 0.02, err
    # every skin texel gets a colour: seen, mirrored or mean-filled (the back of the head), never black
    assert (out.source > 0).sum() == len(geo.texel_sampling(model, R)[0])
    assert (out.source == 3).sum() > 0 and out.albedo[out.source == 3].min() > 0.1


def test_mirror_fills_the_hidden_side_of_a_turned_head(model):
    pose = np.zeros((model.n_joints, 3))
    pose[0, 1] = np.deg2rad(50)  # turn the head 50° to its left: its right cheek faces the camera
    verts = geo.decode_vertices(model, pose=pose)[0]
    truth = known_albedo(R)
    truth = (truth + truth[:, ::-1]) / 2  # a left/right symmetric albedo: mirroring is then exact
    img, px = render(model, verts, truth)
    out = texture.unwrap(model, verts, px, img, resolution=R)
    mirrored = out.source == 2
    assert mirrored.sum() > 0.05 * R * R
    assert np.abs(out.albedo[mirrored] - truth[mirrored]).mean() < 0.03


def test_delighting_with_the_rendering_light(model):
    verts = geo.decode_vertices(model)[0]
    truth = known_albedo(R)
    sh = np.zeros((9, 3))
    sh[0] = 2.6  # ambient
    sh[3] = 0.5  # light from the front (+z)
    sh[2] = 0.3  # and from above
    img, px = render(model, verts, truth, sh=sh)
    lit = texture.unwrap(model, verts, px, img, resolution=R)
    delit = texture.unwrap(model, verts, px, img, resolution=R, sh=sh)
    seen = delit.source == 1
    assert np.abs(delit.albedo[seen] - truth[seen]).mean() < 0.03
    assert np.abs(lit.albedo[seen] - truth[seen]).mean() > 0.05  # without de-lighting it is off


def test_sh_basis_matches_the_torch_renderer():
    torch = pytest.importorskip("torch")
    from models.render.shading import sh_basis as torch_sh

    n = np.random.default_rng(0).normal(size=(50, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    assert np.abs(texture.sh_basis(n) - torch_sh(torch.from_numpy(n)).numpy()).max() < 1e-12


@pytest.mark.parametrize("kind", ["on_pixel_centres", "on_half_pixels", "anywhere"])
def test_scanline_zbuffer_covers_what_rasterize_nodes_covers(kind):
    """The visibility z-buffer: the same pixels (boundary inclusive, flat and degenerate triangles included)
    with the same largest depth as the reference rasteriser, which tests every pixel of each bounding box."""
    rng = np.random.default_rng(7)
    W, H = 17, 13
    for _ in range(40):
        F = int(rng.integers(1, 40))
        if kind == "on_pixel_centres":  # edges through pixel centres, flat tops and bottoms, collinear corners
            xy = rng.integers(-3, 20, (F, 3, 2)).astype(np.float64)
        elif kind == "on_half_pixels":
            xy = rng.integers(-6, 40, (F, 3, 2)) / 2.0
        else:
            xy = rng.uniform(-5.0, 25.0, (F, 3, 2))
        depth = rng.uniform(-1.0, 1.0, (F, 3))
        node, tri, bary = geo.rasterize_nodes(xy, depth, W, H)
        expected = np.full(H * W, -np.inf)
        expected[node] = np.einsum("nk,nk->n", bary, depth[tri])
        got = texture._zbuffer(xy, depth, W, H)
        assert np.array_equal(np.isfinite(got), np.isfinite(expected))
        covered = np.isfinite(got)
        assert np.abs(got[covered] - expected[covered]).max(initial=0.0) < 1e-9


def test_bad_input(model):
    verts = geo.decode_vertices(model)[0]
    with pytest.raises(ValueError, match="image: expected"):
        texture.unwrap(model, verts, verts[:, :2], np.zeros((8, 8)), resolution=R)
    with pytest.raises(ValueError, match="verts/verts_px"):
        texture.unwrap(model, verts[:5], verts[:5, :2], np.zeros((8, 8, 3)), resolution=R)
    with pytest.raises(ValueError, match="sh: expected"):
        texture.unwrap(model, verts, verts[:, :2], np.zeros((8, 8, 3)), resolution=R, sh=np.zeros(9))


def test_srgb_transfer_round_trip():
    x = np.linspace(0, 1, 101)
    assert np.abs(color.linear_to_srgb(color.srgb_to_linear(x)) - x).max() < 1e-12
    assert abs(color.srgb_to_linear(np.array(0.5)) - 0.21404) < 1e-4  # the standard curve's mid-grey


def test_box_downsample_averages_blocks_and_keeps_the_mean_of_odd_sizes():
    from facecore.texture import box_downsample

    image = np.random.default_rng(0).random((12, 12, 3))
    got = box_downsample(image, 4)
    assert got.shape == (4, 4, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got[1, 2], image[3:6, 6:9].reshape(-1, 3).mean(0), atol=1e-6)
    odd = box_downsample(image, 5)  # 12 is no multiple of 5: area resampling
    assert odd.shape == (5, 5, 3) and abs(odd.mean() - image.mean()) < 0.02


def test_rejections_grow_by_a_disc_not_a_square():
    """A rejected speck grows into a round patch (every texel within the radius), not the square a box grows:
    squares of fill showed as squares on the nose bridge."""
    mask = np.zeros((17, 19), bool)
    mask[8, 9] = mask[0, 0] = True  # one inside, one at a corner (the border clips, nothing wraps)
    got = texture._dilate_disc(mask, 5)
    yy, xx = np.mgrid[0:17, 0:19]
    want = ((yy - 8) ** 2 + (xx - 9) ** 2 <= 25) | (yy**2 + xx**2 <= 25)
    np.testing.assert_array_equal(got, want)
    assert not got[8 - 4, 9 - 4]  # the box's corner, √32 > 5 away
    assert np.array_equal(texture._dilate_disc(mask, 0), mask)


def test_light_visibility_is_the_shadow_a_mesh_casts():
    """texture.light_visibility: a small square plate floating over a larger one, lit from straight above, hides
    the part of the lower plate under it and nothing else; lit from the side, its shadow moves over; faces turned
    from the light are left to the light's cosine."""

    def plate(half: float, z: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        g = np.linspace(-half, half, n)
        x, y = np.meshgrid(g, g)
        verts = np.stack([x.ravel(), y.ravel(), np.full(n * n, z)], 1)
        i = np.arange(n * n).reshape(n, n)
        a, b, c, d = i[:-1, :-1].ravel(), i[:-1, 1:].ravel(), i[1:, 1:].ravel(), i[1:, :-1].ravel()
        return verts, np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])  # facing +z

    low, low_faces = plate(1.0, 0.0, 41)
    high, high_faces = plate(0.25, 0.5, 11)
    verts = np.concatenate([low, high])
    faces = np.concatenate([low_faces, high_faces + len(low)])
    below = (np.abs(low[:, 0]) < 0.2) & (np.abs(low[:, 1]) < 0.2)
    outside = (np.abs(low[:, 0]) > 0.35) | (np.abs(low[:, 1]) > 0.35)
    top = texture.light_visibility(verts, faces, np.array([0.0, 0.0, 1.0]))
    assert top[: len(low)][below].max() == 0.0 and top[: len(low)][outside].min() == 1.0
    assert top[len(low) :].min() == 1.0  # the plate itself is lit
    # from 45° towards +x the shadow falls 0.5 further along -x
    side = texture.light_visibility(verts, faces, np.array([1.0, 0.0, 1.0]) / np.sqrt(2.0))
    moved = (np.abs(low[:, 0] + 0.5) < 0.2) & (np.abs(low[:, 1]) < 0.2)
    assert side[: len(low)][moved].max() == 0.0 and side[: len(low)][below & (low[:, 0] > 0.1)].min() == 1.0
    # lit from behind, both plates are turned away: the light's cosine has it, no cast shadow is added
    assert texture.light_visibility(verts, faces, np.array([0.0, 0.0, -1.0])).min() == 1.0
    with pytest.raises(ValueError, match="direction"):
        texture.light_visibility(verts, faces, np.zeros(3))
