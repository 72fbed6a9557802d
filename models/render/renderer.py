"""The differentiable mesh renderer: camera → z-buffer → barycentrics → UV albedo × SH shading → composite.

Every per-pixel quantity is computed on the covered pixels only (a flat list) and scattered into images at
the end. Gradients reach the world vertices (through the barycentrics, the vertex normals and the camera),
the albedo texels, the SH coefficients, the normal map and any camera tensors; the silhouette (which pixel
is covered) is not differentiable.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facecore import assets as fa
from facecore import color
from facecore import mouth as lips

from .camera import PerspectiveCamera, WeakPerspectiveCamera
from .rasterizer import Fragments, _image_size, interpolate_packed, rasterize, scatter_packed
from .shading import normal_map_to_world, sh_shading_packed, specular_packed, vertex_normals, vertex_tangents
from .texture import sample_texture_packed

if TYPE_CHECKING:
    from models.face.model import FaceModel

Camera = WeakPerspectiveCamera | PerspectiveCamera
Backend = Literal["torch", "pytorch3d"]


@dataclass(frozen=True, eq=False)
class RenderOutputs:
    """A rendered batch; images are channels-first and zero on background unless stated.

    Attributes:
        image: (B, 3, H, W) ``mask · albedo · shading + (1 − mask) · background``.
        mask: (B, 1, H, W) 1 where the mesh is visible.
        albedo: (B, 3, H, W) sampled UV albedo.
        shading: (B, 3, H, W) SH irradiance.
        normals: (B, 3, H, W) unit world-space shading normals (normal-map perturbed when one was given).
        face_id: (B, H, W) visible triangle, -1 for background.
        verts_ndc: (B, V, 3) projected vertices (x_ndc, y_ndc, depth).
        fragments: the rasteriser's :class:`~.rasterizer.Fragments` (barycentrics, depth, packed pixels).
    """

    image: torch.Tensor
    mask: torch.Tensor
    albedo: torch.Tensor
    shading: torch.Tensor
    normals: torch.Tensor
    face_id: torch.Tensor
    verts_ndc: torch.Tensor
    fragments: Fragments


class MeshRenderer(nn.Module):
    """Renders meshes sharing one topology and UV layout (e.g. a face model's).

    Args:
        faces: (F, 3) long triangles, counter-clockwise seen from outside.
        uv: (T, 2) texture coordinates, v up.
        uv_faces: (F, 3) long triangles into ``uv``.
        image_size: H = W, or (H, W).
        backend: ``"torch"`` (default, everywhere) or ``"pytorch3d"`` (visibility by pytorch3d; raises
            ImportError where it is not installed).
        cull_backfaces: skip triangles facing away from the camera (off by default: the z-buffer alone
            decides, so the inner side of open surfaces, e.g. the neck opening seen from below, is drawn).
        material: (F,) long, 0 where a triangle takes its colour from the albedo map, > 0 where it takes it
            from the asset texture (eyes, mouth: :mod:`facecore.assets`), or None (all albedo).
        asset_uv_corners: (F, 3, 2) coordinates of each triangle's corners in the asset texture (v up).
        asset_texture: (3, Ht, Wt) default asset texture, linear (``forward`` may pass one per sample).
        extra_vertices: ``(anchors (n,), weights (T, n))``: T vertices appended to every input's V as
            ``weights @ verts[:, anchors]`` (e.g. the teeth, :class:`facecore.assets.Teeth`), which ``faces``
            may index as V..V+T-1; or None. Inputs may also come with them already appended.
        mouth_light: ``(corners (6, 3), bary (6, 3), factors)``: the inner lips' middle points (upper three, lower
            three) as barycentric points of the vertices, and ``factors(gaps (B,) metres, Ht) → (B, Ht, Wt)``,
            the asset texture's darkening for lips that far apart (:func:`facecore.assets.atlas_light`: the
            teeth and the mouth's interior in the mouth's shadow); or None (assets lit like the skin).
    """

    faces: torch.Tensor
    uv: torch.Tensor
    uv_faces: torch.Tensor
    uv_corners: torch.Tensor
    material: torch.Tensor | None
    asset_uv_corners: torch.Tensor | None
    asset_texture: torch.Tensor | None
    extra_anchors: torch.Tensor | None
    extra_weights: torch.Tensor | None

    def __init__(
        self,
        faces: torch.Tensor,
        uv: torch.Tensor,
        uv_faces: torch.Tensor,
        image_size: int | tuple[int, int],
        *,
        backend: Backend = "torch",
        cull_backfaces: bool = False,
        material: torch.Tensor | None = None,
        asset_uv_corners: torch.Tensor | None = None,
        asset_texture: torch.Tensor | None = None,
        extra_vertices: tuple[torch.Tensor, torch.Tensor] | None = None,
        mouth_light: tuple[torch.Tensor, torch.Tensor, Callable[[np.ndarray, int], np.ndarray]] | None = None,
    ):
        super().__init__()
        faces, uv, uv_faces = (torch.as_tensor(t) for t in (faces, uv, uv_faces))
        if faces.dim() != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces: expected shape (F, 3), got {tuple(faces.shape)}")
        if uv.dim() != 2 or uv.shape[1] != 2:
            raise ValueError(f"uv: expected shape (T, 2), got {tuple(uv.shape)}")
        if uv_faces.shape != faces.shape:
            raise ValueError(f"uv_faces: expected shape {tuple(faces.shape)} like faces, got {tuple(uv_faces.shape)}")
        if uv_faces.numel() and (int(uv_faces.min()) < 0 or int(uv_faces.max()) >= uv.shape[0]):
            raise ValueError(f"uv_faces: indices must lie in [0, {uv.shape[0]})")
        if backend not in ("torch", "pytorch3d"):
            raise ValueError(f"backend: expected 'torch' or 'pytorch3d', got {backend!r}")
        if backend == "pytorch3d":
            from . import pytorch3d_backend

            pytorch3d_backend._require()
        self.image_size = _image_size(image_size)
        self.backend = backend
        self.cull_backfaces = cull_backfaces
        self.register_buffer("faces", faces.long().contiguous(), persistent=False)
        self.register_buffer("uv", uv.float().contiguous(), persistent=False)
        self.register_buffer("uv_faces", uv_faces.long().contiguous(), persistent=False)
        self.register_buffer("uv_corners", uv.float()[uv_faces.long()].contiguous(), persistent=False)
        if (material is None) != (asset_uv_corners is None) or (material is None) != (asset_texture is None):
            raise ValueError("material, asset_uv_corners and asset_texture: give all three or none")
        if material is not None:
            material, asset_uv_corners, asset_texture = (
                torch.as_tensor(t) for t in (material, asset_uv_corners, asset_texture)
            )
            if material.shape != faces.shape[:1] or asset_uv_corners.shape != (faces.shape[0], 3, 2):
                raise ValueError(
                    f"material / asset_uv_corners: expected ({faces.shape[0]},) and ({faces.shape[0]}, 3, 2), "
                    f"got {tuple(material.shape)} and {tuple(asset_uv_corners.shape)}"
                )
            if asset_texture.dim() != 3 or asset_texture.shape[0] != 3:
                raise ValueError(f"asset_texture: expected (3, Ht, Wt), got {tuple(asset_texture.shape)}")
            material, asset_uv_corners, asset_texture = material.long(), asset_uv_corners.float(), asset_texture.float()
        self.register_buffer("material", material, persistent=False)
        self.register_buffer("asset_uv_corners", asset_uv_corners, persistent=False)
        self.register_buffer("asset_texture", asset_texture, persistent=False)
        anchors = weights = None
        if extra_vertices is not None:
            anchors, weights = (torch.as_tensor(t) for t in extra_vertices)
            if anchors.dim() != 1 or weights.dim() != 2 or weights.shape[1] != anchors.shape[0]:
                raise ValueError(
                    f"extra_vertices: expected anchors (n,) and weights (T, n), got {tuple(anchors.shape)} and "
                    f"{tuple(weights.shape)}"
                )
            anchors, weights = anchors.long(), weights.float()
        self.register_buffer("extra_anchors", anchors, persistent=False)
        self.register_buffer("extra_weights", weights, persistent=False)
        corners = bary = None
        self.mouth_factors = None
        if mouth_light is not None:
            corners, bary, self.mouth_factors = mouth_light
            corners, bary = torch.as_tensor(corners).long(), torch.as_tensor(bary).float()
            if corners.shape != (6, 3) or bary.shape != (6, 3):
                raise ValueError(f"mouth_light: expected (6, 3) corners and bary, got {tuple(corners.shape)}")
        self.register_buffer("lip_corners", corners, persistent=False)
        self.register_buffer("lip_bary", bary, persistent=False)

    @classmethod
    def from_face_model(
        cls,
        face_model: FaceModel,
        image_size: int | tuple[int, int],
        *,
        assets: bool = True,
        teeth: bool = False,
        **kwargs,
    ) -> MeshRenderer:
        """From a :class:`models.face.model.FaceModel` (its ``faces``, ``uv``, ``uv_faces`` buffers).

        With ``assets`` (default) and a model that has eyeballs, the eyes and the mouth cavity take their
        colour from :func:`facecore.assets.asset_atlas` (sclera, iris, pupil; dark oral interior) instead of
        the albedo map: the one definition the service's exports use too. With ``teeth`` as well, the
        renderer appends the model's :class:`facecore.assets.Teeth` to every input's vertices and draws them
        (their triangles follow the model's in ``faces``, so ``RenderOutputs.face_id`` ≥ the model's F on
        teeth pixels: off by default for consumers that index per-face tables of the model with it).
        """
        faces, uv, uv_faces = face_model.faces, face_model.uv, face_model.uv_faces
        if assets and all(p in face_model.arrays.part_names for p in fa.EYE_PARTS):
            material, corner_uv = fa.atlas_corner_uv(face_model.arrays)
            t = fa.face_assets(face_model.arrays).teeth if teeth else None
            if t is not None:
                V = face_model.arrays.n_verts
                faces = torch.cat([faces.cpu(), torch.as_tensor(t.faces) + V])
                uv = torch.cat([uv.cpu(), torch.zeros(1, 2)])  # teeth take no albedo texel
                uv_faces = torch.cat([uv_faces.cpu(), torch.full((len(t.faces), 3), len(uv) - 1)])
                material = np.concatenate([material, np.full(len(t.faces), 3)])
                corner_uv = np.concatenate([corner_uv, fa.teeth_atlas_uv(t)])
                kwargs.setdefault("extra_vertices", (torch.as_tensor(t.anchors), torch.as_tensor(t.weights)))
            arrays = face_model.arrays
            lip = np.array(lips.UPPER + lips.LOWER)
            corners = arrays.faces[arrays.landmark_faces[lip]]
            kwargs.setdefault(
                "mouth_light",
                (corners, arrays.landmark_bary[lip], functools.partial(fa.atlas_light, fa.face_assets(arrays))),
            )
            kwargs.setdefault("material", torch.as_tensor(material))
            kwargs.setdefault("asset_uv_corners", torch.as_tensor(corner_uv))
            kwargs.setdefault("asset_texture", cls.asset_textures(face_model, None)[0])
        return cls(faces, uv, uv_faces, image_size, **kwargs)

    @staticmethod
    def asset_textures(face_model: FaceModel, iris_srgb=None, size: int = 256) -> torch.Tensor:
        """(B, 3, size, 3·size) linear asset atlases (eyes | mouth | teeth), one per iris colour in ``iris_srgb``
        (B, 3) sRGB, or the default iris (B = 1) when None: pass as ``forward(..., asset_texture=...)``."""
        assets = fa.face_assets(face_model.arrays)
        irises = [fa.DEFAULT_IRIS_SRGB] if iris_srgb is None else [tuple(map(float, c)) for c in iris_srgb]
        cache: dict[tuple[float, ...], np.ndarray] = {}
        out = []
        for iris in irises:
            if iris not in cache:
                cache[iris] = color.srgb_to_linear(fa.asset_atlas(assets, iris, size)).transpose(2, 0, 1)
            out.append(cache[iris])
        return torch.as_tensor(np.stack(out), dtype=torch.float32)

    def with_extra_vertices(self, verts_world: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) → (B, V + T, 3): the extra vertices (teeth) appended, when this renderer has them and the
        input does not have them yet; otherwise the input."""
        if self.extra_weights is None or verts_world.dim() != 3:
            return verts_world
        needed = int(self.faces.max()) + 1
        if verts_world.shape[1] >= needed or verts_world.shape[1] + self.extra_weights.shape[0] != needed:
            return verts_world
        extra = torch.einsum(
            "tn,bnc->btc", self.extra_weights.to(verts_world.dtype), verts_world[:, self.extra_anchors]
        )
        return torch.cat([verts_world, extra], 1)

    def _mouth_factors(self, verts_world: torch.Tensor, height: int) -> torch.Tensor:
        """(B, Ht, Wt) asset-texture factors for the lip gap of each of the (B, V, 3) meshes (not differentiated)."""
        with torch.no_grad():
            points = torch.einsum("bkjc,kj->bkc", verts_world[:, self.lip_corners], self.lip_bary.to(verts_world))
            gaps = (points[:, :3].mean(1) - points[:, 3:].mean(1)).norm(dim=-1)
        return torch.as_tensor(self.mouth_factors(gaps.double().cpu().numpy(), height), dtype=torch.float32)

    def rasterize(self, verts_ndc: torch.Tensor, *, perspective_correct: bool = False) -> Fragments:
        """Visibility and barycentrics of projected vertices (B, V, 3) with this renderer's settings."""
        kwargs = dict(perspective_correct=perspective_correct, cull_backfaces=self.cull_backfaces)
        if self.backend == "pytorch3d":
            from .pytorch3d_backend import rasterize_pytorch3d

            return rasterize_pytorch3d(verts_ndc, self.faces, self.image_size, **kwargs)
        return rasterize(verts_ndc, self.faces, self.image_size, **kwargs)

    def _check_inputs(
        self,
        verts_world: torch.Tensor,
        albedo_uv: torch.Tensor,
        sh: torch.Tensor,
        background: torch.Tensor | None,
        normal_map_uv: torch.Tensor | None,
    ) -> int:
        if verts_world.dim() != 3 or verts_world.shape[-1] != 3:
            raise ValueError(f"verts_world: expected shape (B, V, 3), got {tuple(verts_world.shape)}")
        if verts_world.shape[1] <= int(self.faces.max()):
            raise ValueError(f"verts_world: {verts_world.shape[1]} vertices, but faces index {int(self.faces.max())}")
        B = verts_world.shape[0]
        H, W = self.image_size

        def texture_like(t: torch.Tensor) -> bool:
            return t.dim() == 4 and t.shape[1] == 3

        checks = (
            ("albedo_uv", albedo_uv, texture_like, "(B, 3, Ht, Wt)"),
            ("sh", sh, lambda t: t.dim() == 3 and tuple(t.shape[1:]) == (9, 3), "(B, 9, 3)"),
            ("background", background, lambda t: t.dim() == 4 and tuple(t.shape[1:]) == (3, H, W), f"(B, 3, {H}, {W})"),
            ("normal_map_uv", normal_map_uv, texture_like, "(B, 3, Ht, Wt)"),
        )
        for name, t, ok, want in checks:
            if t is None:
                continue
            if not ok(t):
                raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
            if t.shape[0] not in (1, B):
                raise ValueError(f"{name}: batch {t.shape[0]} does not match the vertices' batch {B} (or 1)")
        return B

    def forward(
        self,
        verts_world: torch.Tensor,
        camera: Camera,
        albedo_uv: torch.Tensor,
        sh: torch.Tensor,
        background: torch.Tensor | None = None,
        normal_map_uv: torch.Tensor | None = None,
        asset_texture: torch.Tensor | None = None,
        specular: torch.Tensor | None = None,
        shadow: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> RenderOutputs:
        """Render a batch.

        Args:
            verts_world: (B, V, 3) posed vertices in metres.
            camera: a :class:`~.camera.WeakPerspectiveCamera` or :class:`~.camera.PerspectiveCamera`.
            albedo_uv: (B, 3, Ht, Wt) albedo in the UV layout (row 0 is v = 1), linear [0, 1].
            sh: (B, 9, 3) SH light (see :mod:`.shading`).
            background: (B, 3, H, W) image behind the mesh, or None for black.
            normal_map_uv: (B, 3, Ht', Wt') decoded tangent-space normals in [-1, 1] (OpenGL "green up",
                see :func:`~.shading.normal_map_to_world`) for displacement detail, or None.
            asset_texture: (B or 1, 3, Ht, Wt) linear asset atlas for the eyes and mouth (e.g. per-sample iris
                colours from :meth:`asset_textures`), or None for the renderer's default.
            specular: (B, 7) a highlight of one light on the skin (:func:`~.shading.specular_packed`: direction,
                RGB, exponent) added to ``image`` (not to ``shading`` or ``albedo``), or None for none.
            shadow: ``(key_sh, visibility)``: the key light's own SH (B, 9, 3), part of ``sh``, and (B, V) how much
                of it reaches each vertex past the mesh (e.g. :func:`facecore.texture.light_visibility`; vertices
                the renderer appends, the teeth, are lit); where it does not, its shading is taken away (cast
                shadows: a nose's on the cheek, a brow ridge's in the socket). None: no cast shadows.

        Returns:
            :class:`RenderOutputs`.
        """
        verts_world = self.with_extra_vertices(verts_world)
        B = self._check_inputs(verts_world, albedo_uv, sh, background, normal_map_uv)
        verts_ndc = camera.project(verts_world)
        frags = self.rasterize(verts_ndc, perspective_correct=camera.is_perspective)
        dtype = verts_world.dtype

        normal = interpolate_packed(frags, vertex_normals(verts_world, self.faces), kind="vertex")
        uv = interpolate_packed(frags, self.uv_corners.to(dtype), kind="corner")
        batch = frags.batch_packed
        albedo = sample_texture_packed(albedo_uv.to(dtype), uv, batch)
        if self.material is not None:
            tex = self.asset_texture[None] if asset_texture is None else asset_texture
            if tex.dim() != 4 or tex.shape[1] != 3 or tex.shape[0] not in (1, B):
                raise ValueError(f"asset_texture: expected (B or 1, 3, Ht, Wt), got {tuple(tex.shape)}")
            # the teeth and the mouth's interior in the mouth's shadow (on an atlas of three square thirds: a texture
            # of another shape, e.g. a flat one for masks, is taken as it is)
            if self.mouth_factors is not None and tex.shape[3] == 3 * tex.shape[2]:
                tex = tex * self._mouth_factors(verts_world, tex.shape[2]).to(tex.device, tex.dtype)[:, None]
            is_asset = self.material[frags.face_packed] > 0
            asset_uv = interpolate_packed(frags, self.asset_uv_corners.to(dtype), kind="corner")
            asset = sample_texture_packed(tex.to(dtype).expand(B, -1, -1, -1), asset_uv, batch)
            albedo = torch.where(is_asset[:, None], asset, albedo)

        if normal_map_uv is None:
            normal = F.normalize(normal, dim=-1, eps=1e-12)
        else:
            tangent, bitangent = vertex_tangents(verts_world, self.faces, self.uv, self.uv_faces)
            tangent = interpolate_packed(frags, tangent, kind="vertex")
            bitangent = interpolate_packed(frags, bitangent, kind="vertex")
            detail = sample_texture_packed(normal_map_uv.to(dtype), uv, batch)
            normal = normal_map_to_world(detail, normal, tangent, bitangent)

        shade = sh_shading_packed(normal, batch, sh.to(dtype).expand(B, -1, -1))
        if shadow is not None:
            key_sh, visibility = shadow
            V = verts_world.shape[1]
            if key_sh.shape != (B, 9, 3) or visibility.dim() != 2 or visibility.shape[0] != B:
                raise ValueError(f"shadow: expected ((B, 9, 3), (B, V)), got {tuple(key_sh.shape)}, "
                                 f"{tuple(visibility.shape)}")  # fmt: skip
            appended = 0 if self.extra_weights is None else self.extra_weights.shape[0]
            if visibility.shape[1] not in (V, V - appended):
                raise ValueError(
                    f"shadow: visibility of {visibility.shape[1]} vertices, expected {V - appended} or {V}"
                )
            if visibility.shape[1] < V:  # the appended vertices (teeth) are lit
                visibility = F.pad(visibility, (0, V - visibility.shape[1]), value=1.0)
            hidden = 1.0 - interpolate_packed(frags, visibility.to(dtype)[..., None], kind="vertex")
            key = sh_shading_packed(normal, batch, key_sh.to(dtype)).clamp_min(0.0)
            shade = torch.maximum(shade - hidden * key, 0.05 * shade)
        mask = frags.mask
        radiance = albedo * shade
        if specular is not None:
            if specular.shape != (B, 7):
                raise ValueError(f"specular: expected ({B}, 7), got {tuple(specular.shape)}")
            highlight = specular_packed(normal, batch, specular)
            if self.material is not None:  # the skin's: the eyes' and mouth's assets have their own materials
                highlight = highlight * (self.material[frags.face_packed] == 0).to(dtype)[:, None]
            radiance = radiance + highlight
        image = scatter_packed(frags, radiance)
        if background is not None:
            image = image + (1.0 - mask) * background.to(dtype)
        return RenderOutputs(
            image=image,
            mask=mask,
            albedo=scatter_packed(frags, albedo),
            shading=scatter_packed(frags, shade),
            normals=scatter_packed(frags, normal),
            face_id=frags.face_id,
            verts_ndc=verts_ndc,
            fragments=frags,
        )
