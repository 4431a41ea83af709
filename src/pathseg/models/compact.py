"""A compact CNN image encoder for CPUs, and a U-Net AIS decoder that uses its skip features.

The encoder returns SAM's interface — a (B, 256, H/16, W/16) embedding for the prompt encoder and mask decoder —
plus four skip feature maps (strides 1, 2, 4, 8) that the AIS decoder concatenates on its way back up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ResBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(channels, channels)
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(self.conv1(x)), inplace=True)


class CompactEncoder(nn.Module):
    """Stem + four downsampling stages -> embedding at stride 16 (``out_chans`` channels) and skips.

    ``widths``: channels at strides 1, 2, 4, 8, 16. ``img_size`` is the square input the prompt encoder assumes.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (24, 48, 96, 160, 256),
        blocks: tuple[int, ...] = (1, 1, 2, 2, 2),
        out_chans: int = 256,
        img_size: int = 512,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.widths = tuple(widths)
        self.stages = nn.ModuleList()
        cin = 3
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            layers = [conv_bn(cin, w, stride=1 if i == 0 else 2)] + [ResBlock(w) for _ in range(n)]
            self.stages.append(nn.Sequential(*layers))
            cin = w
        self.neck = nn.Sequential(nn.Conv2d(widths[-1], out_chans, 1, bias=False), nn.BatchNorm2d(out_chans))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for stage in self.stages[:-1]:
            x = stage(x)
            skips.append(x)
        return self.neck(self.stages[-1](x)), skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


class UNetAISDecoder(nn.Module):
    """From the embedding and the encoder's skips to (B, C, H, W) maps: sigmoid AIS maps (fg, centre and boundary
    distance) by default, raw logits with ``final_activation=None`` (nucleus classes)."""

    def __init__(
        self,
        embed_dim: int = 256,
        skip_widths: tuple[int, ...] = (24, 48, 96, 160),
        widths: tuple[int, ...] = (128, 64, 48, 32),
        out_channels: int = 3,
        final_activation: str | None = "sigmoid",
    ) -> None:
        super().__init__()
        self.final_activation = final_activation
        self.out_channels = out_channels
        self.ups = nn.ModuleList()
        cin = embed_dim
        for skip, w in zip(reversed(skip_widths), widths, strict=True):
            self.ups.append(nn.Sequential(conv_bn(cin + skip, w), conv_bn(w, w)))
            cin = w
        self.out_conv = nn.Conv2d(cin, out_channels, 1)

    def features(self, embedding: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """The last up-block's features (B, widths[-1], H, W) at the first skip's (full) resolution."""
        x = embedding
        for up, skip in zip(self.ups, reversed(skips), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip], dim=1))
        return x

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Maps from :meth:`features`."""
        x = self.out_conv(features)
        return torch.sigmoid(x) if self.final_activation == "sigmoid" else x

    def forward(self, embedding: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(embedding, skips))
