"""A small fully convolutional head on frozen features: 1x1 reduction, residual 3x3 conv blocks, 1x1 to logits;
optionally a pixel refiner that sharpens the upsampled logits with the image's own pixels.

``dilations`` sets the 3x3 blocks: the default (1, 1) sees 5x5 feature pixels (20 µm for VQ-f4 latents at
1 µm/px); (1, 2, 4, 8) sees 31x31 (124 µm), enough context to tell a gland's lumen from stroma.

The features lie on the latent grid (4 image pixels per feature pixel for VQ-f4), so upsampled logits cannot follow
a gland's outline more closely than that grid. ``refine`` > 0 adds a :class:`PixelRefiner` of that width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PixelRefiner(nn.Module):
    """Residual correction of upsampled class logits (B, K, H, W) from the image (B, 3, H, W) in [0, 1], same size.

    Dilated 3x3 convolutions (``dilations`` 1, 2, 4, 8: a receptive field of 31 px, 31 µm at 1 µm/px). The last
    layer starts at zero, so an untrained refiner returns the logits unchanged.
    """

    def __init__(self, n_classes: int, width: int = 16, dilations: Sequence[int] = (1, 2, 4, 8)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = n_classes + 3
        for d in dilations:
            layers += [nn.Conv2d(cin, width, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
            cin = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, n_classes, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = torch.cat([torch.tanh(logits / 4.0), (image - 0.5) / 0.25], dim=1)
        return logits + self.out(self.body(x))


class SegHead(nn.Module):
    """(B, in_channels, h, w) features -> (B, n_classes, h, w) logits (same resolution); :meth:`to_pixels` brings
    them to the image's resolution (through the refiner when ``refine`` > 0, its width)."""

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        hidden: int = 128,
        dilations: Sequence[int] = (1, 1),
        refine: int = 0,
    ) -> None:
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU())
        layers: list[nn.Module] = []
        for d in self.dilations:
            conv = nn.Conv2d(hidden, hidden, 3, padding=d, dilation=d, bias=False)
            layers += [conv, nn.BatchNorm2d(hidden), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.classify = nn.Conv2d(hidden, n_classes, 1)
        self.refiner = PixelRefiner(n_classes, refine) if refine > 0 else None

    def forward(self, x):
        x = self.reduce(x)
        return self.classify(x + self.body(x))

    def to_pixels(self, logits: torch.Tensor, size: tuple[int, int], image: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, K, h, w) bilinearly upsampled to ``size`` (H, W), then refined (if the head has a refiner,
        which needs the ``image`` (B, 3, H, W) in [0, 1])."""
        up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if self.refiner is None:
            return up
        if image is None:
            raise ValueError("a head with a pixel refiner needs the images (build the feature bank with images=True)")
        return self.refiner(up, image)
