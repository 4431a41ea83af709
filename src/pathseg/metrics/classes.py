"""Nucleus classification metrics as HoVer-Net reports them (Graham et al. 2019, ``compute_stats.py``).

Detection: ground-truth and predicted nuclei are paired by their centroids (Hungarian matching, distance at most
``radius`` pixels; HoVer-Net uses 12 px at 40x). F_d = 2 TP / (2 TP + FP + FN). Classification: for each class
c, F_c = 2 (TP_c + TN_c) / (2 (TP_c + TN_c) + 2 FP_c + 2 FN_c + FP_d,c + FN_d,c), counted over the paired nuclei
that have class c on either side plus the unpaired nuclei of class c.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree


def pair_centroids(
    true_xy: np.ndarray, pred_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pairs (K, 2) of indices, unpaired true indices, unpaired pred indices), minimising total distance."""
    true_xy = np.asarray(true_xy, float).reshape(-1, 2)
    pred_xy = np.asarray(pred_xy, float).reshape(-1, 2)
    if len(true_xy) == 0 or len(pred_xy) == 0:
        return np.zeros((0, 2), int), np.arange(len(true_xy)), np.arange(len(pred_xy))
    tree = cKDTree(pred_xy)
    cand = tree.query_ball_point(true_xy, r=radius)
    rows = np.unique([i for i, c in enumerate(cand) if c])
    cols = np.unique([j for c in cand for j in c])
    if rows.size == 0:
        return np.zeros((0, 2), int), np.arange(len(true_xy)), np.arange(len(pred_xy))
    d = np.linalg.norm(true_xy[rows][:, None] - pred_xy[cols][None], axis=-1)
    big = radius * 10 + 1
    cost = np.where(d <= radius, d, big)
    r, c = linear_sum_assignment(cost)
    ok = cost[r, c] <= radius
    pairs = np.stack([rows[r[ok]], cols[c[ok]]], axis=1)
    unpaired_true = np.setdiff1d(np.arange(len(true_xy)), pairs[:, 0])
    unpaired_pred = np.setdiff1d(np.arange(len(pred_xy)), pairs[:, 1])
    return pairs, unpaired_true, unpaired_pred


def type_scores(
    paired_true: np.ndarray,
    paired_pred: np.ndarray,
    unpaired_true: np.ndarray,
    unpaired_pred: np.ndarray,
    classes: list[int],
) -> dict[str, float]:
    """F_d, accuracy and F_c per class from classes of paired and unpaired nuclei (pooled over any number of
    images, as HoVer-Net pools a whole test set)."""
    pt, pp, ut, up = (np.asarray(a) for a in (paired_true, paired_pred, unpaired_true, unpaired_pred))
    tp_d, fp_d, fn_d = len(pt), len(up), len(ut)
    out = {
        "f_d": 2 * tp_d / (2 * tp_d + fp_d + fn_d) if (tp_d + fp_d + fn_d) else 1.0,
        "accuracy": float((pt == pp).mean()) if len(pt) else float("nan"),
    }
    for c in classes:
        sel = (pt == c) | (pp == c)
        t, p = pt[sel], pp[sel]
        tp = int(((t == c) & (p == c)).sum())
        tn = int(((t != c) & (p != c)).sum())
        fp = int(((t != c) & (p == c)).sum())
        fn = int(((t == c) & (p != c)).sum())
        fpd, fnd = int((up == c).sum()), int((ut == c).sum())
        denom = 2 * (tp + tn) + 2 * fp + 2 * fn + fpd + fnd
        out[f"f_c{c}"] = 2 * (tp + tn) / denom if denom else float("nan")
    return out


def classification_scores(
    true_xy: np.ndarray,
    true_cls: np.ndarray,
    pred_xy: np.ndarray,
    pred_cls: np.ndarray,
    classes: list[int],
    radius: float = 12.0,
) -> dict[str, float]:
    """F_d, classification accuracy of paired nuclei, and F_c for each class id in ``classes`` (one image)."""
    true_cls, pred_cls = np.asarray(true_cls), np.asarray(pred_cls)
    pairs, un_t, un_p = pair_centroids(true_xy, pred_xy, radius)
    return type_scores(true_cls[pairs[:, 0]], pred_cls[pairs[:, 1]], true_cls[un_t], pred_cls[un_p], classes)


def nuclei_with_classes(labels: np.ndarray, class_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (N, 2) as x, y and the majority class of each nucleus of ``labels`` in ``class_map``."""
    labels = np.asarray(labels).astype(np.int64)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros((0, 2)), np.zeros(0, np.int64)
    idx = np.searchsorted(ids, labels[labels > 0])
    ys, xs = np.nonzero(labels > 0)
    area = np.bincount(idx, minlength=ids.size)
    xy = np.stack([np.bincount(idx, xs, ids.size), np.bincount(idx, ys, ids.size)], 1) / area[:, None]
    cls = np.asarray(class_map)[labels > 0].astype(np.int64)
    votes = np.zeros((ids.size, int(cls.max()) + 1 if cls.size else 1), np.int64)
    np.add.at(votes, (idx, cls), 1)
    return xy, votes.argmax(1)
