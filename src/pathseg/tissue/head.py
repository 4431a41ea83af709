"""A small fully convolutional head on frozen features: 1x1 reduction, residual 3x3 conv blocks, 1x1 to logits.

``dilations`` sets the 3x3 blocks: the default (1, 1) sees 5x5 feature pixels (20 µm for VQ-f4 latents at
1 µm/px); (1, 2, 4, 8) sees 31x31 (124 µm), enough context to tell a gland's lumen from stroma.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class SegHead(nn.Module):
    """(B, in_channels, h, w) features -> (B, n_classes, h, w) logits (same resolution)."""

    def __init__(self, in_channels: int, n_classes: int, hidden: int = 128, dilations: Sequence[int] = (1, 1)) -> None:
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU())
        layers: list[nn.Module] = []
        for d in self.dilations:
            conv = nn.Conv2d(hidden, hidden, 3, padding=d, dilation=d, bias=False)
            layers += [conv, nn.BatchNorm2d(hidden), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.classify = nn.Conv2d(hidden, n_classes, 1)

    def forward(self, x):
        x = self.reduce(x)
        return self.classify(x + self.body(x))
