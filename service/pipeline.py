"""What /generate and /reconstruct compute: codes → networks → geometry → files (numpy + onnxruntime).

Model calls go through the app's dynamic batchers (``run_graph``); geometry and encoding are plain numpy and
run in a worker thread. Everything is deterministic for a given request and bundle, so results are
content-addressed: the same request gives the same id and the same bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import io
import json
import math
import time
import zipfile
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facecore import assets, color, detect, formats, localise, mouth, refine
from facecore import geometry as geo
from facecore.bundle import CODES_GRAPH, LATENT_GRAPH, Bundle, SkinToneCalibration

RunGraph = Callable[[str, Mapping[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]
#: ``await run_stage(stage_name, fn, *args)``: run blocking CPU work off the event loop (the service's version
#: adds admission control per stage: detect, texture, geometry, encode)
RunStage = Callable[..., Awaitable[Any]]


async def in_thread(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    """The default ``run_stage``: a plain worker thread."""
    return await asyncio.to_thread(fn, *args)


OUTPUT_KINDS = ("albedo", "displacement", "normal", "obj", "glb")


@dataclass(frozen=True)
class MeshRequest:
    """The validated, bundle-checked parameters of a /generate request."""

    seed: int | None
    z: np.ndarray | None
    w: np.ndarray | None
    truncation: float
    expression: np.ndarray  # (E,)
    identity: np.ndarray | None  # (K,) or None → from the bundle's codes graph or the face-model prior
    texture_size: int
    mesh_resolution: int
    outputs: tuple[str, ...]
    blendshapes: bool

    def canonical(self, bundle: Bundle) -> bytes:
        """The bundle digest and the canonical request: what the result depends on."""
        canon = {
            "seed": self.seed,
            "z": None if self.z is None else self.z.astype(np.float32).tobytes().hex(),
            "w": None if self.w is None else self.w.astype(np.float32).tobytes().hex(),
            "truncation": round(float(self.truncation), 6),
            "expression": self.expression.astype(np.float32).tobytes().hex(),
            "identity": None if self.identity is None else self.identity.astype(np.float32).tobytes().hex(),
            "texture_size": self.texture_size,
            "mesh_resolution": self.mesh_resolution,
            "outputs": sorted(self.outputs),
            "blendshapes": self.blendshapes,
        }
        return bundle.digest.encode() + b"/generate/" + json.dumps(canon, sort_keys=True).encode()

    def key(self, bundle: Bundle) -> str:
        """Content address: sha256 of the bundle digest and the canonical request (the service keys it)."""
        return hashlib.sha256(self.canonical(bundle)).hexdigest()


#: what a /reconstruct answer means, in its result id: a stored answer of another format is not served for it
#: (2: face coordinates in the uploaded photo's pixels with ``face.image_size``; before, in the reduced copy's)
RECONSTRUCT_FORMAT = 2


@dataclass(frozen=True)
class ReconstructRequest:
    """The validated parameters of a /reconstruct request (the photo itself travels separately)."""

    photo_sha256: str
    texture_size: int
    mesh_resolution: int
    outputs: tuple[str, ...]
    blendshapes: bool
    detector: str
    albedo: str = "photo"  # "photo": unwrapped from the photo and de-lit; "generated": AlbedoGAN(encoder's ws)

    def key(self, bundle: Bundle) -> str:
        return hashlib.sha256(self.canonical(bundle)).hexdigest()

    def canonical(self, bundle: Bundle) -> bytes:
        canon = json.dumps(
            {
                k: getattr(self, k)
                for k in ("photo_sha256", "texture_size", "mesh_resolution", "blendshapes", "detector", "albedo")
            }
            | {"outputs": sorted(self.outputs), "format": RECONSTRUCT_FORMAT},
            sort_keys=True,
        ).encode()
        return bundle.digest.encode() + b"/reconstruct/" + canon


class RequestError(ValueError):
    """The request cannot be served as asked; ``status`` is the HTTP status (4xx) to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class PhotoError(RequestError):
    """The upload is not a usable face photo."""


MIN_PHOTO_SIDE = 32  # facecore.detect refuses smaller images
MAX_PHOTO_ASPECT = 16.0  # a face photo is not a strip; past this the detector's downscaled copy degenerates
#: photos are reduced to this longer side on decoding: detection runs at ≤ 1024 px and the unwrapped texture at
#: ≤ 512 px, so the rest of a 5000² upload only cost time (seconds of decode, resize and alignment) and memory
MAX_PHOTO_SIDE = 2048


def decode_photo(data: bytes, max_pixels: int) -> np.ndarray:
    """Upload bytes → (H, W, 3) uint8 RGB, upright per EXIF, its longer side at most :data:`MAX_PHOTO_SIDE`;
    refuses non-images, truncation and pixel bombs (:func:`decode_photo_sized`)."""
    return decode_photo_sized(data, max_pixels)[0]


