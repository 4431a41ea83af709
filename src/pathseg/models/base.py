"""The interface every nucleus model offers to the pipeline."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from pathseg.errors import PathsegError
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


def needs_ais_decoder(model, flag: str) -> None:
    """Stop, naming the option ``flag``, unless ``model`` is a SAM-family model with an AIS decoder."""
    if getattr(model, "ais", None) is None:
        raise PathsegError(f"{flag} needs a SAM-family model with an AIS decoder; {model.name!r} has none")


def set_ais_options(model, precision: str | None = None, params: dict | None = None) -> None:
    """``--ais-precision`` and ``--ais-param`` on ``model`` (checked; None / empty: the model's own)."""
    if precision is not None:
        needs_ais_decoder(model, "--ais-precision")
        model.set_ais_precision(precision)
    if params:
        needs_ais_decoder(model, "--ais-param")
        model.set_ais_params(**params)
