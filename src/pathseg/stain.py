"""Reinhard stain normalisation: an H&E image's colours matched to a reference in CIE-LAB.

Each LAB channel of the image is shifted and scaled so that its mean and standard deviation over tissue pixels
equal the reference's (Reinhard et al. 2001). Statistics are taken over tissue only (not near-white background),
so an image with much glass is matched by its tissue. Used by nucleus models with ``ais_stain`` in their config, which
holds the mean statistics of their training images.
"""

from __future__ import annotations

import warnings

import numpy as np
from skimage.color import lab2rgb, rgb2lab

from pathseg.errors import PathsegError

#: pixels lighter than this L* (0-100) and closer to grey than ``_GREY`` (a*b* chroma) are background
_WHITE, _GREY = 85.0, 10.0
#: statistics of larger images come from an evenly strided subsample of about this many pixels
_STATS_PIXELS = 4_000_000
#: rows converted at a time, so that memory stays bounded on large images (LAB is float64, 24 bytes per pixel)
_BLOCK_PIXELS = 2_000_000


def tissue_pixels(lab: np.ndarray) -> np.ndarray:
    """Boolean mask (H, W) of the pixels of a LAB image (H, W, 3) that are not near-white background."""
    return ~((lab[..., 0] > _WHITE) & (np.hypot(lab[..., 1], lab[..., 2]) < _GREY))


def lab_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the L*, a*, b* channels over the tissue pixels of ``rgb`` (H, W, 3 uint8); all pixels when
    fewer than 1% are tissue. Images over 4 Mpx are measured on an evenly strided subsample."""
    step = max(1, int(np.ceil(np.sqrt(rgb.shape[0] * rgb.shape[1] / _STATS_PIXELS))))
    return _stats(rgb2lab(rgb[::step, ::step]))


def _stats(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = tissue_pixels(lab)
    pixels = lab[mask] if mask.mean() >= 0.01 else lab.reshape(-1, 3)
    return pixels.mean(0), pixels.std(0)


def reference_stats(images: list[np.ndarray]) -> dict[str, list[float]]:
    """The reference of a set of training images: the mean of their :func:`lab_stats` (``{"mean", "std"}``)."""
    if not images:
        raise PathsegError("a stain reference needs at least one image")
    stats = [lab_stats(im) for im in images]
    return {
        "mean": [round(float(v), 4) for v in np.mean([m for m, _ in stats], axis=0)],
        "std": [round(float(v), 4) for v in np.mean([s for _, s in stats], axis=0)],
    }


def reinhard(
    rgb: np.ndarray, reference: dict[str, list[float]], stats: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """``rgb`` (H, W, 3 uint8) with its LAB statistics matched to ``reference`` (``{"mean", "std"}``, 3 values each);
    returns uint8. ``stats``: the (mean, std) to match from, e.g. a whole image's :func:`lab_stats` for a crop of it
    (default: ``rgb``'s own). Colours outside sRGB after the match are clipped."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise PathsegError(f"stain normalisation needs an RGB image (H, W, 3), got shape {rgb.shape}")
    mean, std = (np.asarray(reference.get(k, ()), dtype=np.float64) for k in ("mean", "std"))
    if mean.shape != (3,) or std.shape != (3,) or (std <= 0).any():
        raise PathsegError(f"a stain reference holds 3 means and 3 positive stds, got {reference}")
    lab = rgb2lab(rgb) if rgb.shape[0] * rgb.shape[1] <= _BLOCK_PIXELS else None  # one block: converted once
    if stats is None:
        stats = _stats(lab) if lab is not None else lab_stats(rgb)
    m, s = stats
    out = np.empty_like(rgb, dtype=np.uint8)
    rows = max(1, _BLOCK_PIXELS // max(rgb.shape[1], 1))
    with warnings.catch_warnings():  # lab2rgb warns about the out-of-gamut colours it clips
        warnings.simplefilter("ignore", UserWarning)
        for y in range(0, rgb.shape[0], rows):
            block = lab[y : y + rows] if lab is not None else rgb2lab(rgb[y : y + rows])
            matched = (block - m) / np.maximum(s, 1e-6) * std + mean
            out[y : y + rows] = np.clip(lab2rgb(matched), 0, 1) * 255 + 0.5
    return out
