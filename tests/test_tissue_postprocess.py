"""Cleaning of tissue class maps: hole filling and speck absorption, with areas in µm²."""

import numpy as np
import pytest

from pathseg.tissue.postprocess import CleanParams, clean_classes


def _map() -> np.ndarray:
    c = np.zeros((60, 60), np.uint8)
    c[10:40, 10:40] = 1  # a gland, 900 px
    c[20:24, 20:24] = 0  # a 16-px hole inside it
    c[30:38, 28:38] = 2  # an 80-px region of class 2 inside it
    c[50:52, 50:52] = 1  # a 4-px speck of class 1 in the background
    c[0:3, 57:60] = 1  # a 9-px speck at the image corner
    return c


def test_defaults_change_nothing():
    c = _map()
    assert np.array_equal(clean_classes(c, 0.5), c)


def test_holes_filled_up_to_the_area_limit():
    c = _map()
    # at 0.5 µm/px a pixel is 0.25 µm²: the 16-px hole is 4 µm², the class-2 region 20 µm²
    out = clean_classes(c, 0.5, CleanParams(max_hole_um2=5))
    assert (out[20:24, 20:24] == 1).all()  # filled
    assert (out[30:38, 28:38] == 2).all()  # too large: kept
    out = clean_classes(c, 0.5, {"max_hole_um2": 20})
    assert (out[30:38, 28:38] == 1).all()
    assert (out[0:10] == c[0:10]).all()  # the background touching the border is no hole


def test_small_regions_take_the_class_around_them():
    c = _map()
    out = clean_classes(c, 0.5, CleanParams(min_area_um2=3))  # < 12 px
    assert (out[50:52, 50:52] == 0).all() and (out[0:3, 57:60] == 0).all()
    assert (out[10:20, 10:40] == 1).all() and (out[30:38, 28:38] == 2).all()
    assert (out[20:24, 20:24] == 0).all()  # 16 px: not small enough
    assert c[50, 50] == 1  # the input is left alone


def test_pixel_size_sets_the_scale():
    c = _map()
    # at 1 µm/px the 16-px hole is 16 µm²: a 5 µm² limit no longer fills it
    assert (clean_classes(c, 1.0, CleanParams(max_hole_um2=5))[20:24, 20:24] == 0).all()


def test_bad_input():
    with pytest.raises(ValueError, match="class map"):
        clean_classes(np.zeros((2, 2, 2), np.uint8), 0.5)
    with pytest.raises(ValueError, match="mpp"):
        clean_classes(np.zeros((2, 2), np.uint8), 0)
