"""Segmentation metrics over numpy label images (pure numpy/scipy).

Instance: :func:`instance_scores` (mSA, SA50, AJI, PQ/DQ/SQ, pixel Dice) and the individual functions.
Semantic: :func:`semantic_scores` (pixel accuracy, per-class and mean Dice/IoU).
GlaS: :func:`glas_scores` (object F1, object Dice, object Hausdorff).
Nucleus classes: :func:`classification_scores` (HoVer-Net F_d, F_c per class).
"""

from pathseg.metrics.classes import classification_scores, pair_centroids
from pathseg.metrics.glas import glas_scores, object_dice, object_f1, object_hausdorff
from pathseg.metrics.instance import (
    SA_THRESHOLDS,
    aji,
    instance_scores,
    mean_segmentation_accuracy,
    panoptic_quality,
    pixel_dice,
    segmentation_accuracy,
)
from pathseg.metrics.overlap import Overlap
from pathseg.metrics.semantic import confusion_matrix, semantic_scores

__all__ = [
    "SA_THRESHOLDS",
    "Overlap",
    "aji",
    "classification_scores",
    "confusion_matrix",
    "glas_scores",
    "instance_scores",
    "mean_segmentation_accuracy",
    "object_dice",
    "object_f1",
    "object_hausdorff",
    "pair_centroids",
    "panoptic_quality",
    "pixel_dice",
    "segmentation_accuracy",
    "semantic_scores",
]
