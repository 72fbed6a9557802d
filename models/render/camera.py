"""Cameras: world vertices → (x_ndc, y_ndc, depth).

Conventions shared by every camera here and by :func:`models.render.rasterizer.rasterize`:

- NDC x points right and NDC y points up; [-1, 1] spans the image along both axes (so on a non-square image
  one NDC unit covers a different number of pixels along x and y; pass per-axis scales / focals for that).
- ``depth``: larger is closer to the viewer. The weak-perspective camera returns the (rotated) world z; the
  perspective camera returns the camera-frame z, which is negative in front of the camera.

World frame of the face model: metres, +y up, the face looks along +z, +x is the subject's left; a
camera without rotation therefore sees the face frontally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch


def _per_axis(value: torch.Tensor, name: str) -> torch.Tensor:
    """(B,) or (B, 2) → (B, 1, 2) for broadcasting over vertices."""
    if value.dim() == 1:
        return value[:, None, None].expand(-1, 1, 2)
    if value.dim() == 2 and value.shape[1] == 2:
        return value[:, None, :]
    raise ValueError(f"{name}: expected shape (B,) or (B, 2), got {tuple(value.shape)}")


def _check_batch(name: str, value: torch.Tensor, batch: int) -> None:
    if value.shape[0] not in (1, batch):
        raise ValueError(f"{name}: batch {value.shape[0]} does not match the vertices' batch {batch} (or 1)")


def _check_verts(verts_world: torch.Tensor) -> None:
    if verts_world.dim() != 3 or verts_world.shape[-1] != 3:
        raise ValueError(f"verts_world: expected shape (B, V, 3), got {tuple(verts_world.shape)}")


@dataclass(frozen=True, eq=False)
class WeakPerspectiveCamera:
    """Scaled orthographic projection: ``x_ndc = s·x + tx``, ``y_ndc = s·y + ty``, ``depth = z``.

    The head pose normally lives in the face model's global joint, so the camera carries no rotation;
    ``rotation`` is optional for viewing a posed mesh from another direction without re-skinning.

    Attributes:
        scale: (B,) NDC units per metre, or (B, 2) per axis (x, y).
        translation: (B, 2) NDC offset.
        rotation: (B, 3, 3) world → view rotation applied before the projection, or None.
    """

    scale: torch.Tensor
    translation: torch.Tensor
    rotation: torch.Tensor | None = None

    is_perspective: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _per_axis(self.scale, "scale")
        if self.translation.dim() != 2 or self.translation.shape[1] != 2:
            raise ValueError(f"translation: expected shape (B, 2), got {tuple(self.translation.shape)}")
        if self.rotation is not None and (self.rotation.dim() != 3 or self.rotation.shape[1:] != (3, 3)):
            raise ValueError(f"rotation: expected shape (B, 3, 3), got {tuple(self.rotation.shape)}")

    @property
    def batch_size(self) -> int:
        return max(self.scale.shape[0], self.translation.shape[0])

    def project(self, verts_world: torch.Tensor) -> torch.Tensor:
        """verts_world: (B, V, 3) → (B, V, 3) as (x_ndc, y_ndc, depth)."""
        _check_verts(verts_world)
        B = verts_world.shape[0]
        for name, value in (("scale", self.scale), ("translation", self.translation), ("rotation", self.rotation)):
            if value is not None:
                _check_batch(name, value, B)
        dt = verts_world.dtype
        v = verts_world if self.rotation is None else verts_world @ self.rotation.to(dt).transpose(1, 2)
        xy = _per_axis(self.scale.to(dt), "scale") * v[..., :2] + self.translation.to(dt)[:, None, :]
        return torch.cat([xy, v[..., 2:]], dim=-1)

    @classmethod
    def from_vector(cls, cam: torch.Tensor) -> WeakPerspectiveCamera:
        """From an encoder's (B, 3) camera code ``(s, tx, ty)`` in this class's convention ``s·x + t``.

        (DECA's code is ``s·(x + t)``; convert with ``t_ours = s·t_deca``.)
        """
        if cam.dim() != 2 or cam.shape[1] != 3:
            raise ValueError(f"cam: expected shape (B, 3) as (s, tx, ty), got {tuple(cam.shape)}")
        return cls(cam[:, 0], cam[:, 1:3])

    @classmethod
    def from_rotation(
        cls, rotation: torch.Tensor, scale: torch.Tensor, translation: torch.Tensor | None = None
    ) -> WeakPerspectiveCamera:
        """A weak-perspective camera that first turns the world by ``rotation`` (B, 3, 3).

        Use it to look at an already posed mesh from another direction (e.g. rotation about +y by a yaw);
        for a face whose pose comes from the face model, leave the rotation out (the class constructor).
        """
        if translation is None:
            translation = rotation.new_zeros(rotation.shape[0], 2)
        return cls(scale, translation, rotation)

    @classmethod
    def framing(
        cls, verts_world: torch.Tensor, margin: float = 0.05, rotation: torch.Tensor | None = None
    ) -> WeakPerspectiveCamera:
        """The camera that fits each mesh's x-y bounding box (after ``rotation``) into the image.

        The scale is isotropic and set by the larger side; ``margin`` is the fraction of NDC half-width
        left free on each side. Computed without gradients (a framing, not a parameter).
        """
        _check_verts(verts_world)
        with torch.no_grad():
            v = verts_world if rotation is None else verts_world @ rotation.transpose(1, 2)
            lo, hi = v[..., :2].amin(1), v[..., :2].amax(1)
            half = ((hi - lo) / 2).amax(1).clamp_min(1e-12)
            scale = (1.0 - margin) / half
            translation = -scale[:, None] * (lo + hi) / 2
        return cls(scale, translation, rotation)


@dataclass(frozen=True, eq=False)
class PerspectiveCamera:
    """Pinhole camera looking down -z of its own frame (OpenGL), +x right, +y up.

    ``p_cam = R·p_world + t``; ``x_ndc = f·x_cam / (-z_cam) + px``, ``y_ndc = f·y_cam / (-z_cam) + py``,
    ``depth = z_cam`` (negative in front of the camera; larger is closer).

    Attributes:
        focal: (B,) focal length in NDC units (``1 / tan(fov / 2)``), or (B, 2) per axis.
        rotation: (B, 3, 3) world → camera rotation.
        translation: (B, 3) world → camera translation.
        principal: (B, 2) principal point in NDC, or None for the image centre.
    """

    focal: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    principal: torch.Tensor | None = None

    is_perspective: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _per_axis(self.focal, "focal")
        if self.rotation.dim() != 3 or self.rotation.shape[1:] != (3, 3):
            raise ValueError(f"rotation: expected shape (B, 3, 3), got {tuple(self.rotation.shape)}")
        if self.translation.dim() != 2 or self.translation.shape[1] != 3:
            raise ValueError(f"translation: expected shape (B, 3), got {tuple(self.translation.shape)}")
        if self.principal is not None and (self.principal.dim() != 2 or self.principal.shape[1] != 2):
            raise ValueError(f"principal: expected shape (B, 2), got {tuple(self.principal.shape)}")

    @property
    def batch_size(self) -> int:
        return max(self.focal.shape[0], self.rotation.shape[0], self.translation.shape[0])

    def to_camera_frame(self, verts_world: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) world → (B, V, 3) camera frame."""
        _check_verts(verts_world)
        dt = verts_world.dtype
        return verts_world @ self.rotation.to(dt).transpose(1, 2) + self.translation.to(dt)[:, None, :]

    def project(self, verts_world: torch.Tensor) -> torch.Tensor:
        """verts_world: (B, V, 3) → (B, V, 3) as (x_ndc, y_ndc, depth = z_cam).

        Points at or behind the camera get finite but meaningless x, y; the rasteriser drops every
        triangle with a corner there (``perspective_correct=True``).
        """
        _check_verts(verts_world)
        B = verts_world.shape[0]
        for name, value in (
            ("focal", self.focal),
            ("rotation", self.rotation),
            ("translation", self.translation),
            ("principal", self.principal),
        ):
            if value is not None:
                _check_batch(name, value, B)
        p = self.to_camera_frame(verts_world)
        dist = (-p[..., 2:]).clamp_min(1e-9)
        xy = _per_axis(self.focal.to(p.dtype), "focal") * p[..., :2] / dist
        if self.principal is not None:
            xy = xy + self.principal.to(p.dtype)[:, None, :]
        return torch.cat([xy, p[..., 2:]], dim=-1)

    @staticmethod
    def focal_from_fov(fov_deg: float) -> float:
        """NDC focal length of a full field of view in degrees (across the image's [-1, 1])."""
        if not 0.0 < fov_deg < 180.0:
            raise ValueError(f"fov_deg: expected 0 < fov < 180 degrees, got {fov_deg}")
        return 1.0 / math.tan(math.radians(fov_deg) / 2)

    @classmethod
    def look_at(
        cls,
        eye: torch.Tensor,
        target: torch.Tensor,
        focal: torch.Tensor | float,
        up: tuple[float, float, float] = (0.0, 1.0, 0.0),
    ) -> PerspectiveCamera:
        """A camera at ``eye`` (B, 3) looking at ``target`` (B, 3) with world ``up`` projecting upwards."""
        if eye.dim() != 2 or eye.shape[1] != 3 or target.shape != eye.shape:
            raise ValueError(f"eye, target: expected two (B, 3), got {tuple(eye.shape)} and {tuple(target.shape)}")
        z = torch.nn.functional.normalize(eye - target, dim=-1)  # camera +z points away from the target
        up_t = torch.tensor(up, dtype=eye.dtype, device=eye.device).expand_as(z)
        x = torch.linalg.cross(up_t, z, dim=-1)
        if bool((x.norm(dim=-1) < 1e-9).any()):
            raise ValueError("look_at: the viewing direction is parallel to `up`")
        x = torch.nn.functional.normalize(x, dim=-1)
        y = torch.linalg.cross(z, x, dim=-1)
        rotation = torch.stack([x, y, z], dim=1)  # rows: camera axes in world coordinates
        translation = -(rotation @ eye[..., None])[..., 0]
        if not torch.is_tensor(focal):
            focal = eye.new_full((eye.shape[0],), float(focal))
        return cls(focal, rotation, translation)
