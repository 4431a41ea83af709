"""Slides: lazy pyramid reads through tifffile + zarr and OpenSlide, pixel size, level choice, tissue mask."""

import numpy as np
import pytest
import tifffile

from pathseg.errors import PathsegError
from pathseg.io.slides import open_slide
from pathseg.wsi.tissue_mask import tissue_mask
from tests.conftest import shared_data


@pytest.fixture
def pyramid(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (1000, 1200, 3), dtype=np.uint8)
    path = tmp_path / "p.ome.tif"
    with tifffile.TiffWriter(path) as w:
        w.write(
            a,
            subifds=2,
            tile=(256, 256),
            photometric="rgb",
            metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25},
        )
        w.write(a[::2, ::2], subfiletype=1, tile=(256, 256), photometric="rgb")
        w.write(a[::4, ::4], subfiletype=1, tile=(256, 256), photometric="rgb")
    return path, a


def test_pyramid_levels_mpp_and_regions(pyramid):
    path, a = pyramid
    with open_slide(path) as s:
        assert [lv.downsample for lv in s.levels] == [1.0, 2.0, 4.0]
        assert s.mpp == 0.25 and s.level_mpp(2) == 1.0
        assert s.best_level(0.5) == 1 and s.best_level(0.3) == 0 and s.best_level(10) == 2
        assert np.array_equal(s.read_region(1, 10, 20, 30, 40), a[::2, ::2][20:60, 10:40])
        edge = s.read_region(0, 1190, 990, 20, 20)  # past the slide: white
        assert np.array_equal(edge[:10, :10], a[990:, 1190:]) and (edge[15, 15] == 255).all()


def test_mpp_override_and_missing(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), tile=(32, 32), photometric="rgb")
    with open_slide(path) as s:
        assert s.mpp is None
        with pytest.raises(PathsegError, match="no pixel size"):
            s.best_level(0.5)
    with open_slide(path, mpp=0.5) as s:
        assert s.best_level(0.5) == 0


def test_real_svs():
    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    with open_slide(svs) as s:
        assert s.dimensions == (2220, 2967) and s.mpp == pytest.approx(0.499)
        region = s.read_region(0, 1000, 1000, 256, 256)
        assert region.shape == (256, 256, 3) and region.std() > 5


def test_tissue_mask_excludes_background_and_pen():
    rgb = np.full((200, 300, 3), 245, np.uint8)  # glass
    yy, xx = np.mgrid[:200, :300]
    blob = (yy - 100) ** 2 / 60**2 + (xx - 120) ** 2 / 80**2 < 1
    rgb[blob] = (200, 120, 170)  # H&E pink-purple
    rgb[20:26, 200:290] = (30, 60, 200)  # blue pen stroke on glass
    rgb[95:100, 100:140] = (40, 140, 60)  # green ink across the tissue
    mask = tissue_mask(rgb, mpp=8.0, min_tissue_um2=5_000)
    assert mask[100, 60] and mask[150, 120]
    assert not mask[5, 5] and not mask[22, 250]
    assert not mask[97, 120]  # the ink itself is excluded
    assert mask[blob].mean() > 0.9


def test_tissue_mask_hsv_equals_skimage():
    from skimage.color import rgb2hsv

    from pathseg.wsi.tissue_mask import _hsv

    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rgb[:4] = 128  # grey: no hue, no saturation
    hue, sat, val = _hsv(rgb)
    ref = rgb2hsv(rgb)
    assert np.allclose(hue, ref[..., 0] * 360, atol=1e-3)
    assert np.allclose(sat, ref[..., 1], atol=1e-6) and np.allclose(val, ref[..., 2], atol=1e-6)


def test_an_mpp_that_replaces_the_slides_own_is_noted(pyramid, caplog, monkeypatch):
    import logging

    import pathseg.io.metadata

    monkeypatch.setattr(pathseg.io.metadata, "_NOTED", set())  # whatever earlier tests noted
    path, _ = pyramid
    with caplog.at_level(logging.WARNING, logger="pathseg"):
        with open_slide(path, mpp=0.26) as s:  # within 10%: a correction, said nothing
            assert s.mpp == 0.26
        assert caplog.text == ""
        with open_slide(path, mpp=0.5) as s:
            assert s.mpp == 0.5
    assert "p.ome.tif: --mpp 0.5 replaces the slide's own 0.25 µm/px" in caplog.text


def test_wsi_takes_workers_or_a_scheduler_not_both(pyramid, tmp_path, capsys):
    from pathseg.cli import main

    path, _ = pyramid
    argv = ["wsi", str(path), "-o", str(tmp_path / "o"), "--workers", "2", "--scheduler", "tcp://127.0.0.1:9"]
    assert main(argv) == 2
    assert "--workers starts a local Dask cluster and --scheduler uses an existing one" in capsys.readouterr().err
