"""A residual head on a compact model's AIS decoder: a correction to the automatic path's maps at full resolution.

The UNet AIS decoder ends in a 1x1 convolution of its last 32-channel features. The head reads those features, the
decoder's three logits (foreground, centre distance, boundary distance) and the normalised RGB, passes them through
dilated 3x3 convolutions (dilations 1, 2, 4, 8: a receptive field of 31 px, 12 µm at 0.38 µm/px) and adds a
correction to the logits. Its last layer starts at zero, so a new head leaves the maps unchanged. Only the automatic
path reads the corrected maps: prompt refiners keep the decoder's own maps as their guide.
"""

from __future__ import annotations

import torch
from torch import nn


class AISHead(nn.Module):
    """Residual correction of AIS logits (B, ``out_channels``, H, W) from the decoder's features (B, ``feature_in``,
    H, W) and the normalised image (B, 3, H, W), all at the same size. Returns corrected logits."""

    def __init__(
        self, feature_in: int = 32, out_channels: int = 3, width: int = 32, dilations: tuple[int, ...] = (1, 2, 4, 8)
    ) -> None:
        super().__init__()
        self.feature_in, self.out_channels = feature_in, out_channels
        self.width, self.dilations = width, tuple(dilations)
        layers: list[nn.Module] = []
        cin = feature_in + out_channels + 3
        for d in self.dilations:
            layers += [nn.Conv2d(cin, width, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
            cin = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, out_channels, 1)
        nn.init.zeros_(self.out.weight)  # starts as the identity: corrected = the decoder's logits
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = torch.cat([features, torch.tanh(logits / 8.0), image], dim=1)
        return logits + self.out(self.body(x))
