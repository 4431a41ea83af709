"""Sparse overlap of two label images: the one pass every instance metric starts from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction differ in shape: {gt.shape} vs {pred.shape}")
    for name, arr in (("ground truth", gt), ("prediction", pred)):
        if arr.dtype.kind not in "iub":
            raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
        if arr.size and arr.dtype.kind == "i" and arr.min() < 0:
            raise ValueError(f"{name} has negative labels")
    return gt, pred


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map labels to 0..n-1 in label order (background 0 -> -1). Returns (index per pixel, original ids)."""
    labels = labels.astype(np.int64, copy=False)
    hi = int(labels.max()) if labels.size else 0
    if hi <= 4 * labels.size + 1024:  # lookup table: linear time
        present = np.bincount(labels, minlength=hi + 1) > 0 if labels.size else np.zeros(1, bool)
        present[0] = False
        ids = np.flatnonzero(present)
        lut = np.full(hi + 1, -1, dtype=np.int64)
        lut[ids] = np.arange(ids.size)
        return lut[labels], ids
    ids, inv = np.unique(labels, return_inverse=True)
    if ids[0] == 0:
        return inv.astype(np.int64) - 1, ids[1:]
    return inv.astype(np.int64), ids


@dataclass(frozen=True)
class Overlap:
    """Areas and pairwise intersections of the objects of two label images (label 0 = background).

    Objects are renumbered 0..n-1 in order of their original label (``gt_ids`` / ``pred_ids`` keep the originals).
    ``pairs`` holds (i_gt, j_pred) of every overlapping pair and ``inter`` their intersection in pixels.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_area: np.ndarray
    pred_area: np.ndarray
    pairs: np.ndarray  # (k, 2) int
    inter: np.ndarray  # (k,) int

    @classmethod
    def of(cls, gt: np.ndarray, pred: np.ndarray) -> Overlap:
        gt, pred = _check_pair(gt, pred)
        g_idx, gt_ids = _compact(gt.ravel())
        p_idx, pred_ids = _compact(pred.ravel())
        ng, npred = gt_ids.size, pred_ids.size
        gt_area = np.bincount(g_idx[g_idx >= 0], minlength=ng)
        pred_area = np.bincount(p_idx[p_idx >= 0], minlength=npred)
        both = (g_idx >= 0) & (p_idx >= 0)
        code = g_idx[both] * max(npred, 1) + p_idx[both]
        if ng * max(npred, 1) <= 4 * code.size + 1024:
            counts = np.bincount(code, minlength=ng * max(npred, 1))
            codes = np.flatnonzero(counts)
            inter = counts[codes]
        else:
            codes, inter = np.unique(code, return_counts=True)
        pairs = np.stack([codes // max(npred, 1), codes % max(npred, 1)], axis=1).astype(np.int64)
        return cls(gt_ids, pred_ids, gt_area, pred_area, pairs, inter)

    @property
    def n_gt(self) -> int:
        return int(self.gt_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @property
    def union(self) -> np.ndarray:
        """Union in pixels of each overlapping pair."""
        return self.gt_area[self.pairs[:, 0]] + self.pred_area[self.pairs[:, 1]] - self.inter

    @property
    def iou(self) -> np.ndarray:
        """IoU of each overlapping pair."""
        return self.inter / self.union
