"""Image → face codes: ArcFace's IResNet backbone with regression heads (AlbedoGAN's shape encoder).

Backbone: the insightface ``iresnet18/34/50/100`` layout (module and parameter names identical, so a user's
ArcFace ``.pth`` loads with :func:`models.arcface_loader.load_arcface_weights`)::

    conv1 3×3 64 → bn1 → prelu → layer1..4 (IBasicBlock ×n, each layer halves the resolution, widths
    64/128/256/512) → bn2 → flatten → dropout → fc (512·7·7 → 512) → features (BatchNorm1d, weight fixed at 1)

At the ArcFace input size 112×112 the last feature map is 7×7 and feeds ``fc`` directly. Other input sizes
(any multiple of 16, e.g. 224) are reduced to 7×7 by average pooling (``adaptive_avg_pool2d``; for 224 an exact
2×2 average) before ``fc``, so the same weights serve every size. ``fc_grid`` < 7 pools to a smaller grid first
(1 = global average pooling, DECA's choice): a much smaller ``fc`` for encoders that need not load ArcFace
weights (the shipped bundle's encoder uses 2: 1 M instead of 12.8 M ``fc`` weights).

Heads: ``features (512) → Linear → LeakyReLU(0.2) → Linear`` to every code at once, split into
:class:`EncoderOutputs`. The last linear layer starts at zero weight and its bias holds the initial
prediction, so a fresh encoder predicts exactly, for every image: the mean face (shape and expression 0),
the rest pose (frontal, mouth closed), the camera that frames the mean face like the service's face alignment
(:func:`alignment_camera`) and white ambient light (shading 1 everywhere). Training starts from a stable
render and the backbone receives gradients from the second step on.

Inputs are RGB in [0, 1], (B, 3, H, W); internally mapped to [-1, 1] (insightface's ``(x − 127.5) / 127.5``).
``features`` is a BatchNorm1d: in training mode the batch needs at least 2 images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facecore.config import VersionedConfig
from facecore.geometry import FaceModelArrays, landmarks_3d
from models.face.model import FaceCodes
from models.render.camera import WeakPerspectiveCamera
from models.render.shading import SH_CONSTANTS

IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}
"""Blocks per layer of insightface's ``iresnet{depth}``."""

ARCFACE_INPUT_SIZE = 112
FC_GRID = 7  # spatial size of the last feature map at 112×112, the input of ``fc``
EMBEDDING_DIM = 512  # insightface ``num_features``
N_SH = 9  # order-2 spherical harmonics (see models.render.shading)
PREDICTED_JOINTS: tuple[str, ...] = ("global", "jaw")
"""Joints whose rotation the encoder predicts by default; the others (neck, eyes) are output as zero."""


