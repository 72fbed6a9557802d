"""Synthetic faces: skin optics, procedural albedo, scene codes, rendered batches with ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facecore import geometry as geo
from models.face.model import FaceModel
from models.render import MeshRenderer, WeakPerspectiveCamera, sample_texture, sh_basis
from training.data.procedural_albedo import (
    MELANIN_RANGE,
    AlbedoParams,
    ProceduralAlbedo,
    sample_albedo_params,
)
from training.data.skin import (
    hair_linear_rgb,
    individual_typology_angle,
    linear_to_srgb,
    skin_linear_rgb,
    spectrum_to_linear_srgb,
    srgb_to_linear,
)
from training.data.synthetic import (
    PoseRanges,
    SyntheticConfig,
    SyntheticFaces,
    euler_to_axis_angle,
    eye_atlases,
    head_angles_deg,
    render_background,
    sample_background_params,
    sample_face_codes,
    sample_sh,
)


@pytest.fixture(scope="module")
def fm() -> FaceModel:
    return FaceModel.from_file()


@pytest.fixture(scope="module")
def albedo_gen(fm: FaceModel) -> ProceduralAlbedo:
    return ProceduralAlbedo(fm)


@pytest.fixture(scope="module")
def params() -> AlbedoParams:
    return sample_albedo_params(6, torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def dataset(fm: FaceModel) -> SyntheticFaces:
    return SyntheticFaces(SyntheticConfig(image_size=128, albedo_size=128, seed=3), face_model=fm)


@pytest.fixture(scope="module")
def batch(dataset: SyntheticFaces):
    return dataset.batch([0, 1, 2, 3, 4, 5])


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    return rgb @ torch.tensor([0.2126, 0.7152, 0.0722])


# -- colour science ----------------------------------------------------------------------------------------------


def test_spectral_pipeline_maps_white_to_white_and_srgb_round_trips() -> None:
    assert torch.allclose(spectrum_to_linear_srgb(torch.ones(31)), torch.ones(3), atol=1e-5)
    x = torch.linspace(0, 1, 101)
    assert torch.allclose(srgb_to_linear(linear_to_srgb(x)), x, atol=1e-6)


def test_skin_model_melanin_darkens_and_blood_reddens() -> None:
    mel = torch.tensor([0.01, 0.05, 0.15, 0.3, 0.6])
    rgb = skin_linear_rgb(mel, torch.full_like(mel, 0.02), 0.75)
    assert torch.all(luminance(rgb).diff() < 0)
    assert torch.all((rgb > 0) & (rgb < 1))
    blood = torch.tensor([0.005, 0.02, 0.08])
    rgb = skin_linear_rgb(torch.full_like(blood, 0.03), blood, 0.75)
    redness = rgb[:, 0] / rgb[:, 1]
    assert torch.all(redness.diff() > 0)


def test_melanin_extremes_give_very_light_and_very_dark_skin() -> None:
    lo, hi = MELANIN_RANGE
    light = skin_linear_rgb(torch.tensor(lo), torch.tensor(0.01), 0.75)
    dark = skin_linear_rgb(torch.tensor(hi), torch.tensor(0.01), 0.75)
    assert individual_typology_angle(light) > 60  # very light (Fitzpatrick I)
    assert individual_typology_angle(dark) < -50  # dark (Fitzpatrick VI)
    assert luminance(light) > 0.45 and luminance(dark) < 0.08


def test_sampled_skin_tones_cover_every_ita_category() -> None:
    p = sample_albedo_params(600, torch.Generator().manual_seed(11))
    ita = individual_typology_angle(p.skin_rgb())
    edges = [-90, -30, 10, 28, 41, 55, 90]  # dark, brown, tan, intermediate, light, very light
    share = np.histogram(ita.numpy(), edges)[0] / len(ita)
    assert share.min() > 0.07, share
    assert ita.min() < -50 and ita.max() > 60


def test_hair_colours_range_from_blond_to_black() -> None:
    rgb = hair_linear_rgb(torch.tensor([0.3, 2.0, 8.0]), torch.tensor([0.1, 0.3, 0.0]))
    assert torch.all(luminance(rgb).diff() < 0)
    assert luminance(rgb[0]) > 0.4 and luminance(rgb[2]) < 0.03


# -- albedo ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 96, 256])
def test_albedo_shapes_and_range(albedo_gen: ProceduralAlbedo, params: AlbedoParams, size: int) -> None:
    a = albedo_gen(params.select(slice(0, 3)), size)
    assert a.shape == (3, 3, size, size) and a.dtype == torch.float32
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1


def test_albedo_rejects_bad_sizes(albedo_gen: ProceduralAlbedo, params: AlbedoParams) -> None:
    for size in (32, 2048, 100.0):
        with pytest.raises(ValueError, match="size"):
            albedo_gen(params, size)  # type: ignore[arg-type]


def test_albedo_is_deterministic_and_per_sample(albedo_gen: ProceduralAlbedo, params: AlbedoParams) -> None:
    a = albedo_gen(params, 128)
    assert torch.equal(a, albedo_gen(params, 128))
    single = albedo_gen(params.select(2), 128)
    assert torch.allclose(single[0], a[2], atol=1e-5)
    assert (a[0] - a[1]).abs().mean() > 0.01
    other = AlbedoParams.cat([params.select(0)])
    reseeded = albedo_gen(type(other)(**{**other.__dict__, "noise_seed": other.noise_seed + 1}), 128)
    assert 0 < (reseeded[0] - a[0]).abs().mean() < 0.05  # same person, other noise


def test_same_generator_seed_gives_same_params() -> None:
    a = sample_albedo_params(3, torch.Generator().manual_seed(5))
    b = sample_albedo_params(3, torch.Generator().manual_seed(5))
    c = sample_albedo_params(3, torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a.__dict__.values(), b.__dict__.values(), strict=True))
    assert not torch.equal(a.melanin, c.melanin)


def _uv_at(fm: FaceModel, albedo: torch.Tensor, uv: np.ndarray) -> torch.Tensor:
    """(B, 3, H, W) albedo at (N, 2) uv points → (B, N, 3)."""
    grid = torch.as_tensor(uv, dtype=torch.float32)[None, None].expand(albedo.shape[0], -1, -1, -1)
    return sample_texture(albedo, grid)[:, :, 0].transpose(1, 2)


def test_lips_are_redder_than_cheeks(albedo_gen: ProceduralAlbedo) -> None:
    p = sample_albedo_params(24, torch.Generator().manual_seed(21))
    a = albedo_gen(p, 256)
    lm = albedo_gen.layout.landmarks_uv
    lips = np.stack([(lm[i] + lm[j]) / 2 for i, j in ((50, 61), (51, 62), (52, 63), (56, 65), (57, 66), (58, 67))])
    cheeks = np.stack([(lm[41] + lm[2]) / 2 + [0, -0.03], (lm[46] + lm[14]) / 2 + [0, -0.03]])
    lip_rgb = _uv_at(None, a, lips).mean(1)
    cheek_rgb = _uv_at(None, a, cheeks).mean(1)
    assert torch.all(lip_rgb[:, 0] / lip_rgb[:, 1] > 1.1 * cheek_rgb[:, 0] / cheek_rgb[:, 1])
    fair = p.melanin < 0.05
    assert fair.any() and torch.all(luminance(lip_rgb[fair]) < luminance(cheek_rgb[fair]))


def test_eyeballs_sample_the_eye_colours(fm: FaceModel, albedo_gen: ProceduralAlbedo) -> None:
    """The eyeballs' UVs land in the lid openings of the layout, which the albedo paints as eyes; the eyes render
    from the eye assets with the sample's iris colour (as the synthetic source renders them)."""
    p = sample_albedo_params(1, torch.Generator().manual_seed(2))
    p = type(p)(**{**p.__dict__, "melanin": torch.tensor([0.5]), "iris_melanin": torch.tensor([3.0])})
    a = albedo_gen(p, 256)
    renderer = MeshRenderer.from_face_model(fm, 160)
    sh = torch.zeros(1, 9, 3)
    sh[:, 0] = 1 / 0.2820948
    skin = skin_linear_rgb(p.melanin, p.blood, p.oxygenation)[0]
    outlines = albedo_gen.layout.eye_outline_uv
    for yaw in (0.0, 0.7):
        verts = fm(pose=torch.tensor([[[0.0, yaw, 0.0]] + [[0.0, 0.0, 0.0]] * (len(fm.joint_names) - 1)]))
        out = renderer(verts, WeakPerspectiveCamera.framing(verts, 0.02), a, sh, asset_texture=eye_atlases(fm, p))
        frags = out.fragments
        part = torch.as_tensor(fm.arrays.face_part)[frags.face_packed]
        uv = torch.einsum("nk,nkc->nc", frags.bary_packed, renderer.uv_corners[frags.face_packed]).numpy()
        in_opening = geo.inside_polygon(uv, outlines[0]) | geo.inside_polygon(uv, outlines[1])
        eye = ((part == 1) | (part == 2)).numpy()
        assert eye.sum() > 60
        assert in_opening[eye].mean() > 0.99  # every visible eyeball pixel samples the lid opening
        assert in_opening[~eye].sum() < 0.1 * eye.sum()  # hardly any skin pixel does
        alb = out.albedo[0].permute(1, 2, 0).reshape(-1, 3)[frags.pixels][torch.as_tensor(eye)]
        rel = luminance(alb) / luminance(skin)
        assert ((rel - 1).abs() > 0.4).float().mean() > 0.8  # not skin-coloured
        assert (rel > 3).float().mean() > 0.15  # sclera (far brighter than this dark skin)
        assert (rel < 0.5).float().mean() > 0.1  # dark-brown iris and the pupil
    poles = albedo_gen.layout.iris_centre_uv
    assert all(geo.inside_polygon(poles[e : e + 1], outlines[e])[0] for e in range(2))
    assert luminance(_uv_at(fm, a, poles)[0]).max() < 0.02  # pupils at the eyeballs' front poles


