"""The differentiable mesh renderer: camera → z-buffer → barycentrics → UV albedo × SH shading → composite.

Every per-pixel quantity is computed on the covered pixels only (a flat list) and scattered into images at
the end. Gradients reach the world vertices (through the barycentrics, the vertex normals and the camera),
the albedo texels, the SH coefficients, the normal map and any camera tensors; the silhouette (which pixel
is covered) is not differentiable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .camera import PerspectiveCamera, WeakPerspectiveCamera
from .rasterizer import Fragments, _image_size, interpolate_packed, rasterize, scatter_packed
from .shading import normal_map_to_world, sh_shading_packed, vertex_normals, vertex_tangents
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
    """

    faces: torch.Tensor
    uv: torch.Tensor
    uv_faces: torch.Tensor
    uv_corners: torch.Tensor

    def __init__(
        self,
        faces: torch.Tensor,
        uv: torch.Tensor,
        uv_faces: torch.Tensor,
        image_size: int | tuple[int, int],
        *,
        backend: Backend = "torch",
        cull_backfaces: bool = False,
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

    @classmethod
    def from_face_model(cls, face_model: FaceModel, image_size: int | tuple[int, int], **kwargs) -> MeshRenderer:
        """From a :class:`models.face.model.FaceModel` (its ``faces``, ``uv``, ``uv_faces`` buffers)."""
        return cls(face_model.faces, face_model.uv, face_model.uv_faces, image_size, **kwargs)

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

        Returns:
            :class:`RenderOutputs`.
        """
        B = self._check_inputs(verts_world, albedo_uv, sh, background, normal_map_uv)
        verts_ndc = camera.project(verts_world)
        frags = self.rasterize(verts_ndc, perspective_correct=camera.is_perspective)
        dtype = verts_world.dtype

        normal = interpolate_packed(frags, vertex_normals(verts_world, self.faces), kind="vertex")
        uv = interpolate_packed(frags, self.uv_corners.to(dtype), kind="corner")
        batch = frags.batch_packed
        albedo = sample_texture_packed(albedo_uv.to(dtype), uv, batch)

        if normal_map_uv is None:
            normal = F.normalize(normal, dim=-1, eps=1e-12)
        else:
            tangent, bitangent = vertex_tangents(verts_world, self.faces, self.uv, self.uv_faces)
            tangent = interpolate_packed(frags, tangent, kind="vertex")
            bitangent = interpolate_packed(frags, bitangent, kind="vertex")
            detail = sample_texture_packed(normal_map_uv.to(dtype), uv, batch)
            normal = normal_map_to_world(detail, normal, tangent, bitangent)

        shade = sh_shading_packed(normal, batch, sh.to(dtype).expand(B, -1, -1))
        mask = frags.mask
        image = scatter_packed(frags, albedo * shade)
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
