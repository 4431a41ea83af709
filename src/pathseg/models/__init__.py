"""Models: the weight-free classical segmenter, the zoo of named models, and (later) SAM and diffusion models."""

from pathseg.models.base import NucleusModel
from pathseg.models.zoo import get_nucleus_model, list_models

__all__ = ["NucleusModel", "get_nucleus_model", "list_models"]
