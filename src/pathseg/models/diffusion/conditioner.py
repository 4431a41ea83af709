"""The conditioning of Large-Image-Diffusion: self-supervised patch (and region) embeddings, each L2-normalised
and projected to 512-d, stacked as a 2-token cross-attention context (keys ``patch_fc``, ``region_fc`` as in the
original ``cond_stage_model``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SSLConditioner(nn.Module):
    """(B, patch_dim) patch embedding [+ (B, region_dim) region embedding] -> (B, 2, context_dim) context.

    An absent region embedding is zeros (as the original does when only patch embeddings are given); the
    unconditional context (classifier-free guidance) is all-zero embeddings.
    """

    def __init__(
        self, patch_dim: int = 384, region_dim: int = 768, context_dim: int = 512, normalize: bool = True
    ) -> None:
        super().__init__()
        self.patch_fc = nn.Linear(patch_dim, context_dim)
        self.region_fc = nn.Linear(region_dim, context_dim)
        self.normalize = normalize

    def forward(self, patch: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
        if region is None:
            region = patch.new_zeros(patch.shape[0], self.region_fc.in_features)
        if self.normalize:
            patch, region = F.normalize(patch, dim=-1), F.normalize(region, dim=-1)
        return torch.stack([self.patch_fc(patch), self.region_fc(region)], dim=1)
