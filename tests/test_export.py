"""Outputs: label TIFF with scale, QuPath GeoJSON, CSV table, atomic writes."""

import csv
import json

import numpy as np
import pytest
import tifffile
from skimage.draw import polygon as draw_polygon

from pathseg.api import segment_nuclei, write_nuclei_outputs
from pathseg.io.atomic import atomic_open
from pathseg.io.export import write_label_tiff
from pathseg.nuclei.measure import COLUMNS, measure_nuclei, outlines


def test_label_tiff_roundtrip_with_scale(tmp_path):
    lab = np.zeros((10, 12), np.uint32)
    lab[2:5, 3:7] = 70000
    write_label_tiff(tmp_path / "l.tif", lab, mpp=0.25)
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        page = tif.pages[0]
        assert page.dtype == np.uint32 and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        num, den = page.tags["XResolution"].value
        assert 1e4 / (num / den) == pytest.approx(0.25)
        assert np.array_equal(page.asarray(), lab)


def test_outline_rasterises_back_to_the_object():
    lab = np.zeros((40, 40), np.uint32)
    yy, xx = np.mgrid[:40, :40]
    lab[(yy - 20) ** 2 + (xx - 15) ** 2 <= 64] = 1
    lab[5:9, 28:35] = 2
    rings = dict(outlines(lab))
    assert set(rings) == {1, 2}
    for k, ring in rings.items():
        assert np.array_equal(ring[0], ring[-1])  # closed
        # QuPath pixel (r, c) covers [c, c+1]: fill at pixel centres (x - 0.5, y - 0.5)
        rr, cc = draw_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, lab.shape)
        filled = np.zeros_like(lab, bool)
        filled[rr, cc] = True
        obj = lab == k
        iou = (filled & obj).sum() / (filled | obj).sum()
        assert iou > 0.85, (k, iou)
        # the outline runs along pixel edges: it encloses exactly the object's pixels
        x, y = ring[:, 0], ring[:, 1]
        assert abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2 == obj.sum()


def test_measurements_units(nuclei_image):
    rgb, gt = nuclei_image
    t = measure_nuclei(gt.astype(np.uint32), rgb, mpp=0.5)
    assert list(t) == list(COLUMNS)
    assert np.array_equal(t["id"], np.arange(1, gt.max() + 1))
    assert np.allclose(t["area_um2"], t["area_px"] * 0.25)
    assert np.allclose(t["centroid_x_um"], t["centroid_x_px"] * 0.5)
    k = 0
    ys, xs = np.nonzero(gt == 1)
    assert t["centroid_x_px"][k] == pytest.approx(xs.mean()) and t["area_px"][k] == ys.size


