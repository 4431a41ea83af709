"""A small fully convolutional head on frozen features: 1x1 reduction, two 3x3 conv blocks, 1x1 to class logits."""

from __future__ import annotations

from torch import nn


class SegHead(nn.Module):
    """(B, in_channels, h, w) features -> (B, n_classes, h, w) logits (same resolution)."""

    def __init__(self, in_channels: int, n_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
        )
        self.classify = nn.Conv2d(hidden, n_classes, 1)

    def forward(self, x):
        x = self.reduce(x)
        return self.classify(x + self.body(x))
