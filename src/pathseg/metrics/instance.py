"""Instance segmentation metrics: mSA / SA50 (PathoSAM), AJI (Kumar 2017), PQ = DQ * SQ, pixel Dice.

Conventions (stated because papers differ):
- label 0 is background; any other integer is one object;
- both images empty: every score is 1.0 (perfect agreement); one empty and the other not: 0.0;
- AJI follows HoVer-Net's ``get_fast_aji``: each ground-truth object is paired with the prediction of highest IoU
  (a prediction may be paired more than once); unpaired objects of both sides add their area to the union;
- PQ matches at IoU > 0.5 (unique matches, as in HoVer-Net); SA(t) matches at IoU >= t with Hungarian matching
  that maximises the number of matches (ties broken by IoU).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from pathseg.metrics.overlap import Overlap

#: IoU thresholds of the mean segmentation accuracy: 0.50, 0.55, ..., 0.95.
SA_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


def count_matches(ov: Overlap, threshold: float) -> tuple[int, np.ndarray]:
    """Maximum number of one-to-one matches with IoU >= ``threshold``; also the IoUs of the matched pairs."""
    iou = ov.iou
    keep = iou >= threshold
    if not keep.any():
        return 0, np.zeros(0)
    pairs, iou = ov.pairs[keep], iou[keep]
    rows, r_inv = np.unique(pairs[:, 0], return_inverse=True)
    cols, c_inv = np.unique(pairs[:, 1], return_inverse=True)
    if rows.size == len(pairs) and cols.size == len(pairs):  # no conflicts: every candidate is a match
        return int(len(pairs)), iou
    # Hungarian on the (small) submatrix of candidates: maximise matches, then total IoU.
    score = np.zeros((rows.size, cols.size))
    score[r_inv, c_inv] = 1.0 + iou / (2.0 * len(pairs))
    r, c = linear_sum_assignment(score, maximize=True)
    hit = score[r, c] > 0
    return int(hit.sum()), score[r, c][hit] - 1.0


def _sa(ov: Overlap, threshold: float) -> float:
    if ov.n_gt == 0 and ov.n_pred == 0:
        return 1.0
    tp, _ = count_matches(ov, threshold)
    return tp / (ov.n_gt + ov.n_pred - tp)


def _msa(ov: Overlap, thresholds=SA_THRESHOLDS) -> float:
    return float(np.mean([_sa(ov, t) for t in thresholds]))


def _aji(ov: Overlap) -> float:
    if ov.n_gt == 0 and ov.n_pred == 0:
        return 1.0
    if len(ov.pairs) == 0:
        return 0.0
    iou = ov.iou
    # best prediction per ground-truth object (ties: the lowest prediction label, as numpy's argmax)
    order = np.lexsort((-ov.pairs[:, 1], iou, ov.pairs[:, 0]))
    g_sorted = ov.pairs[order, 0]
    last = np.r_[g_sorted[1:] != g_sorted[:-1], True]
    best = order[last]
    inter = ov.inter[best].sum()
    union = ov.union[best].sum()
    paired_gt = np.zeros(ov.n_gt, dtype=bool)
    paired_gt[ov.pairs[best, 0]] = True
    paired_pred = np.zeros(ov.n_pred, dtype=bool)
    paired_pred[ov.pairs[best, 1]] = True
    union += ov.gt_area[~paired_gt].sum() + ov.pred_area[~paired_pred].sum()
    return float(inter / union)


def _pq(ov: Overlap) -> dict[str, float]:
    if ov.n_gt == 0 and ov.n_pred == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0}
    iou = ov.iou
    matched = iou[iou > 0.5]
    tp = matched.size
    fp, fn = ov.n_pred - tp, ov.n_gt - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(matched.mean()) if tp else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq}


def segmentation_accuracy(gt: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> float:
    """SA(t) = TP / (TP + FP + FN) with one-to-one matching at IoU >= ``threshold``."""
    return _sa(Overlap.of(gt, pred), threshold)


def mean_segmentation_accuracy(gt: np.ndarray, pred: np.ndarray, thresholds=SA_THRESHOLDS) -> float:
    """mSA: SA(t) averaged over ``thresholds`` (default 0.50..0.95 in steps of 0.05)."""
    return _msa(Overlap.of(gt, pred), thresholds)


def aji(gt: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017, as HoVer-Net's ``get_fast_aji``)."""
    return _aji(Overlap.of(gt, pred))


def panoptic_quality(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """PQ, DQ and SQ with matches at IoU > 0.5 (unique). DQ = TP / (TP + FP/2 + FN/2), SQ = mean matched IoU."""
    return _pq(Overlap.of(gt, pred))


def pixel_dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Dice of the foregrounds (label > 0): 2|A∩B| / (|A| + |B|); 1.0 when both are empty."""
    a = np.asarray(gt) > 0
    b = np.asarray(pred) > 0
    if a.shape != b.shape:
        raise ValueError(f"ground truth and prediction differ in shape: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def instance_scores(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """All instance metrics of one image: msa, sa50, aji, pq, dq, sq, dice, n_gt, n_pred."""
    ov = Overlap.of(gt, pred)
    return {
        "msa": _msa(ov),
        "sa50": _sa(ov, 0.5),
        "aji": _aji(ov),
        **_pq(ov),
        "dice": pixel_dice(gt, pred),
        "n_gt": float(ov.n_gt),
        "n_pred": float(ov.n_pred),
    }
