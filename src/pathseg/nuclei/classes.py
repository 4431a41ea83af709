"""One class per nucleus: a probability-weighted vote over its pixels (instead of a per-pixel argmax)."""

from __future__ import annotations

import numpy as np


def vote_classes(
    labels: np.ndarray, probs: np.ndarray, background: int | None = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class of every nucleus of ``labels`` (H, W) from per-pixel class probabilities ``probs`` (C, H, W).

    Each nucleus's class probabilities are the mean of its pixels' probabilities (the background class, if any,
    is left out and the rest renormalised); its class is their argmax. Returns (ids (N,), class (N,),
    probabilities (N, C)) in increasing id order; the background column of the probabilities is 0.
    """
    labels = np.asarray(labels)
    if probs.shape[1:] != labels.shape:
        raise ValueError(f"probabilities {probs.shape[1:]} and labels {labels.shape} differ in shape")
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return ids.astype(np.int64), np.zeros(0, np.int64), np.zeros((0, probs.shape[0]))
    index = np.searchsorted(ids, labels[labels > 0])
    flat = probs[:, labels > 0].astype(np.float64)
    sums = np.stack([np.bincount(index, weights=flat[c], minlength=ids.size) for c in range(probs.shape[0])], 1)
    if background is not None:
        sums[:, background] = 0
    totals = sums.sum(1, keepdims=True)
    p = np.divide(sums, totals, out=np.zeros_like(sums), where=totals > 0)
    return ids.astype(np.int64), p.argmax(1).astype(np.int64), p


def argmax_disagreement(labels: np.ndarray, probs: np.ndarray, background: int | None = 0) -> np.ndarray:
    """For each nucleus (increasing id), whether a per-pixel argmax gives its pixels more than one class."""
    pix = probs.copy()
    if background is not None:
        pix[background] = -np.inf
    cls = pix.argmax(0)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    out = np.zeros(ids.size, bool)
    if ids.size == 0:
        return out
    index = np.searchsorted(ids, labels[labels > 0])
    c = cls[labels > 0]
    lo = np.full(ids.size, np.iinfo(np.int64).max)
    hi = np.full(ids.size, -1)
    np.minimum.at(lo, index, c)
    np.maximum.at(hi, index, c)
    return lo != hi
