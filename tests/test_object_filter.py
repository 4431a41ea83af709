"""The learned object filter: features per watershed object, a logistic keep probability, objects dropped."""

import numpy as np
import pytest

from pathseg.nuclei.automatic import AISParams, watershed_from_maps
from pathseg.nuclei.object_filter import FEATURES, filter_objects, fit_logistic, object_features
from pathseg.nuclei.targets import distance_targets


def _faint_every_other(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ideal maps of ``labels`` with every other nucleus's foreground at 0.6 instead of 1; its mask."""
    t = distance_targets(labels)
    ids = np.unique(labels[labels > 0])
    faint = np.isin(labels, ids[::2])
    t[0][faint] = 0.6
    return t, faint


def test_features_describe_each_object_in_model_pixels(nuclei_image):
    _, labels = nuclei_image
    t = distance_targets(labels)
    seg = watershed_from_maps(*t, AISParams())
    x = object_features(seg.astype(np.int64), *t)
    assert x.shape == (seg.max(), len(FEATURES))
    areas = np.bincount(seg.ravel())[1:]
    assert np.allclose(x[:, FEATURES.index("log_area")], np.log(areas))
    assert np.allclose(x[:, FEATURES.index("mean_foreground")], 1.0)
    assert ((x[:, FEATURES.index("solidity")] > 0.5) & (x[:, FEATURES.index("solidity")] <= 1)).all()
    # the same maps at twice the pixels: areas in model pixels stay put
    big = np.kron(seg, np.ones((2, 2), seg.dtype)).astype(np.int64)
    maps2 = [np.kron(m, np.ones((2, 2), m.dtype)) for m in t]
    x2 = object_features(big, *maps2, scale=2.0)
    assert np.allclose(x2[:, FEATURES.index("log_area")], x[:, FEATURES.index("log_area")])
    assert object_features(np.zeros((8, 8), np.int64), *(np.zeros((8, 8)),) * 3).shape == (0, len(FEATURES))


def test_a_fitted_filter_drops_the_objects_it_learned_to_drop(nuclei_image):
    _, labels = nuclei_image
    t, faint = _faint_every_other(labels)
    seg = watershed_from_maps(*t, AISParams()).astype(np.int64)
    x = object_features(seg, *t)
    keep = np.array([not faint[seg == i].any() for i in range(1, seg.max() + 1)])
    model = {**fit_logistic(x, keep), "threshold": 0.5}
    assert model["features"] == list(FEATURES)
    kept = filter_objects(seg, tuple(t), model)
    assert not (kept[faint] > 0).any()
    assert np.array_equal(kept > 0, (seg > 0) & ~faint)
    # the same through the watershed's parameters, relabelled 1..n
    out = watershed_from_maps(*t, AISParams(object_filter=model))
    assert out.max() == keep.sum() and np.array_equal(out > 0, kept > 0)
    assert np.array_equal(watershed_from_maps(*t, AISParams(object_filter=None)), seg)


def test_a_filter_fit_on_other_features_is_refused(nuclei_image):
    _, labels = nuclei_image
    t = distance_targets(labels)
    seg = watershed_from_maps(*t, AISParams()).astype(np.int64)
    model = {**fit_logistic(object_features(seg, *t), np.arange(seg.max()) % 2 == 0), "threshold": 0.5}
    model["features"] = ["mean_foreground"]
    with pytest.raises(ValueError, match="fit on features"):
        filter_objects(seg, tuple(t), model)
