"""Prompt files (CSV points, GeoJSON boxes/points) and `pathseg nuclei --prompts`."""

import json
import re

import numpy as np
import pytest
import tifffile
from PIL import Image

from pathseg.api import segment_nuclei_prompted
from pathseg.cli import main
from pathseg.errors import PathsegError
from pathseg.io.prompts import read_prompts
from pathseg.models.nucleus_sam import SamNucleusModel, compact_config
from pathseg.nuclei.interactive import prompt_error
from tests.conftest import synthetic_nuclei


def test_csv_points_grouped_by_object(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("x,y,label,object\n10,12,1,a\n14,15,0,a\n40,41,1,b\n")
    prompts = read_prompts(f)
    assert len(prompts) == 2
    assert prompts[0].points.tolist() == [[10, 12], [14, 15]] and prompts[0].labels.tolist() == [1, 0]


def test_csv_errors(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("col,row\n1,2\n")
    with pytest.raises(PathsegError, match="columns x and y"):
        read_prompts(f)
    f.write_text("x,y,label\n1,2,0\n")
    with pytest.raises(PathsegError, match="no positive point"):
        read_prompts(f)
    f.write_text("x,y\n1,abc\n")
    with pytest.raises(PathsegError, match=r"p.csv:2: not a number"):
        read_prompts(f)
    f.write_text("x,y\n")
    with pytest.raises(PathsegError, match="no prompts"):
        read_prompts(f)
    # a spreadsheet's export: byte-order mark, semicolons (decimal-comma locales) or tabs
    for text in ("\ufeffx,y\n10,12\n", "x;y;label\n10;12;1\n", "x\ty\n10\t12\n"):
        f.write_text(text, encoding="utf-8")
        assert read_prompts(f)[0].points.tolist() == [[10, 12]]
    # pathseg's own table (and QuPath's pixel exports): its centroids prompt the nuclei again
    f.write_text("id,centroid_x_px,centroid_y_px,centroid_x_um\n1,10,12,2.5\n", encoding="utf-8")
    assert read_prompts(f)[0].points.tolist() == [[10, 12]]
    f.write_text("Name,Centroid X µm,Centroid Y µm\nn1,2.5,3\n", encoding="utf-8")
    with pytest.raises(PathsegError, match="Centroid X µm, Centroid Y µm are in µm: prompts are image pixels"):
        read_prompts(f)


def test_geojson_polygons_become_boxes(tmp_path):
    fc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[5, 6], [20, 6], [20, 30], [5, 30], [5, 6]]]},
                "properties": {},
            },
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [50, 60]}, "properties": {}},
        ],
    }
    f = tmp_path / "b.geojson"
    f.write_text(json.dumps(fc))
    prompts = read_prompts(f)
    assert prompts[0].box.tolist() == [5, 6, 20, 30] and prompts[1].points.tolist() == [[50, 60]]


def test_qupath_points_tool_multipoints_give_one_nucleus_per_point(tmp_path, caplog):
    import logging

    features = [  # a QuPath export: a bare list of features, points as one MultiPoint annotation, a line
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[10, 12], [40, 44.5], [70, 71]]}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [9, 9]]}},
    ]
    f = tmp_path / "points.geojson"
    f.write_text(json.dumps(features))
    with caplog.at_level(logging.WARNING, logger="pathseg"):
        prompts = read_prompts(f)
    assert [p.points.tolist() for p in prompts] == [[[10, 12]], [[40, 44.5]], [[70, 71]]]
    assert all(p.labels.tolist() == [1] and p.box is None for p in prompts)
    assert prompts[2].name == "points.geojson feature 0 point 2"
    assert "1 LineString left out" in caplog.text


def test_geojson_errors_name_the_feature(tmp_path):
    f = tmp_path / "b.geojson"
    for geometry, problem in (
        ({"type": "Polygon", "coordinates": [[[1, 2], [3, "a"]]]}, "feature 0: Polygon coordinates are not numbers"),
        ({"type": "Polygon", "coordinates": None}, "feature 0: Polygon coordinates are not numbers"),
        ({"type": "Polygon", "coordinates": [[]]}, "feature 0: Polygon has no coordinates"),
        ({"type": "Point", "coordinates": [1]}, "feature 0: Point coordinates are not numbers"),
    ):
        f.write_text(json.dumps({"type": "Feature", "geometry": geometry}))
        with pytest.raises(PathsegError, match=problem):
            read_prompts(f)
    f.write_text("5")
    with pytest.raises(PathsegError, match="not a GeoJSON FeatureCollection"):
        read_prompts(f)


def test_prompts_off_the_image_are_refused_with_their_reason():
    shape = (100, 200)  # H, W
    assert prompt_error(np.array([[0, 0], [200, 100]]), np.array([-20, -5, 30, 40]), shape) is None  # edges; clipped
    for points, box, reason in (
        ([[201, 5]], None, r"point \(201, 5\) lies outside the 200x100 px image"),
        ([[np.nan, 5]], None, "not a pair of finite numbers"),
        (None, [10, 10, 10, 30], r"box \(10, 10, 10, 30\) has no area"),
        (None, [200, 0, 300, 50], "lies outside the 200x100 px image"),
        (None, [0, np.inf, 5, 5], "no finite number"),
    ):
        assert re.search(reason, prompt_error(None if points is None else np.array(points), box, shape))


