import numpy as np
import pytest
from scipy import ndimage as ndi

from pathseg.resize import resize_labels, resize_rgb


@pytest.mark.parametrize("size", [264, 320, 800])
def test_resized_labels_stay_on_the_resized_image(size):
    """Labels and their own RGB rendering, resized to the same size, keep every object at the same place on
    average: labels are sampled at output pixel centres, as the image is (torch's plain ``nearest`` puts them 0.3-0.5
    output px down and right at these sizes). Whole-number shrinking (1/2, 1/3) stays 0.25 px off either way: no
    single input pixel sits at an output pixel's centre."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:400, :400]
    labels = np.zeros((400, 400), np.int32)
    centres = [(y + rng.uniform(), x + rng.uniform()) for y in range(40, 400, 80) for x in range(40, 400, 80)]
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 25**2] = i
    rgb = np.repeat((labels > 0).astype(np.uint8)[..., None] * 255, 3, axis=2)
    lab = resize_labels(labels, (size, size))
    img = resize_rgb(rgb, (size, size))[..., 0].astype(float)
    assert set(np.unique(lab)) == set(range(len(centres) + 1))
    index = range(1, len(centres) + 1)
    at_lab = np.array(ndi.center_of_mass(lab > 0, lab, index))
    f = size / 400  # output px per input px; pixel centres at i + 0.5 in both frames
    expected = (np.array(centres) + 0.5) * f - 0.5
    near = np.abs(expected - at_lab).max(axis=1) < 1.5  # same object, same numbering
    assert near.all()
    at_img = np.array(
        [ndi.center_of_mass(img[round(y) - 20 : round(y) + 21, round(x) - 20 : round(x) + 21]) for y, x in expected]
    )
    at_img += np.round(expected) - 20  # the image's own objects, in windows around them
    for where in (at_lab, at_img):
        offset = (where - expected).mean(axis=0)
        assert np.abs(offset).max() < 0.1, offset


def test_shift_maps_is_scipys_bilinear_shift_with_repeated_edges():
    from scipy import ndimage as ndi

    from pathseg.resize import shift_maps

    maps = np.random.default_rng(0).random((3, 40, 56), dtype=np.float32)
    for dy, dx in [(0.415, 0.455), (1, 2), (-0.3, 1.7), (0.0, 0.5), (-2.2, -0.1), (0, 0)]:
        got = shift_maps(maps, dy, dx)
        assert got.dtype == np.float32 and got.shape == maps.shape
        want = ndi.shift(maps, (0, -dy, -dx), order=1, mode="nearest")
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(shift_maps(maps, 1, 0)[:, :-1], maps[:, 1:])  # whole pixels: exact
