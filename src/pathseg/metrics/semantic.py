"""Semantic segmentation metrics: pixel accuracy, per-class and mean Dice / IoU."""

from __future__ import annotations

import numpy as np

#: the class target of pixels that losses and scores leave out (tissue masks' unknown codes, nuclei without classes)
IGNORE = 255


def confusion_matrix(
    gt: np.ndarray, pred: np.ndarray, n_classes: int | None = None, ignore_index: int | None = None
) -> np.ndarray:
    """(n_classes, n_classes) pixel counts, rows = ground truth class, columns = predicted class.

    Pixels whose ground truth equals ``ignore_index`` are left out. ``n_classes`` defaults to max label + 1.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction differ in shape: {gt.shape} vs {pred.shape}")
    g = gt.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    if ignore_index is not None:
        keep = g != ignore_index
        g, p = g[keep], p[keep]
    if g.size and (g.min() < 0 or p.min() < 0):
        raise ValueError("class ids must be >= 0")
    if n_classes is None:
        n_classes = int(max(g.max(initial=0), p.max(initial=0))) + 1
    elif g.size and (g.max() >= n_classes or p.max() >= n_classes):
        raise ValueError(f"class id out of range for n_classes={n_classes}")
    return np.bincount(g * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def semantic_scores(
    gt: np.ndarray, pred: np.ndarray, n_classes: int | None = None, ignore_index: int | None = None
) -> dict:
    """Pixel accuracy, per-class Dice and IoU, and their means.

    A class absent from both ground truth and prediction has Dice/IoU ``nan`` and is left out of the means.
    Returns ``{"accuracy", "dice": [...], "iou": [...], "mean_dice", "mean_iou"}``.
    """
    return confusion_scores(confusion_matrix(gt, pred, n_classes, ignore_index))


def confusion_scores(cm: np.ndarray) -> dict:
    """The scores of :func:`semantic_scores` from a (pooled) confusion matrix (rows = ground truth)."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
    present = ~np.isnan(dice)
    return {
        "accuracy": float(tp.sum() / total) if total else float("nan"),
        "dice": dice.tolist(),
        "iou": iou.tolist(),
        "mean_dice": float(dice[present].mean()) if present.any() else float("nan"),
        "mean_iou": float(iou[present].mean()) if present.any() else float("nan"),
    }