# ---------------------------------------------------------------------------------------------- backbone
def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """ArcFace's pre-activation residual block: ``bn1 → conv1 → bn2 → prelu → conv2(stride) → bn3 (+ skip)``."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        skip = x if self.downsample is None else self.downsample(x)
        return out + skip


class IResNet(nn.Module):
    """ArcFace IResNet backbone (insightface layout and parameter names).

    Args:
        depth: 18, 34, 50 or 100.
        dropout: dropout probability before ``fc`` (insightface default 0; active only in training mode).
        embedding_dim: output features (ArcFace: 512).
        fc_grid: side of the pooled feature map that feeds ``fc``: 7 is ArcFace's (its weights load only
            then); smaller grids shrink ``fc`` (512·g² × 512 weights: 12.8 M at 7, 1 M at 2, 0.26 M at 1 = global
            average pooling as in DECA's ResNet encoder).
    """

    def __init__(
        self, depth: int = 50, dropout: float = 0.0, embedding_dim: int = EMBEDDING_DIM, fc_grid: int = FC_GRID
    ):
        super().__init__()
        if depth not in IRESNET_LAYERS:
            raise ValueError(f"depth: expected one of {sorted(IRESNET_LAYERS)}, got {depth!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        if not 1 <= fc_grid <= FC_GRID:
            raise ValueError(f"fc_grid: expected 1 to {FC_GRID}, got {fc_grid!r}")
        self.depth = depth
        self.fc_grid = fc_grid
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        widths = (64, 128, 256, 512)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip(widths, IRESNET_LAYERS[depth], strict=True)):
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )
            layer = [IBasicBlock(inplanes, planes, 2, downsample)]
            layer += [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(widths[-1], eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(widths[-1] * fc_grid * fc_grid, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # as in insightface: a fixed-scale feature normalisation
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)
        # zero-init the last BN of each residual branch: every block starts as the identity (stable start)
        for m in self.modules():
            if isinstance(m, IBasicBlock):
                nn.init.constant_(m.bn3.weight, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) normalised to [-1, 1], H and W multiples of 16 → (B, embedding_dim)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        if tuple(x.shape[-2:]) != (self.fc_grid, self.fc_grid):
            x = F.adaptive_avg_pool2d(x, self.fc_grid)
        x = self.dropout(torch.flatten(x, 1))
        return self.features(self.fc(x))


# ---------------------------------------------------------------------------------------------- contract
@dataclass(frozen=True, eq=False)
class EncoderOutputs:
    """Codes predicted from a batch of images.

    Attributes:
        shape: (B, K) identity coefficients of the face model.
        expression: (B, E) expression weights.
        pose: (B, J, 3) axis-angle per face-model joint; joints the encoder does not predict are zero.
        camera: (B, 3) weak-perspective ``(s, tx, ty)``: ``x_ndc = s·x_world + tx`` (NDC units per metre,
            see :meth:`models.render.camera.WeakPerspectiveCamera.from_vector`); s > 0.
        light: (B, 9, 3) order-2 SH coefficients per colour (see :mod:`models.render.shading`).
        detail: (B, D) detail code for the displacement decoder.
    """

    shape: torch.Tensor
    expression: torch.Tensor
    pose: torch.Tensor
    camera: torch.Tensor
    light: torch.Tensor
    detail: torch.Tensor

    def __post_init__(self) -> None:
        for name, dims in (("shape", 2), ("expression", 2), ("pose", 3), ("camera", 2), ("light", 3), ("detail", 2)):
            if getattr(self, name).dim() != dims:
                raise ValueError(f"{name}: expected {dims} dimensions, got {tuple(getattr(self, name).shape)}")
        if self.pose.shape[-1] != 3 or self.camera.shape[-1] != 3 or tuple(self.light.shape[1:]) != (N_SH, 3):
            raise ValueError("pose must be (B, J, 3), camera (B, 3), light (B, 9, 3)")

    @staticmethod
    def names() -> tuple[str, ...]:
        """Field names in order (the output names of the exported graph)."""
        return tuple(f.name for f in dataclasses.fields(EncoderOutputs))

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        """The tensors in :meth:`names` order."""
        return tuple(getattr(self, n) for n in self.names())

    def face_codes(self) -> FaceCodes:
        """Shape, expression and pose for :class:`models.face.FaceModel`."""
        return FaceCodes(self.shape, self.expression, self.pose)

    def weak_perspective_camera(self) -> WeakPerspectiveCamera:
        """The camera code as a :class:`~models.render.camera.WeakPerspectiveCamera`."""
        return WeakPerspectiveCamera.from_vector(self.camera)


# ---------------------------------------------------------------------------------------------- config
def alignment_camera(arrays: FaceModelArrays, crop_scale: float = 1.0) -> tuple[float, float, float]:
    """The weak-perspective camera ``(s, tx, ty)`` that frames the mean face like the service's face crops.

    Least-squares scale and translation (no rotation) taking the frontal projection of the mean face's
    alignment anchors (eye centres, bottom of the nose; :func:`facecore.detect.alignment_anchors`) onto
    :data:`facecore.detect.ALIGN_TEMPLATE`, zoomed out by ``crop_scale`` as in
    :func:`facecore.detect.alignment_matrix`. Crop units map to NDC as ``x = 2·x_crop − 1``, ``y = 1 − 2·y_crop``.
    """
    from facecore.detect import ALIGN_TEMPLATE, alignment_anchors

    if not (math.isfinite(crop_scale) and 0.1 <= crop_scale <= 10):
        raise ValueError(f"crop_scale: expected a number in [0.1, 10], got {crop_scale!r}")
    lm = landmarks_3d(arrays, arrays.mean[None].astype(np.float64))[0]
    src = alignment_anchors(lm[:, :2])  # metres, y up
    crop = 0.5 + (np.asarray(ALIGN_TEMPLATE, dtype=np.float64) - 0.5) / crop_scale
    dst = np.stack([2.0 * crop[:, 0] - 1.0, 1.0 - 2.0 * crop[:, 1]], axis=1)
    ps, qs = src - src.mean(0), dst - dst.mean(0)
    s = float((ps * qs).sum() / (ps * ps).sum())
    t = dst.mean(0) - s * src.mean(0)
    return s, float(t[0]), float(t[1])


@dataclass(frozen=True)
class EncoderConfig(VersionedConfig):
    """Everything needed to rebuild an :class:`Encoder`; saved as JSON beside its weights.

    Build it with :meth:`for_face_model` so the code sizes come from the face model.

    Attributes:
        n_shape: K, identity coefficients (face model).
        n_expr: E, expression weights (face model).
        n_joints: J, joints of the face model's pose.
        pose_joints: indices of the joints whose rotation is predicted (default: global and jaw).
        init_camera: initial ``(s, tx, ty)`` (see :func:`alignment_camera`); s > 0.
        depth: IResNet depth, 18 / 34 / 50 / 100.
        detail_dim: D, size of the detail code (DECA: 128).
        input_size: the square input side this encoder is trained and exported at, a multiple of 16
            (ArcFace: 112); ``forward`` accepts any multiple of 16 (pooled to 7×7 before ``fc``).
        head_hidden: width of the heads' hidden layer.
        dropout: backbone dropout before ``fc`` (insightface default 0).
        fc_grid: pooled grid side before the backbone's ``fc`` (see :class:`IResNet`); 7 loads ArcFace weights.
    """

    KIND: ClassVar[str] = "encoder.Encoder"

    n_shape: int
    n_expr: int
    n_joints: int
    pose_joints: tuple[int, ...]
    init_camera: tuple[float, float, float]
    depth: int = 50
    detail_dim: int = 128
    input_size: int = ARCFACE_INPUT_SIZE
    head_hidden: int = 512
    dropout: float = 0.0
    fc_grid: int = FC_GRID

    def __post_init__(self) -> None:
        object.__setattr__(self, "pose_joints", tuple(int(j) for j in self.pose_joints))
        object.__setattr__(self, "init_camera", tuple(float(c) for c in self.init_camera))
        if min(self.n_shape, self.n_expr, self.n_joints, self.detail_dim, self.head_hidden) < 1:
            raise ValueError("n_shape, n_expr, n_joints, detail_dim and head_hidden must be positive")
        if self.depth not in IRESNET_LAYERS:
            raise ValueError(f"depth: expected one of {sorted(IRESNET_LAYERS)}, got {self.depth!r}")
        if not self.pose_joints or len(set(self.pose_joints)) != len(self.pose_joints):
            raise ValueError(f"pose_joints: expected distinct joint indices, got {self.pose_joints}")
        if not all(0 <= j < self.n_joints for j in self.pose_joints):
            raise ValueError(f"pose_joints: indices must lie in [0, {self.n_joints}), got {self.pose_joints}")
        if len(self.init_camera) != 3 or not all(map(math.isfinite, self.init_camera)) or self.init_camera[0] <= 0:
            raise ValueError(f"init_camera: expected finite (s > 0, tx, ty), got {self.init_camera}")
        if self.input_size < 16 or self.input_size % 16:
            raise ValueError(f"input_size: expected a positive multiple of 16, got {self.input_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout}")
        if not 1 <= self.fc_grid <= FC_GRID:
            raise ValueError(f"fc_grid: expected 1 to {FC_GRID}, got {self.fc_grid}")

    @classmethod
    def for_face_model(
        cls,
        face_model: FaceModelArrays | Any,
        *,
        predicted_joints: Sequence[str] = PREDICTED_JOINTS,
        crop_scale: float = 1.0,
        **kwargs: Any,
    ) -> EncoderConfig:
        """Sizes, predicted joints and initial camera from a face model (``FaceModel`` or its arrays).

        Args:
            face_model: :class:`models.face.FaceModel` or :class:`facecore.geometry.FaceModelArrays`.
            predicted_joints: names of the joints to predict.
            crop_scale: the ``scale`` of the face alignment that makes the encoder's input crops.
            **kwargs: the remaining fields (depth, detail_dim, …).
        """
        arrays = getattr(face_model, "arrays", face_model)
        if not isinstance(arrays, FaceModelArrays):
            raise TypeError(f"face_model: expected a FaceModel or FaceModelArrays, got {type(face_model).__name__}")
        unknown = [n for n in predicted_joints if n not in arrays.joint_names]
        if unknown:
            raise ValueError(f"predicted_joints: {unknown} are not joints of the face model {arrays.joint_names}")
        return cls(
            n_shape=arrays.n_shape,
            n_expr=arrays.n_expr,
            n_joints=arrays.n_joints,
            pose_joints=tuple(arrays.joint_names.index(n) for n in predicted_joints),
            init_camera=alignment_camera(arrays, crop_scale),
            **kwargs,
        )


# ---------------------------------------------------------------------------------------------- encoder
class Encoder(nn.Module):
    """IResNet backbone + heads: (B, 3, H, W) RGB in [0, 1] → :class:`EncoderOutputs`.

    Args:
        n_shape, n_expr, n_joints, pose_joints, init_camera, depth, detail_dim, input_size, head_hidden,
            dropout: see :class:`EncoderConfig` (use :meth:`from_config` with
            :meth:`EncoderConfig.for_face_model`).

    Camera parametrisation: ``s = s0 · exp(raw_s)`` (always positive, relative steps), ``t = raw_t``.
    """

    def __init__(
        self,
        n_shape: int,
        n_expr: int,
        n_joints: int,
        pose_joints: Sequence[int],
        init_camera: Sequence[float],
        depth: int = 50,
        detail_dim: int = 128,
        input_size: int = ARCFACE_INPUT_SIZE,
        head_hidden: int = 512,
        dropout: float = 0.0,
        fc_grid: int = FC_GRID,
    ):
        super().__init__()
        cfg = EncoderConfig(
            n_shape=n_shape,
            n_expr=n_expr,
            n_joints=n_joints,
            pose_joints=tuple(pose_joints),
            init_camera=tuple(init_camera),  # type: ignore[arg-type]
            depth=depth,
            detail_dim=detail_dim,
            input_size=input_size,
            head_hidden=head_hidden,
            dropout=dropout,
            fc_grid=fc_grid,
        )
        self._config = cfg
        self.backbone = IResNet(depth, dropout, fc_grid=fc_grid)
        P = len(cfg.pose_joints)
        self._sizes = {
            "shape": n_shape,
            "expression": n_expr,
            "pose": 3 * P,
            "camera": 3,
            "light": 3 * N_SH,
            "detail": detail_dim,
        }
        self.head = nn.Sequential(nn.Linear(EMBEDDING_DIM, head_hidden), nn.LeakyReLU(0.2))
        self.out = nn.Linear(head_hidden, sum(self._sizes.values()))
        # pose (B, 3P) → (B, 3J): a fixed selection matrix (export-friendly, no dynamic zeros)
        scatter = torch.zeros(3 * P, 3 * n_joints)
        for i, j in enumerate(cfg.pose_joints):
            scatter[3 * i : 3 * i + 3, 3 * j : 3 * j + 3] = torch.eye(3)
        self.register_buffer("pose_scatter", scatter, persistent=False)
        self.reset_heads()

    @classmethod
    def from_config(cls, config: EncoderConfig) -> Encoder:
        """Build from an :class:`EncoderConfig` (fresh weights)."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})

    @property
    def config(self) -> EncoderConfig:
        return self._config

    def reset_heads(self) -> None:
        """Zero weights and the initial prediction as bias (mean face, rest pose, framing camera, ambient)."""
        bias = torch.zeros(sum(self._sizes.values()))
        offsets = dict(zip(self._sizes, np.cumsum([0, *self._sizes.values()])[:-1].tolist(), strict=True))
        cam = offsets["camera"]
        bias[cam + 1 : cam + 3] = torch.tensor(self._config.init_camera[1:])
        light = offsets["light"]
        bias[light : light + 3] = 1.0 / SH_CONSTANTS[0]  # sh[0] = 1/Y00 for R, G, B: shading 1 everywhere
        with torch.no_grad():
            nn.init.zeros_(self.out.weight)
            self.out.bias.copy_(bias)

    def forward(self, image: torch.Tensor) -> EncoderOutputs:
        """image: (B, 3, H, W) RGB in [0, 1], H and W multiples of 16 (112 = ArcFace) → :class:`EncoderOutputs`."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image: expected shape (B, 3, H, W), got {tuple(image.shape)}")
        if image.shape[-2] % 16 or image.shape[-1] % 16:
            raise ValueError(f"image: height and width must be multiples of 16, got {tuple(image.shape[-2:])}")
        return self.codes_from_features(self.backbone(image * 2.0 - 1.0))

    def codes_from_features(self, feats: torch.Tensor) -> EncoderOutputs:
        """The heads alone: backbone features (B, 512) → :class:`EncoderOutputs`."""
        raw = self.out(self.head(feats))
        shape, expr, pose, cam, light, detail = torch.split(raw, list(self._sizes.values()), dim=1)
        B = raw.shape[0]
        scale = self._config.init_camera[0] * torch.exp(cam[:, :1])
        return EncoderOutputs(
            shape=shape,
            expression=expr,
            pose=(pose @ self.pose_scatter).reshape(B, self._config.n_joints, 3),
            camera=torch.cat([scale, cam[:, 1:]], dim=1),
            light=light.reshape(B, N_SH, 3),
            detail=detail,
        )

    def export_module(self, albedo_head: nn.Module | None = None) -> EncoderForExport:
        """A module returning the outputs as a tuple (ONNX export; names: :meth:`EncoderOutputs.names`, then
        ``ws`` when an albedo head (backbone features → AlbedoGAN ws) is given)."""
        return EncoderForExport(self, albedo_head)


class EncoderForExport(nn.Module):
    """Wraps an :class:`Encoder` so ``forward`` returns ``EncoderOutputs.as_tuple()`` (for ONNX), plus the
    albedo head's ``ws`` (B, num_ws, w_dim) from the same backbone features when one is given."""

    def __init__(self, encoder: Encoder, albedo_head: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.albedo_head = albedo_head

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.albedo_head is None:
            return self.encoder(image).as_tuple()
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image: expected shape (B, 3, H, W), got {tuple(image.shape)}")
        feats = self.encoder.backbone(image * 2.0 - 1.0)
        return (*self.encoder.codes_from_features(feats).as_tuple(), self.albedo_head(feats))