# -- scene codes -------------------------------------------------------------------------------------------------


def test_pose_codes_respect_ranges_and_limits(fm: FaceModel) -> None:
    ranges = PoseRanges(yaw_max_deg=60, pitch_max_deg=20, roll_max_deg=10)
    codes = sample_face_codes(fm, 300, torch.Generator().manual_seed(4), ranges)
    ang = head_angles_deg(codes.pose)
    assert ang[:, 0].abs().max() <= 60 + 1e-3 and ang[:, 0].abs().max() > 45
    assert ang[:, 1].abs().max() <= 20 + 1e-3 and ang[:, 2].abs().max() <= 10 + 1e-3
    lim = fm.joint_limits
    assert torch.all(codes.pose[:, 1:] >= lim[1:, :, 0] - 1e-6) and torch.all(codes.pose[:, 1:] <= lim[1:, :, 1] + 1e-6)
    assert codes.shape.shape == (300, fm.n_shape) and codes.expression.shape == (300, fm.n_expr)
    e = codes.expression
    assert e.min() >= 0 and e.max() <= 1
    assert (e > 0.05).float().sum(1).median() <= 6  # sparse
    jaw = fm.expr_names.index("jawOpen")
    assert (e[:, jaw] > 0.2).float().mean() > 0.08  # occasionally strong


