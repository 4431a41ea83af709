"""Segment Anything in pure torch: one component per file, key-compatible with the official checkpoints."""

from pathseg.models.sam.build import SAM_SIZES, build_sam
from pathseg.models.sam.sam import Sam

__all__ = ["SAM_SIZES", "Sam", "build_sam"]
