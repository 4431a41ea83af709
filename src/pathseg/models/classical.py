"""The weight-free nucleus segmenter ``classical``: colour deconvolution, threshold, seeded watershed.

Every length is in µm (areas in µm²), so the same parameters work at 20x (~0.5 µm/px) and 40x (~0.25 µm/px).
Steps: haematoxylin optical density (Ruifrok & Johnston deconvolution) -> Gaussian smoothing -> global Otsu
threshold scaled by ``threshold_scale`` -> closing, holes filled, opening, small objects removed -> distance
transform -> seeds at distance maxima at least ``min_distance_um`` apart and ``h_um`` above their surroundings
-> watershed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import closing, disk, opening, remove_small_holes, remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

from pathseg.io.convert import black_fill_as_glass
from pathseg.progress import ProgressCallback


@dataclass(frozen=True)
class ClassicalParams:
    """Parameters of the classical segmenter (lengths in µm, areas in µm²).

    Defaults were chosen by a grid search on a validation split of MoNuSeg *train* (see benchmarks/tune_classical.py).
    """

    smooth_um: float = 0.5  #: Gaussian σ applied to the haematoxylin map
    threshold_scale: float = 1.1  #: multiplies the Otsu threshold of the haematoxylin map
    closing_um: float = 0.0  #: radius of a morphological closing that smooths ragged chromatin outlines
    opening_um: float = 0.5  #: radius of an opening that removes thin spurs and bridges
    min_area_um2: float = 8.0  #: objects smaller than this are removed
    max_hole_um2: float = 20.0  #: holes smaller than this are filled
    min_distance_um: float = 1.5  #: minimum distance between two seeds
    seed_smooth_um: float = 0.5  #: Gaussian σ on the distance map before seeds are taken
    h_um: float = 0.0  #: seeds must rise this much above the saddle to their neighbours (h-maxima)
    threshold: float | None = None  #: fixed haematoxylin OD threshold (None: Otsu of each image x threshold_scale)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# rgb2hed for uint8 input, reduced to the haematoxylin channel: a 256-entry log table and one dot product
_LOG_ADJUST = np.log(1e-6)
_LOG_TABLE = (np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / _LOG_ADJUST).astype(np.float32)
_H_COLUMN = np.linalg.inv(np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]))[:, 0].astype(
    np.float32
)


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density (H, W) float32 from RGB uint8 (higher = more stain).

    Equal to ``skimage.color.rgb2hed(rgb)[..., 0]`` (Ruifrok & Johnston vectors) for uint8 input, ~10x faster.
    """
    if rgb.dtype != np.uint8:
        return rgb2hed(rgb)[..., 0].astype(np.float32)
    od = _LOG_TABLE[rgb]  # (H, W, 3)
    return np.maximum(od @ _H_COLUMN, 0.0)


def segment_classical(rgb: np.ndarray, mpp: float, params: ClassicalParams | None = None) -> np.ndarray:
    """Segment nuclei in ``rgb`` (H, W, 3 uint8) at ``mpp`` µm/px. Returns uint32 labels 1..N (0 = background)."""
    p = params or ClassicalParams()
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {rgb.shape} {rgb.dtype}")
    if not mpp > 0:
        raise ValueError(f"pixel size must be positive, got {mpp} µm/px")
    px = 1.0 / mpp  # pixels per µm
    h = haematoxylin(black_fill_as_glass(rgb))  # black fill's huge optical density would take the Otsu threshold
    if p.smooth_um > 0:
        h = ndi.gaussian_filter(h, p.smooth_um * px)
    if float(h.max()) - float(h.min()) < 1e-6:
        return np.zeros(rgb.shape[:2], dtype=np.uint32)
    fg = h > (p.threshold if p.threshold is not None else threshold_otsu(h) * p.threshold_scale)
    if p.closing_um > 0:
        fg = closing(fg, disk(max(int(round(p.closing_um * px)), 1)))
    fg = remove_small_holes(fg, max_size=max(int(p.max_hole_um2 * px * px), 1))
    if p.opening_um > 0:
        fg = opening(fg, disk(max(int(round(p.opening_um * px)), 1)))
    fg = remove_small_objects(fg, max_size=max(int(p.min_area_um2 * px * px), 1))
    if not fg.any():
        return np.zeros(rgb.shape[:2], dtype=np.uint32)
    dist = ndi.distance_transform_edt(fg).astype(np.float32)
    if p.seed_smooth_um > 0:
        dist = ndi.gaussian_filter(dist, p.seed_smooth_um * px)
    seeds = _seeds(dist, fg, min_distance=max(int(round(p.min_distance_um * px)), 1), h=p.h_um * px)
    labels = watershed(-dist, seeds, mask=fg)
    labels = remove_small_objects(labels, max_size=max(int(p.min_area_um2 * px * px), 1))
    return relabel_sequential(labels)[0].astype(np.uint32)


