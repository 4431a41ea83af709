"""HIPT's ViT-S/16 patch encoder (DINO ViT-Small) in plain torch; state-dict keys equal HIPT's ``vit256_small_dino``.

The 384-d embedding of a 256² patch (20x, about 0.5 µm/px) is the CLS token after the final LayerNorm. Position
embeddings are interpolated for inputs other than the checkpoint's grid, as DINO does (bicubic by scale factor).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTSmall(nn.Module):
    """ViT with a CLS token; defaults are HIPT's ViT-S/16 (384-d, 12 blocks, 6 heads, 224² position grid).

    Input: (B, 3, H, W) float, ImageNet-normalised (HIPT: mean 0.5, std 0.5 per channel); H, W multiples of
    ``patch_size``. Output: (B, ``embed_dim``) CLS embeddings.
    """

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        img_size: int = 224,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        n = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        n = self.pos_embed.shape[1] - 1
        gh, gw = h // self.patch_size, w // self.patch_size
        if gh * gw == n and gh == gw:
            return self.pos_embed
        side = int(math.sqrt(n))
        grid = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        # DINO: scale factors with +0.1 against floating-point rounding of the output size
        grid = F.interpolate(grid, scale_factor=((gh + 0.1) / side, (gw + 0.1) / side), mode="bicubic")
        grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([self.pos_embed[:, :1], grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {self.patch_size}")
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1) + self._pos_embed(h, w)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)[:, 0]


def hipt_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The ViT weights of a HIPT/DINO checkpoint: the ``teacher`` entry when present, ``module.`` and
    ``backbone.`` prefixes removed, the DINO projection head dropped."""
    state = checkpoint.get("teacher", checkpoint)
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        if not k.startswith("head."):
            out[k] = v
    return out


def load_hipt(path) -> ViTSmall:
    """HIPT's ViT-S/16 from a DINO training checkpoint (e.g. ``vit256_small_dino.pth``), read with
    ``weights_only=True``; ``argparse.Namespace`` (the run's arguments stored beside the weights) is the only
    non-tensor class allowed."""
    import argparse

    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = ViTSmall()
    state = hipt_state_dict(checkpoint)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        from pathseg.errors import PathsegError

        first = (missing or unexpected)[0]
        raise PathsegError(f"{path}: not a HIPT ViT-S/16 checkpoint (first mismatching key: {first!r})")
    return model.eval()