def test_euler_round_trip() -> None:
    yaw, pitch, roll = torch.tensor([0.9, -0.3]), torch.tensor([0.2, -0.35]), torch.tensor([-0.1, 0.15])
    pose = euler_to_axis_angle(yaw, pitch, roll)[:, None]
    got = head_angles_deg(pose)
    assert torch.allclose(got, torch.rad2deg(torch.stack([yaw, pitch, roll], -1)), atol=1e-4)


def test_sh_light_is_plausible() -> None:
    sh = sample_sh(200, torch.Generator().manual_seed(8))
    assert sh.shape == (200, 9, 3)
    n = torch.nn.functional.normalize(torch.randn(2000, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    shading = sh_basis(n) @ sh  # (200, N, 3)
    assert shading.min() >= 0  # never negative anywhere
    front = shading[:, n[:, 2] > 0.5].mean(1)
    assert front.min() > 0.4 and front.max() < 1.6
    assert ((front / front.mean(1, keepdim=True)) - 1).abs().max() < 0.2  # only slightly coloured


def test_background_is_deterministic_and_in_range() -> None:
    p = sample_background_params(3, torch.Generator().manual_seed(1))
    a, b = render_background(p, 64), render_background(p, 64)
    assert a.shape == (3, 3, 64, 64) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and (a[0] - a[1]).abs().mean() > 0.01


# -- rendered batches --------------------------------------------------------------------------------------------


def test_batch_shapes_and_ranges(batch, dataset: SyntheticFaces, fm: FaceModel) -> None:
    B, S = 6, dataset.config.image_size
    assert batch.image_srgb.shape == (B, 3, S, S) and batch.mask.shape == (B, 1, S, S)
    assert batch.albedo_uv.shape == (B, 3, 128, 128)
    assert batch.codes.shape.shape == (B, fm.n_shape) and batch.codes.pose.shape == (B, len(fm.joint_names), 3)
    assert batch.sh.shape == (B, 9, 3) and batch.camera.scale.shape == (B,)
    assert batch.verts_world.shape == (B, fm.n_verts, 3)
    assert batch.landmarks_px.shape == (B, 68, 2) and batch.landmarks_visible.dtype == torch.bool
    assert batch.image_srgb.min() >= 0 and batch.image_srgb.max() <= 1
    assert set(batch.mask.unique().tolist()) <= {0.0, 1.0}
    fill = batch.mask.mean((1, 2, 3))
    assert torch.all((fill > 0.2) & (fill < 0.95))
    assert len(batch) == B and torch.equal(batch.index, torch.arange(B))


def test_landmarks_inside_image_and_consistent_with_mask(batch, dataset: SyntheticFaces) -> None:
    S = dataset.config.image_size
    px = batch.landmarks_px
    assert px.min() >= 0 and px.max() <= S - 1
    box = (px.amax(1) - px.amin(1)).amax(1) / S  # the larger side of the landmarks' box
    lo, hi = dataset.config.face_fill
    assert torch.all((box > lo - 0.01) & (box < hi + 0.01))
    col, row = px.round().long().unbind(-1)
    b = torch.arange(len(batch))[:, None].expand_as(col)
    on_mask = batch.mask[b, 0, row, col] > 0
    vis = batch.landmarks_visible
    assert torch.all(on_mask[vis])
    assert vis.float().mean() > 0.75
    yaw = head_angles_deg(batch.codes.pose)[:, 0]
    assert torch.all(vis[yaw.abs() < 30][:, [30, 36, 45, 48, 54]])  # frontal-ish: nose, eye and mouth corners
    # a strongly turned head hides the far side of the jaw contour
    side = dataset.batch([_turned_index(dataset, 40)])
    yaw_s = head_angles_deg(side.codes.pose)[0, 0]
    hidden = ~side.landmarks_visible[0]
    far = list(range(0, 4)) if yaw_s < 0 else list(range(13, 17))
    assert hidden[far].any()


def _turned_index(dataset: SyntheticFaces, min_yaw: float) -> int:
    for i in range(100, 400):
        g = dataset.generator(i)
        sample_albedo_params(1, g)
        codes = sample_face_codes(dataset.face_model, 1, g, dataset.config.pose)
        if head_angles_deg(codes.pose)[0, 0].abs() > min_yaw:
            return i
    raise AssertionError("no turned head found")


def test_samples_are_deterministic_per_index(dataset: SyntheticFaces, batch) -> None:
    again = dataset.batch([0, 1, 2, 3, 4, 5])
    assert torch.equal(again.image_srgb, batch.image_srgb)
    assert torch.equal(again.albedo_uv, batch.albedo_uv)
    assert torch.equal(again.landmarks_px, batch.landmarks_px)
    alone = dataset[4]  # same index in another batch composition
    assert torch.allclose(alone.image_srgb[0], batch.image_srgb[4], atol=1e-4)
    assert torch.allclose(alone.codes.shape[0], batch.codes.shape[4])
    assert (batch.image_srgb[0] - batch.image_srgb[1]).abs().mean() > 0.02
    other_seed = SyntheticFaces(SyntheticConfig(image_size=64, albedo_size=64, seed=4), face_model=dataset.face_model)
    assert not torch.equal(other_seed.sample_params([0])[0].melanin, dataset.sample_params([0])[0].melanin)


def test_batches_concatenate_and_select(batch) -> None:
    joined = type(batch).cat([batch.select(0), batch.select(slice(1, 3))])
    part = batch.select(slice(0, 3))
    assert torch.equal(joined.image_srgb, part.image_srgb) and torch.equal(joined.index, part.index)
    assert torch.equal(joined.camera.scale, part.camera.scale) and torch.equal(joined.codes.pose, part.codes.pose)
    assert torch.equal(joined.albedo_params.noise_seed, part.albedo_params.noise_seed)


def test_batches_shard_by_index_and_resume() -> None:
    steps = [[SyntheticFaces.batch_indices(s, 4, r, 3) for r in range(3)] for s in range(5)]
    flat = [i for step in steps for ix in step for i in ix]
    assert sorted(flat) == list(range(60))  # every index once, no rank overlap
    assert SyntheticFaces.batch_indices(2, 4, 1, 3) == [28, 29, 30, 31]


def test_stream_resumes_where_it_stopped(fm: FaceModel) -> None:
    ds = SyntheticFaces(SyntheticConfig(image_size=48, albedo_size=64, length=8), face_model=fm)
    run = list(ds.batches(2, rank=1, world_size=2))
    assert [b.index.tolist() for b in run] == [[2, 3], [6, 7]]
    resumed = next(ds.batches(2, start=1, rank=1, world_size=2))
    assert torch.equal(resumed.image_srgb, run[1].image_srgb)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="albedo_size"):
        SyntheticConfig(albedo_size=2048)
    with pytest.raises(ValueError, match="face_fill"):
        SyntheticConfig(face_fill=(0.8, 0.6))
    with pytest.raises(ValueError, match="seed"):
        SyntheticConfig(seed=-1)
    with pytest.raises(ValueError, match="yaw_max_deg"):
        PoseRanges(yaw_max_deg=120)


def test_image_is_the_srgb_encoded_render(batch, dataset: SyntheticFaces) -> None:
    """Re-rendering the ground truth reproduces the image (the batch is self-consistent)."""
    from training.data.synthetic import render_background

    p_alb, scene = dataset.sample_params(batch.index.tolist())
    bg = render_background(scene.background, dataset.config.image_size)
    eyes = eye_atlases(dataset.face_model, p_alb)
    out = dataset.renderer(batch.verts_world, batch.camera, batch.albedo_uv, batch.sh, bg, asset_texture=eyes)
    assert torch.allclose(linear_to_srgb(out.image), batch.image_srgb, atol=1e-5)
    assert math.isclose(float(out.mask.mean()), float(batch.mask.mean()))


def test_supersampled_renders_blur_edges_like_a_camera_and_keep_the_landmarks(fm, dataset, batch):
    from dataclasses import replace

    fine = SyntheticFaces(replace(dataset.config, supersample=2), face_model=fm).batch([0, 1, 2, 3, 4, 5])
    torch.testing.assert_close(fine.landmarks_px, batch.landmarks_px)  # the same faces, framed the same
    assert (fine.landmarks_visible == batch.landmarks_visible).float().mean() > 0.97
    # the same picture (mean difference small) ...
    assert (fine.image_srgb - batch.image_srgb).abs().mean() < 0.02
    # ... whose silhouette is partly covered pixels, not a staircase of whole ones
    assert set(batch.mask.unique().tolist()) <= {0.0, 1.0}
    edge = (fine.mask > 0) & (fine.mask < 1)
    assert edge.float().mean() > 0.005 and set(fine.mask[edge].unique().tolist()) >= {0.25, 0.5, 0.75}

    # each pixel is the mean, in linear light, of the 2×2 pixels of a render twice the size
    big = SyntheticFaces(replace(dataset.config, image_size=256), face_model=fm).batch([0, 1, 2, 3, 4, 5])
    pooled = linear_to_srgb(torch.nn.functional.avg_pool2d(srgb_to_linear(big.image_srgb), 2))
    torch.testing.assert_close(fine.image_srgb, pooled, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="supersample"):
        SyntheticConfig(supersample=0)


def test_a_wider_key_tint_scales_the_key_lights_colour_and_nothing_else():
    """SyntheticConfig.key_tint (evaluations of a light whose colour differs by direction, benchmarks/light_fit.py):
    the same draws, the key light's warm–cool tint scaled; the default is the training's 0.12; out of range refused."""

    def side_tint(key_tint: float | None) -> np.ndarray:
        g = torch.Generator().manual_seed(5)
        sh = sample_sh(40, g) if key_tint is None else sample_sh(40, g, key_tint)
        linear = sh[:, 1:4].double()  # only the key light is directional: its colour
        return torch.log(linear[..., 0].abs().sum(1) / linear[..., 2].abs().sum(1)).numpy()

    default, narrow, wide = side_tint(None), side_tint(0.12), side_tint(0.35)
    np.testing.assert_array_equal(default, narrow)
    assert np.abs(wide).mean() > 2.0 * np.abs(narrow).mean()
    assert np.corrcoef(wide, narrow)[0, 1] > 0.9  # the same draws, scaled
    with pytest.raises(ValueError, match="key_tint"):
        SyntheticConfig(key_tint=1.5)


def test_highlights_are_the_key_lights_and_change_nothing_else(fm, dataset, batch):
    """SyntheticConfig.specular: Blinn–Phong highlights of the key light on the skin, drawn from a stream of their
    own (codes, light, framing, background and albedo are the draws without them); 0 (the default) renders the
    same images; the highlight only brightens, most where the skin faces the half vector; out of range refused."""
    from dataclasses import replace

    shiny_set = SyntheticFaces(replace(dataset.config, specular=1.0), face_model=fm)
    shiny = shiny_set.batch([0, 1, 2, 3, 4, 5])
    for name in ("landmarks_px", "sh", "albedo_uv", "mask"):
        torch.testing.assert_close(getattr(shiny, name), getattr(batch, name))
    plain, lit = srgb_to_linear(batch.image_srgb), srgb_to_linear(shiny.image_srgb)
    assert (lit - plain).min() > -1e-6  # a highlight adds light
    added = (lit - plain).sum(1)
    assert (added.flatten(1).amax(1) > 0.05).sum() >= 3  # most samples show one (their strength is U(0, 1))
    assert float(added[batch.mask[:, 0] == 0].abs().max()) == 0.0  # on the head only
    # the highlight has the key light's colour: its channels in the key light's irradiance ratios
    _, scene = shiny_set.sample_params([0, 1, 2, 3, 4, 5])
    k = int(added.flatten(1).amax(1).argmax())
    peak = (lit - plain)[k].flatten(1)[:, int(added[k].flatten().argmax())]
    key = scene.specular[k, 3:6].double()
    np.testing.assert_allclose((peak / peak.sum()).numpy(), (key / key.sum()).numpy(), atol=0.02)
    # strength 0 draws highlights of no radiance, and the renderer is not given them (the renders as they were)
    _, plain_scene = dataset.sample_params([0, 1, 2, 3, 4, 5])
    assert float(plain_scene.specular[:, 3:6].abs().max()) == 0.0
    torch.testing.assert_close(plain_scene.specular[:, :3], scene.specular[:, :3])  # the same lights
    with pytest.raises(ValueError, match="specular"):
        SyntheticConfig(specular=-0.1)


def test_cast_shadows_only_darken_where_the_head_hides_the_key_light(fm, dataset, batch):
    """SyntheticConfig.shadows: the key light is taken away where the head itself hides it (its order-2 SH share,
    :func:`training.data.synthetic.key_shadows`); every draw is the same, the renders only darken, on the head
    only, and the lights' SceneParams.key holds the key light that is in ``sh``."""
    from dataclasses import replace

    from training.data.synthetic import key_shadows

    shadowed = SyntheticFaces(replace(dataset.config, shadows=True), face_model=fm).batch([0, 1, 2, 3, 4, 5])
    for name in ("landmarks_px", "sh", "albedo_uv", "mask"):
        torch.testing.assert_close(getattr(shadowed, name), getattr(batch, name))
    plain, dark = srgb_to_linear(batch.image_srgb), srgb_to_linear(shadowed.image_srgb)
    taken = (plain - dark).sum(1)
    assert float(taken.min()) > -1e-5  # a shadow only takes light away
    assert float(taken[batch.mask[:, 0] == 0].abs().max()) == 0.0  # on the head only
    assert (taken.flatten(1).amax(1) > 0.05).sum() >= 4  # most samples show some
    _, scene = dataset.sample_params([0, 1, 2, 3, 4, 5])
    # the key light's SH is the directional part of the sample's light: ambient + key, up to the floor's lift
    key_sh, visibility = key_shadows(fm, batch.verts_world, scene.key)
    assert visibility.shape == batch.verts_world.shape[:2] and float(visibility.min()) >= 0.0
    rest = scene.sh.double() - key_sh.double()
    assert float(rest[:, 1:].abs().max()) < 0.02 * float(scene.sh[:, 1:].abs().max())  # ambient: constant term only
    np.testing.assert_allclose(scene.key[:, :3].norm(dim=1).numpy(), 1.0, atol=1e-6)
