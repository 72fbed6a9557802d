"""File formats the service writes: PNG textures (8-bit sRGB, 16-bit displacement, tangent-space normal
maps), Wavefront OBJ + MTL + textures as a zip, and binary glTF (GLB) with optional morph targets.

Everything here is numpy + pillow + pygltflib and byte-deterministic: the same input gives the same bytes
(fixed zip timestamps, no time or random state in any header), so results can be content-addressed.

Conventions: texture images have row 0 at v = 1 (``MeshData.uv`` is v up, OBJ/OpenGL); glTF's texture
coordinates are v down, so the GLB writer stores (u, 1 - v). Bad input raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pygltflib
from PIL import Image, PngImagePlugin

from facecore.color import to_uint8
from facecore.geometry import MeshData

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DISPLACEMENT_OFFSET = 32768  # 16-bit code of zero displacement
_DISP_MAX_CODE = 32767  # |code - offset| used for the largest |value| when the scale is chosen from the data
_MIN_DISP_RANGE_M = 1e-6  # an all-zero map still gets a finite scale (±1 µm range)
_UNIT_TOLERANCE = 1e-3  # accepted | |normal| - 1 |, then renormalised (the glTF validator is strict)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # earliest zip timestamp: fixed, so zips are byte-deterministic
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
OBJ_TEXTURE_ROLES = ("albedo", "normal")  # textures write_obj_zip accepts; "albedo" is required


# ---------------------------------------------------------------------------------------------- validation
def _check_array(name: str, value: object, shape: tuple[int | None, ...], kinds: str = "f") -> np.ndarray:
    """``value`` as an array of dtype kind in ``kinds`` and ``shape`` (None = any size ≥ 1), all finite.

    Raises:
        ValueError: naming ``name`` when the type, dtype, shape, emptiness or finiteness is wrong.
    """
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(value).__name__}")
    want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
    if value.dtype.kind not in kinds:
        raise ValueError(f"{name}: dtype {value.dtype} not accepted (kinds {kinds!r}), expected shape {want}")
    if value.ndim != len(shape) or any(s is not None and d != s for d, s in zip(value.shape, shape, strict=False)):
        raise ValueError(f"{name}: expected shape {want}, got {value.shape}")
    if value.size == 0:
        raise ValueError(f"{name}: is empty (shape {value.shape})")
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise ValueError(f"{name}: contains NaN or inf")
    return value


def _check_mesh(mesh: MeshData) -> MeshData:
    """Validated copy of ``mesh``: float32 arrays of matching length, in-range int64 faces, unit normals."""
    if not isinstance(mesh, MeshData):
        raise ValueError(f"mesh: expected MeshData, got {type(mesh).__name__}")
    pos = _check_array("mesh.positions", mesh.positions, (None, 3)).astype(np.float32)
    n = len(pos)
    nrm = _check_array("mesh.normals", mesh.normals, (n, 3)).astype(np.float64)
    uv = _check_array("mesh.uv", mesh.uv, (n, 2)).astype(np.float32)
    faces = _check_array("mesh.faces", mesh.faces, (None, 3), kinds="iu").astype(np.int64)
    if faces.min() < 0 or faces.max() >= n:
        raise ValueError(f"mesh.faces: indices must lie in [0, {n}), got [{faces.min()}, {faces.max()}]")
    length = np.linalg.norm(nrm, axis=1)
    bad = np.abs(length - 1.0) > _UNIT_TOLERANCE
    if bad.any():
        raise ValueError(f"mesh.normals: {int(bad.sum())} of {n} are not unit length (first: row {np.argmax(bad)})")
    return MeshData(pos, (nrm / length[:, None]).astype(np.float32), uv, faces)


def _check_png(name: str, data: object) -> bytes:
    """``data`` as bytes after checking it is a well-formed PNG (signature, chunk CRCs)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"{name}: expected PNG bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{name}: not PNG data (bad signature)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception as exc:  # pillow raises assorted types for corrupt files
        raise ValueError(f"{name}: corrupt PNG ({exc})") from exc
    return data


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"name: must match {_NAME_RE.pattern} (used in file and material names), got {name!r}")
    return name