def test_cli_prompts(tmp_path, capsys):
    cfg = compact_config(mpp=0.25, tile=128)
    cfg["halo"] = 16
    SamNucleusModel(cfg).save_pretrained(tmp_path / "model")
    rgb, gt = synthetic_nuclei((160, 200), n=6, radius=12, seed=1)
    Image.fromarray(rgb).save(tmp_path / "t.png")
    ys, xs = np.nonzero(gt == 1)
    (tmp_path / "p.csv").write_text(f"x,y\n{xs.mean():.1f},{ys.mean():.1f}\n")
    code = main(
        [
            "nuclei",
            str(tmp_path / "t.png"),
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(tmp_path / "model"),
            "--prompts",
            str(tmp_path / "p.csv"),
            "-q",
        ]
    )
    assert code == 0
    labels = tifffile.imread(tmp_path / "out" / "t_instances.tif")
    assert labels.shape == gt.shape and labels.max() <= 1
    one = [str(tmp_path / "t.png"), "--model", str(tmp_path / "model"), "--prompts", str(tmp_path / "p.csv"), "-q"]
    assert main(["nuclei", *one, "-o", str(tmp_path / "first"), "--overlap", "first"]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "first" / "t_instances.tif"), labels)  # one prompt: no overlap
    with pytest.raises(PathsegError, match="overlap"):
        segment_nuclei_prompted(rgb, read_prompts(tmp_path / "p.csv"), str(tmp_path / "model"), overlap="largest")
    assert (
        main(
            [
                "nuclei",
                str(tmp_path / "t.png"),
                "-o",
                str(tmp_path / "o2"),
                "--model",
                "classical",
                "--prompts",
                str(tmp_path / "p.csv"),
            ]
        )
        == 1
    )
    assert "cannot take prompts" in capsys.readouterr().err
    # a prompt off the image stops the run with the prompt's line, before the network runs and with no outputs
    (tmp_path / "far.csv").write_text(f"x,y\n{xs.mean():.1f},{ys.mean():.1f}\n5000,3\n")
    far = [str(tmp_path / "t.png"), "--model", str(tmp_path / "model"), "--prompts", str(tmp_path / "far.csv")]
    assert main(["nuclei", *far, "-o", str(tmp_path / "o3"), "-q"]) == 1
    assert "prompt far.csv line 3: point (5000, 3) lies outside the 200x160 px image" in capsys.readouterr().err
    assert not list((tmp_path / "o3").glob("t*"))


def test_cli_modes(tmp_path, capsys):
    cfg = compact_config(mpp=0.25, tile=128)
    cfg["halo"] = 16
    SamNucleusModel(cfg).save_pretrained(tmp_path / "model")
    rgb, _ = synthetic_nuclei((140, 150), n=4, radius=12, seed=2)
    Image.fromarray(rgb).save(tmp_path / "t.png")
    for mode in ("ais", "apg"):
        out = tmp_path / mode
        assert (
            main(
                [
                    "nuclei",
                    str(tmp_path / "t.png"),
                    "-o",
                    str(out),
                    "--model",
                    str(tmp_path / "model"),
                    "--mode",
                    mode,
                    "-q",
                ]
            )
            == 0
        )
        assert tifffile.imread(out / "t_instances.tif").shape == rgb.shape[:2]
    assert (
        main(["nuclei", str(tmp_path / "t.png"), "-o", str(tmp_path / "c"), "--model", "classical", "--mode", "amg"])
        == 2  # refused once, before any image
    )
    assert "--mode amg needs a SAM-family model" in capsys.readouterr().err


def test_cli_box_prompts_take_the_automatic_nucleus_unless_told_not_to(tmp_path, monkeypatch):
    cfg = compact_config(mpp=0.25, tile=128)
    cfg["halo"] = 16
    cfg["box_from_ais"] = 0.8
    SamNucleusModel(cfg).save_pretrained(tmp_path / "model")
    rgb, gt = synthetic_nuclei((160, 200), n=6, radius=12, seed=1)
    Image.fromarray(rgb).save(tmp_path / "t.png")
    monkeypatch.setattr(SamNucleusModel, "segment", lambda self, image, mpp, *a, **k: gt.astype(np.uint32))
    ys, xs = np.nonzero(gt == 1)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}}
    (tmp_path / "b.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    base = ["nuclei", str(tmp_path / "t.png"), "--model", str(tmp_path / "model"), "--mpp", "0.25", "-q"]
    base += ["--prompts", str(tmp_path / "b.geojson")]
    assert main([*base, "-o", str(tmp_path / "ais")]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "ais" / "t_instances.tif") == 1, gt == 1)  # the AIS nucleus
    assert main([*base, "-o", str(tmp_path / "dec"), "--box-from-ais", "0", "--box-fit", "off"]) == 0
    assert not np.array_equal(tifffile.imread(tmp_path / "dec" / "t_instances.tif") == 1, gt == 1)  # the decoder's
    assert main([*base, "-o", str(tmp_path / "fit"), "--box-fit", "on"]) == 0  # the nucleus fits the box exactly
    assert np.array_equal(tifffile.imread(tmp_path / "fit" / "t_instances.tif") == 1, gt == 1)
    assert main([*base, "-o", str(tmp_path / "bad"), "--box-from-ais", "1.5"]) == 1