def decode_photo_sized(data: bytes, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`decode_photo`, and the (width, height) of the upright photo as uploaded: the frame a response's
    face coordinates are in (:func:`reconstruct`'s ``photo_size``), whatever the decoding reduced."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise PhotoError("image: the upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in ("JPEG", "PNG", "WEBP"):
                raise PhotoError(f"image: unsupported format {im.format}; send JPEG, PNG or WebP", 415)
            w, h = im.size
            if w * h > max_pixels:
                raise PhotoError(f"image: {w}×{h} pixels exceeds the limit of {max_pixels}", 413)
            if min(w, h) < MIN_PHOTO_SIDE:
                raise PhotoError(f"image: {w}×{h} is too small, need ≥ {MIN_PHOTO_SIDE} px a side")
            if max(w, h) > MAX_PHOTO_ASPECT * min(w, h):
                raise PhotoError(f"image: {w}×{h} is not a face photo (aspect ratio over {MAX_PHOTO_ASPECT:g}:1)")
            if im.format == "JPEG" and max(w, h) > MAX_PHOTO_SIDE:  # DCT scaling: decode 1/2, 1/4 or 1/8 size
                f = MAX_PHOTO_SIDE / max(w, h)
                im.draft(None, (math.ceil(w * f), math.ceil(h * f)))
            im.load()
            upright = ImageOps.exif_transpose(im)
            # (read off the turn, not the EXIF before the checks above: a PNG's getexif() decodes the whole image)
            upright_size = (h, w) if upright.size != im.size else (w, h)
            if upright.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                # 16-bit greyscale: PIL's convert("RGB") clips to 255 (all white); keep the top 8 bits
                grey = np.asarray(upright).astype(np.int64)
                top = 65535 if upright.mode != "I" or grey.max(initial=0) > 255 else 255
                grey8 = np.clip(np.round(grey * (255.0 / top)), 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(grey8[..., None], 3, axis=2)), upright_size
            rgb = upright.convert("RGB")
            if max(rgb.size) > MAX_PHOTO_SIDE:
                rgb.thumbnail((MAX_PHOTO_SIDE, MAX_PHOTO_SIDE), Image.Resampling.BILINEAR)
    except PhotoError:
        raise
    except UnidentifiedImageError as exc:
        raise PhotoError("image: not a readable JPEG, PNG or WebP file", 415) from exc
    except Image.DecompressionBombError as exc:
        raise PhotoError(f"image: too many pixels ({exc})", 413) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise PhotoError(f"image: corrupt or truncated file ({exc})") from exc
    return np.asarray(rgb), upright_size


@dataclass(frozen=True)
class FaceCrop:
    crop: np.ndarray  # (S, S, 3) uint8
    crop_to_image: Callable[[np.ndarray], np.ndarray]
    box: np.ndarray
    points: np.ndarray  # (5, 2) the detector's points
    detector: str
    # (T·k, T·k, 3) uint8, k = TEXTURE_CROP_SCALE: the same alignment zoomed out k× about the crop's centre, at
    # the texture's resolution over the encoder crop's field
    texture_crop: np.ndarray | None = None
    anchors: np.ndarray | None = None  # (3, 2) the crop's alignment anchors in the photo (facecore.detect)
    aligned_on: str = "points5"  # what found the anchors: "points5" (the detector's) or "localiser"
    landmarks: np.ndarray | None = None  # (68, 2) the localiser's landmarks in the photo, when it ran


#: a refinement whose landmarks stay further than this from the localiser's (/ their eye-corner distance) is
#: dropped: the head cannot make that face, so the landmarks are wrong (held-out renders end at ~0.03)
MAX_REFINED_ERROR = 0.15


TURNED_LOOK_SIDE = 512


def detect_face(image: np.ndarray, detector: str) -> detect.FaceLandmarks:
    """The largest face (box and dlib's 5 points); PhotoError without one, or with one upside down."""
    try:
        faces = detect.detect_landmarks5(image, detector=detector)
        if not faces:
            # none upright: a photo whose EXIF orientation was lost may show its face on its side (looked for on a
            # copy of at most TURNED_LOOK_SIDE px, a portrait's face being large: a 1024-px photo without a face
            # takes 0.90 s to refuse instead of 0.62; at full size the two looks had tripled it). Its points were
            # found with it upright: no upside-down or sideways check to make
            turned = detect.detect_on_its_side(image, detector=detector, max_side=TURNED_LOOK_SIDE)
            return detect.largest_face(turned, image.shape)
        face = detect.largest_face(faces, image.shape)
    except detect.NoFaceError as exc:
        raise PhotoError(f"image: {exc}") from exc
    except ValueError as exc:  # facecore.detect.check_image: too small, degenerate after downscaling, …
        raise PhotoError(str(exc) if str(exc).startswith("image:") else f"image: {exc}") from exc
    if detect.upside_down(image, face):  # (the image passed detection's checks above)
        raise PhotoError("image: the face is upside down; turn the photo upright")
    return detect.turned_upright(image, face)  # a face on its side: its points found with it upright


#: the texture is unwrapped from the alignment zoomed out this much: the encoder's framing runs from the brows'
#: top to the chin and cuts the forehead, which then was filled from the smooth prior even where the photo shows
#: skin (a straight edge across the forehead)
TEXTURE_CROP_SCALE = 1.5


def texture_crop_side(texture_size: int) -> int:
    """The texture crop's side: ``texture_size`` pixels over the encoder crop's field, zoomed out."""
    return int(round(texture_size * TEXTURE_CROP_SCALE))


def find_face(
    image: np.ndarray,
    size: int,
    detector: str,
    texture_size: int | None = None,
    face: detect.FaceLandmarks | None = None,
    anchors: np.ndarray | None = None,
) -> FaceCrop:
    """Detect the largest face (5-point model; or take ``face``) and align it into a ``size`` crop around
    ``anchors`` (default: those of the detector's points); PhotoError without a face.

    With ``texture_size`` the same alignment, zoomed out by :data:`TEXTURE_CROP_SCALE`, is also sampled from the
    original photo, ``texture_size`` pixels over the encoder crop's field (the texture is unwrapped from it: the
    encoder's crop is small, the photo usually is not).
    """
    face = face if face is not None else detect_face(image, detector)
    anchors = detect.alignment_anchors(face.points) if anchors is None else np.asarray(anchors, np.float64)
    aligned = detect.warp_crop(image, detect.anchors_matrix(anchors, size), size)
    texture_crop = None
    if texture_size:
        side = texture_crop_side(texture_size)
        texture_crop = detect.warp_crop(image, detect.anchors_matrix(anchors, side, TEXTURE_CROP_SCALE), side).crop
    return FaceCrop(aligned.crop, aligned.crop_to_image, face.box, face.points, face.detector, texture_crop, anchors)


async def locate_face(
    bundle: Bundle,
    run_graph: RunGraph,
    run_stage: RunStage,
    image: np.ndarray,
    detector: str,
    texture_size: int | None = None,
    timer: Timer | None = None,
) -> FaceCrop:
    """/reconstruct's face: detected (dlib), its anchors found by the bundle's landmark localiser when it has one
    (:mod:`facecore.localise`, started at dlib's 5 points; else dlib's points), the encoder's crop (and the
    texture's, zoomed out, at ``texture_size`` over the encoder's field: :func:`find_face`) cut around them.
    Everything that wants the service's framing calls this."""
    timer = timer or Timer()
    with timer.stage("detect"):
        found = await run_stage("detect", detect_face, image, detector)
    anchors, spec = None, bundle.manifest.localiser
    if spec is not None:
        side = bundle.manifest.graphs[localise.GRAPH].inputs[localise.GRAPH_INPUT].shape[-1]
        crop_stage = functools.partial(run_stage, "detect")
        with timer.stage("landmarks"):
            try:
                points = await localise.localise(
                    run_graph, image, found.points, side, spec.passes, spec.crop_scale, crop_stage
                )
                anchors = detect.alignment_anchors(points)
                detect.anchors_matrix(anchors)  # a similarity onto the template exists
            except ValueError:  # degenerate points (coinciding anchors, non-finite): frame on dlib's instead
                anchors = None
    check_inside(detect.alignment_anchors(found.points) if anchors is None else anchors, image.shape)
    size = bundle.manifest.resolutions.encoder_input
    with timer.stage("align"):
        face = await run_stage("detect", find_face, image, size, detector, texture_size, found, anchors)
    return face if anchors is None else dataclasses.replace(face, aligned_on="localiser", landmarks=points)


ANCHOR_NAMES = ("right eye", "left eye", "nose")  # the subject's: facecore.detect.alignment_anchors


def check_inside(anchors: np.ndarray, shape: tuple[int, ...]) -> None:
    """PhotoError (422) when an eye or the nose (the crop's alignment anchors) lies outside the photo: a face
    cut by the image border has no identity features or texture there to measure (its chip and crop would be
    half padding), and the head would be a guess."""
    h, w = shape[:2]
    outside = [n for n, (x, y) in zip(ANCHOR_NAMES, anchors, strict=True) if not (0 <= x < w and 0 <= y < h)]
    if outside:
        raise PhotoError(
            f"image: the face is cut by the image border (the subject's {' and '.join(outside)} outside the "
            f"{w}×{h} photo); upload one with the whole face inside"
        )


def identity_shape(
    bundle: Bundle, features: np.ndarray, codes: Mapping[str, np.ndarray], expression: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's identity head on the photo's recognition features → (K,) shape code, and the encoder's
    weak-perspective camera refitted (least squares, scale and shift) so that the new head's 68 landmarks,
    posed and expressed as the encoder found, project where the encoder's own head's landmarks did: the encoder
    fitted its camera to its shape, and the texture is unwrapped through the camera."""
    model = bundle.face_model
    assert bundle.identity_head is not None
    shape = bundle.identity_head(features)
    heads = geo.decode_vertices(
        model, np.stack([codes["shape"], shape]), np.stack([expression] * 2), np.stack([codes["pose"]] * 2)
    )
    old, new = geo.landmarks_3d(model, heads)[:, :, :2]
    scale, tx, ty = codes["camera"]
    target = scale * old + np.array([tx, ty])
    src, dst = new - new.mean(0), target - target.mean(0)
    fitted = float((src * dst).sum() / (src * src).sum())
    return shape, np.array([fitted, *(target.mean(0) - fitted * new.mean(0))])


async def identity_features(
    bundle: Bundle, run_graph: RunGraph, run_stage: RunStage, image: np.ndarray, points5: np.ndarray
) -> np.ndarray:
    """(2, D) recognition features of the face at ``points5`` and of its mirror image, as the bundle's identity
    head reads them: dlib's descriptors, or the bundle's feature graph on dlib's chips."""
    from facecore import identity

    assert bundle.identity_head is not None
    recogniser = identity.get_recogniser()
    if not identity.reads_graph(bundle.identity_head.features):
        return await run_stage("detect", recogniser.describe, image, points5)
    chip = await run_stage("detect", recogniser.chip, image, points5)
    out = await run_graph(identity.FEATURES_GRAPH, {identity.FEATURES_GRAPH_INPUT: identity.chips_input(chip[None])})
    return identity.pair_features(out[identity.FEATURES_GRAPH_OUTPUT])[0]


MAX_UNWRAP_RESOLUTION = 512


def generator_image(albedo: np.ndarray) -> np.ndarray:
    """One AlbedoGAN output (3, R, R), in the generator's [-1, 1] units → (R, R, 3) sRGB-encoded map in [0, 1]."""
    out = np.transpose(albedo, (1, 2, 0)) + np.float32(1.0)  # (one copy, the rest in place: /generate's 256² map)
    out *= np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


# /reconstruct's photo albedo filled towards the generator's mean map (its features in the photo's skin tone) where
# the photo gives nothing (facecore.texture.extract: prior) instead of towards a flat skin colour
FILL_PRIOR = True
_MEAN_MAPS: dict[str, np.ndarray] = {}
_MEAN_CHROMA: dict[str, np.ndarray | None] = {}


async def mean_map(bundle: Bundle, run_graph: RunGraph) -> np.ndarray:
    """(R, R, 3) linear: AlbedoGAN's map at the mean latent ``w_avg`` (the bundle's face: brows, lids, nostrils,
    lips at their texels), computed once per bundle."""
    key = bundle.digest
    if key not in _MEAN_MAPS:
        codes = bundle.manifest.codes
        ws = np.broadcast_to(bundle.w_avg, (1, codes.num_ws, codes.w_dim)).astype(np.float32)
        img = (await run_graph("albedo", {"ws": ws}))["albedo"][0]
        linear = color.srgb_to_linear(generator_image(img))
        linear.setflags(write=False)  # shared by every request (facecore.texture caches what it derives from it)
        _MEAN_MAPS.clear()  # one bundle per service
        _MEAN_MAPS[key] = linear
    return _MEAN_MAPS[key]


async def mean_skin_chroma(bundle: Bundle, run_graph: RunGraph) -> np.ndarray | None:
    """(2,) the skin chroma (log R/G, log B/G) of :func:`mean_map` (:func:`facecore.texture.map_skin_model`): skin
    as the bundle's generator draws people, where a photo's own chroma says nothing (grey, colour-cast), once per
    bundle; None when the map has too little skin to model."""
    from facecore import texture

    key = bundle.digest
    if key not in _MEAN_CHROMA:
        skin = texture.map_skin_model(bundle.face_model, await mean_map(bundle, run_graph))
        chroma = None if skin is None else skin.mean.copy()
        if chroma is not None:
            chroma.setflags(write=False)  # shared by every request
        _MEAN_CHROMA.clear()  # one bundle per service
        _MEAN_CHROMA[key] = chroma
    return _MEAN_CHROMA[key]


def unwrap_resolution(texture_size: int, albedo_resolution: int) -> int:
    """The side of the photo texture /reconstruct unwraps: the requested texture size, at least the bundle's
    albedo resolution and at most ``MAX_UNWRAP_RESOLUTION`` (beyond it the maps are resampled)."""
    return int(min(max(texture_size, albedo_resolution), MAX_UNWRAP_RESOLUTION))


def warm_reconstruct(bundle: Bundle, texture_size: int) -> None:
    """Load and build what /reconstruct's first request would otherwise wait for (~1–2 s): the detectors (the
    CNN's graph), the 5-point predictor, the recogniser's graph and the unwrap tables at ``texture_size``."""
    from facecore import texture

    detect.detect_landmarks5(np.full((256, 256, 3), 128, np.uint8))  # no face: HOG, then the CNN, both run
    if bundle.identity_head is not None:
        from facecore import identity

        if identity.reads_graph(bundle.identity_head.features):
            identity.get_recogniser()  # dlib's chip only: the features are the bundle graph's, loaded with the others
        else:
            identity.get_recogniser().describe_chips(np.zeros((1, 150, 150, 3), np.uint8))
    texture.prepare(bundle.face_model, unwrap_resolution(texture_size, bundle.manifest.resolutions.albedo))


# the light's shape re-fitted to the photo's skin before de-lighting (facecore.texture.fit_light): the meta's light is
# the fitted one; benchmarks/light_fit.py turns it off to measure what it does
RELIGHT = True
# the encoder's light made white (facecore.texture.achromatic) before de-lighting: its colour is a constant guess
NEUTRAL_LIGHT = True
# /reconstruct's albedo=generated map recoloured to the photo's skin tone (facecore.texture.match_skin_tone);
# benchmarks/bundle_metrics.py --no-tone-match measures it without
TONE_MATCH = True
# the photo's de-lit skin against the truth on held-out renders (benchmarks/skin_tone.py, stream 20261207): its
# chroma is off by 0.02-0.04 (median, log R/G and B/G; the generated map's by 0.05-0.06) and its log-luminance
# by 0.16-0.21 (the generated map's 0.09-0.12), biased by the bundle's light. A calibrated bundle
# (`manifest.json["skin_tone"]`, training.skin_tone) says the bias and each estimate's share of the combined one
# (from both errors on its renders); a bundle without the shares: the chroma all the way, the level only by what
# exceeds this tolerance
TONE_LEVEL_TOLERANCE = 0.2
# the exports' iris colour measured between the photo's lids (facecore.assets.photo_iris_colour) instead of read off
# the albedo map's eye texels (benchmarks/iris_colour.py compares them)
PHOTO_IRIS = True


async def reconstruct(
    bundle: Bundle,
    run_graph: RunGraph,
    req: ReconstructRequest,
    image: np.ndarray,
    timer: Timer,
    run_stage: RunStage = in_thread,
    now: Collection[str] = OUTPUT_KINDS,
    photo_size: tuple[int, int] | None = None,
) -> Result:
    """The /reconstruct pipeline: detect + align → encoder → codes → detailed mesh; albedo from the photo
    (``req.albedo == "photo"``) or from AlbedoGAN at the face's latent (``"generated"``, the paper's: the encoder's
    ``ws`` output, or the bundle's ``albedo_latent`` graph on the photo's clean albedo).

    Only the output kinds in ``now`` are encoded now; the others on their first fetch (see :func:`_files`).
    ``photo_size``: (width, height) of the photo ``image`` was decoded from (:func:`decode_photo_sized`); the face's
    coordinates in the result are in its pixels (default: ``image``'s)."""
    from facecore import texture

    m = bundle.manifest
    model = bundle.face_model
    size = m.resolutions.encoder_input
    generated = req.albedo == "generated"
    # AlbedoGAN's latent from the encoder's own head, or from the photo's clean albedo (facecore.bundle)
    latent_from_photo = generated and LATENT_GRAPH in m.graphs
    unwrap = not generated or latent_from_photo
    # the latent graph reads the photo albedo as it was fitted on: unwrapped at the generator's resolution
    tex_size = unwrap_resolution(m.resolutions.albedo if generated else req.texture_size, m.resolutions.albedo)
    face = await locate_face(bundle, run_graph, run_stage, image, req.detector, tex_size if unwrap else None, timer)
    features = None
    if bundle.identity_head is not None:
        with timer.stage("identity"):
            features = await identity_features(bundle, run_graph, run_stage, image, face.points)
    with timer.stage("encoder"):
        out = await run_graph("encoder", {"image": (face.crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]})
    ws = out.pop("ws", None)
    codes = {k: v[0].astype(np.float64) for k, v in out.items()}
    expression = np.clip(codes["expression"], 0.0, 1.0)
    if features is not None:
        codes["shape"], codes["camera"] = identity_shape(bundle, features, codes, expression)
    refined = m.localiser is not None and m.localiser.refine and face.landmarks is not None
    if refined:  # the head's landmarks moved onto the localiser's (facecore.refine)
        with timer.stage("refine"):
            matrix = detect.anchors_matrix(face.anchors, size)
            target = detect.transform_points(face.landmarks, matrix)
            codes["expression"] = expression
            try:
                moved, err = await run_stage("detect", refine.refine, model, codes, target, size)
            except (ValueError, np.linalg.LinAlgError):  # a camera scale ≤ 0, a singular step: nothing to refine
                moved, err = codes, {"after": np.inf}
            # landmarks the head cannot meet (not a face the localiser saw, a gross miss): keep the encoder's codes
            refined = err["after"] <= MAX_REFINED_ERROR
            if refined:
                codes, expression = moved, moved["expression"]
    if m.mouth is not None and not refined:  # the encoder's mouth opening, calibrated (facecore.mouth)
        expression, codes["pose"] = mouth.calibrate(model, m.mouth, codes["shape"], expression, codes["pose"])
    if NEUTRAL_LIGHT:
        codes["light"] = texture.achromatic(codes["light"])
    jaw_index = model.joint_names.index("jaw")
    disp = await _displacement(bundle, run_graph, codes["detail"], expression, codes["pose"][jaw_index], timer)
    # (not for the latent graph's input: it was fitted on maps filled without it)
    fill_prior = await mean_map(bundle, run_graph) if FILL_PRIOR and not generated else None
    level_chroma = await mean_skin_chroma(bundle, run_graph) if unwrap else None

    def geometry() -> tuple[np.ndarray | None, tuple[str, ...], np.ndarray, np.ndarray, np.ndarray, Any, Any]:
        """(the photo's clean albedo, sRGB-encoded, its irises painted, or None when not unwrapped; its flags
        (facecore.texture.colour_flags: greyscale, colour_cast; over_exposed, under_exposed; no_skin_model); the
        mesh; its 68 landmarks in the photo; the light: the encoder's, its shape re-fitted to the photo's skin (and
        its level set by the bundle's skin-level map) where the photo was unwrapped; the iris colour and its source
        (:func:`photo_iris`; (None, "") when not unwrapped); the photo's skin model (facecore.texture.SkinModel; None
        when not unwrapped or not built))"""
        posed = geo.decode_vertices(model, codes["shape"][None], expression[None], codes["pose"][None])[0]
        # the exported mesh keeps the face's own articulation (jaw, eyes) but not the head's pose in the photo
        local = np.zeros_like(codes["pose"])
        for name in ("jaw", "eye_left", "eye_right"):
            if name in model.joint_names:
                local[model.joint_names.index(name)] = codes["pose"][model.joint_names.index(name)]
        verts = geo.decode_vertices(model, codes["shape"][None], expression[None], local[None])[0]
        lmk = face.crop_to_image(geo.project_points(geo.landmarks_3d(model, posed[None])[0], codes["camera"], size))
        if not unwrap:
            return None, (), verts, lmk, codes["light"], (None, ""), None
        # the texture crop is the encoder's framing zoomed out about the same centre: NDC shrink by its scale
        px = geo.project_points(posed, codes["camera"] / TEXTURE_CROP_SCALE, face.texture_crop.shape[0])
        # shading multiplies linear light: de-light in linear space, store the albedo sRGB-encoded like the PNGs
        linear = color.srgb_to_linear(face.texture_crop / 255.0)
        # only the face's skin, seen well (no hair, background, highlights); the rest mirrored or filled smoothly:
        # the same extraction as the training set's (training.texture.extract_texture), its level mapped by the
        # bundle's skin-level map (facecore.texture.extract: level_map) and its fill following the bundle's mean
        # map (prior), which the training's extraction does not use (the encoder's light re-fitted to the photo's
        # skin: its wrong side would come out dark and be rejected)
        tone_cal = bundle.manifest.skin_tone
        level_map = None if tone_cal is None else tone_cal.level_map
        # the photo's own eye contours in the texture crop (the localiser's, when the head could be refined onto them;
        # without them the lids are judged as skin)
        eyes = None
        if refined:
            side = face.texture_crop.shape[0]
            to_crop = detect.anchors_matrix(face.anchors, side, TEXTURE_CROP_SCALE)
            eyes = detect.transform_points(face.landmarks[36:48], to_crop)
        clean = texture.extract(
            model,
            posed,
            px,
            linear,
            tex_size,
            sh=codes["light"],
            relight=RELIGHT,
            level_map=level_map,
            level_chroma=level_chroma,
            prior=fill_prior,
            eyes=eyes,
        )
        albedo = color.linear_to_srgb(clean.albedo)
        # the person's iris colour, measured between the photo's lids (the localiser's eye contours when the head
        # was refined onto them, else the fitted head's), goes where the exports read it, before the latent graph
        # reads the map (it was fitted on served maps)
        eyes = face.landmarks if refined else lmk
        iris = photo_iris(image, eyes, clean.flags, texture.delighting_gain(model, clean))
        if iris[0] is not None:
            albedo = assets.paint_iris(model, albedo, iris[0])
        return albedo, clean.flags, verts, lmk, clean.sh, iris, clean.skin

    with timer.stage("texture"):
        texture_stage = await run_stage("texture", geometry)
    albedo, flags, verts, landmarks, codes["light"], (iris, iris_source), skin = texture_stage
    skin_tone = "photo" if not generated else "generator"
    if generated:
        with timer.stage("albedo"):
            if latent_from_photo:
                side = m.graphs[LATENT_GRAPH].inputs["albedo"].shape[-1]
                small = texture.box_downsample(albedo, side).transpose(2, 0, 1)[None]
                ws = (await run_graph(LATENT_GRAPH, {"albedo": small}))["ws"]
            img = (await run_graph("albedo", {"ws": ws}))["albedo"][0]
        albedo = generator_image(img)
        # the latent carries the map's structure, the photo's skin model its tone (unless the photo's colour is not
        # the person's: facecore.texture.UNTRUSTED_COLOUR)
        if TONE_MATCH and skin is not None and not set(flags) & set(texture.UNTRUSTED_COLOUR):
            with timer.stage("albedo"):
                toned = await run_stage("texture", tone, model, albedo, skin, bundle.manifest.skin_tone)
            if toned is not None:
                albedo, skin_tone = toned, "photo"
        if iris is not None:
            albedo = assets.paint_iris(model, albedo, iris)
    iris_srgb, measured = assets.iris_colour(model, albedo)
    if iris is None:
        iris_source = "albedo" if measured else "default"
    source = _source(bundle, req, albedo, disp, verts, codes["shape"])
    files, names = await _files(bundle, source, now, timer, run_stage)
    height, width = image.shape[:2]
    photo_size = (width, height) if photo_size is None else (int(photo_size[0]), int(photo_size[1]))
    in_photo = functools.partial(detect.to_original_pixels, sx=photo_size[0] / width, sy=photo_size[1] / height)

    meta = {
        "endpoint": "reconstruct",
        "bundle": {"name": m.name, "version": m.version},
        "albedo": req.albedo,
        "texture": {
            "size": req.texture_size,
            "native_resolution": m.resolutions.albedo if generated else tex_size,
            # why the photo's albedo (and a latent read off it) may not be the person's colour: a greyscale or
            # colour-cast photo, an albedo level bounded for an over- or under-exposed one, or no skin seen to model
            "flags": list(flags),
            # the eyes' iris colour in the exports: measured in the photo, or read off the albedo map, or the
            # default (facecore.assets)
            "iris": {
                "srgb": iris_srgb.round(4).tolist(),
                "source": iris_source,
            },
            # where the skin's colour comes from: the photo (its de-lit skin; albedo=generated: the generator's map
            # recoloured to it) or the generator (albedo=generated on a photo with a colour flag, or from the
            # encoder's own latent: its tone is the latent's)
            "skin_tone": skin_tone,
            # the photo's de-lit skin colour (sRGB; see flags: not the person's on a greyscale or colour-cast photo,
            # a bound in level on an over- or under-exposed one)
            "skin_srgb": None if skin is None else color.linear_to_srgb(skin.colour()).round(4).tolist(),
        },
        "codes": {
            "shape": codes["shape"].round(6).tolist(),
            "expression": _named(bundle, expression),
            "pose": {n: codes["pose"][i].round(6).tolist() for i, n in enumerate(model.joint_names)},
            "camera": codes["camera"].round(6).tolist(),
            "light": codes["light"].round(6).tolist(),
            "detail": codes["detail"].round(6).tolist(),
        },
        "face": {
            # every coordinate below is in the uploaded photo's pixels (x right, y down, pixel centres at integers),
            # upright per its EXIF orientation, though the pipeline ran on a copy reduced to at most MAX_PHOTO_SIDE
            "image_size": list(photo_size),
            "box": in_photo(face.box.reshape(2, 2)).reshape(-1).round(2).tolist(),
            "detector": face.detector,
            "points5": in_photo(face.points).round(2).tolist(),
            # where the crops were cut: eye centres and nose bottom in the photo (facecore.detect.anchors_matrix
            # reproduces the framing at any size), found by the bundle's landmark localiser or from points5
            "anchors": in_photo(face.anchors).round(3).tolist(),
            "aligned_on": face.aligned_on,
            # the localiser's own 68 landmarks in the photo (what the head was refined onto), when it ran
            **({"localiser68": in_photo(face.landmarks).round(2).tolist()} if face.landmarks is not None else {}),
            "refined": refined,
            "landmarks68": in_photo(landmarks).round(2).tolist(),
        },
    }
    return Result(files, names, meta, timer.timings)


def tone(model: geo.FaceModelArrays, albedo: np.ndarray, skin: Any, calibration: SkinToneCalibration | None) -> Any:
    """An sRGB-encoded map in the photo's skin tone (facecore.texture.match_skin_tone) as the bundle's calibration
    says (without one: no level correction, the chroma all the way, the level beyond TONE_LEVEL_TOLERANCE), or None
    (nothing matched)."""
    from facecore import texture

    cal = calibration or SkinToneCalibration(photo_level_offset=0.0, renders=1)
    if cal.chroma_weight is None or cal.level_weight is None:
        args = {"level_tolerance": TONE_LEVEL_TOLERANCE}
    else:
        args = {"chroma_weight": cal.chroma_weight, "level_weight": cal.level_weight}
    toned = texture.match_skin_tone(model, color.srgb_to_linear(albedo), skin, cal.photo_level_offset, **args)
    return None if toned is None else color.linear_to_srgb(toned)


def photo_iris(
    image: np.ndarray, eye_points: np.ndarray, flags: Collection[str], gain: np.ndarray
) -> tuple[np.ndarray | None, str]:
    """The iris colour /reconstruct paints into its albedo (sRGB) and its source: measured between the photo's lids
    (facecore.assets.photo_iris_colour) and de-lit by ``gain`` ("photo"); the default for a greyscale photo, which
    has no eye colour to measure ("default"); ``(None, "")`` where the photo shows none (the map's own then)."""
    if "greyscale" in flags:
        return np.array(assets.DEFAULT_IRIS_SRGB), "default"
    if not PHOTO_IRIS:
        return None, ""
    try:
        iris = assets.photo_iris_colour(image, eye_points)
    except ValueError:  # non-finite landmarks: nothing measured
        return None, ""
    if iris is None:
        return None, ""
    return color.linear_to_srgb(np.clip(color.srgb_to_linear(iris) * gain, 0.0, 1.0)), "photo"


@dataclass
class Result:
    files: dict[str, bytes]  # the files made now (with SOURCE when the others are made on first fetch)
    names: list[str]  # every file of the result, made now or not
    meta: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


class Timer:
    """Collects per-stage wall times (seconds) and reports them to an optional observer."""

    def __init__(self, observe: Callable[[str, float], None] | None = None):
        self.timings: dict[str, float] = {}
        self._observe = observe

    def stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                dt = time.perf_counter() - self.t
                timer.timings[name] = timer.timings.get(name, 0.0) + dt
                if timer._observe is not None:
                    timer._observe(name, dt)

        return _Stage()


def latent_from_seed(seed: int, z_dim: int) -> np.ndarray:
    """The z of a seed: standard normal from numpy's PCG64 seeded with ``seed`` (stable across versions)."""
    return np.random.default_rng(seed).standard_normal(z_dim).astype(np.float32)


def texel_size(model: geo.FaceModelArrays, resolution: int) -> tuple[float, float]:
    """Physical size (metres) of one texel of the cylindrical layout in u and v on the mean head."""
    radius = float(np.median(np.hypot(model.mean[:, 0], model.mean[:, 2])))
    v_span = (model.uv[:, 1].max() - model.uv[:, 1].min()) / max(float(np.ptp(model.mean[:, 1])), 1e-9)
    return 2 * np.pi * radius / resolution, 1.0 / (v_span * resolution)


async def generate(
    bundle: Bundle,
    run_graph: RunGraph,
    req: MeshRequest,
    timer: Timer,
    run_stage: RunStage = in_thread,
    now: Collection[str] = OUTPUT_KINDS,
) -> Result:
    """The /generate pipeline: latent → ws → albedo; codes → coarse + detailed mesh; files (the output kinds in
    ``now`` encoded now, the others on their first fetch: see :func:`_files`)."""
    m = bundle.manifest
    w_avg = bundle.w_avg
    with timer.stage("mapping"):
        if req.w is not None:
            ws = np.broadcast_to(req.w, (m.codes.num_ws, m.codes.w_dim))[None]
        else:
            z = req.z if req.z is not None else latent_from_seed(req.seed or 0, m.codes.z_dim)
            ws = (await run_graph("mapping", {"z": z[None]}))["ws"]
        ws = (w_avg + req.truncation * (ws - w_avg)).astype(np.float32)
    with timer.stage("albedo"):
        albedo = (await run_graph("albedo", {"ws": ws}))["albedo"][0]
    with timer.stage("codes"):
        if req.identity is not None:
            shape = req.identity
        else:
            stream = [req.seed if req.seed is not None else 0, 1]
            if req.seed is None:  # derive from the latent itself
                stream = list(np.frombuffer(hashlib.sha256(ws.tobytes()).digest()[:8], dtype=np.uint32))
            rng = np.random.default_rng(stream)
            if CODES_GRAPH in m.graphs:  # the head its face implies, plus the seed's own rest
                noise = rng.standard_normal((1, m.codes.shape)).astype(np.float32)
                shape = (await run_graph(CODES_GRAPH, {"ws": ws, "noise": noise}))["shape"][0]
                # a latent far outside the mapping's range (an explicit w) would map to an absurd head
                shape = bundle.face_model.limit_shape(shape).astype(np.float32)
            else:
                shape = bundle.face_model.sample_shape(rng)[0]
    disp = await _displacement(bundle, run_graph, None, req.expression, None, timer)

    def coarse() -> FileSource:
        verts = geo.decode_vertices(bundle.face_model, shape[None], req.expression[None])[0]
        return _source(bundle, req, generator_image(albedo), disp, verts, shape)

    with timer.stage("geometry"):
        source = await run_stage("geometry", coarse)
    files, names = await _files(bundle, source, now, timer, run_stage)
    meta = {
        "endpoint": "generate",
        "bundle": {"name": m.name, "version": m.version},
        "texture": {"size": req.texture_size, "native_resolution": m.resolutions.albedo},
        "codes": {
            "shape": np.asarray(shape, np.float32).round(6).tolist(),
            "expression": _named(bundle, req.expression),
            "truncation": req.truncation,
            "seed": req.seed,
        },
    }
    return Result(files, names, meta, timer.timings)


def _named(bundle: Bundle, expression: np.ndarray) -> dict[str, float]:
    return {n: round(float(v), 6) for n, v in zip(bundle.face_model.expr_names, expression, strict=True) if v}


async def _displacement(
    bundle: Bundle,
    run_graph: RunGraph,
    detail: np.ndarray | None,
    expression: np.ndarray,
    jaw: np.ndarray | None,
    timer: Timer,
) -> np.ndarray | None:
    """The displacement map in metres (None when the bundle has no displacement graph). Without a detail code
    (/generate) it depends on the expression alone, mostly the default neutral one: the last few are kept
    (:data:`_DETAIL_FREE`)."""
    m = bundle.manifest
    if "displacement" not in m.graphs:
        return None
    inputs = {
        "detail": (np.zeros(m.codes.detail) if detail is None else detail)[None].astype(np.float32),
        "expression": expression[None].astype(np.float32),
        "jaw_pose": (np.zeros(3) if jaw is None else jaw)[None].astype(np.float32),
    }
    key = (bundle.digest, inputs["expression"].tobytes(), inputs["jaw_pose"].tobytes()) if detail is None else None
    with timer.stage("displacement"):
        # (on the event loop only: nothing awaits between the cache's look-up and its update)
        disp = _DETAIL_FREE.pop(key, None) if key is not None else None
        if disp is not None:
            _DETAIL_FREE[key] = disp  # the most recently used last
        else:
            out = await run_graph("displacement", inputs)
            disp = out["displacement"][0, 0].astype(np.float64) * m.displacement_scale_m
            disp.flags.writeable = False  # shared by the requests that hit the cache
            if key is not None:
                if len(_DETAIL_FREE) >= _DETAIL_FREE_ENTRIES:
                    _DETAIL_FREE.pop(next(iter(_DETAIL_FREE)))  # the oldest
                _DETAIL_FREE[key] = disp
    return disp


#: (bundle digest, expression, jaw) → the displacement map without a detail code (:func:`_displacement`), the least
#: recently used first; a /generate's graph call is ~1 ms of its ~10 on this 2-core CPU, and its default body asks
#: for the same one
_DETAIL_FREE: dict[tuple[str, bytes, bytes], np.ndarray] = {}
_DETAIL_FREE_ENTRIES = 16


ZIP_NAME = "bundle.zip"
#: a hidden result file: what the files not made yet are made from (:class:`FileSource`)
SOURCE = ".source.npz"
#: the files of each output kind; the OBJ's textures (``mesh_*.png``) are named by the parts its export makes
KIND_FILES = {
    "albedo": ("albedo.png",),
    "displacement": ("displacement.png", "displacement.json"),
    "normal": ("normal.png",),
    "obj": ("mesh.obj", "mesh.mtl"),
    "glb": ("mesh.glb",),
}
MESH_KINDS = frozenset({"obj", "glb"})
#: (bundle digest, mesh resolution) → the OBJ's file names, learnt from the first OBJ made at that resolution
_OBJ_NAMES: dict[tuple[str, int], tuple[str, ...]] = {}


@dataclass(frozen=True)
class FileSource:
    """What a result's files are made from. A result stores it (:data:`SOURCE`) when some of its files were not
    made up front; they are made on their first fetch (:func:`make_files`), the same bytes either way."""

    bundle_digest: str
    albedo_steps: np.ndarray  # (H, W, 3) uint16: sRGB-encoded colour in multiples of 1 / ALBEDO_STEPS
    disp: np.ndarray  # (R, R) displacement in metres
    verts: np.ndarray  # (V, 3) the coarse vertices (the detailed mesh and the teeth are made from them)
    texture_size: int
    mesh_resolution: int
    blendshapes: bool
    outputs: tuple[str, ...]
    shape: np.ndarray | None = None  # (K,) the identity code: the teeth are fitted behind its lips

    _HEADER = ("bundle_digest", "texture_size", "mesh_resolution", "blendshapes", "outputs")

    #: the albedo is held as multiples of 1/65535 and the rest as float32 values (:func:`_source` rounds them so),
    #: so that the stored source is small (~2 MB for a 512² map instead of ~7 MB: writing it was ~70 ms of a
    #: /reconstruct on this machine's disk) and files made from it later are the bytes made from it now; the steps
    #: are what is held, so storing them converts nothing (making and storing a 256² map's source: 1.3 → 0.8 ms)
    ALBEDO_STEPS = 65535

    @property
    def albedo(self) -> np.ndarray:
        """(H, W, 3) float64 sRGB-encoded colour in [0, 1]."""
        return self.albedo_steps / float(self.ALBEDO_STEPS)

    #: the stored layout: this magic, the JSON header's length (uint32, little-endian), the header (the fields of
    #: ``_HEADER`` and each array's name, dtype and shape), then the arrays' bytes one after another. (Until 2.0.5's
    #: service, an .npz: its zip took 0.34 ms to write for a 256² map, and /generate stores one per request; it is
    #: still read.)
    _MAGIC = b"FSRC1\n"
    _DTYPES = ("<u2", "<f4")
    _RANKS = {"albedo": 3, "disp": 2, "verts": 2, "shape": 1}

    def to_bytes(self) -> bytes:
        arrays = {
            "albedo": self.albedo_steps.astype("<u2", copy=False),
            "disp": self.disp.astype("<f4"),
            "verts": self.verts.astype("<f4"),
            **({} if self.shape is None else {"shape": self.shape.astype("<f4")}),
        }
        header = {k: getattr(self, k) for k in self._HEADER}
        header["arrays"] = [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]
        text = json.dumps(header).encode()
        parts = [np.ascontiguousarray(a).tobytes() for a in arrays.values()]
        return b"".join([self._MAGIC, len(text).to_bytes(4, "little"), text, *parts])

    @classmethod
    def from_bytes(cls, data: bytes) -> FileSource:
        """The source :meth:`to_bytes` stored (or an .npz an older service stored); ValueError when it is not one."""
        try:
            return cls._from_raw(data) if data.startswith(cls._MAGIC) else cls._from_npz(data)
        except ValueError:
            raise
        except Exception as exc:  # a damaged file: a malformed header, a missing field, not a zip
            raise ValueError(f"stored source: unreadable ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def _from_raw(cls, data: bytes) -> FileSource:
        start = len(cls._MAGIC) + 4
        size = int.from_bytes(data[len(cls._MAGIC) : start], "little")
        header = json.loads(data[start : start + size])
        offset, arrays = start + size, {}
        for name, dtype, shape in header.pop("arrays"):
            if dtype not in cls._DTYPES:
                raise ValueError(f"stored source: array {name!r} has dtype {dtype!r}")
            if not all(isinstance(n, int) and n >= 0 for n in shape) or len(shape) != cls._RANKS.get(name, -1):
                raise ValueError(f"stored source: array {name!r} has shape {shape!r}")
            count = math.prod(shape)
            end = offset + count * np.dtype(dtype).itemsize
            if end > len(data):
                raise ValueError(f"stored source: {len(data)} bytes, too few for its array {name!r}")
            arrays[name] = np.frombuffer(data, dtype, count, offset).reshape(shape).copy()
            offset = end
        if offset != len(data) or not {"albedo", "disp", "verts"} <= arrays.keys():
            raise ValueError(f"stored source: {len(data)} bytes, its header describes {offset}")
        header["outputs"] = tuple(header["outputs"])
        return cls(
            albedo_steps=arrays["albedo"],
            disp=arrays["disp"].astype(np.float64),
            verts=arrays["verts"].astype(np.float64),
            shape=arrays.get("shape"),
            **header,
        )

    @classmethod
    def _from_npz(cls, data: bytes) -> FileSource:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            header = json.loads(npz["header"].tobytes())
            header["outputs"] = tuple(header["outputs"])
            disp, verts = npz["disp"].astype(np.float64), npz["verts"].astype(np.float64)
            shape = npz["shape"] if "shape" in npz.files else None
            return cls(albedo_steps=npz["albedo"], disp=disp, verts=verts, shape=shape, **header)


def _source(
    bundle: Bundle,
    req: MeshRequest | ReconstructRequest,
    albedo: np.ndarray,
    disp: np.ndarray | None,
    verts: np.ndarray,
    shape: np.ndarray | None = None,
) -> FileSource:
    """The request's :class:`FileSource`; refuses (422) what float32 cannot represent: e.g. latents or
    expressions of ±3e38 overflow to inf/NaN in the networks."""
    if disp is None:  # a bundle without a displacement graph: a flat map
        res = max(bundle.manifest.resolutions.displacement, 64)
        disp = np.zeros((res, res))
    if not (np.isfinite(albedo).all() and np.isfinite(verts).all() and np.isfinite(disp).all()):
        raise RequestError("the request's latent or codes overflow float32 (non-finite outputs); use smaller values")
    # files made now (the CLI, eager outputs) and later (from the stored source) are made from these same steps
    scaled = np.asarray(albedo, np.float32) * np.float32(FileSource.ALBEDO_STEPS)
    steps = np.rint(np.clip(scaled, 0.0, FileSource.ALBEDO_STEPS, out=scaled), out=scaled).astype(np.uint16)
    disp, verts = (np.asarray(a, np.float32).astype(np.float64) for a in (disp, verts))
    shape = None if shape is None else np.asarray(shape, np.float32)
    return FileSource(
        bundle.digest, steps, disp, verts, req.texture_size, req.mesh_resolution, req.blendshapes, tuple(req.outputs),
        shape,
    )  # fmt: skip


def file_kind(name: str) -> str | None:
    """The output kind a result file belongs to (None: none)."""
    for kind, names in KIND_FILES.items():
        if name in names:
            return kind
    return "obj" if name.startswith("mesh_") and name.endswith(".png") else None


def _kind_names(source: FileSource, kind: str) -> tuple[str, ...] | None:
    """The files of output ``kind``; None for the OBJ's until one was made at the source's mesh resolution."""
    if kind == "obj":
        return _OBJ_NAMES.get((source.bundle_digest, source.mesh_resolution))
    return KIND_FILES[kind]


async def _files(
    bundle: Bundle, source: FileSource, now: Collection[str], timer: Timer, run_stage: RunStage
) -> tuple[dict[str, bytes], list[str]]:
    """The files of the output kinds in ``now`` (and of the OBJ while its names are unknown), made in two stages,
    geometry (the detailed mesh) and encoding, plus :data:`SOURCE` when the others are left for their first fetch;
    and the names of all the result's files."""
    todo = {k for k in source.outputs if k in now or _kind_names(source, k) is None}
    later = set(source.outputs) - todo
    mesh = await run_stage("geometry", _detailed, bundle, source, timer) if todo & MESH_KINDS else None

    def encode() -> dict[str, bytes]:
        files = _encode(bundle, source, todo, mesh, timer)
        if later:
            files[SOURCE] = source.to_bytes()
        return files

    files = await run_stage("encode", encode)
    names = {n for n in files if n != SOURCE} | {n for k in later for n in _kind_names(source, k) or ()}
    return files, sorted(names)


def make_files(bundle: Bundle, source_bytes: bytes, kinds: Collection[str | None], timer: Timer) -> dict[str, bytes]:
    """The files of the output ``kinds`` (those the result has) of a stored :data:`SOURCE`, made now: the bytes
    a request that made them up front got. Empty when the source belongs to another bundle than ``bundle``."""
    source = FileSource.from_bytes(source_bytes)
    if source.bundle_digest != bundle.digest:
        return {}
    kinds = set(kinds) & set(source.outputs)
    mesh = _detailed(bundle, source, timer) if kinds & MESH_KINDS else None
    return _encode(bundle, source, kinds, mesh, timer)


def _detailed(bundle: Bundle, source: FileSource, timer: Timer) -> geo.MeshData:
    with timer.stage("geometry"):
        return geo.detailed_mesh(bundle.face_model, source.verts, source.disp, source.mesh_resolution)


def _encode(
    bundle: Bundle, source: FileSource, kinds: Collection[str], mesh: geo.MeshData | None, timer: Timer
) -> dict[str, bytes]:
    """The files of the output ``kinds``; ``mesh``: the detailed mesh (needed for "obj" and "glb")."""
    model = bundle.face_model
    files: dict[str, bytes] = {}
    if not kinds:
        return files
    with timer.stage("encode"):
        albedo = assets.fill_neck(model, source.albedo)  # the neck ends cleanly (no unseen / unlearned band)
        if albedo.shape[0] != source.texture_size:
            albedo = formats.resample_texture(albedo, source.texture_size)
        disp = source.disp
        albedo_png = formats.albedo_png(albedo) if {"albedo", *MESH_KINDS} & set(kinds) else b""
        normal_png = b""
        if {"normal", *MESH_KINDS} & set(kinds):
            normals = formats.normal_map_from_displacement(disp, texel_size(model, disp.shape[0]), wrap_u=True)
            normal_png = formats.normal_map_png(normals)
        if "albedo" in kinds:
            files["albedo.png"] = albedo_png
        if "displacement" in kinds:
            png, sidecar = formats.displacement_png(disp)
            files["displacement.png"] = png
            files["displacement.json"] = json.dumps(sidecar, sort_keys=True).encode()
        if "normal" in kinds:
            files["normal.png"] = normal_png
        morphs = None
        if source.blendshapes and "glb" in kinds:
            deltas = geo.detailed_vertex_field(model, model.expr_basis, source.mesh_resolution).astype(np.float32)
            morphs = dict(zip(model.expr_names, deltas, strict=True))
        # eyes, mouth, teeth: own primitives and materials (facecore.assets), the iris colour from the albedo
        if MESH_KINDS & set(kinds):
            skin, morphs, parts, _ = assets.export_primitives(
                model, mesh, source.mesh_resolution, albedo, morphs, verts=source.verts, shape=source.shape
            )
        if "obj" in kinds:
            obj = formats.obj_files(skin, {"albedo": albedo_png, "normal": normal_png}, name="mesh", parts=parts)
            _OBJ_NAMES[(source.bundle_digest, source.mesh_resolution)] = tuple(obj)
            files.update(obj)
        if "glb" in kinds:
            files["mesh.glb"] = formats.glb_bytes(
                skin, albedo_png, normal_png, morph_targets=morphs, name="face", parts=parts
            )
    return files


def zip_files(files: Mapping[str, bytes]) -> bytes:
    """All result files in one deterministic zip (fixed timestamps; PNG/GLB stored, text deflated)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED if name.endswith((".png", ".glb")) else zipfile.ZIP_DEFLATED
            zf.writestr(info, files[name], compresslevel=1)
    return buf.getvalue()