def test_nuclei_outputs(tmp_path, nuclei_image):
    rgb, gt = nuclei_image
    result = segment_nuclei(rgb, "classical", mpp=0.25)
    paths = write_nuclei_outputs(result, tmp_path, "tile")
    assert {p.name for p in paths.values()} == {"tile_instances.tif", "tile.geojson", "tile_nuclei.csv"}
    labels = tifffile.imread(paths["instances"])
    assert labels.dtype == np.uint32 and np.array_equal(labels, result.labels)
    fc = json.loads(paths["geojson"].read_text())
    assert fc["type"] == "FeatureCollection"
    feats = fc["features"]
    assert len(feats) == result.count == labels.max()
    f = feats[0]
    assert f["geometry"]["type"] == "Polygon" and f["properties"]["objectType"] == "detection"
    lab = f["properties"]["label"]
    assert isinstance(lab, int) and (labels == lab).any()
    assert f["properties"]["measurements"]["area_px"] == (labels == lab).sum()
    with open(paths["table"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == result.count and list(rows[0]) == list(COLUMNS)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_arrays_are_converted_as_files_are_and_non_images_refused(nuclei_image):
    from PIL import Image

    from pathseg.errors import PathsegError

    rgb, _ = nuclei_image
    want = segment_nuclei(rgb, "classical", mpp=0.25).labels
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    for same in (rgba, rgb.astype(np.float32) / 255, rgb.astype(np.uint16) * 257, Image.fromarray(rgb)):
        assert np.array_equal(segment_nuclei(same, "classical", mpp=0.25).labels, want)
    grey = segment_nuclei(rgb[..., 0], "classical", mpp=0.25)
    assert grey.image.shape == rgb.shape
    for bad, why in (
        (rgb.transpose(2, 0, 1), "channels-first"),
        (rgb[:0], "no pixels"),
        (rgb.tolist(), "expected an image array"),
        (rgb[..., None, :], "unsupported image shape"),
    ):
        with pytest.raises(PathsegError, match=why):
            segment_nuclei(bad, "classical", mpp=0.25)
    assert np.array_equal(segment_nuclei(rgb, "classical", mpp="0.25").labels, want)  # a number as text
    for mpp in ("x", float("inf"), float("nan"), 0):
        with pytest.raises(PathsegError, match="positive number of µm per pixel"):
            segment_nuclei(rgb, "classical", mpp=mpp)


def test_an_mpp_that_replaces_the_files_own_is_noted(tmp_path, nuclei_image, caplog, monkeypatch):
    import logging

    import pathseg.io.metadata

    monkeypatch.setattr(pathseg.io.metadata, "_NOTED", set())  # whatever earlier tests noted

    rgb, _ = nuclei_image
    tifffile.imwrite(tmp_path / "t.tif", rgb, resolution=(4e4, 4e4), resolutionunit="CENTIMETER")  # 0.25 µm/px
    with caplog.at_level(logging.WARNING, logger="pathseg"):
        assert segment_nuclei(tmp_path / "t.tif", "classical").mpp_source == "file"
        segment_nuclei(tmp_path / "t.tif", "classical", mpp=0.26)  # a correction within 10%: nothing said
        assert caplog.text == ""
        assert segment_nuclei(tmp_path / "t.tif", "classical", mpp=0.5).mpp == 0.5
        segment_nuclei(tmp_path / "t.tif", "classical", mpp=0.5)  # the next tile like it: said once
    assert caplog.text.count("t.tif: --mpp 0.5 replaces the file's own 0.25 µm/px") == 1


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_write_gets_the_permissions_open_would_give(tmp_path):
    from pathseg.io.atomic import _UMASK

    with atomic_open(tmp_path / "new.txt") as f:  # a new file: 0o666 minus the umask, not mkstemp's 0o600
        f.write("x")
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o666 & ~_UMASK
    old = tmp_path / "old.txt"
    old.write_text("old")
    old.chmod(0o640)
    with atomic_open(old) as f:  # an existing file keeps its mode
        f.write("new")
    assert old.stat().st_mode & 0o777 == 0o640 and old.read_text() == "new"


def test_measurements_match_scikit_image(nuclei_image):
    from skimage.measure import regionprops_table

    from pathseg.models.classical import haematoxylin

    rgb, gt = nuclei_image
    lab = gt.astype(np.int64)
    lab[lab == 3] = 0  # a gap in the ids
    t = measure_nuclei(lab, rgb, mpp=1.0)
    ref = regionprops_table(
        lab,
        intensity_image=haematoxylin(rgb),
        properties=("label", "area", "centroid", "eccentricity", "perimeter", "intensity_mean"),
    )
    assert np.array_equal(t["id"], ref["label"])
    assert np.array_equal(t["area_px"], ref["area"])
    for ours, theirs in (
        ("centroid_y_px", "centroid-0"),
        ("eccentricity", "eccentricity"),
        ("perimeter_px", "perimeter"),
        ("mean_haematoxylin", "intensity_mean"),
    ):
        assert np.allclose(t[ours], ref[theirs], atol=1e-6), ours
    assert ((t["solidity"] > 0.8) & (t["solidity"] <= 1.0)).all()  # discs are nearly convex


def test_hole_rings_finds_exactly_the_holes_binary_fill_holes_finds():
    from scipy import ndimage as ndi

    from pathseg.nuclei.measure import hole_rings

    rng = np.random.default_rng(0)
    for _ in range(3000):  # random masks: rings, diagonal gaps, pieces inside holes
        mask = rng.random((int(rng.integers(3, 14)), int(rng.integers(3, 14)))) < rng.uniform(0.3, 0.9)
        holes = ndi.binary_fill_holes(mask) & ~mask
        assert bool(hole_rings(mask)) == bool(holes.any())  # its quick screen never misses a hole
