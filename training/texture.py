"""Texture extraction and correction (AlbedoGAN seed §1.1): unwrap a fitted photo into UV, de-light, write maps.

1. **Fit** (:mod:`training.face_fit`): identity, expression, pose, camera and SH light from the photo's 68
   landmarks and its facial skin's colours.
2. **Extract** (:func:`extract_texture`): :func:`facecore.texture.unwrap` with the fitted posed mesh, camera and
   light. It colours each texel that is visible from the camera (z-buffer), i.e. per-vertex colours mapped to the
   cylindrical UV and filled by 2-D barycentric interpolation inside each triangle; texels on the hidden side take
   the colour of their mirror texel (u → 1 − u: the flipped image projected onto the same mesh; which side is
   hidden follows from the pose), the rest the mean; dividing by the fitted SH shading de-lights into albedo.
   "Hidden" includes texels seen at a grazing angle (normal·view < ``min_facing`` = 0.35): near the silhouette
   they are blurred and pick up background or hair when the fit is a few pixels off, and their mirror, seen
   frontally, is the better estimate (measured: +0.9 dB on the facial skin vs the renderer's 0.05).
   Correction of what division cannot fix: a seen texel whose shading is below ``min_shading`` (attached
   shadow: the division would amplify noise and the model's unmodelled cast shadows) or whose photo colour is
   clipped (≥ ``clip_level`` in a channel: the true radiance is unknown) is **not valid**; it takes the albedo of
   its mirror texel when that one is valid, else a local average of the valid albedo around it (normalised
   Gaussian convolution). ``valid`` marks the texels whose albedo is a direct, trustworthy measurement.
3. **CLI stage** (:func:`run`, ``python -m training.run extract``): a folder of photos (dlib 68 landmarks → aligned
   crop → fit → extraction from the full-resolution photo) or renders of the synthetic source; writes the
   AlbedoGAN training set ``albedo/NNNNNN.png`` (8-bit sRGB UV maps), ``shading/`` and ``mask/`` PNGs,
   ``fits.jsonl`` (codes and errors per image) and ``summary.json``; resumable.

Colour: photos are sRGB-encoded; fitting and de-lighting run on linear values (shading multiplies linear
albedo); albedo maps are written sRGB-encoded like every albedo image of the project.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from facecore import texture as uv_texture
from facecore.color import linear_to_srgb, srgb_to_linear, to_uint8
from facecore.geometry import FaceModelArrays
from models.face.model import FaceModel
from models.render import MeshRenderer
from training.face_fit import FitConfig, FitResult, face_region, fit_faces, image_float, normalised_landmark_error
from training.images import save_png

logger = logging.getLogger(__name__)

SHADING_PNG_SCALE = 2.0
"""``shading/*.png`` stores linear shading / SHADING_PNG_SCALE in 8 bits (shading can exceed 1)."""
MASK_PNG_VALUES = {"outside": 0, "mean_filled": 64, "mirrored": 128, "seen_invalid": 192, "seen_valid": 255}
"""``mask/*.png`` (8-bit grey) per texel: outside the skin, mean-filled, mirrored, seen but not valid (shadow or
clipping, corrected), seen and valid (:attr:`ExtractedTexture.valid`)."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FLAGGED_DIR = "flagged"
FLAG_NAMES = ("greyscale", "colour_cast", "over_exposed", "under_exposed", "no_skin_model")
"""Maps of photos flagged by the extraction (greyscale, colour cast, over- or under-exposed, no skin model:
``ExtractedTexture.flags``) are written under ``OUT/flagged/`` (same layout), outside ``OUT/albedo/``, AlbedoGAN's
training folder."""


# ---------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractedTexture:
    """A UV texture extracted from a photo (row 0 is v = 1; linear values).

    Attributes:
        albedo: (R, R, 3) de-lit linear albedo in [0, 1], corrected (see the module docstring).
        colour: (R, R, 3) linear colours as seen in the photo (seen, mirrored or mean-filled).
        source: (R, R) uint8 (``facecore.texture.SOURCE_*``): 0 outside the skin layout, 1 seen (accepted),
            2 mirrored, 3 filled from the smooth prior, 4 seen but rejected (not skin, shadowed, clipped, at the
            silhouette) and filled.
        shading: (R, R, 3) the fitted SH shading at each texel.
        valid: (R, R) bool, seen texels whose albedo is a trustworthy measurement (lit enough, not clipped, skin
            or the face's own features).
        weight: (R, R) the photo's share of each texel's albedo (own sample + mirror), or None (legacy).
        pixel: (R, R, 2) photo pixel (x, y) each seen texel sampled, NaN elsewhere, or None (legacy).
        flags: ``greyscale`` / ``colour_cast`` / ``over_exposed`` / ``under_exposed`` / ``no_skin_model``
            (``facecore.texture.extract``): the map is written but kept out of AlbedoGAN's training set.
    """

    albedo: np.ndarray
    colour: np.ndarray
    source: np.ndarray
    shading: np.ndarray
    valid: np.ndarray
    weight: np.ndarray | None = None
    pixel: np.ndarray | None = None
    flags: tuple[str, ...] = ()

    @classmethod
    def from_clean(cls, clean: uv_texture.CleanTexture) -> ExtractedTexture:
        """The extract stage's record of ``facecore.texture.extract``'s result."""
        return cls(
            albedo=clean.albedo,
            colour=clean.colour,
            source=clean.source,
            shading=clean.shading,
            valid=clean.accepted & (clean.source == uv_texture.SOURCE_SEEN),
            weight=clean.weight,
            pixel=clean.pixel,
            flags=clean.flags,
        )


def extract_texture(
    image: np.ndarray,
    fit: FitResult,
    face_model: FaceModel,
    resolution: int = 256,
    *,
    matrix: np.ndarray | None = None,
    min_shading: float = 0.15,
    clip_level: float = 0.995,
    min_facing: float = 0.35,
    landmarks: np.ndarray | None = None,
    legacy: bool = False,
    prior: np.ndarray | None = None,
    eyes: np.ndarray | None = None,
) -> ExtractedTexture:
    """Unwrap ``image`` with the fitted mesh and light into a de-lit UV albedo.

    Args:
        image: (H, W, 3) sRGB photo, uint8 or float [0, 1]; the fitted image itself, or (with ``matrix``)
            the photo it was cropped from.
        fit: the :class:`FitResult`.
        face_model: the face model of the fit.
        resolution: R of the UV maps.
        matrix: (2, 3) affine taking pixels of the fitted image to pixels of ``image`` (e.g.
            ``AlignedFace.crop_to_image``'s matrix), or None when ``image`` is the fitted image. A photo much
            larger than the fitted crop is first reduced by an integer factor (no aliasing).
        min_shading: texels lit less than this (linear irradiance) are not valid (attached shadows).
        clip_level: texels whose photo colour reaches this in a channel are not valid (clipped highlights).
        min_facing: texels whose normal makes a cosine below this with the viewing direction count as hidden
            (``facecore.texture.extract``); the mirror fill takes them over.
        landmarks: (68, 2) the landmarks the fit was fitted to (pixels of the fitted image): given, the photo is
            sampled through ``facecore.texture.landmark_warp``, which moves the fit's residual off the map (the
            photo's lips, lids and brows land on their texels); None (the extract stage's choice: dlib's points
            are noisier than the fit, see ``benchmarks/texture_extraction.py``), through the fit alone.
        prior: a linear albedo map the fill follows where the photo gives nothing (``facecore.texture.extract``).
        eyes: (12, 2) the photo's eye contours (landmarks 36–47, pixels of the fitted image): given, the lids are
            kept as seen outside them (``facecore.texture.extract``).
        legacy: the extraction before issue 14 (``facecore.texture.unwrap`` + :func:`_correct`: every visible
            texel, hair and background included), kept for the benchmark's before/after comparison.

    Returns:
        :class:`ExtractedTexture`.
    """
    img = image_float(image)
    verts = fit.posed_vertices(face_model)
    px = fit.to_pixels(verts)
    if landmarks is not None and not legacy:
        px = uv_texture.landmark_warp(px, fit.landmarks_px(face_model), landmarks)
    if matrix is not None:
        from facecore.detect import transform_points

        matrix = np.asarray(matrix, np.float64)
        if matrix.shape != (2, 3):
            raise ValueError(f"matrix: expected (2, 3), got {matrix.shape}")
        px = transform_points(px, matrix)
        if eyes is not None:
            eyes = transform_points(eyes, matrix)
        zoom = math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))  # photo pixels per fitted pixel
        factor = int(zoom / 1.5)
        if factor >= 2:
            from PIL import Image

            h, w = img.shape[0] // factor, img.shape[1] // factor
            img = np.asarray(Image.fromarray(to_uint8(img)).reduce(factor), np.float64)[:h, :w] / 255.0
            px = (px - (factor - 1) / 2.0) / factor
            if eyes is not None:
                eyes = (eyes - (factor - 1) / 2.0) / factor
    lin = srgb_to_linear(img)
    if legacy:
        un = uv_texture.unwrap(face_model.arrays, verts, px, lin, resolution, sh=fit.sh, min_facing=min_facing)
        return _correct(un, min_shading, clip_level)
    clean = uv_texture.extract(
        face_model.arrays, verts, px, lin, resolution, sh=fit.sh,
        min_facing=min_facing, min_shading=min_shading, clip_level=clip_level, prior=prior,
        eyes=eyes,
    )  # fmt: skip
    return ExtractedTexture.from_clean(clean)


def _correct(un: uv_texture.Unwrapped, min_shading: float, clip_level: float) -> ExtractedTexture:
    """Validity (lit enough, not clipped) and replacement of the invalid texels (valid mirror, else the mean)."""
    shading = un.shading
    if shading is None:
        raise ValueError("unwrap returned no shading (no light given)")
    albedo = un.albedo.copy()
    direct, mirrored = un.source == 1, un.source == 2
    ok = (shading.min(-1) >= min_shading) & (un.colour.max(-1) < clip_level)
    valid = direct & ok
    bad = (direct | mirrored) & ~ok  # a mirrored texel is judged by its origin's light and colour
    take = bad & direct & valid[:, ::-1]
    albedo[take] = un.albedo[:, ::-1][take]
    rest = bad & ~take
    if rest.any() and valid.any():
        albedo[rest] = _local_fill(albedo, valid | take, rest)
    return ExtractedTexture(albedo=albedo, colour=un.colour, source=un.source, shading=shading, valid=valid)


def _local_fill(image: np.ndarray, known: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """Values for the ``holes`` of an (R, R, 3) map from the ``known`` texels around them: normalised Gaussian
    convolution at growing scales (σ = 2, 6, 18 texels), the smallest scale that reaches a hole wins; the mean
    of the known texels where none does."""
    from scipy.ndimage import gaussian_filter

    out = np.empty((int(holes.sum()), 3))
    todo = np.ones(len(out), bool)
    weight = known.astype(np.float64)
    for sigma in (2.0, 6.0, 18.0):
        den = gaussian_filter(weight, sigma, mode="wrap")[holes]
        num = np.stack([gaussian_filter(image[..., c] * weight, sigma, mode="wrap")[holes] for c in range(3)], -1)
        ok = todo & (den > 1e-3)
        out[ok] = num[ok] / den[ok, None]
        todo &= ~ok
        if not todo.any():
            break
    out[todo] = image[known].mean(0)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Accuracy on ground truth
# ---------------------------------------------------------------------------------------------------------------


def rigid_rms_mm(pred: np.ndarray, truth: np.ndarray) -> float:
    """RMS distance in mm of (N, 3) ``pred`` to ``truth`` (metres) after the best rotation + translation."""
    p, t = pred - pred.mean(0), truth - truth.mean(0)
    u, _, vt = np.linalg.svd(p.T @ t)
    d = np.sign(np.linalg.det(u @ vt))
    R = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(((p @ R - t) ** 2).sum(-1).mean()) * 1000.0)


_FACE_VERTS_CACHE: dict[int, np.ndarray] = {}


def face_vertices(arrays: FaceModelArrays) -> np.ndarray:
    """Indices of the vertices of the facial-skin region (:func:`face_region`), the observable geometry."""
    key = id(arrays)
    if key not in _FACE_VERTS_CACHE:
        _FACE_VERTS_CACHE[key] = np.unique(arrays.faces[face_region(arrays) > 0])
    return _FACE_VERTS_CACHE[key]


def face_texels(arrays: FaceModelArrays, resolution: int) -> np.ndarray:
    """(R, R) bool: the texels of the facial-skin region (:func:`face_region`), a fixed set for comparisons."""
    texel, face, _ = uv_texture.geo.texel_sampling(arrays, resolution)
    out = np.zeros(resolution * resolution, bool)
    out[texel] = face_region(arrays)[face] > 0
    return out.reshape(resolution, resolution)


def albedo_errors(tex: ExtractedTexture, truth: np.ndarray, face: np.ndarray | None = None) -> dict[str, float]:
    """Errors (linear [0, 1] units) of the extracted maps vs the true (R, R, 3) linear albedo.

    On the texels seen in the photo: ``raw`` (seen colours, no de-lighting), ``delit`` (the albedo) and
    ``delit_gain`` (the albedo after one least-squares gain per channel: the albedo/light scale is a convention,
    not a measurement), as mean absolute errors. On the fixed facial-skin texels ``face`` (:func:`face_texels`;
    seen, mirrored or mean-filled, whatever the pose): ``face_mae`` / ``face_psnr`` of the gain-corrected
    albedo, ``face_psnr_noflip`` with the mirrored texels mean-filled instead (the flip-fill ablation),
    ``face_psnr_raw`` of the gain-corrected seen colours (the de-lighting ablation), and ``face_seen`` /
    ``face_mirrored``: the fractions of those texels seen and mirrored.
    """
    seen = tex.source == 1
    keys = ("raw", "delit", "delit_gain", "face_mae", "face_psnr", "face_psnr_abs", "face_psnr_noflip", "face_psnr_raw")
    if not seen.any():
        return {k: float("nan") for k in keys}
    t = truth[seen]

    def gain_of(x: np.ndarray) -> np.ndarray:
        return (x[seen] * t).sum(0) / np.maximum((x[seen] ** 2).sum(0), 1e-12)

    def psnr(x: np.ndarray, mask: np.ndarray) -> float:
        mse = float(((x[mask] - truth[mask]) ** 2).mean())
        return 10.0 * math.log10(1.0 / max(mse, 1e-12))

    out = {
        "raw": float(np.abs(tex.colour[seen] - t).mean()),
        "delit": float(np.abs(tex.albedo[seen] - t).mean()),
    }
    albedo_g = np.clip(tex.albedo * gain_of(tex.albedo), 0, 1)
    out["delit_gain"] = float(np.abs(albedo_g[seen] - t).mean())
    if face is not None and face.any():
        noflip = tex.albedo.copy()
        mir = tex.source == 2
        noflip[mir] = tex.albedo[tex.valid].mean(0) if tex.valid.any() else tex.albedo[seen].mean(0)
        raw = tex.colour.copy()
        raw[mir] = noflip[mir]  # the raw ablation keeps the same fill as the no-flip one
        raw[tex.source == 3] = tex.colour[seen].mean(0)
        out["face_mae"] = float(np.abs(albedo_g[face] - truth[face]).mean())
        out["face_psnr"] = psnr(albedo_g, face)
        out["face_psnr_abs"] = psnr(tex.albedo, face)
        out["face_psnr_noflip"] = psnr(np.clip(noflip * gain_of(noflip), 0, 1), face)
        out["face_psnr_raw"] = psnr(np.clip(raw * gain_of(raw), 0, 1), face)
        out["face_seen"] = float(seen[face].mean())
        out["face_mirrored"] = float(mir[face].mean())
    return out


# ---------------------------------------------------------------------------------------------------------------
# The CLI stage
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedFace:
    """A face ready to fit: the aligned crop, its landmarks, and the crop → photo transform."""

    image: np.ndarray
    crop: np.ndarray
    landmarks: np.ndarray
    crop_to_image: np.ndarray
    detector: str


class LocaliserLandmarks:
    """68 landmarks from a bundle's landmark localiser (:mod:`facecore.localise`), started at dlib's 5 points as
    ``/reconstruct`` starts it: the face model's own landmark definition (the jaw contour where the head's contour
    vertices project, not on the silhouette), from a network trained on this project's synthetic faces only.

    dlib's 68-point model (the other source) was trained on iBUG 300-W, whose terms exclude commercial use.
    """

    def __init__(self, bundle: str | Path | None = None, threads: int = 1):
        from facecore import localise
        from facecore.bundle import load_bundle
        from service.engine.sessions import GraphSession, choose_providers
        from service.settings import EMBEDDED_BUNDLE

        loaded = load_bundle(EMBEDDED_BUNDLE if bundle is None else bundle)
        spec = loaded.manifest.localiser
        if spec is None or localise.GRAPH not in loaded.manifest.graphs:
            raise ValueError(f"{loaded.root}: the bundle has no landmark localiser")
        graph = loaded.manifest.graphs[localise.GRAPH]
        self.spec, self.size = spec, int(graph.inputs[localise.GRAPH_INPUT].shape[-1])
        self.session = GraphSession(
            localise.GRAPH, loaded.graph_path(localise.GRAPH), graph, choose_providers(["CPUExecutionProvider"]),
            threads,
        )  # fmt: skip

    def __call__(self, image: np.ndarray, detector: str = "auto") -> tuple[np.ndarray, str]:
        """(68, 2) landmarks of the largest face in ``image`` (pixels) and the detector that found it.

        Raises:
            facecore.detect.NoFaceError: no face was found."""
        import asyncio

        from facecore import detect, localise

        face = detect.largest_face(detect.detect_landmarks5(image, detector=detector), image.shape)  # type: ignore[arg-type]

        async def run_graph(name: str, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
            return self.session.run(inputs)

        points = asyncio.run(
            localise.localise(run_graph, image, face.points, self.size, self.spec.passes, self.spec.crop_scale)
        )
        return points, f"{face.detector}+localiser"


def prepare_face(
    image: np.ndarray,
    landmarks: np.ndarray | None = None,
    *,
    crop_size: int = 224,
    crop_scale: float = 1.3,
    detector: str = "auto",
    localiser: LocaliserLandmarks | None = None,
) -> PreparedFace:
    """Detect 68 landmarks unless given (dlib's 68-point model, ``models.landmarks.landmarks68``, or the
    ``localiser``), align and crop the face.

    Raises:
        models.landmarks.NoFaceError: no face was found.
    """
    from facecore.detect import align_face, check_image, invert_affine

    detected = "given"
    if landmarks is None and localiser is not None:
        image = check_image(image)
        landmarks, detected = localiser(image, detector)
    elif landmarks is None:
        from models.landmarks import detect_landmarks, largest_face

        image = check_image(image)
        face = largest_face(detect_landmarks(image, detector=detector), image.shape)  # type: ignore[arg-type]
        landmarks, detected = face.points, face.detector
    aligned = align_face(image, landmarks, output_size=crop_size, scale=crop_scale)
    return PreparedFace(
        image=image,
        crop=aligned.crop,
        landmarks=aligned.image_to_crop(landmarks),
        crop_to_image=invert_affine(aligned.matrix),
        detector=detected,
    )


LANDMARK_SOURCES = ("localiser", "dlib")


def landmark_localiser(source: str = "localiser", bundle: str | Path | None = None) -> LocaliserLandmarks | None:
    """The extract stage's ``landmarks`` setting → the ``localiser`` :func:`prepare_face` runs: a bundle's
    (``bundle``, the embedded one by default), or None for dlib's 68-point model (``dlib``).

    Measured (``benchmarks/texture_extraction.py``, 21 held-out renders): the localiser's points 0.081 eye-corner
    distances from the truth, the clean albedo 31.4 dB (eyes 29.1, lips 25.6) vs dlib's 30.0 (27.4, 25.4); on the
    fixture photos it found a head dlib's model put on the cheek (002, 018; the fit to 018's profile still fails
    and the face is skipped)."""
    if source not in LANDMARK_SOURCES:
        raise ValueError(f"landmarks: expected one of {', '.join(LANDMARK_SOURCES)}, got {source!r}")
    return LocaliserLandmarks(bundle) if source == "localiser" else None


def mask_png(tex: ExtractedTexture) -> np.ndarray:
    """(R, R) uint8 texel source and validity in the :data:`MASK_PNG_VALUES` encoding."""
    v = MASK_PNG_VALUES
    lut = np.array([v["outside"], v["seen_invalid"], v["mirrored"], v["mean_filled"], v["seen_invalid"]], np.uint8)
    out = lut[tex.source]
    out[tex.valid] = v["seen_valid"]
    return out


def save_texture(tex: ExtractedTexture, out: Path, name: str) -> None:
    """``albedo/NAME.png`` (sRGB 8-bit), ``shading/NAME.png`` (linear / SHADING_PNG_SCALE), ``mask/NAME.png``
    (:data:`MASK_PNG_VALUES`); the albedo is written last, so its presence marks a finished face."""
    save_png(to_uint8(tex.shading / SHADING_PNG_SCALE), out / "shading" / f"{name}.png")
    save_png(mask_png(tex), out / "mask" / f"{name}.png")
    save_png(to_uint8(linear_to_srgb(tex.albedo)), out / "albedo" / f"{name}.png")


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _list_images(folder: Path) -> list[Path]:
    if not folder.exists():
        raise FileNotFoundError(f"extract.images: folder not found: {folder}")
    if not folder.is_dir():
        raise ValueError(f"extract.images: not a folder: {folder}")
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise ValueError(f"extract.images: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def _read_done(path: Path, out: Path) -> dict[int, dict]:
    """Records of ``fits.jsonl`` whose work is complete (an ok record needs its albedo PNG)."""
    done: dict[int, dict] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of an interrupted run
        folder = out / FLAGGED_DIR if rec.get("flags") else out
        if rec.get("status") == "ok" and not (folder / "albedo" / f"{rec['name']}.png").exists():
            continue
        done[int(rec["index"])] = rec
    return done


def run(cfg: Mapping[str, Any], out: Path) -> None:
    """``python -m training.run extract``: photos or synthetic renders → UV albedo dataset.

    Config section ``extract`` (defaults in brackets):

    - ``images: DIR`` — a folder of face photos (searched recursively), or
      ``synthetic: {count: N, seed: [0], resolution: [224], landmarks: [detect] | truth}`` — renders of
      ``training.data.synthetic`` (``truth``: the renders' own landmarks instead of detected ones);
    - ``landmarks`` [localiser] | dlib: where the fit's 68 landmarks come from (:func:`landmark_localiser`);
      ``localiser`` [the embedded bundle]: the bundle whose landmark localiser runs;
    - ``resolution`` [256]: UV map size; ``crop_size`` [224], ``crop_scale`` [1.3]: the aligned crop the fit runs
      on; ``detector`` [auto]; ``batch_size`` [4]: faces fitted together; ``device`` [cpu];
    - ``fit``: :class:`FitConfig` overrides; ``min_shading`` [0.15], ``clip_level`` [0.995], ``min_facing``
      [0.35]: see :func:`extract_texture`;
    - ``max_landmark_error`` [0.25]: a fit whose landmarks end further than this (mean distance / inter-ocular
      distance) from the detected ones is rejected (measured: ≤ 0.18 on synthetic renders, 0.36 on a fixture
      photo where dlib's points are wrong);
    - ``threads`` [1]: torch threads for the stage (the fit's tensors are small: on the shared 2-core machine one
      thread was 2–10× faster than two), null to leave torch's setting;
    - ``fill_prior`` [256]: what the photo does not give is filled towards the mean of this many of the
      synthetic source's true albedo maps (:func:`mean_albedo`: brows, lids, nostrils and lips at their texels, in
      each photo's skin tone; ``facecore.texture.extract``'s ``prior``), 0: towards the skin's colour alone.

    Writes into ``out``: ``albedo/NNNNNN.png``, ``shading/``, ``mask/``, ``fits.jsonl``, ``summary.json``. A
    greyscale or strongly colour-cast photo (``ExtractedTexture.flags``) still gets its maps, under
    ``flagged/`` instead (kept out of AlbedoGAN's training folder ``albedo/``); the summary counts them
    (``flagged``, ``flagged_reasons``, ``training_maps``).
    Index ``i`` is the i-th photo (sorted by path) or synthetic sample ``i``. Faces that fail (unreadable file,
    no face) are logged, recorded in ``fits.jsonl`` with their reason and skipped; a rerun skips every index
    already recorded.
    """
    ecfg = dict(cfg.get("extract") or {})
    known = {
        "images", "synthetic", "resolution", "crop_size", "crop_scale", "detector", "batch_size", "device", "fit",
        "min_shading", "clip_level", "min_facing", "max_landmark_error", "threads", "landmarks", "localiser",
        "fill_prior",
    }  # fmt: skip
    unknown = sorted(set(ecfg) - known)
    if unknown:
        raise ValueError(f"extract: unknown keys {unknown}; known: {sorted(known)}")
    if ("images" in ecfg) == ("synthetic" in ecfg):
        raise ValueError("extract: give exactly one of `images: DIR` or `synthetic: {count: N, ...}`")
    fit_cfg = FitConfig.from_dict(ecfg.get("fit"))
    resolution = int(ecfg.get("resolution", 256))
    crop_size = int(ecfg.get("crop_size", 224))
    crop_scale = float(ecfg.get("crop_scale", 1.3))
    detector = str(ecfg.get("detector", "auto"))
    if detector not in ("auto", "hog", "cnn"):
        raise ValueError(f"extract.detector: expected auto, hog or cnn, got {detector!r}")
    if not 16 <= resolution <= 4096:
        raise ValueError(f"extract.resolution: expected 16–4096 texels, got {resolution}")
    batch_size = max(1, int(ecfg.get("batch_size", 4)))
    device = torch.device(ecfg.get("device", "cpu"))
    min_shading = float(ecfg.get("min_shading", 0.15))
    clip_level = float(ecfg.get("clip_level", 0.995))
    min_facing = float(ecfg.get("min_facing", 0.35))
    max_lmk = float(ecfg.get("max_landmark_error", 0.25))
    localiser = landmark_localiser(str(ecfg.get("landmarks", "localiser")), ecfg.get("localiser"))
    threads = ecfg.get("threads", 1)
    fill_prior = int(ecfg.get("fill_prior", FILL_PRIOR_MAPS))
    if fill_prior < 0:
        raise ValueError(f"extract.fill_prior: expected a number of maps >= 0, got {fill_prior}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        prepare_kw = dict(crop_size=crop_size, crop_scale=crop_scale, detector=detector, localiser=localiser)
        _run(ecfg, Path(out), fit_cfg, resolution, prepare_kw, batch_size, device,
             dict(min_shading=min_shading, clip_level=clip_level, min_facing=min_facing), max_lmk,
             fill_prior)  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)


#: the ``extract`` stage's ``fill_prior`` default: true albedo maps averaged into the fill's prior
FILL_PRIOR_MAPS = 256


def mean_albedo(resolution: int, maps: int = FILL_PRIOR_MAPS, seed: int = 0) -> np.ndarray:
    """(R, R, 3) linear: the mean of the first ``maps`` true albedo maps of the synthetic source's stream ``seed``
    (the procedural skin, brows, eyes and lips at their texels; ~6 s for 256 maps at 256²), the prior the extract
    stage fills towards (the service fills towards its bundle's AlbedoGAN at ``w_avg``, calibrated to the same
    mean: ``service.pipeline.mean_map``). Measured on 21 held-out renders (``benchmarks/texture_extraction.py``, its
    ``after`` row against the flat fill): the same gains as the bundle's mean map, within 0.1 dB per region."""
    from service.pipeline import generator_image
    from training.albedo_mean import training_mean

    data = {"kind": "synthetic", "num_samples": int(maps), "seed": int(seed), "holdout": 0}
    mean, _ = training_mean(data, int(resolution), int(maps))  # (3, R, R) in the generator's [-1, 1] sRGB units
    return srgb_to_linear(generator_image(mean))


def _run(
    ecfg: dict,
    out: Path,
    fit_cfg: FitConfig,
    resolution: int,
    prepare_kw: dict[str, Any],
    batch_size: int,
    device: torch.device,
    extract_kw: dict[str, Any],
    max_lmk: float,
    fill_prior: int = 0,
) -> None:
    from PIL.Image import DecompressionBombError
    from tqdm import tqdm

    face_model = FaceModel.from_file().to(device)
    synthetic = None
    if "images" in ecfg:
        files = _list_images(Path(ecfg["images"]))
        names = [str(p) for p in files]
        source_desc = {"images": str(Path(ecfg["images"]))}
    else:
        from training.data.synthetic import SyntheticConfig, SyntheticFaces

        scfg = dict(ecfg["synthetic"] or {})
        bad = sorted(set(scfg) - {"count", "seed", "resolution", "landmarks"})
        if bad or "count" not in scfg:
            raise ValueError(f"extract.synthetic: expected keys count, seed, resolution, landmarks; got {sorted(scfg)}")
        count = int(scfg["count"])
        if count < 1:
            raise ValueError(f"extract.synthetic.count: expected at least 1, got {count}")
        mode = str(scfg.get("landmarks", "detect"))
        if mode not in ("detect", "truth"):
            raise ValueError(f"extract.synthetic.landmarks: expected 'detect' or 'truth', got {mode!r}")
        synthetic = (
            SyntheticFaces(
                SyntheticConfig(
                    image_size=int(scfg.get("resolution", 224)), albedo_size=resolution, seed=int(scfg.get("seed", 0))
                ),
                face_model=FaceModel(face_model.arrays),
            ),
            mode,
        )
        names = [f"synthetic:{scfg.get('seed', 0)}:{i}" for i in range(count)]
        source_desc = {"synthetic": scfg}
    renderer = MeshRenderer.from_face_model(face_model, fit_cfg.render_size).to(device)

    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "fits.jsonl"
    done = _read_done(log_path, out)
    todo = [i for i in range(len(names)) if i not in done]
    logger.info("extract: %d inputs, %d already done, %d to do → %s", len(names), len(done), len(todo), out)
    if todo and fill_prior:
        extract_kw = {**extract_kw, "prior": mean_albedo(resolution, fill_prior)}
    fit_seconds = 0.0
    n_fitted = 0
    with log_path.open("a") as log, tqdm(total=len(todo), desc="extract", unit="face") as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            prepared: list[tuple[int, PreparedFace, Any]] = []
            for i in chunk:
                try:
                    if synthetic is None:
                        face = prepare_face(_load_image(files[i]), **prepare_kw)
                        truth = None
                    else:
                        ds, mode = synthetic
                        item = ds.batch([i])
                        image = to_uint8(item.image_srgb[0].permute(1, 2, 0).cpu().numpy())
                        given = item.landmarks_px[0].double().cpu().numpy() if mode == "truth" else None
                        face = prepare_face(image, given, **prepare_kw)
                        truth = item
                    prepared.append((i, face, truth))
                except (OSError, ValueError, DecompressionBombError) as exc:  # unreadable, no face: record, go on
                    reason = f"{type(exc).__name__}: {exc}"
                    logger.warning("extract: skipping %s (%s)", names[i], reason)
                    _append(log, {"index": i, "name": f"{i:06d}", "source": names[i], "status": "skipped",
                                  "reason": reason})  # fmt: skip
                    bar.update(1)
            if not prepared:
                continue
            t0 = time.perf_counter()
            fits = fit_faces(
                [p.crop for _, p, _ in prepared],
                np.stack([p.landmarks for _, p, _ in prepared]),
                face_model,
                renderer,
                config=fit_cfg,
            )
            fit_seconds += time.perf_counter() - t0
            n_fitted += len(prepared)
            for (i, face, truth), fit in zip(prepared, fits, strict=True):
                name = f"{i:06d}"
                if not fit.landmark_error <= max_lmk:
                    reason = f"fit rejected: landmark error {fit.landmark_error:.3f} > max_landmark_error {max_lmk}"
                    logger.warning("extract: skipping %s (%s)", names[i], reason)
                    _append(log, {"index": i, "name": name, "source": names[i], "status": "skipped",
                                  "reason": reason, **fit.to_json(face_model)})  # fmt: skip
                    bar.update(1)
                    continue
                # (the lids kept as seen outside the eye contours the fit was fitted to, as /reconstruct keeps them)
                tex = extract_texture(face.image, fit, face_model, resolution, matrix=face.crop_to_image,
                                      eyes=face.landmarks[36:48], **extract_kw)  # fmt: skip
                if tex.flags:
                    logger.warning("extract: %s flagged (%s): its map goes to %s/, not into the training set",
                                   names[i], ", ".join(tex.flags), FLAGGED_DIR)  # fmt: skip
                save_texture(tex, out / FLAGGED_DIR if tex.flags else out, name)
                rec = {
                    "index": i,
                    "name": name,
                    "source": names[i],
                    "status": "ok",
                    "flags": list(tex.flags),
                    "detector": face.detector,
                    **fit.to_json(face_model),
                    "coverage": {
                        "seen": round(float((tex.source == 1).mean()), 5),
                        "mirrored": round(float((tex.source == 2).mean()), 5),
                        "valid": round(float(tex.valid.mean()), 5),
                        "photo_weight": None if tex.weight is None else round(float(tex.weight.mean()), 5),
                    },
                }
                if truth is not None:
                    rec["truth"] = synthetic_accuracy(fit, tex, face, truth, face_model)
                _append(log, rec)
                bar.update(1)
                bar.set_postfix(lmk=f"{fit.landmark_error:.3f}")

    done = _read_done(log_path, out)
    ok = [r for r in done.values() if r["status"] == "ok"]
    summary: dict[str, Any] = {
        "source": source_desc,
        "count": len(names),
        "ok": len(ok),
        "skipped": len(done) - len(ok),
        "skipped_reasons": sorted({r["reason"] for r in done.values() if r["status"] != "ok"}),
        "training_maps": sum(not r.get("flags") for r in ok),
        "flagged": sum(bool(r.get("flags")) for r in ok),
        "flagged_reasons": {f: sum(f in (r.get("flags") or ()) for r in ok) for f in FLAG_NAMES},
        "mean_landmark_error": _nanmean([r.get("landmark_error") for r in ok]),
        "seconds_per_fit_this_run": round(fit_seconds / n_fitted, 3) if n_fitted else None,
        "resolution": resolution,
        "fit": dataclasses.asdict(fit_cfg),
    }
    truths = [r["truth"] for r in ok if "truth" in r]
    if truths:
        summary["truth_mean"] = {k: _nanmean([t[k] for t in truths]) for k in truths[0]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("extract: %d ok (%d flagged, kept out of the training set), %d skipped; summary in %s",
                summary["ok"], summary["flagged"], summary["skipped"], out / "summary.json")  # fmt: skip


def _append(log: Any, rec: dict) -> None:
    log.write(json.dumps(rec) + "\n")
    log.flush()


def _nanmean(values: Sequence[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(float(np.mean(vals)), 5) if vals else None


def synthetic_accuracy(
    fit: FitResult, tex: ExtractedTexture, face: PreparedFace, truth: Any, face_model: FaceModel
) -> dict[str, float]:
    """Errors of a fit + extraction against a synthetic sample's ground truth (never seen by the fit).

    ``landmark_nme``: fitted vs true landmarks / true inter-ocular distance (in the crop; similarity-invariant);
    ``detector_nme``: the landmarks the fit used vs the truth; ``shape_rms_mm`` / ``mean_shape_rms_mm``: the
    fitted / the prior-mean neutral identity vs the true one, per-vertex RMS over the facial-skin vertices after
    the best rigid alignment; albedo errors from :func:`albedo_errors` (``R`` of the extraction).
    """
    from facecore.detect import transform_points

    to_crop = np.asarray(truth.landmarks_px[0].double().cpu().numpy())
    matrix = _invert(face.crop_to_image)
    lm_true = transform_points(to_crop, matrix)
    out = {
        "landmark_nme": normalised_landmark_error(fit.landmarks_px(face_model), lm_true),
        "detector_nme": normalised_landmark_error(face.landmarks, lm_true),
    }
    idx = face_vertices(face_model.arrays)
    with torch.no_grad():
        true_shape = truth.codes.shape[:1].to(face_model.mean)
        neutral_true = face_model(true_shape)[0, idx].double().cpu().numpy()
        fit_shape = torch.as_tensor(fit.shape, dtype=torch.float32, device=face_model.mean.device)
        neutral_fit = face_model(fit_shape[None])[0, idx].double().cpu().numpy()
        neutral_mean = face_model(face_model.shape_prior_mean[None])[0, idx].double().cpu().numpy()
    out["shape_rms_mm"] = rigid_rms_mm(neutral_fit, neutral_true)
    out["mean_shape_rms_mm"] = rigid_rms_mm(neutral_mean, neutral_true)
    R = tex.albedo.shape[0]
    albedo_true = truth.albedo_uv[:1].float()
    if albedo_true.shape[-1] != R:
        albedo_true = F.interpolate(albedo_true, size=(R, R), mode="bilinear", antialias=True, align_corners=False)
    albedo_true = albedo_true[0].permute(1, 2, 0).double().cpu().numpy()
    out.update(albedo_errors(tex, albedo_true, face_texels(face_model.arrays, R)))
    return {k: round(float(v), 5) for k, v in out.items()}


def _invert(matrix: np.ndarray) -> np.ndarray:
    from facecore.detect import invert_affine

    return invert_affine(matrix)