def _seeds(dist: np.ndarray, fg: np.ndarray, min_distance: int, h: float) -> np.ndarray:
    """Marker image: maxima of ``dist`` at least ``min_distance`` px apart and ``h`` px above their saddles."""
    if h > 0:
        from skimage.morphology import h_maxima

        maxima = h_maxima(dist, h) & fg
        # several plateau pixels may form one maximum: keep one point per component
        comp, n = ndi.label(maxima)
        if n == 0:
            return comp
        coords = np.array(ndi.center_of_mass(maxima, comp, range(1, n + 1))).round().astype(int)
        mask = np.zeros_like(fg)
        mask[coords[:, 0], coords[:, 1]] = True
        # enforce the minimum distance between the surviving maxima
        coords = peak_local_max(
            np.where(mask, dist, 0),
            min_distance=min_distance,
            labels=fg.astype(np.int32),
            exclude_border=False,
        )
    else:
        coords = peak_local_max(dist, min_distance=min_distance, labels=fg.astype(np.int32), exclude_border=False)
    markers = np.zeros(fg.shape, dtype=np.int32)
    markers[coords[:, 0], coords[:, 1]] = np.arange(1, len(coords) + 1)
    return markers


#: Mean RGB value (0-255) above which a pixel counts as unstained glass when fitting a slide's threshold.
GLASS_LEVEL = 215


class ClassicalModel:
    """The ``classical`` nucleus model: no weights, always available, parameters in µm."""

    name = "classical"
    mpp = 0.25  #: MoNuSeg's 40x resolution, where the defaults were tuned

    def __init__(self, params: ClassicalParams | None = None, **overrides: float) -> None:
        self.params = replace(params or ClassicalParams(), **overrides)

    def fit_slide(self, samples: list[np.ndarray], mpp: float) -> None:
        """Fix the foreground threshold from tissue samples of a whole slide (RGB uint8 at ``mpp`` µm/px), so that
        every chunk of the slide is thresholded alike (an Otsu threshold per chunk would differ chunk to chunk).

        Only stained pixels count (mean RGB below :data:`GLASS_LEVEL`): with glass in the pool, Otsu would split
        glass from tissue instead of nuclei from the rest, and nearly all tissue would become "nuclei"."""
        values = []
        for s in samples:
            s = black_fill_as_glass(s)
            h = ndi.gaussian_filter(haematoxylin(s), self.params.smooth_um / mpp)
            values.append(h[s[..., :3].mean(axis=-1) < GLASS_LEVEL])
        values = [v for v in values if v.size]
        if sum(v.size for v in values) >= 1000:  # else: too little tissue sampled; each chunk keeps its own Otsu
            self.params = replace(
                self.params, threshold=float(threshold_otsu(np.concatenate(values))) * self.params.threshold_scale
            )

    def segment(self, rgb: np.ndarray, mpp: float, progress: ProgressCallback | None = None) -> np.ndarray:
        if progress:
            progress(0, 1, "classical")
        labels = segment_classical(rgb, mpp, self.params)
        if progress:
            progress(1, 1, f"{int(labels.max())} nuclei")
        return labels
