"""The weight-free classical nucleus segmenter on synthetic nuclei."""

import numpy as np
import pytest

from pathseg.metrics import instance_scores
from pathseg.models.classical import ClassicalModel, haematoxylin, segment_classical
from tests.conftest import synthetic_nuclei


def test_finds_separate_nuclei(nuclei_image):
    rgb, gt = nuclei_image
    labels = segment_classical(rgb, mpp=0.25)
    assert labels.dtype == np.uint32 and labels.shape == gt.shape
    s = instance_scores(gt, labels)
    assert s["n_pred"] == s["n_gt"]
    assert s["sa50"] > 0.95 and s["dice"] > 0.9


def test_splits_two_touching_nuclei():
    rgb = np.full((60, 80, 3), (235, 180, 210), dtype=np.uint8)
    yy, xx = np.mgrid[:60, :80]
    a = (yy - 30) ** 2 + (xx - 30) ** 2 <= 12**2
    b = (yy - 30) ** 2 + (xx - 52) ** 2 <= 12**2
    rgb[a | b] = (70, 50, 140)
    labels = segment_classical(rgb, mpp=0.25)
    assert labels.max() == 2
    assert labels[30, 30] != labels[30, 52]


def test_parameters_are_in_microns():
    # the same tissue imaged at half the resolution gives the same nuclei when mpp says so
    rgb, gt = synthetic_nuclei((512, 512), n=30, radius=14, seed=3)
    full = segment_classical(rgb, mpp=0.25)
    half = segment_classical(rgb[::2, ::2].copy(), mpp=0.5)
    assert abs(int(full.max()) - int(half.max())) <= 1
    assert instance_scores(gt[::2, ::2], half)["sa50"] > 0.9


def test_blank_image_gives_no_nuclei():
    assert segment_classical(np.full((32, 32, 3), 240, np.uint8), 0.25).max() == 0


def test_bad_input():
    with pytest.raises(ValueError, match="RGB uint8"):
        segment_classical(np.zeros((8, 8), np.uint8), 0.25)
    with pytest.raises(ValueError, match="positive"):
        segment_classical(np.zeros((8, 8, 3), np.uint8), 0.0)


def test_model_overrides():
    model = ClassicalModel(min_area_um2=1000.0)
    rgb, _ = synthetic_nuclei()
    assert model.segment(rgb, 0.25).max() == 0  # every synthetic nucleus (~24 µm²) is below 1000 µm²


def test_fit_slide_ignores_glass():
    rgb, gt = synthetic_nuclei((256, 256), n=20, seed=3)
    rgb[gt == 0] = (210, 150, 190)  # stroma with some haematoxylin, as on real slides
    glass = np.clip(np.random.default_rng(0).normal(243, 3, (256, 256, 3)), 0, 255).astype(np.uint8)
    model = ClassicalModel()
    model.fit_slide([glass, glass], mpp=0.25)  # samples that hit only glass fix nothing
    assert model.params.threshold is None
    assert instance_scores(gt, model.segment(rgb, 0.25))["sa50"] > 0.9
    model.fit_slide([glass, np.concatenate([rgb, glass], axis=1)], mpp=0.25)
    stroma_h = haematoxylin(rgb)[gt == 0].mean()
    nuclei_h = haematoxylin(rgb)[gt > 0].mean()
    assert stroma_h < model.params.threshold < nuclei_h  # splits nuclei from tissue, not tissue from glass
    assert instance_scores(gt, model.segment(rgb, 0.25))["sa50"] > 0.9


def test_black_fill_neither_becomes_nuclei_nor_takes_the_threshold(nuclei_image):
    rgb, gt = nuclei_image
    filled = np.concatenate([np.zeros((rgb.shape[0], 60, 3), np.uint8), rgb], axis=1)  # blacked-out strip
    labels = segment_classical(filled, mpp=0.25)
    assert not labels[:, :60].any()
    s = instance_scores(gt, labels[:, 60:])  # as without the strip (test_finds_separate_nuclei); black fill
    assert s["n_pred"] == s["n_gt"] and s["sa50"] > 0.95  # taken at face value made every nucleus background
    model = ClassicalModel()
    model.fit_slide([filled], mpp=0.25)  # the fill counts as glass: the threshold is set by the stained pixels
    alone = ClassicalModel()
    alone.fit_slide([rgb], mpp=0.25)
    assert model.params.threshold == pytest.approx(alone.params.threshold, rel=0.01)  # smoothing at its edge
