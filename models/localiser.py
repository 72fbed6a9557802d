"""The landmark localiser: a small residual CNN, crop → 68 points in crop units (:mod:`facecore.localise`).

Stride-2 residual stages over the crop, then the last feature map flattened (positions matter: a global pool
would throw away where things are) into a linear layer per point coordinate. ~1 M parameters at the default
widths, ~60 MFLOPs per 96-px crop: a few milliseconds on one CPU core.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


class Localiser(nn.Module):
    """(B, 3, S, S) crop in [0, 1] → (B, 68, 2) landmarks, ``x_unit = (x_px + 0.5) / S - 0.5``.

    Args:
        input_size: S (a multiple of 2 ** (len(channels) + 1)).
        channels: widths of the stride-2 stages after the stride-2 stem (the stem has ``channels[0]``).
        points: landmarks predicted.
    """

    def __init__(self, input_size: int = 96, channels: Sequence[int] = (24, 48, 96, 160), points: int = 68):
        super().__init__()
        stride = 2 ** (len(channels) + 1)
        if input_size % stride:
            raise ValueError(f"input_size: expected a multiple of {stride}, got {input_size}")
        self.input_size = input_size
        self.points = points
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU()
        )
        stages: list[nn.Module] = []
        cin = channels[0]
        for cout in channels:
            stages += [_Block(cin, cout, 2), _Block(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        side = input_size // stride
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(cin * side * side, points * 2))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("mean_points", torch.zeros(points, 2))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(image * 2.0 - 1.0))
        return self.mean_points + self.head(x).view(-1, self.points, 2)
