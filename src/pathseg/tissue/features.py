"""Diffusion features (PathSegDiff): encode, noise to timestep t with a fixed seed, one UNet pass with the SSL
context, activations of chosen decoder (up) blocks upsampled to one resolution and concatenated.

Feature maps come out per batch of patches and are never accumulated: callers stream them (training, caching).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pathseg.models.diffusion.backbone import DiffusionBackbone


class DiffusionFeatures(torch.nn.Module):
    """Frozen feature extractor over a :class:`DiffusionBackbone`.

    ``timesteps``: one or more t (0..999); features of every t are concatenated. ``blocks``: indices of
    ``unet.up_blocks`` whose outputs are taken (0 = the coarsest). ``seed``: the noise is drawn from this seed,
    so a patch always gets the same features. Output: (B, C, H/f, W/f) at the latent resolution (f = 4 for VQ-f4).
    """

    def __init__(
        self,
        backbone: DiffusionBackbone,
        timesteps: Sequence[int] = (50,),
        blocks: Sequence[int] = (1, 2),
        seed: int = 0,
    ) -> None:
        super().__init__()
        n_up = len(backbone.unet.up_blocks)
        if not timesteps or any(not 0 <= int(t) < len(backbone.alphas_cumprod) for t in timesteps):
            raise ValueError(f"timesteps must lie in 0..{len(backbone.alphas_cumprod) - 1}, got {list(timesteps)}")
        if not blocks or any(not 0 <= int(b) < n_up for b in blocks):
            raise ValueError(f"blocks must be indices of the {n_up} UNet up blocks, got {list(blocks)}")
        self.backbone = backbone.eval().requires_grad_(False)
        self.timesteps = [int(t) for t in timesteps]
        self.blocks = sorted(int(b) for b in blocks)
        self.seed = seed
        self._taken: dict[int, torch.Tensor] = {}
        for b in self.blocks:
            backbone.unet.up_blocks[b].register_forward_hook(self._hook(b))

    def _hook(self, index: int):
        def hook(_module, _inputs, output):
            self._taken[index] = output[0] if isinstance(output, tuple) else output

        return hook

    @property
    def channels(self) -> int:
        """Channels of the concatenated features."""
        up = self.backbone.unet.up_blocks
        per_t = 0
        for b in self.blocks:
            blk = up[b]
            last = blk.resnets[-1]
            per_t += last.conv2.out_channels
        return per_t * len(self.timesteps)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Features of (B, 3, H, W) images in [0, 1] (H, W multiples of 8 x the VQ downsampling)."""
        return self.from_latent(*self.latent(x, embedding))

    @torch.no_grad()
    def latent(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent z0 (B, c, H/f, W/f) and the cross-attention context of (B, 3, H, W) images in [0, 1]."""
        return self.backbone.encode(x), self.backbone.context(x, embedding)

    @torch.no_grad()
    def from_latent(self, z0: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Features (B, C, h, w) of latents ``z0`` (B, c, h, w): noised to each t, one UNet pass with ``context``."""
        bb = self.backbone
        size = z0.shape[-2:]
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        # the same noise for every patch position, whatever the batch: drawn per sample from the seed
        noise = torch.randn((1, *z0.shape[1:]), generator=g).to(z0.device, z0.dtype).expand_as(z0)
        feats = []
        for t in self.timesteps:
            self._taken.clear()
            zt = bb.add_noise(z0, t, noise)
            bb.unet(zt, torch.full((z0.shape[0],), t, device=z0.device), encoder_hidden_states=context)
            for b in self.blocks:
                f = self._taken[b]
                feats.append(f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear"))
        self._taken.clear()
        return torch.cat(feats, dim=1)