def test_cli_prompts_take_classes_and_refuse_what_does_not_apply(tmp_path, capsys):
    cfg = compact_config(mpp=0.25, tile=128)
    cfg["halo"] = 16
    cfg["semantic_decoder"] = {**cfg["ais_decoder"], "out_channels": 3}
    cfg["semantic_classes"] = [{"name": n, "color": [0, 0, 0]} for n in ("background", "tumour", "immune")]
    SamNucleusModel(cfg).save_pretrained(tmp_path / "model")
    rgb, gt = synthetic_nuclei((160, 200), n=6, radius=12, seed=1)
    Image.fromarray(rgb).save(tmp_path / "t.png")
    ys, xs = np.nonzero(gt == 1)
    (tmp_path / "p.csv").write_text(f"x,y\n{xs.mean():.1f},{ys.mean():.1f}\n")
    one = [str(tmp_path / "t.png"), "--model", str(tmp_path / "model"), "-q"]
    prompted = [*one, "--prompts", str(tmp_path / "p.csv")]
    assert main(["nuclei", *prompted, "-o", str(tmp_path / "c"), "--classes"]) == 0  # classes were dropped silently
    labels = tifffile.imread(tmp_path / "c" / "t_instances.tif")
    classes = tifffile.imread(tmp_path / "c" / "t_classes.tif")
    assert labels.max() == 1 and len(np.unique(classes[labels == 1])) == 1 and classes[labels == 1][0] in (1, 2)
    for argv, says in (
        ([*prompted, "--mode", "apg"], "--mode apg is an automatic mode; with --prompts each prompt gives one"),
        ([*one, "--box-margin", "3", "--overlap", "first"], "--box-margin, --overlap go with --prompts"),
    ):
        assert main(["nuclei", *argv, "-o", str(tmp_path / "x")]) == 2
        assert says in capsys.readouterr().err


def test_prompts_that_give_no_nucleus_are_named(tmp_path, caplog):
    import logging

    cfg = compact_config(mpp=0.25, tile=128)
    cfg["halo"] = 16
    model = SamNucleusModel(cfg).eval()
    rgb, gt = synthetic_nuclei((160, 200), n=6, radius=12, seed=1)
    ys, xs = np.nonzero(gt == 1)
    (tmp_path / "twice.csv").write_text(f"x,y\n{xs.mean():.1f},{ys.mean():.1f}\n{xs.mean():.1f},{ys.mean():.1f}\n")
    with caplog.at_level(logging.WARNING, logger="pathseg"):  # the same prompt twice: the second gets no pixel
        result = segment_nuclei_prompted(rgb, read_prompts(tmp_path / "twice.csv"), model, overlap="first")
    assert result.table["id"].tolist() == [1]
    assert "1 of 2 prompt(s) gave no nucleus (their ids are unused): twice.csv line 3" in caplog.text


def test_cli_prompts_folder_gives_each_image_its_own_file(tmp_path, capsys):
    cfg = compact_config(mpp=0.25, tile=128)
    cfg["halo"] = 16
    SamNucleusModel(cfg).save_pretrained(tmp_path / "model")
    (tmp_path / "tiles").mkdir()
    (tmp_path / "prompts").mkdir()
    for i in range(2):
        rgb, gt = synthetic_nuclei((120, 140), n=4, radius=12, seed=i)
        Image.fromarray(rgb).save(tmp_path / "tiles" / f"t{i}.png")
        ys, xs = np.nonzero(gt == 1)
        rows = "".join(f"{xs.mean() + d:.1f},{ys.mean():.1f}\n" for d in range(i + 1))  # t0: 1 point, t1: 2
        (tmp_path / "prompts" / f"t{i}.csv").write_text("x,y,object\n" + rows.replace("\n", ",a\n"))
    run = ["nuclei", str(tmp_path / "tiles"), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "model"), "-q"]
    assert main([*run, "--prompts", str(tmp_path / "prompts")]) == 0
    for i in range(2):  # each image its own prompts: one object each (t1's two points prompt one object)
        assert tifffile.imread(tmp_path / "out" / f"t{i}_instances.tif").max() <= 1
    (tmp_path / "prompts" / "t1.csv").unlink()
    assert main([*run, "--prompts", str(tmp_path / "prompts")]) == 2
    assert "1 image(s) have no <stem>.csv / .geojson in" in capsys.readouterr().err
    assert main([*run, "--prompts", str(tmp_path / "prompts" / "t0.csv")]) == 2
    assert "give a folder holding <stem>.csv or <stem>.geojson per image" in capsys.readouterr().err