# ---------------------------------------------------------------------------------------------- PNG
def _png_bytes(image: Image.Image, text: Mapping[str, str] | None = None, srgb: bool = False) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    if srgb:
        info.add(b"sRGB", b"\x00")  # rendering intent: perceptual
        # gAMA 1/2.2: the fallback the PNG spec recommends beside sRGB for decoders that ignore it
        info.add(b"gAMA", (45455).to_bytes(4, "big"))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def albedo_png(albedo: np.ndarray) -> bytes:
    """Encode an albedo texture as an 8-bit RGB PNG tagged sRGB.

    Args:
        albedo: (H, W, 3) sRGB-encoded colour (not linear), either float in [0, 1] (clipped to that range,
            as quantising a generator's output requires) or uint8. Row 0 is v = 1.

    Returns:
        PNG bytes with an ``sRGB`` chunk (and its ``gAMA`` fallback).
    """
    albedo = _check_array("albedo", albedo, (None, None, 3), kinds="fu")
    if albedo.dtype.kind == "u" and albedo.dtype != np.uint8:
        raise ValueError(f"albedo: integer input must be uint8, got {albedo.dtype}")
    if albedo.dtype.kind == "f":
        albedo = to_uint8(albedo)
    return _png_bytes(Image.fromarray(np.ascontiguousarray(albedo)), srgb=True)


def displacement_png(disp: np.ndarray, scale: float | None = None) -> tuple[bytes, dict[str, float | int | str]]:
    """Encode a displacement map as a 16-bit grayscale PNG: ``metres = (code - 32768) * scale``.

    Args:
        disp: (H, W) float displacement along the normal in metres; row 0 is v = 1.
        scale: metres per code unit; None picks ``max|disp| / 32767`` (at least ±1 µm of range) so the
            largest value uses the full precision. A given scale must cover the data.

    Returns:
        ``(png, sidecar)``: the PNG, whose tEXt chunks hold ``displacement_scale_m`` and
        ``displacement_offset``, and the same facts as a dict to be written as JSON next to it.
    """
    disp = _check_array("disp", disp, (None, None)).astype(np.float64)
    peak = float(np.abs(disp).max())
    if scale is None:
        scale = max(peak, _MIN_DISP_RANGE_M) / _DISP_MAX_CODE
    elif isinstance(scale, bool) or not isinstance(scale, int | float | np.floating) or not 0 < scale < np.inf:
        raise ValueError(f"scale: must be a positive finite number of metres per unit, got {scale!r}")
    scale = float(scale)
    codes = np.rint(disp / scale) + DISPLACEMENT_OFFSET
    if codes.min() < 0 or codes.max() > 65535:
        raise ValueError(
            f"disp: max |value| {peak:.6g} m exceeds the range of scale={scale!r} (±{32767 * scale:.6g} m)"
        )
    sidecar: dict[str, float | int | str] = {
        "displacement_scale_m": scale,
        "displacement_offset": DISPLACEMENT_OFFSET,
        "decode": "metres = (value - displacement_offset) * displacement_scale_m; row 0 is v = 1",
    }
    text = {key: repr(value) if isinstance(value, float) else str(value) for key, value in sidecar.items()}
    image = Image.fromarray(codes.astype("<u2"))  # mode I;16: 16-bit grayscale PNG
    return _png_bytes(image, text=text), sidecar


