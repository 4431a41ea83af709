"""Instance metrics on small cases whose expected values were worked out by hand (see comments)."""

import numpy as np
import pytest

from pathseg.metrics import (
    aji,
    instance_scores,
    mean_segmentation_accuracy,
    panoptic_quality,
    pixel_dice,
    segmentation_accuracy,
)

# gt: object 1 (4 px), object 2 (4 px), object 3 (2 px)
GT = np.array(
    [
        [1, 1, 0, 0, 2, 2],
        [1, 1, 0, 0, 2, 2],
        [0, 0, 0, 0, 0, 0],
        [3, 3, 0, 0, 0, 0],
    ]
)
# pred: 5 covers gt1 + 1 px (5 px), 7 covers half of gt2 (2 px), 9 matches nothing (2 px)
PRED = np.array(
    [
        [5, 5, 0, 0, 0, 7],
        [5, 5, 0, 0, 0, 7],
        [5, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 9, 9],
    ]
)
# IoU(gt1, p5) = 4 / 5 = 0.8; IoU(gt2, p7) = 2 / 4 = 0.5; gt3 and p9 overlap nothing.


def test_sa50_counts_iou_equal_to_threshold():
    # t = 0.5: TP = 2 (0.8 and 0.5), FP = 1 (p9), FN = 1 (gt3): 2 / 4
    assert segmentation_accuracy(GT, PRED, 0.5) == pytest.approx(0.5)


def test_sa_above_half():
    # t = 0.6: TP = 1, FP = 2, FN = 2: 1 / 5
    assert segmentation_accuracy(GT, PRED, 0.6) == pytest.approx(0.2)
    # t = 0.85: nothing matches: 0 / 6
    assert segmentation_accuracy(GT, PRED, 0.85) == 0.0


def test_msa_by_hand():
    # thresholds .50 -> 0.5; .55 .60 .65 .70 .75 .80 -> 0.2 each; .85 .90 .95 -> 0: (0.5 + 6 * 0.2) / 10
    assert mean_segmentation_accuracy(GT, PRED) == pytest.approx(0.17)


def test_aji_by_hand():
    # C = 4 + 2; U = 5 (gt1 u p5) + 4 (gt2 u p7) + 2 (gt3 unpaired) + 2 (p9 unpaired) = 13
    assert aji(GT, PRED) == pytest.approx(6 / 13)


def test_pq_by_hand():
    # matches need IoU > 0.5: only (gt1, p5). TP 1, FP 2, FN 2: DQ = 1 / 3, SQ = 0.8
    pq = panoptic_quality(GT, PRED)
    assert pq["dq"] == pytest.approx(1 / 3)
    assert pq["sq"] == pytest.approx(0.8)
    assert pq["pq"] == pytest.approx(0.8 / 3)


def test_pixel_dice_by_hand():
    # |gt| = 10, |pred| = 9, overlap = 6: 12 / 19
    assert pixel_dice(GT, PRED) == pytest.approx(12 / 19)


def test_hungarian_allows_one_match_per_object():
    # one gt object of 2 px, two predictions of 1 px each: IoU 0.5 with both, but only one may match.
    gt = np.array([[1, 1]])
    pred = np.array([[5, 6]])
    assert segmentation_accuracy(gt, pred, 0.5) == pytest.approx(1 / 2)  # TP 1, FP 1, FN 0


def test_hungarian_maximises_matches():
    # gt a = {0, 1}, gt b = {2}; pred x = {1, 2}, pred y = {0}. At t = 1/3 greedy by IoU could pair (a, y) first...
    gt = np.array([[1, 1, 2]])
    pred = np.array([[4, 3, 3]])
    # IoU(a, x) = 1/3, IoU(a, y) = 1/2, IoU(b, x) = 1/2; best assignment: (a, y) and (b, x): TP 2
    assert segmentation_accuracy(gt, pred, 1 / 3) == pytest.approx(1.0)


def test_perfect_and_relabelled_prediction():
    pred = np.where(GT > 0, GT + 100, 0)  # same objects, other ids
    s = instance_scores(GT, pred)
    for key in ("msa", "sa50", "aji", "pq", "dq", "sq", "dice"):
        assert s[key] == pytest.approx(1.0), key
    assert s["n_gt"] == 3 and s["n_pred"] == 3


def test_empty_edge_cases():
    empty = np.zeros((4, 6), dtype=np.uint16)
    both = instance_scores(empty, empty)
    assert all(both[k] == 1.0 for k in ("msa", "sa50", "aji", "pq", "dice"))
    missed = instance_scores(GT, empty)
    spurious = instance_scores(empty, PRED)
    for s in (missed, spurious):
        assert all(s[k] == 0.0 for k in ("msa", "sa50", "aji", "pq", "dq", "dice"))


def test_shape_and_dtype_errors():
    with pytest.raises(ValueError, match="shape"):
        instance_scores(GT, PRED[:2])
    with pytest.raises(ValueError, match="integer"):
        instance_scores(GT.astype(float), PRED)


def test_large_sparse_labels_match_dense_result():
    # ids far above the pixel count take the sort-based path; the result must not change
    big = np.where(PRED > 0, PRED + 10**12, 0)
    assert instance_scores(GT, big) == instance_scores(GT, PRED)
