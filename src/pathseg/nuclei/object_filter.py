"""A learned object filter for the automatic path: drop watershed objects unlikely to be annotated nuclei.

Each object is described by features of the AIS maps under and around it (no image colours, so the filter works
on the maps alone); a logistic model fit on objects whose match to a true nucleus is known gives each object a keep
probability, and objects below ``threshold`` are removed. The model is a few numbers stored in a model's config
(``ais_params["object_filter"]``), fit by ``benchmarks/fit_object_filter.py`` on images the decoder never saw.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import minimize
from skimage.measure import regionprops

#: Per-object features, in this order: mean / max foreground probability, log area (pixels at the model's
#: resolution), solidity, mean boundary and centre distance, minimum centre distance, mean foreground probability
#: in a ring of 2 model pixels outside the object (0 for an object with no background around it); mean and max
#: foreground divided by their medians over the image's objects (so that a stain the network is less sure of as a
#: whole does not make every nucleus look faint).
FEATURES = (
    "mean_foreground",
    "max_foreground",
    "log_area",
    "solidity",
    "mean_boundary",
    "mean_center",
    "min_center",
    "ring_foreground",
    "relative_mean_foreground",
    "relative_max_foreground",
)


def object_features(
    labels: np.ndarray, foreground: np.ndarray, center: np.ndarray, boundary: np.ndarray, scale: float = 1.0
) -> np.ndarray:
    """(n, len(FEATURES)) features of the objects 1..n of ``labels`` (labels 1..n without gaps).

    ``scale`` = map pixels per model pixel (areas and the ring width are in model pixels)."""
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros((0, len(FEATURES)))
    idx = np.arange(1, n + 1)
    r = max(1, round(2 * scale))
    ring = ndi.grey_dilation(labels, footprint=np.ones((2 * r + 1, 2 * r + 1), bool))
    ring[labels > 0] = 0
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)  # > 0: labels have no gaps

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=values.ravel(), minlength=n + 1)[1:] / area

    ring_area = np.bincount(ring.ravel(), minlength=n + 1)[1:]
    ring_sum = np.bincount(ring.ravel(), weights=foreground.ravel(), minlength=n + 1)[1:]
    ring_fg = np.divide(ring_sum, ring_area, out=np.zeros(n), where=ring_area > 0)
    solidity = np.array([p.solidity for p in regionprops(labels)])
    mean_fg, max_fg = mean(foreground), ndi.maximum(foreground, labels, idx)
    return np.stack(
        [
            mean_fg,
            max_fg,
            np.log(area / scale**2),
            solidity,
            mean(boundary),
            mean(center),
            ndi.minimum(center, labels, idx),
            ring_fg,
            mean_fg / max(float(np.median(mean_fg)), 1e-6),
            max_fg / max(float(np.median(max_fg)), 1e-6),
        ],
        axis=1,
    )


def keep_probability(features: np.ndarray, model: Mapping) -> np.ndarray:
    """Logistic keep probability of each row of ``features`` under ``model`` (mean, std, coef, bias)."""
    z = (features - np.asarray(model["mean"])) / np.asarray(model["std"])
    return 1.0 / (1.0 + np.exp(-(z @ np.asarray(model["coef"]) + float(model["bias"]))))


def filter_objects(
    labels: np.ndarray, maps: tuple[np.ndarray, np.ndarray, np.ndarray], model: Mapping, scale: float = 1.0
) -> np.ndarray:
    """``labels`` (1..n without gaps) with the objects of keep probability under ``model["threshold"]`` set to 0."""
    if list(model.get("features", FEATURES)) != list(FEATURES):
        raise ValueError(f"object filter was fit on features {model.get('features')}, this version computes {FEATURES}")
    p = keep_probability(object_features(labels, *maps, scale=scale), model)
    drop = np.concatenate([[False], p < float(model["threshold"])])
    return np.where(drop[labels], 0, labels)


def fit_logistic(features: np.ndarray, keep: np.ndarray, l2: float = 1e-3) -> dict:
    """Fit the filter's logistic model (standardised features, L2 penalty ``l2`` on the weights) to 0/1 ``keep``."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    z = (features - mean) / std
    y = keep.astype(np.float64)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = z @ w[:-1] + w[-1]
        p = 1.0 / (1.0 + np.exp(-s))
        value = np.mean(np.logaddexp(0.0, s) - y * s) + l2 * np.sum(w[:-1] ** 2)
        grad = np.concatenate([z.T @ (p - y) / len(y) + 2 * l2 * w[:-1], [np.mean(p - y)]])
        return value, grad

    w = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B").x
    return {
        "features": list(FEATURES),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "coef": w[:-1].tolist(),
        "bias": float(w[-1]),
    }