def read_displacement_png(data: bytes) -> np.ndarray:
    """Decode a PNG written by :func:`displacement_png` (scale and offset from its tEXt chunks).

    Returns:
        (H, W) float32 displacement in metres; row 0 is v = 1.
    """
    data = _check_png("data", data)
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("I;16", "I"):
            raise ValueError(f"data: expected a 16-bit grayscale PNG, got mode {img.mode}")
        text = dict(img.text)
        codes = np.asarray(img, dtype=np.float64)
    try:
        scale = float(text["displacement_scale_m"])
        offset = int(text["displacement_offset"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"data: missing or malformed displacement tEXt metadata ({exc!r})") from exc
    return ((codes - offset) * scale).astype(np.float32)


def normal_map_from_displacement(
    disp: np.ndarray, texel_size_m: float | tuple[float, float], *, wrap_u: bool = False
) -> np.ndarray:
    """Tangent-space normals of a displacement map over a locally flat base surface.

    Convention (OpenGL / glTF, "green up"): +X along +u (tangent), +Y along +v, i.e. towards the *top* of
    the image (bitangent), +Z out of the surface. A height field h(x, y) has the normal
    ``(-dh/dx, -dh/dy, 1) / norm``; derivatives are central differences (one-sided at the borders).

    Args:
        disp: (H, W) displacement in metres; row 0 is v = 1, column 0 is u = 0.
        texel_size_m: physical size of one texel on the surface, one number or ``(size_u, size_v)``.
        wrap_u: treat column W-1 as the neighbour of column 0 (a cylindrical layout closed at the seam).

    Returns:
        (H, W, 3) float32 unit normals; a flat map gives (0, 0, 1) everywhere.
    """
    disp = _check_array("disp", disp, (None, None)).astype(np.float64)
    if min(disp.shape) < 2:
        raise ValueError(f"disp: needs at least 2×2 texels for derivatives, got {disp.shape}")
    size = np.broadcast_to(np.asarray(texel_size_m, dtype=np.float64), (2,))
    if not (np.all(np.isfinite(size)) and np.all(size > 0)):
        raise ValueError(f"texel_size_m: must be positive finite metres (one value or (u, v)), got {texel_size_m!r}")
    if wrap_u:
        dh_dx = (np.roll(disp, -1, axis=1) - np.roll(disp, 1, axis=1)) / (2.0 * size[0])
    else:
        dh_dx = np.gradient(disp, size[0], axis=1)
    dh_dy = -np.gradient(disp, size[1], axis=0)  # rows grow downwards, +Y (v) grows upwards
    n = np.stack([-dh_dx, -dh_dy, np.ones_like(disp)], axis=-1)
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


def normal_map_png(normals: np.ndarray) -> bytes:
    """Encode tangent-space unit normals (e.g. from :func:`normal_map_from_displacement`) as an 8-bit RGB PNG.

    Each component maps [-1, 1] → [0, 255] (``round((n + 1) / 2 * 255)``), so (0, 0, 1) is (128, 128, 255).
    The data is linear, so no sRGB chunk is written.

    Args:
        normals: (H, W, 3) float unit vectors, OpenGL/glTF convention (+Y = +v, green up).
    """
    normals = _check_array("normals", normals, (None, None, 3))
    rgb = np.floor((np.clip(normals, -1.0, 1.0) + 1.0) * 127.5 + 0.5).astype(np.uint8)
    return _png_bytes(Image.fromarray(rgb))


# ---------------------------------------------------------------------------------------------- parts
@dataclass(frozen=True, eq=False)
class MaterialPart:
    """An extra primitive with its own material, e.g. the eyes and the mouth (``facecore.assets``).

    Attributes:
        name: material suffix (``eyes`` → OBJ material ``mesh_eyes``, GLB material ``face_eyes``).
        mesh: its mesh (own vertices and texture coordinates).
        albedo_png: PNG bytes of its base-colour texture (sRGB).
        roughness: glTF roughness (the MTL's ``Ns`` follows it).
        morph_targets: name → (N, 3) position deltas, the same names and order as the main mesh's (glTF
            needs every primitive of a mesh to have the same targets), or None.
        colour_factor: in [0, 1], multiplies the texture's linear colour (glTF ``baseColorFactor``, the MTL's
            ``Kd``): e.g. the teeth in the mouth's shadow without re-encoding their texture.
    """

    name: str
    mesh: MeshData
    albedo_png: bytes
    roughness: float = 0.5
    morph_targets: Mapping[str, np.ndarray] | None = None
    colour_factor: float = 1.0


def _check_parts(parts: Sequence[MaterialPart]) -> list[MaterialPart]:
    out = []
    for i, part in enumerate(parts):
        if not isinstance(part, MaterialPart):
            raise ValueError(f"parts[{i}]: expected MaterialPart, got {type(part).__name__}")
        _check_name(part.name)
        _check_png(f"parts[{i}].albedo_png", part.albedo_png)
        for field in ("roughness", "colour_factor"):
            if not 0.0 <= float(getattr(part, field)) <= 1.0:
                raise ValueError(f"parts[{i}].{field}: must lie in [0, 1], got {getattr(part, field)!r}")
        out.append(
            MaterialPart(
                part.name, _check_mesh(part.mesh), part.albedo_png, part.roughness, part.morph_targets,
                float(part.colour_factor),
            )
        )  # fmt: skip
    if len({p.name for p in out}) != len(out):
        raise ValueError(f"parts: names must be unique, got {[p.name for p in out]}")
    return out


# ---------------------------------------------------------------------------------------------- OBJ
def obj_bytes(mesh: MeshData, name: str = "mesh", parts: Sequence[MaterialPart] = ()) -> bytes:
    """Wavefront OBJ text: ``mtllib {name}.mtl``, ``usemtl {name}``, v / vt (v up) / vn and ``f a/a/a ...``.

    Floats are written with 9 significant digits, which round-trips float32 exactly.

    Args:
        mesh: the mesh (N vertices shared by position, UV and normal indices; M triangles).
        name: base name of the MTL file and the material.
        parts: extra primitives, each written as its own group with material ``{name}_{part.name}``.
    """
    mesh = _check_mesh(mesh)
    name = _check_name(name)
    extra = _check_parts(parts)
    n, m = len(mesh.positions), len(mesh.faces)
    parts = [
        f"# albedogan3d: {n} vertices, {m} triangles, metres, +y up\nmtllib {name}.mtl\no {name}\n",
        ("v %.9g %.9g %.9g\n" * n) % tuple(mesh.positions.ravel().tolist()),
        ("vt %.9g %.9g\n" * n) % tuple(mesh.uv.ravel().tolist()),
        ("vn %.9g %.9g %.9g\n" * n) % tuple(mesh.normals.ravel().tolist()),
        f"usemtl {name}\ns off\n",
        ("f %d/%d/%d %d/%d/%d %d/%d/%d\n" * m) % tuple(np.repeat(mesh.faces.ravel() + 1, 3).tolist()),
    ]
    offset = n
    for part in extra:
        k, f = len(part.mesh.positions), len(part.mesh.faces)
        parts += [
            f"o {name}_{part.name}\n",
            ("v %.9g %.9g %.9g\n" * k) % tuple(part.mesh.positions.ravel().tolist()),
            ("vt %.9g %.9g\n" * k) % tuple(part.mesh.uv.ravel().tolist()),
            ("vn %.9g %.9g %.9g\n" * k) % tuple(part.mesh.normals.ravel().tolist()),
            f"usemtl {name}_{part.name}\ns off\n",
            ("f %d/%d/%d %d/%d/%d %d/%d/%d\n" * f) % tuple(np.repeat(part.mesh.faces.ravel() + 1 + offset, 3).tolist()),
        ]
        offset += k
    return "".join(parts).encode("ascii")


def _mtl_bytes(name: str, texture_files: Mapping[str, str], parts: Sequence[MaterialPart] = ()) -> bytes:
    lines = [f"newmtl {name}", "Ka 0 0 0", "Kd 1 1 1", "Ks 0.04 0.04 0.04", "Ns 20", "d 1", "illum 2"]
    lines.append(f"map_Kd {texture_files['albedo']}")
    if "normal" in texture_files:
        # `norm` is the PBR-extension keyword; many importers (Blender's) read normal maps from map_Bump
        lines += [f"norm {texture_files['normal']}", f"map_Bump {texture_files['normal']}"]
    for part in parts:
        shininess = round(1000.0 * (1.0 - float(part.roughness)) ** 2 + 1.0)  # glossier parts, higher Ns
        kd = f"{float(part.colour_factor):.4g}"
        lines += ["", f"newmtl {name}_{part.name}", "Ka 0 0 0", f"Kd {kd} {kd} {kd}", "Ks 0.1 0.1 0.1",
                  f"Ns {shininess}", "d 1", "illum 2", f"map_Kd {name}_{part.name}.png"]  # fmt: skip
        lines.append(f"Pr {float(part.roughness):g}")
    return ("\n".join(lines) + "\n").encode("ascii")


def obj_files(
    mesh: MeshData, textures: Mapping[str, bytes], name: str = "mesh", parts: Sequence[MaterialPart] = ()
) -> dict[str, bytes]:
    """The files of a textured OBJ: ``{name}.obj``, ``{name}.mtl`` and ``{name}_{role}.png`` per texture.

    Args:
        mesh: the mesh.
        textures: PNG bytes by role: ``albedo`` (required, ``map_Kd``), ``normal`` (optional, tangent
            space, OpenGL convention; ``norm`` and ``map_Bump``).
        name: base name of the files and the material.
        parts: extra primitives (eyes, mouth), each with material ``{name}_{part}`` and texture
            ``{name}_{part}.png``.

    Returns:
        File name → bytes, in a fixed order (obj, mtl, textures in :data:`OBJ_TEXTURE_ROLES` order, parts).
    """
    name = _check_name(name)
    unknown = set(textures) - set(OBJ_TEXTURE_ROLES)
    if unknown or "albedo" not in textures:
        raise ValueError(f"textures: roles must be {OBJ_TEXTURE_ROLES} with 'albedo' required, got {sorted(textures)}")
    texture_files = {role: f"{name}_{role}.png" for role in OBJ_TEXTURE_ROLES if role in textures}
    extra = _check_parts(parts)
    files = {f"{name}.obj": obj_bytes(mesh, name, extra), f"{name}.mtl": _mtl_bytes(name, texture_files, extra)}
    for role, file_name in texture_files.items():
        files[file_name] = _check_png(f"textures[{role!r}]", textures[role])
    for part in extra:
        files[f"{name}_{part.name}.png"] = part.albedo_png
    return files


def write_obj_zip(
    mesh: MeshData, textures: Mapping[str, bytes], name: str = "mesh", parts: Sequence[MaterialPart] = ()
) -> bytes:
    """:func:`obj_files` as a deflated zip with fixed timestamps (same input → same bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for file_name, data in obj_files(mesh, textures, name, parts).items():
            info = zipfile.ZipInfo(file_name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, whatever the host
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    logger.debug("obj zip %r: %d bytes", name, buf.tell())
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- GLB
def vertex_tangents(mesh: MeshData) -> np.ndarray:
    """Per-vertex tangent frames for tangent-space normal maps, in glTF's ``TANGENT`` layout.

    The tangent is the UV-area-weighted average of the triangles' dP/du, made orthogonal to the normal;
    ``w`` = ±1 makes ``cross(normal, tangent) * w`` point along +v (v up), the frame in which
    :func:`normal_map_from_displacement` computes normals. A vertex whose triangles are all degenerate in
    UV gets an arbitrary unit tangent orthogonal to its normal (the normal map is meaningless there).

    Args:
        mesh: the mesh (N vertices).

    Returns:
        (N, 4) float32: unit xyz tangent and handedness w in {-1, +1}.
    """
    mesh = _check_mesh(mesh)
    pos, uv, normals = (a.astype(np.float64) for a in (mesh.positions, mesh.uv, mesh.normals))
    i0, i1, i2 = mesh.faces.T
    e1, e2 = pos[i1] - pos[i0], pos[i2] - pos[i0]
    d1, d2 = uv[i1] - uv[i0], uv[i2] - uv[i0]
    sign = np.sign(d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1])[:, None]
    # |det| · dP/du and |det| · dP/dv: per-triangle derivatives weighted by UV area (0 where degenerate)
    t_face = sign * (e1 * d2[:, 1:] - e2 * d1[:, 1:])
    b_face = sign * (e2 * d1[:, :1] - e1 * d2[:, :1])
    corner = mesh.faces.ravel()  # each face's vector goes to its 3 corners
    t, b = (
        np.stack([np.bincount(corner, np.repeat(f[:, c], 3), minlength=len(pos)) for c in range(3)], axis=1)
        for f in (t_face, b_face)
    )
    t -= normals * np.sum(normals * t, axis=1, keepdims=True)
    length = np.linalg.norm(t, axis=1)
    degenerate = length <= 1e-9 * length.max()
    if degenerate.any():  # any unit vector orthogonal to the normal
        axis = np.eye(3)[np.argmin(np.abs(normals[degenerate]), axis=1)]
        t[degenerate] = np.cross(normals[degenerate], axis)
        length[degenerate] = np.linalg.norm(t[degenerate], axis=1)
    t /= length[:, None]
    w = np.where(np.sum(np.cross(normals, t) * b, axis=1) < 0, -1.0, 1.0)
    return np.concatenate([t, w[:, None]], axis=1).astype(np.float32)


_ACCESSOR_TYPES = {1: pygltflib.SCALAR, 2: pygltflib.VEC2, 3: pygltflib.VEC3, 4: pygltflib.VEC4}


def _append_view(gltf: pygltflib.GLTF2, blob: bytearray, data: bytes, target: int | None = None) -> int:
    """Append ``data`` as a new bufferView starting at a 4-byte aligned offset; returns its index."""
    blob.extend(b"\0" * (-len(blob) % 4))
    gltf.bufferViews.append(pygltflib.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=target))
    blob.extend(data)
    return len(gltf.bufferViews) - 1


def _append_accessor(
    gltf: pygltflib.GLTF2, blob: bytearray, array: np.ndarray, target: int, with_bounds: bool = False
) -> int:
    """Append a float32 (N, 1..4) or uint32 (N,) array as a tightly packed accessor in its own bufferView."""
    component = pygltflib.UNSIGNED_INT if array.dtype == np.uint32 else pygltflib.FLOAT
    accessor = pygltflib.Accessor(
        bufferView=_append_view(gltf, blob, array.tobytes(), target),
        componentType=component,
        count=len(array),
        type=_ACCESSOR_TYPES[1 if array.ndim == 1 else array.shape[1]],
    )
    if with_bounds:  # exact float32 values: the validator compares them with the data
        accessor.min = array.min(axis=0).tolist()
        accessor.max = array.max(axis=0).tolist()
    gltf.accessors.append(accessor)
    return len(gltf.accessors) - 1


def glb_bytes(
    mesh: MeshData,
    albedo_png: bytes,
    normal_png: bytes | None = None,
    morph_targets: Mapping[str, np.ndarray] | None = None,
    name: str = "face",
    parts: Sequence[MaterialPart] = (),
) -> bytes:
    """Binary glTF 2.0: one node, one mesh, one triangle primitive with an embedded PBR material (and one
    more primitive with its own material and texture per extra part, e.g. the eyes and the mouth).

    The primitive has POSITION (with min/max), NORMAL, TEXCOORD_0 = (u, 1 - v) (glTF is v down) and
    uint32 indices; the material a ``baseColorTexture`` (sRGB albedo) and, when given, a
    ``normalTexture`` (tangent space, OpenGL/glTF convention), in which case the primitive also has
    TANGENT from :func:`vertex_tangents`.
    Images live in the binary chunk; every bufferView starts 4-byte aligned.

    Args:
        mesh: the mesh (N vertices, M triangles).
        albedo_png: PNG bytes of the base colour.
        normal_png: PNG bytes of the tangent-space normal map, or None.
        morph_targets: name → (N, 3) float position deltas in metres, written as primitive ``targets``
            (POSITION with min/max), ``mesh.weights`` all 0 and ``mesh.extras.targetNames`` (use ARKit
            names such as ``jawOpen`` so engines bind them), in the mapping's order.
        name: name of the node, mesh and material.
        parts: extra primitives (material ``{name}_{part}``, own base-colour texture, no normal map); with
            ``morph_targets`` each part needs deltas for the same names.

    Returns:
        The GLB bytes (same input → same bytes).
    """
    mesh = _check_mesh(mesh)
    name = _check_name(name)
    images = [_check_png("albedo_png", albedo_png)]
    if normal_png is not None:
        images.append(_check_png("normal_png", normal_png))
    targets = dict(morph_targets or {})
    for target_name, delta in targets.items():
        if not isinstance(target_name, str) or not target_name:
            raise ValueError(f"morph_targets: names must be non-empty strings, got {target_name!r}")
        _check_array(f"morph_targets[{target_name!r}]", delta, (len(mesh.positions), 3))
    extra = _check_parts(parts)
    for part in extra:
        part_targets = dict(part.morph_targets or {})
        if list(part_targets) != list(targets):
            raise ValueError(f"parts[{part.name!r}].morph_targets: must have the main mesh's names in its order")
        for target_name, delta in part_targets.items():
            _check_array(f"parts[{part.name!r}].morph_targets[{target_name!r}]", delta, (len(part.mesh.positions), 3))

    gltf = pygltflib.GLTF2(asset=pygltflib.Asset(version="2.0", generator="albedogan3d facecore.formats"))
    blob = bytearray()
    vertex_buffer = pygltflib.ARRAY_BUFFER
    uv_gltf = np.stack([mesh.uv[:, 0], 1.0 - mesh.uv[:, 1]], axis=1)  # glTF's t runs downwards
    indices = _append_accessor(gltf, blob, mesh.faces.ravel().astype(np.uint32), pygltflib.ELEMENT_ARRAY_BUFFER)
    attributes = pygltflib.Attributes(
        POSITION=_append_accessor(gltf, blob, mesh.positions, vertex_buffer, with_bounds=True),
        NORMAL=_append_accessor(gltf, blob, mesh.normals, vertex_buffer),
        TEXCOORD_0=_append_accessor(gltf, blob, uv_gltf, vertex_buffer),
    )
    if normal_png is not None:
        attributes.TANGENT = _append_accessor(gltf, blob, vertex_tangents(mesh), vertex_buffer)
    primitive = pygltflib.Primitive(attributes=attributes, indices=indices, material=0, mode=pygltflib.TRIANGLES)
    for delta in targets.values():
        delta32 = np.ascontiguousarray(delta, dtype=np.float32)
        primitive.targets.append({"POSITION": _append_accessor(gltf, blob, delta32, vertex_buffer, with_bounds=True)})

    gltf.samplers.append(
        pygltflib.Sampler(
            magFilter=pygltflib.LINEAR,
            minFilter=pygltflib.LINEAR_MIPMAP_LINEAR,
            wrapS=pygltflib.REPEAT,  # u is periodic in our cylindrical layout (seam copies reach past 0/1)
            wrapT=pygltflib.CLAMP_TO_EDGE,
        )
    )
    primitives = [primitive]
    for part in extra:
        part_uv = np.stack([part.mesh.uv[:, 0], 1.0 - part.mesh.uv[:, 1]], axis=1)
        prim = pygltflib.Primitive(
            attributes=pygltflib.Attributes(
                POSITION=_append_accessor(gltf, blob, part.mesh.positions, vertex_buffer, with_bounds=True),
                NORMAL=_append_accessor(gltf, blob, part.mesh.normals, vertex_buffer),
                TEXCOORD_0=_append_accessor(gltf, blob, part_uv, vertex_buffer),
            ),
            indices=_append_accessor(
                gltf, blob, part.mesh.faces.ravel().astype(np.uint32), pygltflib.ELEMENT_ARRAY_BUFFER
            ),
            material=len(primitives),
            mode=pygltflib.TRIANGLES,
        )
        for delta in (part.morph_targets or {}).values():
            delta32 = np.ascontiguousarray(delta, dtype=np.float32)
            prim.targets.append({"POSITION": _append_accessor(gltf, blob, delta32, vertex_buffer, with_bounds=True)})
        primitives.append(prim)
        images.append(part.albedo_png)
    for i, png in enumerate(images):
        gltf.images.append(pygltflib.Image(bufferView=_append_view(gltf, blob, png), mimeType="image/png"))
        gltf.textures.append(pygltflib.Texture(sampler=0, source=i))
    gltf.materials.append(
        pygltflib.Material(
            name=name,
            pbrMetallicRoughness=pygltflib.PbrMetallicRoughness(
                baseColorTexture=pygltflib.TextureInfo(index=0), metallicFactor=0.0, roughnessFactor=0.6
            ),
            normalTexture=pygltflib.NormalMaterialTexture(index=1) if normal_png is not None else None,
        )
    )
    first_part_image = 2 if normal_png is not None else 1
    for i, part in enumerate(extra):
        gltf.materials.append(
            pygltflib.Material(
                name=f"{name}_{part.name}",
                pbrMetallicRoughness=pygltflib.PbrMetallicRoughness(
                    baseColorTexture=pygltflib.TextureInfo(index=first_part_image + i),
                    baseColorFactor=[float(part.colour_factor)] * 3 + [1.0],
                    metallicFactor=0.0,
                    roughnessFactor=float(part.roughness),
                ),
            )
        )
    gltf_mesh = pygltflib.Mesh(name=name, primitives=primitives)
    if targets:
        gltf_mesh.weights = [0.0] * len(targets)
        gltf_mesh.extras = {"targetNames": list(targets)}
    gltf.meshes.append(gltf_mesh)
    gltf.nodes.append(pygltflib.Node(name=name, mesh=0))
    gltf.scenes.append(pygltflib.Scene(nodes=[0]))
    gltf.scene = 0

    blob.extend(b"\0" * (-len(blob) % 4))
    gltf.buffers.append(pygltflib.Buffer(byteLength=len(blob)))
    gltf.set_binary_blob(bytes(blob))
    out = b"".join(gltf.save_to_bytes())
    logger.debug("glb %r: %d vertices, %d morph targets, %d bytes", name, len(mesh.positions), len(targets), len(out))
    return out


TEXTURE_SIZES = (256, 4096)  # smallest and largest output texture edge the formats accept


def resample_texture(image: np.ndarray, size: int) -> np.ndarray:
    """Resample a (H, W) or (H, W, C) float texture to ``size`` × ``size`` texels.

    This is plain resampling (Lanczos when shrinking or enlarging): a texture enlarged beyond the resolution
    it was generated at gains no detail. ``size`` must lie in :data:`TEXTURE_SIZES`; the output keeps the
    input's value range and dtype float32.
    """
    lo, hi = TEXTURE_SIZES
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not lo <= int(size) <= hi:
        raise ValueError(f"texture_size: must be an integer in [{lo}, {hi}], got {size!r}")
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 2:
        raise ValueError(f"texture: expected a (H, W) or (H, W, C) array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("texture: contains NaN or inf")
    channels = [arr] if arr.ndim == 2 else [arr[..., c] for c in range(arr.shape[2])]
    out = [
        np.asarray(Image.fromarray(ch, mode="F").resize((int(size), int(size)), Image.Resampling.LANCZOS))
        for ch in channels
    ]
    result = out[0] if arr.ndim == 2 else np.stack(out, -1)
    return np.clip(result, arr.min(), arr.max()).astype(np.float32)
