"""Losses for nucleus models."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-6):
    """1 - Dice over all but the batch axis, averaged over the batch. ``mask`` restricts the pixels counted."""
    if mask is not None:
        pred, target = pred * mask, target * mask
    dims = tuple(range(1, pred.ndim))
    inter = (pred * target).sum(dims)
    denom = (pred * pred).sum(dims) + (target * target).sum(dims)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def ais_loss(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss for (B, 3, H, W) AIS maps: Dice + BCE on the foreground, Dice + MSE on the two distance maps inside
    the foreground (PathoSAM masks the distances to the foreground the same way)."""
    fg_t = target[:, :1]
    fg_p = pred[:, :1]
    l_fg = dice_loss(fg_p, fg_t) + F.binary_cross_entropy(fg_p.clamp(1e-6, 1 - 1e-6), fg_t)
    l_dist = 0.0
    for c in (1, 2):
        p, t = pred[:, c : c + 1], target[:, c : c + 1]
        l_dist = l_dist + dice_loss(p, t, mask=fg_t) + ((p - t) ** 2 * fg_t).sum() / fg_t.sum().clamp_min(1)
    loss = l_fg + l_dist
    return loss, {"fg": float(l_fg.detach()), "dist": float(l_dist.detach())}
