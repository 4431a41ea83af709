"""Resampling of images, label images and float maps (torch interpolation; no torchvision)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> ``size`` (h, w), bilinear with antialiasing (area-like when shrinking)."""
    if tuple(rgb.shape[:2]) == tuple(size):
        return rgb
    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Integer label image -> ``size``, nearest neighbour (int32), pixel centres aligned as in :func:`resize_rgb`.

    (torch's plain ``nearest`` samples each output pixel at its top-left corner, which moves labels 0.25-0.5
    output px down and right of the resized image.) Shrinking by a whole number (1/2, 1/3) still leaves labels
    0.25 output px off: no input pixel sits at an output pixel's centre.
    """
    if tuple(labels.shape) == tuple(size):
        return labels.astype(np.int32, copy=False)
    lab = torch.from_numpy(labels.astype(np.int64))[None, None].float()
    return F.interpolate(lab, size, mode="nearest-exact")[0, 0].numpy().astype(np.int32)


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float maps (C, H, W) -> (C, h, w), bilinear."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    return F.interpolate(torch.from_numpy(maps)[None], size, mode="bilinear", align_corners=False)[0].numpy()


def scaled_size(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    """(H, W) of ``shape`` scaled by ``factor`` (at least 1 px)."""
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def shift_maps(maps: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """(C, H, W) maps read ``dy`` / ``dx`` pixels further down / right: ``out[:, y, x] = maps[:, y + dy, x + dx]``,
    bilinear, edge values repeated (scipy's ``ndimage.shift(maps, (0, -dy, -dx), order=1, mode="nearest")``, ~15x
    faster: one gather per axis)."""
    out = maps
    for axis, d in ((1, dy), (2, dx)):
        n = maps.shape[axis]
        whole = np.floor(d)
        frac = np.float32(d - whole)
        idx = np.arange(n) + int(whole)
        moved = out.take(np.clip(idx, 0, n - 1), axis=axis)
        if frac:
            moved += frac * (out.take(np.clip(idx + 1, 0, n - 1), axis=axis) - moved)
        out = moved
    return out
