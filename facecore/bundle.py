"""The model bundle: the contract between training (``training/export.py``) and the service.

A bundle is a folder (or a .zip of one) with ``manifest.json``, the ONNX graphs it names, the face model
(``face_model.npz``), ``w_avg.npy`` and optionally an identity head (``identity``: recognition features → shape
code, :class:`facecore.identity.IdentityHead`, which ``/reconstruct`` then uses for the shape code).
:func:`load_bundle` validates everything the service relies on and refuses a bundle it cannot serve with a
:class:`BundleError` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from facecore.geometry import FaceModelArrays
from facecore.identity import (
    FEATURES_GRAPH,
    FEATURES_GRAPH_INPUT,
    FEATURES_GRAPH_OUTPUT,
    SERVICE_FEATURES,
    IdentityHead,
    reads_graph,
)
from facecore.mouth import MouthCalibration

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# graphs each endpoint needs; a bundle may serve a subset (the other endpoint then answers 503)
CAPABILITIES: dict[str, tuple[str, ...]] = {
    "generate": ("mapping", "albedo"),
    "reconstruct": ("encoder", "displacement"),
}
# the photo's clean albedo (S × S, sRGB-encoded) → AlbedoGAN's ws: /reconstruct's albedo=generated for a generator
# the encoder's own ``ws`` head was not trained against (training.albedo_latent)
LATENT_GRAPH = "albedo_latent"
CODES_GRAPH = "codes"  # /generate's latent → identity: inputs ws and noise (N(0, I), from the seed), output shape
GENERATED_MISSING = f"this bundle has neither an encoder 'ws' output nor an '{LATENT_GRAPH}' graph"


class BundleError(ValueError):
    """The bundle cannot be served; the message names the file and the field."""


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shape: list[int | None] = Field(description="None for dynamic axes (the batch)")
    dtype: str = "float32"


class GraphSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    sha256: str
    fp16_file: str | None = None
    weights_dtype: Literal["float32", "float16"] = Field(
        "float32", description="storage type of the graph's large weights (computation is float32 either way)"
    )
    parity_max_abs: float | None = Field(None, description="export-time max |onnx - torch|")


class FaceModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str = "face_model.npz"
    sha256: str


class IdentitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str = "identity_head.npz"
    sha256: str
    features: str = Field(description="what the head reads: one of facecore.identity.SERVICE_FEATURES")
    metrics: dict[str, Any] = Field(default_factory=dict, description="held-out measurements of the fit")


class Codes(BaseModel):
    model_config = ConfigDict(extra="forbid")
    z_dim: int = Field(gt=0)
    w_dim: int = Field(gt=0)
    num_ws: int = Field(gt=0)
    shape: int = Field(gt=0)
    expression: int = Field(gt=0)
    joints: int = Field(gt=0)
    detail: int = Field(0, ge=0)


class Resolutions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    albedo: int = Field(gt=0)
    displacement: int = Field(0, ge=0)
    encoder_input: int = Field(0, ge=0)


class LocaliserSpec(BaseModel):
    """``manifest.json["localiser"]``: the ``landmarks`` graph's crop (:mod:`facecore.localise`) and its numbers."""

    crop_scale: float = Field(gt=0.5, le=4.0)
    passes: int = Field(ge=1, le=8)
    refine: bool = Field(False, description="refine the encoder's codes onto the landmarks (facecore.refine)")
    metrics: dict[str, Any] = Field(default_factory=dict)
    kept_from: str | None = Field(
        None, description="the bundle this graph was taken from, and why (training.localiser --keep-from)"
    )


Coefficient = Annotated[float, Field(ge=-20.0, le=20.0)]


