"""Overlap lenses of masks rebuilt from colour renderings, and the data-folder tool that splits them."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from pathseg.nuclei.overlaps import overlap_lenses, split_overlap_lenses


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _rendered():
    """Two overlapping discs (1, 2) whose overlap is its own instance (3), as a colour rendering gives it; a disc
    (4) with a smaller one drawn inside it (5); a lone disc (6)."""
    shape = (80, 120)
    a, b = _disc(shape, 20, 20, 10), _disc(shape, 20, 36, 10)
    lab = np.zeros(shape, np.uint16)
    lab[a], lab[b], lab[a & b] = 1, 2, 3
    lab[_disc(shape, 55, 30, 14)] = 4
    lab[_disc(shape, 55, 30, 8)] = 5
    lab[_disc(shape, 40, 95, 9)] = 6
    return lab, a, b


def test_a_lens_between_two_nuclei_is_split_between_them_and_nothing_else_changes():
    lab, a, b = _rendered()
    assert overlap_lenses(lab).tolist() == [3]  # the nested disc (5) is all inside one nucleus: not a lens
    out, n = split_overlap_lenses(lab)
    assert n == 1 and 3 not in out
    assert np.array_equal(out > 0, lab > 0)  # no pixel lost or gained
    lens = lab == 3
    to_1, to_2 = ndi.distance_transform_edt(lab != 1), ndi.distance_transform_edt(lab != 2)
    assert (out[lens & (to_1 < to_2)] == 1).all() and (out[lens & (to_2 < to_1)] == 2).all()  # the nearer one's
    assert np.isin(out[lens], [1, 2]).all() and (out[lens] == 2).sum() >= 0.25 * lens.sum()
    keep = ~lens
    assert np.array_equal(out[keep], lab[keep])


def test_a_lens_as_large_as_a_nucleus_is_left_alone_and_masks_without_lenses_are_unchanged():
    lab, a, b = _rendered()
    assert overlap_lenses(lab, max_area_ratio=0.01).size == 0
    rasterised = lab.copy()
    rasterised[lab == 3] = 2  # the later outline takes the overlap
    out, n = split_overlap_lenses(rasterised)
    assert n == 0 and np.array_equal(out, rasterised)


def _tool():
    path = Path(__file__).resolve().parents[1] / "tools" / "split_overlap_lenses.py"
    spec = importlib.util.spec_from_file_location("split_overlap_lenses", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tool_splits_lenses_only_in_masks_of_the_named_source(tmp_path):
    lab, _, _ = _rendered()
    data = tmp_path / "data" / "train"
    (data / "images").mkdir(parents=True)
    (data / "instance_masks").mkdir()
    rgb = np.zeros(lab.shape + (3,), np.uint8)
    for name in ("drawn", "rendered"):
        Image.fromarray(rgb).save(data / "images" / f"{name}.png")
        Image.fromarray(lab).save(data / "instance_masks" / f"{name}.png")
    with open(tmp_path / "data" / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "id", "instance_source"])
        w.writerows([["train", "drawn", "xml"], ["train", "rendered", "derived_from_colour_mask"]])
    out = tmp_path / "clean"
    assert _tool().main(["--data", str(data), "-o", str(out)]) == 0
    drawn = np.array(Image.open(out / "instance_masks" / "drawn.png"))
    rendered = np.array(Image.open(out / "instance_masks" / "rendered.png"))
    assert np.array_equal(drawn, lab) and np.array_equal(rendered, split_overlap_lenses(lab)[0])
    assert np.array_equal(np.array(Image.open(out / "images" / "rendered.png")), rgb)
    with open(out / "lenses.csv", newline="") as f:
        assert [(r["id"], r["lenses_split"]) for r in csv.DictReader(f)] == [("drawn", "0"), ("rendered", "1")]
    assert (out / "manifest.csv").read_bytes() == (tmp_path / "data" / "manifest.csv").read_bytes()
    assert not (tmp_path / "clean.partial").exists()
    assert _tool().main(["--data", str(data), "-o", str(out)]) == 2  # never overwrites
