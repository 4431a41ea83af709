"""Tissue detection on a low-resolution view of a slide: background, pen marks and specks excluded.

Works on an RGB overview (a few µm/px). Tissue = stained (saturated) and not near-white; pen ink is recognised
by hue (blue / green, strongly saturated) or by being near-black and unsaturated, and removed; small specks
are dropped and holes inside tissue filled. Sizes are in µm² so the result does not depend on the overview's
scale.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects


def tissue_mask(
    rgb: np.ndarray,
    mpp: float,
    min_tissue_um2: float = 20_000.0,
    max_hole_um2: float = 50_000.0,
    exclude_pen: bool = True,
    min_pen_um2: float = 5_000.0,
) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 overview at ``mpp`` µm/px.

    ``min_tissue_um2``: smaller tissue pieces are dropped; ``max_hole_um2``: smaller holes are filled;
    ``min_pen_um2``: smaller ink-coloured specks are not treated as pen marks.
    """
    hue, sat, val = _hsv(rgb)
    smooth = ndi.gaussian_filter(sat, 1.0)
    t = threshold_otsu(smooth) if np.ptp(smooth) > 1e-3 else 1.0
    tissue = (smooth > max(min(t, 0.25), 0.04)) & (val < 0.95)
    pen = np.zeros_like(tissue)
    if exclude_pen:
        pen = ((hue > 70) & (hue < 260) & (sat > 0.2)) | ((val < 0.15) & (sat < 0.3))
        # isolated bluish specks occur in stained tissue; ink strokes are larger
        pen = remove_small_objects(pen, max_size=max(int(min_pen_um2 / (mpp * mpp)), 1))
        pen = ndi.binary_dilation(pen, iterations=2)
    px_area = mpp * mpp
    tissue = remove_small_holes(tissue & ~pen, max_size=max(int(max_hole_um2 / px_area), 1))
    tissue &= ~pen  # ink over tissue stays excluded even where it left a hole
    tissue = remove_small_objects(tissue, max_size=max(int(min_tissue_um2 / px_area), 1))
    return tissue


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), saturation and value (0..1) of an RGB uint8 image, as :func:`skimage.color.rgb2hsv` gives
    them, in float32."""
    x = rgb[..., :3].astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    val = x.max(axis=-1)
    delta = val - x.min(axis=-1)
    sat = np.where(val > 0, delta / np.where(val > 0, val, 1), 0).astype(np.float32)
    d = np.where(delta > 0, delta, 1)
    hue = np.where(val == r, (g - b) / d, np.where(val == g, 2 + (b - r) / d, 4 + (r - g) / d))
    hue = np.where(delta > 0, (hue / 6) % 1, 0) * 360
    return hue.astype(np.float32), sat, val