class SkinToneCalibration(BaseModel):
    """How the photo's de-lit skin level relates to the truth with this bundle's light, and how far to trust the
    photo's skin against the generated map's own, on held-out renders (:mod:`training.skin_tone`, the export
    stage's last step). /reconstruct de-lights the photo to the level ``level_intercept + level_slope · y +
    level_chroma · c`` (``y`` its de-lit skin's log-luminance: a light guessed from one photo regresses to the mean,
    and a camera's exposure moves it; ``c`` the skin's log R/G, log B/G, which exposure leaves alone and which
    follow the skin's pigment, hence its level); its ``albedo=generated``
    tone match corrects the photo's level by the offset and moves the map's chroma and level that fraction of the
    way to the photo's (``service.pipeline.tone``; without the fractions, all the chroma and the level beyond
    ``TONE_LEVEL_TOLERANCE``)."""

    model_config = ConfigDict(extra="forbid")
    photo_level_offset: float = Field(ge=-1.0, le=1.0, description="truth minus photo, mean log-luminance")
    chroma_weight: float | None = Field(None, ge=0.0, le=1.0, description="the photo's share of the log-chroma")
    level_weight: float | None = Field(None, ge=0.0, le=1.0, description="the photo's share of the log-luminance")
    level_intercept: float | None = Field(None, ge=-5.0, le=5.0, description="truth level ≈ intercept + slope · de-lit")
    level_slope: float | None = Field(None, ge=0.0, le=4.0, description="(log-luminance of the photo's skin)")
    level_chroma: tuple[Coefficient, Coefficient] | None = Field(
        None, description="+ these · the photo's skin log R/G, log B/G (none: 0)"
    )
    renders: int = Field(ge=1)
    data: str = ""

    @model_validator(mode="after")
    def _pairs_together(self) -> SkinToneCalibration:
        if (self.chroma_weight is None) != (self.level_weight is None):
            raise ValueError("skin_tone: chroma_weight and level_weight come together (or neither)")
        if (self.level_intercept is None) != (self.level_slope is None):
            raise ValueError("skin_tone: level_intercept and level_slope come together (or neither)")
        if self.level_chroma is not None and self.level_slope is None:
            raise ValueError("skin_tone: level_chroma needs level_intercept and level_slope")
        return self

    @property
    def level_map(self) -> tuple[float, float, float, float] | None:
        """``(intercept, slope, log R/G coefficient, log B/G coefficient)`` for :func:`facecore.texture.extract` (the
        photo's de-lit skin level mapped to the truth's expected level), or None."""
        if self.level_slope is None or self.level_intercept is None:
            return None
        return self.level_intercept, self.level_slope, *(self.level_chroma or (0.0, 0.0))


