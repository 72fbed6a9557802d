"""training.skin_tone.shares: the photo's share of the least-squares combination of two noisy estimates of the
skin tone."""

from __future__ import annotations

import numpy as np
import pytest

from training.skin_tone import shares


def test_shares_weigh_each_estimate_by_the_others_error():
    rng = np.random.default_rng(0)
    n = 20000
    # chroma: photo twice as precise as the map (σ 0.02 vs 0.04) → share 0.04² / (0.02² + 0.04²) = 0.8;
    # level: photo three times worse (σ 0.3 vs 0.1) → share 0.1
    photo = np.c_[rng.normal(0, 0.02, (n, 2)), rng.normal(0, 0.3, n)]
    generated = np.c_[rng.normal(0, 0.04, (n, 2)), rng.normal(0, 0.1, n)]
    chroma, level = shares(photo, generated)
    assert abs(chroma - 0.8) < 0.02 and abs(level - 0.1) < 0.02
    combined = generated + np.array([chroma, chroma, level]) * (photo - generated)
    assert ((combined**2).mean(0) < np.minimum((photo**2).mean(0), (generated**2).mean(0))).all()
    # a photo that is always right takes all of it; one with the map's own error (perfectly correlated) a half
    assert shares(np.zeros((10, 3)), generated[:10]) == (1.0, 1.0)
    assert shares(generated[:10], generated[:10]) == (0.5, 0.5)


def test_calibration_refuses_what_it_cannot_measure(tmp_path):
    from training.skin_tone import calibrate_bundle, fit

    with pytest.raises(SystemExit, match="not a bundle folder"):
        calibrate_bundle(tmp_path)
    few = {"photo": np.zeros((9, 3)), "generated": np.zeros((9, 3))}
    with pytest.raises(SystemExit, match="too few"):
        fit(few, "test")


def test_fit_stores_the_photos_level_bias_and_shares():
    from training.skin_tone import fit

    rng = np.random.default_rng(1)
    photo = np.c_[rng.normal(0, 0.02, (400, 2)), rng.normal(-0.2, 0.3, 400)]  # its level 0.2 too dark
    generated = np.c_[rng.normal(0, 0.04, (400, 2)), rng.normal(0, 0.1, 400)]
    cal = fit({"photo": photo, "generated": generated}, "test")
    assert abs(cal.photo_level_offset - 0.2) < 0.04 and cal.renders == 400
    assert 0.7 < cal.chroma_weight < 0.9 and 0.05 < cal.level_weight < 0.2  # 0.8 and 0.1 in expectation


def test_the_level_map_is_the_truths_least_squares_fit_on_the_photos_level_and_chroma():
    """A photo level that regresses to the mean (truth = 0.6 + 1.4 · photo + noise, as bundle 2.0.0's light gives):
    the line is recovered, and mapping the photo's level along it beats the photo's own level with its mean bias
    removed. A level an exposure took away (the photo's level random) while the chroma follows the pigment: the
    map reads the level off the chroma, slope near 0. A slope beyond the manifest's bounds is clipped (the rest
    refitted), and too few renders or coefficients beyond the manifest's bounds are refused."""
    from facecore.bundle import SkinToneCalibration
    from training.skin_tone import fit_level_map

    rng = np.random.default_rng(2)
    n = 400
    chroma_noise = rng.normal(0, 0.03, (n, 2))
    photo = np.c_[chroma_noise, rng.normal(-1.5, 0.45, n)]
    truth = 0.6 + 1.4 * photo[:, 2] + rng.normal(0, 0.2, n)
    a, b, c_rg, c_bg = fit_level_map(photo, truth)
    assert abs(b - 1.4) < 0.07 and abs(a - 0.6) < 0.12 and max(abs(c_rg), abs(c_bg)) < 1.0
    mapped, debiased = a + b * photo[:, 2], photo[:, 2] + (truth - photo[:, 2]).mean()
    assert np.sqrt(((mapped - truth) ** 2).mean()) < 0.8 * np.sqrt(((debiased - truth) ** 2).mean())

    pigment = rng.uniform(0, 1, n)  # fair 0 … dark 1: redder, less blue and darker
    truth = -0.8 - 2.0 * pigment + rng.normal(0, 0.05, n)
    exposed = np.c_[0.2 + 0.3 * pigment + chroma_noise[:, 0], -0.3 - 0.4 * pigment + chroma_noise[:, 1], photo[:, 2]]
    a, b, c_rg, c_bg = fit_level_map(exposed, truth)
    err = a + b * exposed[:, 2] + c_rg * exposed[:, 0] + c_bg * exposed[:, 1] - truth
    assert abs(b) < 0.05 and np.median(np.abs(err)) < 0.15 < np.median(np.abs(truth - truth.mean()))

    centred = photo - photo.mean(0)
    fit = fit_level_map(centred, 9.0 * centred[:, 2])
    assert fit[1] == 4.0 and abs(fit[0]) < 1e-9
    assert fit_level_map(centred, -centred[:, 2])[1] == 0.0
    with pytest.raises(SystemExit, match="bounds"):
        fit_level_map(photo, photo[:, 2] + 9.0)
    with pytest.raises(SystemExit, match="too few"):
        fit_level_map(photo[:9], truth[:9])
    cal = SkinToneCalibration(
        photo_level_offset=0.0, level_intercept=a, level_slope=b, level_chroma=(c_rg, c_bg), renders=n
    )
    assert cal.level_map == (a, b, c_rg, c_bg)
    assert SkinToneCalibration(photo_level_offset=0.0, level_intercept=a, level_slope=1.0, renders=1).level_map == (
        a, 1.0, 0.0, 0.0
    )  # fmt: skip
    assert SkinToneCalibration(photo_level_offset=0.0, renders=1).level_map is None
    with pytest.raises(ValueError, match="come together"):
        SkinToneCalibration(photo_level_offset=0.0, level_slope=1.2, renders=1)
    with pytest.raises(ValueError, match="level_chroma"):
        SkinToneCalibration(photo_level_offset=0.0, level_chroma=(1.0, 1.0), renders=1)
    for bad in ((30.0, 0.0), (float("nan"), 0.0)):
        with pytest.raises(ValueError, match="level_chroma"):
            SkinToneCalibration(photo_level_offset=0, level_intercept=0, level_slope=1, level_chroma=bad, renders=1)


def test_auto_exposure_sets_the_face_to_its_target_level():
    """training.skin_tone.auto_exposed (the benchmark's camera-like exposure): the face box's median luminance becomes
    the target whether the photo was dark or bright; no face, None."""
    from pathlib import Path

    from PIL import Image

    from facecore import color, detect, texture
    from training.skin_tone import auto_exposed

    photo = np.asarray(Image.open(Path(__file__).parents[1] / "fixtures" / "photos" / "cc0-interfaces-001.jpg"))
    for gain in (0.4, 1.0):
        dim = color.to_uint8(color.linear_to_srgb(color.srgb_to_linear(photo / 255.0) * gain))
        exposed = auto_exposed(dim, 0.18)
        x0, y0, x1, y1 = np.rint(detect.detect_landmarks5(exposed)[0].box).astype(int)
        median = np.median(color.srgb_to_linear(exposed[y0 : y1 + 1, x0 : x1 + 1] / 255.0) @ texture.LUMA)
        assert abs(median - 0.18) < 0.02, (gain, median)
    assert auto_exposed(np.full((200, 200, 3), 128, np.uint8), 0.18) is None
