"""Colour augmentation shared by nucleus and tissue training."""

from __future__ import annotations

import numpy as np


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 with its haematoxylin, eosin and residual optical densities each scaled by a factor
    drawn from [1 - strength, 1 + strength] and shifted by one from ±strength / 10 (HED augmentation); uint8 out."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(rgb)
    alpha = rng.uniform(1 - strength, 1 + strength, 3)
    beta = rng.uniform(-strength / 10, strength / 10, 3)
    out = hed2rgb(hed * alpha + beta)
    return np.clip(out * 255, 0, 255).astype(np.uint8)
