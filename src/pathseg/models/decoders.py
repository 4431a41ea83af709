"""Convolutional decoders on a SAM image embedding: the AIS (distance) decoder and the semantic decoder.

The layout follows torch-em's ``UNETR`` with ``use_skip_connection=False`` (as micro-sam / PathoSAM use it), so
PathoSAM's published decoder state dicts load with ``strict=True``: ``base``, ``decoder.blocks/samplers``,
``deconv1..4``, ``deconv_out``, ``decoder_head``, ``out_conv``. Both upsampling variants are supported
(transposed convolutions, ``use_conv_transpose=True``, or bilinear + 1x1 convolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    """InstanceNorm -> 3x3 conv -> ReLU, twice (keys ``block.1``, ``block.4``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.InstanceNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.InstanceNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Upsampler(nn.Module):
    """x2 bilinear upsampling then a 1x1 convolution (key ``conv``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class TransposeUpsampler(nn.Module):
    """x2 upsampling by a 2x2 transposed convolution (key ``block``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _upsampler(in_channels: int, out_channels: int, transpose: bool) -> nn.Module:
    return TransposeUpsampler(in_channels, out_channels) if transpose else Upsampler(in_channels, out_channels)


class _SingleConv(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Deconv2DBlock(nn.Module):
    """x2 upsampling -> 3x3 conv -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, transpose: bool) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _upsampler(in_channels, out_channels, transpose),
            _SingleConv(out_channels),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Decoder(nn.Module):
    """Three x2 stages; each concatenates a pseudo-skip (centre-cropped in channels, as torch-em does)."""

    def __init__(self, features: list[int], transpose: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ConvBlock(i, o) for i, o in zip(features[:-1], features[1:], strict=True))
        self.samplers = nn.ModuleList(
            _upsampler(i, o, transpose) for i, o in zip(features[:-1], features[1:], strict=True)
        )

    @staticmethod
    def _concat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # torch-em crops every axis of the skip to x's shape around the centre, channels included
        crop = tuple(slice((s - t) // 2, s - (s - t) // 2) for s, t in zip(skip.shape, x.shape, strict=True))
        return torch.cat([x, skip[crop]], dim=1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for block, sampler, skip in zip(self.blocks, self.samplers, skips, strict=True):
            x = block(self._concat(sampler(x), skip))
        return x


class EmbeddingDecoder(nn.Module):
    """UNETR-style decoder from a (B, C, h, w) image embedding to (B, out_channels, 16h, 16w) maps.

    ``final_activation``: ``"sigmoid"`` (AIS: foreground, centre distance, boundary distance) or ``None``
    (semantic logits).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        out_channels: int = 3,
        use_conv_transpose: bool = True,
        final_activation: str | None = "sigmoid",
        initial_features: int = 64,
    ) -> None:
        super().__init__()
        f = [initial_features * 2**i for i in range(4)][::-1]  # 512, 256, 128, 64
        t = use_conv_transpose
        self.out_channels = out_channels
        self.final_activation = final_activation
        self.use_conv_transpose = use_conv_transpose
        self.decoder = Decoder(f, t)
        self.deconv1 = Deconv2DBlock(embed_dim, f[0], t)
        self.deconv2 = Deconv2DBlock(f[0], f[1], t)
        self.deconv3 = Deconv2DBlock(f[1], f[2], t)
        self.deconv4 = Deconv2DBlock(f[2], f[3], t)
        self.base = ConvBlock(embed_dim, f[0])
        self.out_conv = nn.Conv2d(f[-1], out_channels, 1)
        self.deconv_out = _upsampler(f[-1], f[-1], t)
        self.decoder_head = ConvBlock(2 * f[-1], f[-1])

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        z9 = self.deconv1(embedding)
        z6 = self.deconv2(z9)
        z3 = self.deconv3(z6)
        z0 = self.deconv4(z3)
        x = self.decoder(self.base(embedding), [z9, z6, z3])
        x = self.decoder_head(torch.cat([self.deconv_out(x), z0], dim=1))
        x = self.out_conv(x)
        return torch.sigmoid(x) if self.final_activation == "sigmoid" else x

    @staticmethod
    def config_from_state(state: dict[str, torch.Tensor]) -> dict:
        """Constructor arguments that fit a decoder state dict (embed_dim, out_channels, upsampling variant)."""
        if "base.block.1.weight" not in state or "out_conv.weight" not in state:
            raise KeyError("not a UNETR decoder state (no base.block.1.weight / out_conv.weight)")
        return {
            "embed_dim": int(state["base.block.1.weight"].shape[1]),
            "out_channels": int(state["out_conv.weight"].shape[0]),
            "use_conv_transpose": "deconv_out.block.weight" in state,
            "initial_features": int(state["out_conv.weight"].shape[1]),
        }
