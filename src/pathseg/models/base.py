"""The interface every nucleus model offers to the pipeline."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from pathseg.progress import ProgressCallback


@runtime_checkable
class NucleusModel(Protocol):
    """A model that turns an RGB uint8 image into a nucleus label image.

    ``mpp`` is the pixel size (µm/px) the model was made for: a tile with no pixel size is assumed to be at it.
    """

    name: str
    mpp: float

    def segment(self, rgb: np.ndarray, mpp: float, progress: ProgressCallback | None = None) -> np.ndarray:
        """Label image (H, W) uint32, 0 = background, 1..N = nuclei, for ``rgb`` at ``mpp`` µm/px."""
        ...
