"""GeoJSON outlines (QuPath) to label images, and `pathseg masks`."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from pathseg.api import segment_nuclei, write_nuclei_outputs
from pathseg.cli import main
from pathseg.errors import PathsegError
from pathseg.io.annotations import rasterise
from pathseg.nuclei.measure import geojson_features, measure_nuclei
from tests.conftest import synthetic_nuclei


def feature(kind, coords, cls=None):
    props = {"objectType": "annotation"}
    if cls:
        props["classification"] = {"name": cls, "color": [255, 0, 0]}
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords}, "properties": props}


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def test_outlines_become_labels_with_holes_parts_overlaps_and_classes(tmp_path):
    features = [
        feature("Polygon", [square(2, 2, 12, 12), square(5, 5, 8, 8)], "tumour"),  # a 10x10 ring around a 3x3 hole
        feature("MultiPolygon", [[square(20, 2, 24, 6)], [square(26, 2, 28, 4)]], "immune"),  # two parts, one id
        feature("Polygon", [square(10, 10, 14, 14)]),  # overlaps the first; no class
        feature("Point", [1, 1]),
        feature("Polygon", [square(100, 100, 110, 110)], "tumour"),  # off the 30x40 image
    ]
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(features))  # QuPath's default export: a bare list of features
    features.append({"type": "Feature", "geometry": None})  # QuPath can write a feature without geometry
    path.write_text(json.dumps(features))
    made = rasterise(path, (30, 40), class_ids={"tumour": 1, "immune": 2})
    lab = made.labels
    assert lab.dtype == np.uint32 and set(np.unique(lab).tolist()) == {0, 1, 2, 3}
    assert (lab[5:8, 5:8] == 0).all() and (lab[2:5, 2:12] == 1).all()  # the hole is left out
    assert (lab[2:6, 20:24] == 2).all() and (lab[2:4, 26:28] == 2).all() and (lab == 2).sum() == 16 + 4
    assert (lab[10:14, 10:14] == 3).all()  # the smaller object keeps the shared pixels (default)
    assert (lab == 1).sum() == 100 - 9 - 4
    assert made.outside == 1 and made.skipped == {"Point": 1, "without geometry": 1}
    assert made.types[3, 3] == 1 and made.types[3, 21] == 2 and made.types[12, 12] == 0
    first = rasterise(path, (30, 40), overlap="first").labels
    assert (first[10:12, 10:12] == 1).all() and (first == 1).sum() == 100 - 9
    with pytest.raises(PathsegError, match=r"a.geojson feature 0: class 'tumour' is not among \['immune'\]"):
        rasterise(path, (30, 40), class_ids={"immune": 1})


def test_pathseg_geojson_reads_back_to_its_own_labels(tmp_path):
    rgb, _ = synthetic_nuclei((120, 150), n=12, radius=9, seed=2)
    result = segment_nuclei(rgb, "classical", mpp=0.25)
    paths = write_nuclei_outputs(result, tmp_path, "tile")
    assert result.count > 5
    assert np.array_equal(rasterise(paths["geojson"], rgb.shape[:2]).labels, result.labels)
    holed = np.zeros((40, 40), np.uint32)  # nuclei with holes, and one nucleus inside another's hole
    holed[5:20, 5:20], holed[9:12, 9:13], holed[14:16, 14:16] = 1, 0, 0
    holed[25:35, 25:35], holed[28:30, 28:30] = 2, 3
    features = list(geojson_features(holed, measure_nuclei(holed, np.zeros((40, 40, 3), np.uint8), 0.25)))
    assert [len(f["geometry"]["coordinates"]) for f in features] == [3, 2, 1]  # outline + its holes
    (tmp_path / "holed.geojson").write_text(json.dumps(features))
    assert np.array_equal(rasterise(tmp_path / "holed.geojson", (40, 40)).labels, holed)


def test_cli_masks_make_a_dataset_that_training_and_evaluation_read(tmp_path, capsys):
    from pathseg.train.data import load_samples

    tiles, qupath = tmp_path / "tiles", tmp_path / "qupath"
    tiles.mkdir()
    qupath.mkdir()
    for i in range(2):
        Image.fromarray(synthetic_nuclei((40, 50), n=2, radius=5, seed=i)[0]).save(tiles / f"t{i}.png")
        cells = [feature("Polygon", [square(3 + 10 * k, 4, 9 + 10 * k, 12)], ["b", "a"][k]) for k in range(2)]
        (qupath / f"t{i}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": cells}))
    assert main(["masks", str(tiles), "-o", str(tmp_path / "x"), "-q"]) == 2
    assert "2 image(s) have no <stem>.geojson (beside the images): t0.png, t1.png" in capsys.readouterr().err
    assert main(["masks", str(tiles), "--geojson", str(qupath), "-o", str(tmp_path / "data"), "-q"]) == 0
    said = capsys.readouterr().out
    assert "4 objects in 2 image(s)" in said and "type_masks (1 a, 2 b)" in said
    data = tmp_path / "data"
    assert (data / "classes.csv").read_text() == "id,name\n0,background\n1,a\n2,b\n"
    samples = load_samples([data], 0.25, 0.25, with_types=True)
    assert [s.name for s in samples] == ["t0", "t1"] and all(s.labels.max() == 2 for s in samples)
    assert samples[0].types[8, 5] == 2 and samples[0].types[8, 15] == 1  # 'b' drawn first, ids by sorted name
    only_b = ["masks", str(tiles), "--geojson", str(qupath), "-o", str(tmp_path / "d2"), "--classes", "b", "-q"]
    assert main(only_b) == 2
    assert "class 'a' is not among ['b']" in capsys.readouterr().err
    labels = tifffile.imread(data / "instance_masks" / "t1.tif")
    tifffile.imwrite(tmp_path / "t1_instances.tif", labels)  # the masks scored as a prediction: perfect
    (tmp_path / "pred").mkdir()
    (tmp_path / "t1_instances.tif").rename(tmp_path / "pred" / "t1_instances.tif")
    (data / "instance_masks" / "t0.tif").unlink()
    (data / "images" / "t0.png").unlink()
    assert main(["evaluate", "nuclei", "--pred", str(tmp_path / "pred"), "--gt", str(data), "-q"]) == 0
    assert "1.000" in capsys.readouterr().out


def test_cli_masks_warn_of_a_region_drawn_among_the_nuclei(tmp_path, caplog):
    import logging

    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "t.png")
    cells = [feature("Polygon", [square(5 * k, 0, 5 * k + 4, 4)]) for k in range(6)]
    region = feature("Polygon", [square(0, 10, 100, 100)])
    (tmp_path / "t.geojson").write_text(json.dumps([region, *cells]))
    with caplog.at_level(logging.WARNING, logger="pathseg"):
        assert main(["masks", str(tmp_path / "t.png"), "-o", str(tmp_path / "d"), "-q"]) == 0
    assert "one object covers 9000 px, 562 times the median object; a region annotation" in caplog.text


def test_evaluate_scores_geojson_outlines_as_their_label_images(tmp_path, capsys):
    rgb, gt = synthetic_nuclei((120, 150), n=12, radius=9, seed=3)
    (tmp_path / "gt").mkdir()
    tifffile.imwrite(tmp_path / "gt" / "tile.tif", gt.astype(np.uint16))
    result = segment_nuclei(rgb, "classical", mpp=0.25)
    write_nuclei_outputs(result, tmp_path / "labels", "tile")
    (tmp_path / "outlines").mkdir()  # another tool's nuclei, exported from QuPath: outlines only
    (tmp_path / "labels" / "tile.geojson").rename(tmp_path / "outlines" / "tile.geojson")
    tables = []
    for pred in ("labels", "outlines"):
        assert main(["evaluate", "nuclei", "--pred", str(tmp_path / pred), "--gt", str(tmp_path / "gt"), "-q"]) == 0
        tables.append(capsys.readouterr().out)
    assert tables[0] == tables[1] and "tile" in tables[0]


def test_cli_masks_tissue_regions_become_class_masks_that_tissue_training_reads(tmp_path, capsys):
    from pathseg.tissue.classes import IGNORE, load_class_map
    from pathseg.tissue.data import load_tissue_samples

    Image.fromarray(np.full((60, 80, 3), 200, np.uint8)).save(tmp_path / "r.png")
    regions = [
        feature("Polygon", [square(0, 0, 60, 60)], "tumour"),
        feature("Polygon", [square(10, 10, 20, 20)], "stroma"),  # drawn over the tumour: the smaller keeps it
        feature("Polygon", [square(62, 0, 70, 8)]),  # no class: left undrawn
    ]
    (tmp_path / "r.geojson").write_text(json.dumps(regions))
    assert main(["masks", str(tmp_path / "r.png"), "-o", str(tmp_path / "t"), "--tissue", "-q"]) == 0
    assert "-> " + str(tmp_path / "t") + "/masks (1 stroma, 2 tumour; 0 = not drawn)" in capsys.readouterr().out
    cmap = load_class_map(tmp_path / "t" / "classes.json")
    assert cmap.names == ("stroma", "tumour") and cmap.colors[0] == (255, 0, 0)
    (sample,) = load_tissue_samples([tmp_path / "t"], cmap)
    assert sample.target[15, 15] == 0 and sample.target[5, 5] == 1  # stroma, tumour
    assert sample.target[5, 65] == IGNORE and sample.target[50, 75] == IGNORE  # unclassed, undrawn
    (tmp_path / "plain.png").write_bytes((tmp_path / "r.png").read_bytes())
    (tmp_path / "plain.geojson").write_text(json.dumps([feature("Polygon", [square(0, 0, 5, 5)])]))
    assert main(["masks", str(tmp_path / "plain.png"), "-o", str(tmp_path / "u"), "--tissue", "-q"]) == 2
    assert "carry no QuPath classes" in capsys.readouterr().err
