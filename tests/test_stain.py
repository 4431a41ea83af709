"""Reinhard stain normalisation, and a nucleus model that normalises its automatic path's input."""

import numpy as np
import pytest
from skimage.color import lab2rgb, rgb2lab

from pathseg.errors import PathsegError
from pathseg.models.nucleus_sam import SamNucleusModel, compact_config
from pathseg.stain import lab_stats, reference_stats, reinhard, tissue_pixels
from tests.conftest import synthetic_nuclei


def recoloured(rgb: np.ndarray, scale=(0.9, 1.2, 0.8), shift=(4.0, 5.0, -3.0)) -> np.ndarray:
    """``rgb`` with each LAB channel scaled and shifted: the same tissue stained and scanned differently."""
    lab = rgb2lab(rgb) * np.array(scale) + np.array(shift)
    return (np.clip(lab2rgb(lab), 0, 1) * 255 + 0.5).astype(np.uint8)


def test_reinhard_matches_the_reference_and_undoes_a_recolouring():
    rgb, _ = synthetic_nuclei((96, 120), n=8, radius=9, seed=3)
    reference = reference_stats([rgb])
    assert np.abs(reinhard(rgb, reference).astype(int) - rgb).max() <= 1  # its own statistics: unchanged
    other = recoloured(rgb)
    assert np.abs(other.astype(int) - rgb).max() > 10
    back = reinhard(other, reference)
    mean, std = lab_stats(back)
    assert np.allclose(mean, reference["mean"], atol=0.5) and np.allclose(std, reference["std"], atol=0.5)
    assert np.abs(back.astype(int) - rgb).mean() < 2  # the recolouring undone, up to rounding
    # a crop normalised by its whole image's statistics matches the whole image's normalisation
    crop = reinhard(other[:40, :50], reference, lab_stats(other))
    assert np.array_equal(crop, reinhard(other, reference)[:40, :50])
    with pytest.raises(PathsegError, match="3 means and 3 positive stds"):
        reinhard(rgb, {"mean": [50, 0, 0], "std": [10, 0, 5]})
    with pytest.raises(PathsegError, match="RGB image"):
        reinhard(rgb[..., 0], reference)


def test_statistics_ignore_background_glass():
    rgb, _ = synthetic_nuclei((64, 64), n=4, radius=8, seed=1)
    padded = np.full((64, 160, 3), 245, np.uint8)  # most of the image is glass
    padded[:, :64] = rgb
    assert not tissue_pixels(rgb2lab(padded))[:, 64:].any()
    assert np.allclose(lab_stats(padded)[0], lab_stats(rgb)[0], atol=1.0)


def test_a_model_with_ais_stain_normalises_its_automatic_path_only():
    cfg = compact_config(mpp=0.5, tile=128)
    cfg["halo"] = 16
    plain = SamNucleusModel(cfg).eval()
    rgb, _ = synthetic_nuclei((96, 112), n=8, radius=9, seed=2)
    reference = reference_stats([recoloured(rgb, (1.1, 0.8, 1.2), (-5.0, 3.0, 4.0))])
    normed = SamNucleusModel({**cfg, "ais_stain": reference}).eval()
    normed.load_state_dict(plain.state_dict())
    assert plain.ais_stain is None and plain.stain_stats(rgb) is None
    maps = normed.initialized_segmenter(rgb, 0.5).maps
    assert np.array_equal(maps, plain.initialized_segmenter(reinhard(rgb, reference), 0.5).maps)
    assert not np.allclose(maps, plain.initialized_segmenter(rgb, 0.5).maps)
    stats = normed.stain_stats(rgb)  # a crop segmented as its whole image is normalised
    crop = normed.initialized_segmenter(rgb[:64, :64], 0.5, stain=stats).maps
    assert np.array_equal(crop, plain.initialized_segmenter(reinhard(rgb, reference)[:64, :64], 0.5).maps)


def test_a_slide_is_normalised_by_its_own_statistics_in_every_chunk():
    cfg = compact_config(mpp=0.5, tile=128)
    cfg["halo"] = 16
    rgb, _ = synthetic_nuclei((96, 112), n=8, radius=9, seed=4)
    model = SamNucleusModel({**cfg, "ais_stain": reference_stats([recoloured(rgb)])}).eval()
    plain = SamNucleusModel(cfg).eval()
    plain.fit_slide([rgb], 0.5)  # without ais_stain: nothing to fix
    assert plain._slide_stain is None
    samples = [rgb[:48], rgb[48:]]
    model.fit_slide(samples, 0.5)
    pooled = lab_stats(rgb)
    assert all(np.allclose(a, b) for a, b in zip(model._slide_stain, pooled, strict=True))
    chunk = rgb[:64, :64]  # a chunk is normalised by the slide's statistics, not its own
    maps = model.initialized_segmenter(chunk, 0.5).maps
    assert np.array_equal(maps, model.initialized_segmenter(chunk, 0.5, stain=pooled).maps)


def test_large_images_are_converted_in_blocks_and_measured_on_a_subsample(monkeypatch):
    import pathseg.stain as stain

    rgb, _ = synthetic_nuclei((96, 112), n=8, radius=9, seed=6)
    reference = reference_stats([recoloured(rgb)])
    whole = reinhard(rgb, reference)
    monkeypatch.setattr(stain, "_BLOCK_PIXELS", 1000)  # 8 rows at a time: the same pixels
    assert np.array_equal(reinhard(rgb, reference), whole)
    monkeypatch.setattr(stain, "_STATS_PIXELS", 96 * 112 // 4)  # every other row and column
    assert all(np.allclose(a, b) for a, b in zip(lab_stats(rgb), lab_stats(rgb[::2, ::2]), strict=True))
