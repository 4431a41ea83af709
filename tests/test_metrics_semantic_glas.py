"""Semantic and GlaS object metrics on small hand-computed cases."""

import numpy as np
import pytest

from pathseg.metrics import (
    confusion_matrix,
    glas_scores,
    object_dice,
    object_f1,
    object_hausdorff,
    semantic_scores,
)

GT = np.array([[0, 0, 1, 1], [2, 2, 1, 0]])
PRED = np.array([[0, 1, 1, 1], [2, 0, 1, 0]])


def test_confusion_matrix_by_hand():
    # rows gt, cols pred: gt0 -> (0, 1, 0 at (1,3)) ; gt1 all right; gt2 -> one right, one as 0
    expected = np.array([[2, 1, 0], [0, 3, 0], [1, 0, 1]])
    assert np.array_equal(confusion_matrix(GT, PRED), expected)


def test_semantic_scores_by_hand():
    s = semantic_scores(GT, PRED)
    assert s["accuracy"] == pytest.approx(6 / 8)
    # Dice: c0 2*2/(2*2+1+1); c1 2*3/(2*3+1+0); c2 2*1/(2*1+0+1)
    assert s["dice"] == pytest.approx([2 / 3, 6 / 7, 2 / 3])
    assert s["iou"] == pytest.approx([2 / 4, 3 / 4, 1 / 2])
    assert s["mean_dice"] == pytest.approx((2 / 3 + 6 / 7 + 2 / 3) / 3)


def test_ignore_index_and_absent_class():
    s = semantic_scores(GT, PRED, n_classes=4, ignore_index=2)
    assert s["accuracy"] == pytest.approx(5 / 6)  # the two gt-2 pixels are left out
    assert np.isnan(s["dice"][3])  # class 3 in neither image: nan, left out of the mean
    assert s["mean_dice"] == pytest.approx(np.nanmean(s["dice"]))


def test_semantic_all_background():
    z = np.zeros((3, 3), dtype=np.uint8)
    s = semantic_scores(z, z, n_classes=2)
    assert s["accuracy"] == 1.0 and s["dice"][0] == 1.0 and np.isnan(s["dice"][1])


# GlaS: G1 = 2x2 block, G2 = 2 px at the bottom right; S3 covers G1 + 1 px, S4 covers 1 px of G2
G = np.array(
    [
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 2, 2],
    ]
)
S = np.array(
    [
        [3, 3, 3, 0, 0, 0],
        [3, 3, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 4],
    ]
)


def test_object_f1_by_hand():
    # S3 covers 4/4 of G1, S4 covers 1/2 of G2 (>= 50%): both true positives
    assert object_f1(G, S) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_object_dice_by_hand():
    # gt side: (4 * 8/9 + 2 * 2/3) / 6 = 22/27; pred side: (5 * 8/9 + 1 * 2/3) / 6 = 23/27; mean 5/6
    assert object_dice(G, S) == pytest.approx(5 / 6)


def test_object_hausdorff_by_hand():
    # every pair is 1 px apart at worst
    assert object_hausdorff(G, S) == pytest.approx(1.0)


def test_glas_no_overlap_uses_nearest_object():
    g = np.zeros((1, 5), dtype=int)
    s = np.zeros((1, 5), dtype=int)
    g[0, 0] = 1
    s[0, 3] = 1
    r = glas_scores(g, s)
    assert r["object_f1"] == 0.0 and r["object_dice"] == 0.0
    assert r["object_hausdorff"] == pytest.approx(3.0)


def test_glas_empty_cases():
    z = np.zeros_like(G)
    assert glas_scores(z, z)["object_f1"] == 1.0
    assert glas_scores(z, z)["object_hausdorff"] == 0.0
    r = glas_scores(G, z)
    assert r["object_f1"] == 0.0 and r["object_dice"] == 0.0 and np.isnan(r["object_hausdorff"])
