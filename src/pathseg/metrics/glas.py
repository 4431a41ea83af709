"""GlaS challenge object metrics (Sirinukunwattana et al. 2017): object F1, object Dice, object Hausdorff.

Inputs are label images of objects (glands). For binary masks, label connected components first
(:func:`scipy.ndimage.label`); touching glands then merge, so scores on binary ground truth are approximate.
Conventions: both images empty -> F1 1, Dice 1, Hausdorff 0; exactly one empty -> F1 0, Dice 0, Hausdorff nan.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential

from pathseg.metrics.overlap import Overlap


def _best_partner(ov: Overlap, by_gt: bool) -> np.ndarray:
    """For each gt (by_gt) or pred object, the index of the partner with the largest intersection, or -1."""
    n = ov.n_gt if by_gt else ov.n_pred
    own = ov.pairs[:, 0] if by_gt else ov.pairs[:, 1]
    other = ov.pairs[:, 1] if by_gt else ov.pairs[:, 0]
    best = np.full(n, -1, dtype=np.int64)
    if len(own):
        order = np.lexsort((-other, ov.inter, own))  # last of each group = largest intersection
        own_sorted = own[order]
        last = order[np.r_[own_sorted[1:] != own_sorted[:-1], True]]
        best[own[last]] = other[last]
    return best


def object_f1(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Object-level precision, recall and F1.

    A predicted object is a true positive if it covers at least 50% of the ground-truth object it overlaps most.
    """
    ov = Overlap.of(gt, pred)
    if ov.n_gt == 0 and ov.n_pred == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    best = _best_partner(ov, by_gt=False)
    inter = _pair_inter(ov)
    tp_pred = np.array(
        [b >= 0 and inter.get((int(b), j), 0) >= 0.5 * ov.gt_area[b] for j, b in enumerate(best)], dtype=bool
    )
    detected_gt = np.unique(best[tp_pred])
    precision = tp_pred.sum() / ov.n_pred if ov.n_pred else 0.0
    recall = detected_gt.size / ov.n_gt if ov.n_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def _pair_inter(ov: Overlap) -> dict[tuple[int, int], int]:
    return {(int(g), int(p)): int(n) for (g, p), n in zip(ov.pairs, ov.inter, strict=True)}


def object_dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Object Dice: area-weighted Dice of each object with its most-overlapping partner, averaged both ways."""
    ov = Overlap.of(gt, pred)
    if ov.n_gt == 0 and ov.n_pred == 0:
        return 1.0
    if ov.n_gt == 0 or ov.n_pred == 0:
        return 0.0
    inter = _pair_inter(ov)

    def one_way(by_gt: bool) -> float:
        best = _best_partner(ov, by_gt)
        own_area = ov.gt_area if by_gt else ov.pred_area
        other_area = ov.pred_area if by_gt else ov.gt_area
        total = 0.0
        for i, b in enumerate(best):
            if b < 0:
                continue
            key = (i, int(b)) if by_gt else (int(b), i)
            total += own_area[i] * 2.0 * inter[key] / (own_area[i] + other_area[b])
        return total / own_area.sum()

    return 0.5 * (one_way(True) + one_way(False))


def _hausdorff(a: np.ndarray, b: np.ndarray, slices_a, slices_b, la: int, lb: int) -> float:
    """Hausdorff distance (pixels) between object ``la`` of image ``a`` and object ``lb`` of image ``b``."""
    sl = tuple(slice(min(s1.start, s2.start), max(s1.stop, s2.stop)) for s1, s2 in zip(slices_a, slices_b, strict=True))
    ma = a[sl] == la
    mb = b[sl] == lb
    d_to_b = ndi.distance_transform_edt(~mb)
    d_to_a = ndi.distance_transform_edt(~ma)
    return float(max(d_to_b[ma].max(), d_to_a[mb].max()))


def object_hausdorff(gt: np.ndarray, pred: np.ndarray) -> float:
    """Object Hausdorff (pixels): area-weighted Hausdorff distance of each object to its partner, both ways.

    The partner is the most-overlapping object; with no overlap, the object at the smallest Hausdorff distance.
    """
    ov = Overlap.of(gt, pred)
    if ov.n_gt == 0 and ov.n_pred == 0:
        return 0.0
    if ov.n_gt == 0 or ov.n_pred == 0:
        return float("nan")
    # renumber 1..n in label order so that object i of the overlap is label i + 1 (and find_objects stays small)
    gt = relabel_sequential(np.asarray(gt))[0]
    pred = relabel_sequential(np.asarray(pred))[0]
    g_sl = ndi.find_objects(gt)
    p_sl = ndi.find_objects(pred)

    def one_way(by_gt: bool) -> float:
        best = _best_partner(ov, by_gt)
        n_other = ov.n_pred if by_gt else ov.n_gt
        own_img, other_img = (gt, pred) if by_gt else (pred, gt)
        own_sl, other_sl = (g_sl, p_sl) if by_gt else (p_sl, g_sl)
        own_area = ov.gt_area if by_gt else ov.pred_area
        total = 0.0
        for i in range(own_area.size):
            partners = [int(best[i])] if best[i] >= 0 else range(n_other)
            dist = min(_hausdorff(own_img, other_img, own_sl[i], other_sl[j], i + 1, j + 1) for j in partners)
            total += own_area[i] * dist
        return total / own_area.sum()

    return 0.5 * (one_way(True) + one_way(False))


def glas_scores(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Object F1 (with precision and recall), object Dice and object Hausdorff (pixels) of one image."""
    f1 = object_f1(gt, pred)
    return {
        "object_f1": f1["f1"],
        "object_precision": f1["precision"],
        "object_recall": f1["recall"],
        "object_dice": object_dice(gt, pred),
        "object_hausdorff": object_hausdorff(gt, pred),
    }
