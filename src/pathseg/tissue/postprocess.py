"""Clean a class map: fill small enclosed regions and absorb small specks into their surroundings.

Areas are in µm², so one setting serves any pixel size. A tissue model keeps its setting in its config
(``clean``), picked on its run's validation split by ``benchmarks/tune_tissue_clean.py``: e.g. for GlaS glands,
holes (mucin, goblet cells) inside a gland become gland and debris under 1000 µm² becomes background.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class CleanParams:
    """``max_hole_um2``: a region of other classes enclosed by one class takes that class, up to this area. Every
    class counts as an encloser, background included: a gland under this area lying wholly in background goes.
    ``min_area_um2``: a connected region smaller than this takes the class most common on its outer rim.
    0 turns a step off (the default: no cleaning)."""

    max_hole_um2: float = 0.0
    min_area_um2: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def clean_classes(classes: np.ndarray, mpp: float, params: CleanParams | dict | None = None) -> np.ndarray:
    """Cleaned copy of ``classes`` ((H, W) integer class ids at ``mpp`` µm/px); see :class:`CleanParams`."""
    p = CleanParams(**params) if isinstance(params, dict) else params or CleanParams()
    if classes.ndim != 2:
        raise ValueError(f"expected an (H, W) class map, got shape {classes.shape}")
    if mpp <= 0:
        raise ValueError(f"mpp must be positive (µm/px), got {mpp}")
    out = classes.copy()
    px_area = mpp * mpp
    if p.max_hole_um2 > 0:
        for k in np.unique(out):
            mask = out == k
            holes = ndi.binary_fill_holes(mask) & ~mask
            lab, n = ndi.label(holes)
            if n:
                sizes = np.bincount(lab.ravel())
                fill = sizes * px_area <= p.max_hole_um2
                fill[0] = False
                out[fill[lab]] = k
    if p.min_area_um2 > 0:
        _absorb_small(out, p.min_area_um2 / px_area)
    return out


def _absorb_small(classes: np.ndarray, min_pixels: float) -> None:
    """In place: every connected region under ``min_pixels`` takes the majority class of its outer rim."""
    for k in np.unique(classes):
        lab, n = ndi.label(classes == k)
        if not n:
            continue
        sizes = np.bincount(lab.ravel())
        for i, sl in enumerate(ndi.find_objects(lab), start=1):
            if sizes[i] >= min_pixels:
                continue
            y0, y1 = max(sl[0].start - 1, 0), sl[0].stop + 1
            x0, x1 = max(sl[1].start - 1, 0), sl[1].stop + 1
            region = lab[y0:y1, x0:x1] == i
            rim = ndi.binary_dilation(region) & ~region
            around = classes[y0:y1, x0:x1][rim]
            if around.size:  # a region filling the whole image has no rim and stays
                classes[y0:y1, x0:x1][region] = np.bincount(around).argmax()
