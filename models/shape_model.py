"""The shape model: encoder + displacement decoder + albedo head in one forward pass.

:class:`ShapeModel` maps a (B, 3, S, S) aligned face crop to the face codes
(:class:`models.encoder.EncoderOutputs`), the UV displacement (:class:`models.displacement.DisplacementDecoder`)
and AlbedoGAN styles (:class:`models.albedo_head.AlbedoHead`, fed the encoder backbone's features of the same
pass through a forward hook removed after the call). Training builds and trains it (``training/shape.py``,
``training/alternate.py``); the export stage writes its parts as ONNX graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.albedo_head import AlbedoHead
from models.displacement import DisplacementDecoder
from models.encoder import Encoder, EncoderOutputs


@dataclass(frozen=True, eq=False)
class ShapeOutputs:
    """What :class:`ShapeModel` predicts for a batch.

    Attributes:
        codes: the encoder's :class:`models.encoder.EncoderOutputs`.
        displacement: (B, 1, R, R) UV displacement along the normals, metres.
        ws: (B, num_ws, w_dim) AlbedoGAN styles from the albedo head.
    """

    codes: EncoderOutputs
    displacement: torch.Tensor
    ws: torch.Tensor


class ShapeModel(nn.Module):
    """Encoder + displacement decoder + albedo head: (B, 3, S, S) RGB in [0, 1] → :class:`ShapeOutputs`.

    Args:
        encoder: the :class:`models.encoder.Encoder`.
        displacement: the :class:`models.displacement.DisplacementDecoder` (same detail size).
        albedo_head: the :class:`models.albedo_head.AlbedoHead` (fed the encoder backbone's features).
        jaw_index: the face model's jaw joint (the decoder's jaw-pose input).
        detach_head_features: stop the head's gradient at the backbone features.
    """

    def __init__(
        self,
        encoder: Encoder,
        displacement: DisplacementDecoder,
        albedo_head: AlbedoHead,
        jaw_index: int,
        detach_head_features: bool = False,
    ):
        super().__init__()
        if encoder.config.detail_dim != displacement.config.detail_dim:
            raise ValueError("encoder and displacement decoder disagree on the detail-code size")
        self.encoder = encoder
        self.displacement = displacement
        self.albedo_head = albedo_head
        self.jaw_index = int(jaw_index)
        self.detach_head_features = detach_head_features

    def forward(self, image: torch.Tensor) -> ShapeOutputs:
        captured: list[torch.Tensor] = []
        handle = self.encoder.backbone.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            codes = self.encoder(image)
        finally:
            handle.remove()
        features = captured[-1].detach() if self.detach_head_features else captured[-1]
        ws = self.albedo_head(features)
        disp = self.displacement(codes.detail, codes.expression, codes.pose[:, self.jaw_index])
        return ShapeOutputs(codes=codes, displacement=disp, ws=ws)
