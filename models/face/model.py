"""The linear morphable face model in torch: batched, differentiable, device-agnostic.

Reads the ``face_model.npz`` schema of :class:`facecore.geometry.FaceModelArrays`; the numpy decode in
``facecore.geometry`` is its twin and the two agree to float32 precision (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facecore.geometry import FaceModelArrays

DEFAULT_FACE_MODEL = Path(__file__).parent / "data" / "anny_head.npz"


@dataclass(frozen=True)
class FaceCodes:
    """Face-model codes of a batch.

    Attributes:
        shape: (B, K) identity coefficients.
        expression: (B, E) expression weights.
        pose: (B, J, 3) axis-angle per joint, or None for the rest pose.
    """

    shape: torch.Tensor
    expression: torch.Tensor
    pose: torch.Tensor | None = None


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, smooth at zero. rotvec: (..., 3) → (..., 3, 3)."""
    theta = torch.sqrt((rotvec * rotvec).sum(-1, keepdim=True) + 1e-16)
    k = rotvec / theta
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    K = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(*rotvec.shape[:-1], 3, 3)
    s = torch.sin(theta)[..., None]
    c = torch.cos(theta)[..., None]
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand(K.shape)
    return eye + s * K + (1.0 - c) * (K @ K)


class FaceModel(nn.Module):
    """``verts = skin(mean + shape_basis·β + expr_basis·ψ, pose)`` with all arrays as buffers."""

    def __init__(self, arrays: FaceModelArrays):
        super().__init__()
        self.arrays = arrays
        self.expr_names = arrays.expr_names
        self.joint_names = arrays.joint_names
        self.joint_parents = tuple(int(p) for p in arrays.joint_parents)

        def buf(name: str, value: np.ndarray, dtype: torch.dtype = torch.float32) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(value)).to(dtype), persistent=False)

        buf("mean", arrays.mean)
        buf("shape_basis", arrays.shape_basis.reshape(arrays.n_shape, -1))
        buf("expr_basis", arrays.expr_basis.reshape(arrays.n_expr, -1))
        buf("shape_prior_mean", arrays.shape_prior_mean)
        buf("shape_prior_chol", arrays.shape_prior_chol)
        buf("faces", arrays.faces, torch.long)
        buf("uv", arrays.uv)
        buf("uv_faces", arrays.uv_faces, torch.long)
        buf("uv_vertex", arrays.uv_vertex, torch.long)
        buf("landmark_faces", arrays.landmark_faces, torch.long)
        buf("landmark_bary", arrays.landmark_bary)
        buf("joint_regressor", arrays.joint_regressor)
        buf("lbs_weights", arrays.lbs_weights)
        buf("joint_limits", arrays.joint_limits)

    @classmethod
    def from_file(cls, path: str | Path = DEFAULT_FACE_MODEL) -> FaceModel:
        return cls(FaceModelArrays.load(path))

    @property
    def n_shape(self) -> int:
        return self.arrays.n_shape

    @property
    def n_expr(self) -> int:
        return self.arrays.n_expr

    @property
    def n_verts(self) -> int:
        return self.arrays.n_verts

    def _codes(self, name: str, x: torch.Tensor | None, width: int, batch: int) -> torch.Tensor:
        if x is None:
            return self.mean.new_zeros(batch, width)
        if x.dim() != 2 or x.shape[1] > width or x.shape[0] not in (1, batch):
            raise ValueError(f"{name}: expected shape ({batch}, <= {width}), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}: contains NaN or inf")
        x = x.to(self.mean.dtype)
        if x.shape[1] < width:
            x = torch.nn.functional.pad(x, (0, width - x.shape[1]))
        return x.expand(batch, -1)

    def forward(
        self,
        shape: torch.Tensor | None = None,
        expression: torch.Tensor | None = None,
        pose: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Codes → posed vertices.

        Args:
            shape: (B, <=K) identity coefficients (fewer than K use the leading components).
            expression: (B, <=E) expression weights.
            pose: (B, J, 3) axis-angle per joint, clamped to the model's joint limits; None = rest pose.

        Returns:
            verts: (B, V, 3) in metres.
        """
        batch = (
            max(x.shape[0] for x in (shape, expression, pose) if x is not None)
            if any(x is not None for x in (shape, expression, pose))
            else 1
        )
        beta = self._codes("shape", shape, self.n_shape, batch)
        psi = self._codes("expression", expression, self.n_expr, batch)
        verts = self.mean + (beta @ self.shape_basis + psi @ self.expr_basis).view(batch, -1, 3)
        if pose is None:
            return verts
        J = len(self.joint_names)
        if pose.dim() != 3 or pose.shape[1:] != (J, 3) or pose.shape[0] not in (1, batch):
            raise ValueError(
                f"pose: expected shape ({batch}, {J}, 3) for joints {self.joint_names}, got {tuple(pose.shape)}"
            )
        if not torch.isfinite(pose).all():
            raise ValueError("pose: contains NaN or inf")
        theta = torch.clamp(pose.to(verts.dtype), self.joint_limits[..., 0], self.joint_limits[..., 1])
        return self.skin(verts, theta.expand(batch, -1, -1))

    def skin(self, verts: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Linear blend skinning. verts: (B, V, 3) unposed, theta: (B, J, 3) → (B, V, 3)."""
        joints = torch.einsum("jv,bvc->bjc", self.joint_regressor, verts)
        rot = axis_angle_to_matrix(theta)
        g_rot: list[torch.Tensor] = []
        g_t: list[torch.Tensor] = []
        for j, p in enumerate(self.joint_parents):
            if p < 0:
                g_rot.append(rot[:, j])
                g_t.append(joints[:, j])
            else:
                g_rot.append(g_rot[p] @ rot[:, j])
                g_t.append(g_t[p] + (g_rot[p] @ (joints[:, j] - joints[:, p])[..., None])[..., 0])
        G = torch.stack(g_rot, 1)  # (B, J, 3, 3)
        T = torch.stack(g_t, 1) - (G @ joints[..., None])[..., 0]  # (B, J, 3)
        a_rot = torch.einsum("vj,bjik->bvik", self.lbs_weights, G)
        a_t = torch.einsum("vj,bji->bvi", self.lbs_weights, T)
        return (a_rot @ verts[..., None])[..., 0] + a_t

    def landmarks(self, verts: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) → (B, 68, 3) from the barycentric landmark embedding."""
        tri = verts[:, self.faces[self.landmark_faces]]  # (B, 68, 3, 3)
        return torch.einsum("blkc,lk->blc", tri, self.landmark_bary)

    def vertex_normals(self, verts: torch.Tensor) -> torch.Tensor:
        """Area-weighted unit vertex normals. verts: (B, V, 3) → (B, V, 3)."""
        tri = verts[:, self.faces]
        fn = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
        vn = torch.zeros_like(verts)
        for k in range(3):
            vn = vn.index_add(1, self.faces[:, k], fn)
        return torch.nn.functional.normalize(vn, dim=-1, eps=1e-12)

    def sample_shape(self, n: int, generator: torch.Generator | None = None, scale: float = 1.0) -> torch.Tensor:
        """(n, K) identity codes from the generation prior."""
        eps = torch.randn(n, self.n_shape, generator=generator, device=self.mean.device)
        return self.shape_prior_mean + scale * eps @ self.shape_prior_chol.T

    def expression_vector(self, weights: dict[str, float]) -> torch.Tensor:
        """(E,) from ``{ARKit name: weight}``; unknown names raise ``ValueError``."""
        return torch.as_tensor(self.arrays.expression_vector(weights), device=self.mean.device)