class Manifest(BaseModel):
    """``manifest.json`` (schema version 1)."""

    model_config = ConfigDict(extra="allow")
    schema_version: int
    name: str
    version: str
    licence: str
    git_commit: str = "unknown"
    created: str = ""
    face_model: FaceModelSpec
    w_avg: str = "w_avg.npy"
    codes: Codes
    resolutions: Resolutions
    graphs: dict[str, GraphSpec]
    displacement_scale_m: float = Field(0.0, ge=0.0, description="displacement graph output units → metres")
    identity: IdentitySpec | None = None
    mouth: MouthCalibration | None = Field(None, description="the encoder's lip gap calibrated (facecore.mouth)")
    localiser: LocaliserSpec | None = Field(None, description="how /reconstruct runs the landmarks graph")
    skin_tone: SkinToneCalibration | None = Field(None, description="the tone match's calibration (training.skin_tone)")
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Bundle:
    """A validated bundle on disk."""

    root: Path
    manifest: Manifest
    face_model: FaceModelArrays
    w_avg: np.ndarray
    digest: str  # identifies the bundle's content (manifest + every file hash) for result ids
    identity_head: IdentityHead | None = None

    @property
    def capabilities(self) -> dict[str, bool]:
        return {cap: all(g in self.manifest.graphs for g in graphs) for cap, graphs in CAPABILITIES.items()}

    @property
    def generated_reconstruct(self) -> bool:
        """/reconstruct can answer ``albedo=generated``: it has the generator and a latent for the photo (the
        encoder's ``ws`` output or the :data:`LATENT_GRAPH`)."""
        graphs = self.manifest.graphs
        if not self.capabilities["reconstruct"] or "albedo" not in graphs:
            return False
        return LATENT_GRAPH in graphs or "ws" in graphs["encoder"].outputs

    def graph_path(self, name: str) -> Path:
        return self.root / self.manifest.graphs[name].file


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unpack_zip(path: Path) -> Path:
    """Extract a bundle zip into a content-addressed temporary folder (reused across starts)."""
    digest = sha256_file(path)[:16]
    target = Path(tempfile.gettempdir()) / f"albedogan-bundle-{digest}"
    if (target / MANIFEST).is_file():
        return target
    tmp = Path(tempfile.mkdtemp(prefix="albedogan-bundle-"))
    try:  # whatever happens, nothing is left behind but ``target`` (the extraction folder used to leak)
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if any(n.startswith("/") or ".." in Path(n).parts for n in names):
                    raise BundleError(f"{path}: refusing a zip with absolute or parent paths")
                zf.extractall(tmp)
        except zipfile.BadZipFile as exc:
            raise BundleError(f"{path}: not a readable zip ({exc})") from exc
        inner = [p.parent for p in tmp.rglob(MANIFEST)]
        if len(inner) != 1:
            raise BundleError(f"{path}: expected exactly one {MANIFEST} in the zip, found {len(inner)}")
        if not target.exists():
            try:
                inner[0].rename(target)
            except OSError:  # another process unpacked the same bundle first
                if not (target / MANIFEST).is_file():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_bundle(path: str | Path) -> Bundle:
    """Load and validate a bundle folder or zip.

    Raises:
        BundleError: naming the file and field for anything the service cannot serve.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: bundle not found")
    root = _unpack_zip(path) if path.is_file() else path
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{mpath}: missing")
    try:
        raw = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{mpath}: the top level must be an object")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{mpath}: field 'schema_version' is {raw.get('schema_version')!r}; this service reads {SCHEMA_VERSION}"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise BundleError(f"{mpath}: field '{field}': {err['msg']}") from exc

    hashes = [hashlib.sha256(mpath.read_bytes()).hexdigest()]
    fm_path = root / manifest.face_model.file
    if not fm_path.is_file():
        raise BundleError(f"{mpath}: field 'face_model.file' names {fm_path.name}, which is missing")
    fm_hash = sha256_file(fm_path)
    if fm_hash != manifest.face_model.sha256:
        raise BundleError(f"{fm_path}: sha256 does not match field 'face_model.sha256' of {MANIFEST}")
    try:
        face_model = FaceModelArrays.load(fm_path)
    except (ValueError, OSError) as exc:
        raise BundleError(str(exc)) from exc
    codes = manifest.codes
    for field, have in (
        ("shape", face_model.n_shape),
        ("expression", face_model.n_expr),
        ("joints", face_model.n_joints),
    ):
        if getattr(codes, field) != have:
            raise BundleError(
                f"{mpath}: field 'codes.{field}' is {getattr(codes, field)} but {fm_path.name} has {have}"
            )
    for name, spec in manifest.graphs.items():
        gpath = root / spec.file
        if not gpath.is_file():
            raise BundleError(f"{mpath}: field 'graphs.{name}.file' names {spec.file}, which is missing")
        digest = sha256_file(gpath)
        if digest != spec.sha256:
            raise BundleError(f"{gpath}: sha256 does not match field 'graphs.{name}.sha256' of {MANIFEST}")
        hashes.append(digest)
    wpath = root / manifest.w_avg
    if not wpath.is_file():
        raise BundleError(f"{mpath}: field 'w_avg' names {manifest.w_avg}, which is missing")
    try:
        w_avg = np.load(wpath, allow_pickle=False).astype(np.float32)
    except (ValueError, OSError) as exc:
        raise BundleError(f"{wpath}: not a readable .npy ({exc})") from exc
    if w_avg.shape != (codes.w_dim,) or not np.all(np.isfinite(w_avg)):
        raise BundleError(f"{wpath}: expected {codes.w_dim} finite values (field 'codes.w_dim'), got {w_avg.shape}")
    codes_graph = manifest.graphs.get(CODES_GRAPH)
    if codes_graph is not None:
        want = {"ws": [None, codes.num_ws, codes.w_dim], "noise": [None, codes.shape]}
        if {n: list(t.shape) for n, t in codes_graph.inputs.items()} != want or [
            list(t.shape) for n, t in codes_graph.outputs.items() if n == "shape"
        ] != [[None, codes.shape]]:
            raise BundleError(
                f"{mpath}: field 'graphs.{CODES_GRAPH}' must take inputs {want} and give 'shape' [None, {codes.shape}]"
            )
    _check_localiser(mpath, manifest)
    identity_head = None
    if manifest.identity is not None:
        identity_head, head_hash = _load_identity_head(root, mpath, manifest)
        hashes.append(head_hash)
    if not any(all(g in manifest.graphs for g in graphs) for graphs in CAPABILITIES.values()):
        raise BundleError(f"{mpath}: field 'graphs' serves no endpoint (needs one of {list(CAPABILITIES.values())})")
    hashes += [fm_hash, sha256_file(wpath)]
    digest = hashlib.sha256("".join(hashes).encode()).hexdigest()
    logger.info("bundle %s %s from %s", manifest.name, manifest.version, root)
    return Bundle(root, manifest, face_model, w_avg, digest, identity_head)


def _check_localiser(mpath: Path, manifest: Manifest) -> None:
    """The ``landmarks`` graph and ``manifest["localiser"]`` come together; the graph reads square crops."""
    from facecore import localise

    graph = manifest.graphs.get(localise.GRAPH)
    if (graph is None) != (manifest.localiser is None):
        raise BundleError(f"{mpath}: fields 'graphs.{localise.GRAPH}' and 'localiser' must both be present or absent")
    if graph is None:
        return
    image = graph.inputs.get(localise.GRAPH_INPUT)
    points = graph.outputs.get(localise.GRAPH_OUTPUT)
    if (
        image is None
        or len(image.shape) != 4
        or image.shape[1] != 3
        or not isinstance(image.shape[2], int)
        or image.shape[2] != image.shape[3]
        or points is None
        or list(points.shape) != [None, 68, 2]
    ):
        raise BundleError(
            f"{mpath}: graph '{localise.GRAPH}' must take '{localise.GRAPH_INPUT}' [None, 3, S, S] and give "
            f"'{localise.GRAPH_OUTPUT}' [None, 68, 2]"
        )


def _load_identity_head(root: Path, mpath: Path, manifest: Manifest) -> tuple[IdentityHead, str]:
    """The bundle's identity head and its file's sha256, checked against the manifest and the face model."""
    spec = manifest.identity
    assert spec is not None
    path = root / spec.file
    if not path.is_file():
        raise BundleError(f"{mpath}: field 'identity.file' names {spec.file}, which is missing")
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise BundleError(f"{path}: sha256 does not match field 'identity.sha256' of {MANIFEST}")
    if spec.features not in SERVICE_FEATURES:
        raise BundleError(
            f"{mpath}: field 'identity.features' is {spec.features!r}; this service computes one of "
            f"{tuple(SERVICE_FEATURES)}"
        )
    dim = SERVICE_FEATURES[spec.features]
    if reads_graph(spec.features):
        graph = manifest.graphs.get(FEATURES_GRAPH)
        want_in, want_out = [None, 3, 150, 150], [None, dim]
        if (
            graph is None
            or graph.inputs.get(FEATURES_GRAPH_INPUT) is None
            or list(graph.inputs[FEATURES_GRAPH_INPUT].shape) != want_in
            or graph.outputs.get(FEATURES_GRAPH_OUTPUT) is None
            or list(graph.outputs[FEATURES_GRAPH_OUTPUT].shape) != want_out
        ):
            raise BundleError(
                f"{mpath}: field 'identity.features' reads the graph '{FEATURES_GRAPH}', which must be in 'graphs' "
                f"with input '{FEATURES_GRAPH_INPUT}' {want_in} and output '{FEATURES_GRAPH_OUTPUT}' {want_out}"
            )
    try:
        head = IdentityHead.load(path)
    except ValueError as exc:
        raise BundleError(str(exc)) from exc
    if (head.features, head.n_features, head.n_shape) != (spec.features, dim, manifest.codes.shape):
        raise BundleError(
            f"{path}: maps {head.n_features} features ({head.features!r}) to {head.n_shape} shape coefficients; "
            f"expected {dim} (field 'identity.features') to {manifest.codes.shape} (field 'codes.shape')"
        )
    return head, digest


def drop_latent_graphs(folder: Path, manifest: dict) -> None:
    """In an :func:`edited_copy` edit that changes the maps the generator draws: remove the graphs fitted to the old
    maps and their records — :data:`LATENT_GRAPH` (``python -m training.albedo_latent`` fits it again) and
    :data:`CODES_GRAPH` (``python -m training.latent_identity``)."""
    for graph, record in ((LATENT_GRAPH, "albedo_latent"), (CODES_GRAPH, "latent_identity")):
        spec = manifest["graphs"].pop(graph, None)
        if spec is not None:
            (folder / spec["file"]).unlink(missing_ok=True)
            logger.info("%s: dropped (fitted to the generator before this edit)", graph)
        manifest.pop(record, None)


def edited_copy(bundle: str | Path, out: str | Path, version: str | None, edit: Callable[[Path, dict], None]) -> Path:
    """Copy ``bundle`` to ``out``: ``edit(folder, manifest)`` changes the copy's files and manifest in a temporary
    folder, ``version`` (if given) replaces the manifest's version, and the copy replaces ``out`` (which may be
    ``bundle`` itself) only once :func:`load_bundle` accepts it (the training side's bundle edits share this)."""
    source, out = load_bundle(bundle), Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(source.root, tmp)
    manifest = json.loads((tmp / MANIFEST).read_text())
    edit(tmp, manifest)
    if version is not None:
        manifest["version"] = version
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    load_bundle(tmp)  # the service must accept what we wrote
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
