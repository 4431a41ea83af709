"""Whole-slide nuclei: chunks with halo give the same nuclei as one pass; resumable; outputs."""

import json
import shutil

import numpy as np
import pytest
import zarr

from pathseg.io.slides import open_slide
from pathseg.metrics import instance_scores
from pathseg.models.classical import ClassicalModel
from pathseg.wsi.chunks import Chunk
from pathseg.wsi.pipeline import SlideRun, chunk_grid, run_slide
from tests.conftest import shared_data


def test_chunk_grid_partitions_the_region():
    chunks = chunk_grid((10, 20, 1010, 520), (2000, 1000), chunk=256, halo=32)
    cover = np.zeros((1000, 2000), int)
    for c in chunks:
        x0, y0, x1, y1 = c.inner
        cover[y0:y1, x0:x1] += 1
        assert c.outer[0] == max(x0 - 32, 0) and c.outer[3] == min(y1 + 32, 1000)
    assert (cover[20:520, 10:1010] == 1).all() and cover.sum() == 1000 * 500


def test_chunked_equals_single_pass_on_a_real_slide_region(tmp_path):
    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    roi = (500, 800, 1200, 1200)
    run = SlideRun(str(svs), str(tmp_path / "run"), model="classical", roi=roi, chunk=512, halo=64)
    report = run_slide(run, log=lambda *a: None)
    assert report["chunks"] == 9 and report["chunks_done"] == report["chunks_with_tissue"]
    assert set(report["timings_s"]) == {"plan", "chunks", "assemble"}
    assert sum(report["timings_s"].values()) <= report["seconds"] + 1e-6
    chunked = zarr.open_array(str(tmp_path / "run" / "labels.zarr" / "0"), mode="r")[800:2000, 500:1700]
    with open_slide(svs) as s:
        rgb = s.read_region(0, 500, 800, 1200, 1200)
    # the same slide-level threshold the run used, then one pass over the whole region
    model = ClassicalModel(threshold=report["model_parameters"]["threshold"])
    single = model.segment(rgb, 0.499)
    scores = instance_scores(single, chunked.astype(np.uint32))
    assert scores["sa50"] > 0.99 and scores["aji"] > 0.98, scores
    # every nucleus once: ids unique, GeoJSON and table agree
    table_ids = np.loadtxt(tmp_path / "run" / "nuclei.csv", delimiter=",", skiprows=1, usecols=0)
    fc = json.loads((tmp_path / "run" / "nuclei.geojson").read_text())
    assert len(np.unique(table_ids)) == len(table_ids) == len(fc["features"])


def test_resume_after_interruption(tmp_path):
    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    run = SlideRun(str(svs), str(tmp_path / "a"), model="classical", roi=(0, 0, 900, 900), chunk=300, halo=48)
    run_slide(run, log=lambda *a: None)
    ref = zarr.open_array(str(tmp_path / "a" / "labels.zarr" / "0"), mode="r")[:]
    # simulate a run killed half-way: drop half the chunk parts and the outputs, then start again
    parts = sorted((tmp_path / "a" / "parts").glob("*.npz"))
    for p in parts[::2]:
        p.unlink()
    shutil.rmtree(tmp_path / "a" / "labels.zarr")
    (tmp_path / "a" / "nuclei.geojson").unlink()
    run_slide(run, log=lambda *a: None)
    again = zarr.open_array(str(tmp_path / "a" / "labels.zarr" / "0"), mode="r")[:]
    assert np.array_equal(ref, again)


def test_resume_with_other_settings_is_refused(tmp_path):
    import tifffile

    from pathseg.errors import PathsegError

    rng = np.random.default_rng(0)
    img = np.full((384, 384, 3), 225, np.uint8)
    for y, x in rng.integers(20, 364, (40, 2)):  # dark blobs: nuclei for the classical model
        img[y - 5 : y + 5, x - 5 : x + 5] = (70, 40, 120)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb")
    run = SlideRun(str(path), str(tmp_path / "o"), model="classical", mpp=0.5, chunk=192, use_tissue_mask=False)
    run_slide(run, log=lambda *a: None)
    stored = json.loads((tmp_path / "o" / "parts" / "run.json").read_text())
    assert stored["chunk"] == 192 and stored["model"] == "classical" and stored["weights"] is None  # no weights
    parts = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o" / "parts").glob("*.npz")}
    run.chunk, run.halo = 128, 32
    with pytest.raises(PathsegError, match="chunk: 192 there, 128 now; halo: 64 there, 32 now"):
        run_slide(run, log=lambda *a: None)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o" / "parts").glob("*.npz")} == parts
    run.tta = 4
    with pytest.raises(PathsegError, match="--tta / --tta-space are for tissue runs"):
        run_slide(run, log=lambda *a: None)
    run.tta, run.tta_space = None, "latent"
    with pytest.raises(PathsegError, match="--tta / --tta-space are for tissue runs"):
        run_slide(run, log=lambda *a: None)
    run.tta_space, run.stride = None, 96
    with pytest.raises(PathsegError, match="--stride is for tissue runs"):
        run_slide(run, log=lambda *a: None)
    run.stride, run.precision = None, "bfloat16"
    with pytest.raises(PathsegError, match="--precision is for tissue runs"):
        run_slide(run, log=lambda *a: None)
    run.precision, run.ais_precision = None, "int8"
    with pytest.raises(PathsegError, match="--ais-precision needs a SAM-family model"):
        run_slide(run, log=lambda *a: None)
    run.ais_precision = None
    run.chunk, run.halo, run.stride = 192, 64, None  # the first run's settings: resumes (nothing left to do)
    assert run_slide(run, log=lambda *a: None)["chunks_done"] == len(parts)


def test_slide_without_pixel_size_needs_mpp(tmp_path):
    import tifffile

    from pathseg.errors import PathsegError

    path = tmp_path / "nompp.tif"
    tifffile.imwrite(path, np.full((256, 256, 3), 200, np.uint8), tile=(128, 128), photometric="rgb")
    with pytest.raises(PathsegError, match="give it with --mpp"):
        run_slide(SlideRun(str(path), str(tmp_path / "o"), model="classical"), log=lambda *a: None)


def test_chunks_the_model_would_grow_over_the_cap_are_refused_first(tmp_path, monkeypatch):
    import tifffile

    from pathseg.errors import PathsegError

    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.full((2048, 2048, 3), 230, np.uint8), tile=(256, 256), photometric="rgb")
    out = tmp_path / "o"
    with pytest.raises(PathsegError, match="Is 40 µm/px right"):  # a magnification given as --mpp
        run_slide(SlideRun(str(path), str(out), mpp=40), log=lambda *a: None)
    assert not (out / "report.json").exists() and not list(out.glob("parts/*"))
    monkeypatch.setenv("PATHSEG_MAX_PIXELS", "1e6")  # 0.5 -> 0.38 µm/px: a 2048 px chunk grows to 7.3 Mpx
    with pytest.raises(PathsegError, match="lower --chunk to 632 or less"):
        run_slide(SlideRun(str(path), str(tmp_path / "o2"), mpp=0.5), log=lambda *a: None)
    run_slide(SlideRun(str(path), str(tmp_path / "o3"), mpp=0.5, chunk=632), log=lambda *a: None)


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path):
    import dask
    import distributed  # noqa: F401 - its config defaults must exist before the override, or leaving it drops them
    import tifffile

    from pathseg.errors import PathsegError

    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.full((256, 256, 3), 200, np.uint8), tile=(128, 128), photometric="rgb")
    run = SlideRun(str(path), str(tmp_path / "o"), model="classical", mpp=0.5, use_tissue_mask=False)
    run.scheduler = "tcp://127.0.0.1:1"  # nothing listens on port 1
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(PathsegError, match="--scheduler tcp://127.0.0.1:1: cannot connect"):
            run_slide(run, log=lambda *a: None)


def test_cli_wsi(tmp_path, capsys):
    from pathseg.cli import main

    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    assert (
        main(
            [
                "wsi",
                str(svs),
                "-o",
                str(tmp_path / "w"),
                "--model",
                "classical",
                "--roi",
                "100,100,700,600",
                "--chunk",
                "400",
                "-q",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "chunks done" in out and (tmp_path / "w" / "report.json").is_file()
    assert main(["wsi", str(svs), "-o", str(tmp_path / "bad"), "--roi", "9000,9000,10,10"]) == 2
    assert "outside the slide" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "parts" / "run.json").exists()  # a refused plan records no settings
    assert main(["wsi", str(svs), "-o", str(tmp_path / "w"), "--roi", "9000,9000,10,10"]) == 2  # into the old run
    assert "roi: [100, 100, 700, 600] there, [9000, 9000, 10, 10] now" in capsys.readouterr().err


def test_labels_are_multiscale_ome_zarr(tmp_path):
    from pathseg.wsi.pipeline import write_multiscales

    root = zarr.open_group(str(tmp_path / "l.zarr"), mode="w", zarr_format=2)
    a = np.arange(3000 * 2500, dtype=np.uint32).reshape(3000, 2500)
    root.create_array("0", shape=a.shape, chunks=(1024, 1024), dtype="uint32")[:] = a
    write_multiscales(root, 0.25)
    ms = zarr.open_group(str(tmp_path / "l.zarr"), mode="r").attrs["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert ms["datasets"][2]["coordinateTransformations"][0]["scale"] == [1.0, 1.0]
    assert np.array_equal(root["2"][:], a[::4, ::4])


def test_dask_workers_give_identical_results(tmp_path):
    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    kw = dict(model="classical", roi=(200, 300, 900, 800), chunk=300, halo=48)
    run_slide(SlideRun(str(svs), str(tmp_path / "one"), **kw), log=lambda *a: None)
    report = run_slide(SlideRun(str(svs), str(tmp_path / "two"), workers=2, **kw), log=lambda *a: None)
    assert report["chunks_done"] == report["chunks_with_tissue"] > 1
    one = zarr.open_array(str(tmp_path / "one" / "labels.zarr" / "0"), mode="r")[:]
    two = zarr.open_array(str(tmp_path / "two" / "labels.zarr" / "0"), mode="r")[:]
    assert np.array_equal(one, two)
    assert (tmp_path / "one" / "nuclei.csv").read_text() == (tmp_path / "two" / "nuclei.csv").read_text()


def test_table_parquet_matches_csv(tmp_path):
    import pyarrow.parquet as pq

    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    run_slide(
        SlideRun(str(svs), str(tmp_path / "t"), model="classical", roi=(500, 800, 600, 600), chunk=300, halo=48),
        log=lambda *a: None,
    )
    table = pq.read_table(tmp_path / "t" / "nuclei.parquet")
    csv_ids = np.loadtxt(tmp_path / "t" / "nuclei.csv", delimiter=",", skiprows=1, usecols=0)
    assert table.num_rows == len(csv_ids) > 10
    assert np.array_equal(table.column("id").to_numpy(), csv_ids.astype(np.int64))
    x_um = table.column("centroid_x_um").to_numpy()
    assert np.allclose(x_um, table.column("centroid_x_px").to_numpy() * 0.499)


def test_sigkill_then_resume_gives_identical_output(tmp_path):
    """A run killed with SIGKILL mid-way and started again ends with the same outputs as an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    args = [
        "wsi",
        str(svs),
        "--model",
        "classical",
        "--roi",
        "300,500,1200,1200",
        "--chunk",
        "256",
        "--halo",
        "48",
        "-q",
    ]
    from pathseg.cli import main

    assert main([*args, "-o", str(tmp_path / "ref")]) == 0
    cmd = [sys.executable, "-m", "pathseg.cli", *args, "-o", str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "killed" / "parts"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("*.npz"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < len(list(parts.glob("*.npz"))) < 25 and not (tmp_path / "killed" / "report.json").exists()
    assert main([*args, "-o", str(tmp_path / "killed")]) == 0
    ref = zarr.open_array(str(tmp_path / "ref" / "labels.zarr" / "0"), mode="r")[:]
    again = zarr.open_array(str(tmp_path / "killed" / "labels.zarr" / "0"), mode="r")[:]
    assert np.array_equal(ref, again)
    assert (tmp_path / "ref" / "nuclei.csv").read_text() == (tmp_path / "killed" / "nuclei.csv").read_text()
    assert (tmp_path / "ref" / "nuclei.geojson").read_text() == (tmp_path / "killed" / "nuclei.geojson").read_text()


def test_corrupt_tile_is_reported_and_skipped(tmp_path):
    import tifffile

    from tests.conftest import synthetic_nuclei

    rgb, _ = synthetic_nuclei((1024, 1024), n=150, radius=11, seed=7)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(
        path,
        rgb,
        tile=(256, 256),
        compression="zlib",
        photometric="rgb",
        resolution=(1e4 / 0.25, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
    )
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[5], page.databytecounts[5]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\xff" * count  # tile 5 (row 1, column 1) is now garbage
    path.write_bytes(bytes(data))
    report = run_slide(
        SlideRun(str(path), str(tmp_path / "o"), model="classical", chunk=256, halo=16, use_tissue_mask=False),
        log=lambda *a: None,
    )
    failed = {f["chunk"] for f in report["chunks_failed"]}
    assert 5 in failed and len(failed) < report["chunks"]
    assert report["chunks_done"] == report["chunks"] - len(failed)
    assert (tmp_path / "o" / "nuclei.geojson").is_file()


class _ClassicalWithClasses(ClassicalModel):
    """The classical segmenter plus a stand-in class decoder: class 1 on the left half, 2 on the right half."""

    semantic = True
    class_names = [
        {"name": "background", "color": [0, 0, 0]},
        {"name": "left", "color": [255, 0, 0]},
        {"name": "right", "color": [0, 0, 255]},
    ]

    def class_probabilities(self, rgb, mpp, progress=None):
        h, w = rgb.shape[:2]
        p = np.zeros((3, h, w), np.float32)
        p[1, :, : w // 2] = 1
        p[2, :, w // 2 :] = 1
        return p


def test_wsi_classes_in_every_output(tmp_path):
    import pyarrow.parquet as pq

    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    report = run_slide(
        SlideRun(
            str(svs),
            str(tmp_path / "c"),
            model=_ClassicalWithClasses(),
            roi=(500, 800, 400, 300),
            chunk=512,
            halo=32,
            classes=True,
        ),
        log=lambda *a: None,
    )
    assert report["chunks_done"] == 1
    fc = json.loads((tmp_path / "c" / "nuclei.geojson").read_text())
    names = {f["properties"]["classification"]["name"] for f in fc["features"]}
    assert names == {"left", "right"}
    table = pq.read_table(tmp_path / "c" / "nuclei.parquet")
    assert {"class_id", "p_left", "p_right"} <= set(table.column_names)
    classes = zarr.open_array(str(tmp_path / "c" / "classes.zarr" / "0"), mode="r")[800:1100, 500:900]
    labels = zarr.open_array(str(tmp_path / "c" / "labels.zarr" / "0"), mode="r")[800:1100, 500:900]
    assert set(np.unique(classes[labels > 0])) == {1, 2} and (classes[labels == 0] == 0).all()
    for lab in np.unique(labels[labels > 0])[:50]:
        assert len(np.unique(classes[labels == lab])) == 1  # one class per nucleus


def test_a_sam_models_automatic_settings_are_part_of_the_resume_check():
    from pathseg.models.nucleus_sam import SamNucleusModel, compact_config
    from pathseg.wsi.pipeline import _model_parameters

    model = SamNucleusModel(compact_config(mpp=0.5, tile=128))
    before = _model_parameters(model)
    assert before["ais_stain"] is None and before["ais_tta"] == 1 and before["ais_mpp"] == 0.5
    assert "center_distance_threshold" in before  # the thresholds as before
    model.config["ais_stain"] = {"mean": [60.0, 20.0, -10.0], "std": [15.0, 7.0, 7.0]}
    assert _model_parameters(model)["ais_stain"] == model.config["ais_stain"]  # a resumed run would stop
    assert "ais_shift" not in before  # recorded only when set, so runs recorded before it still resume
    model.config["ais_shift"] = [0.4, 0.45]
    assert _model_parameters(model)["ais_shift"] == [0.4, 0.45]
    assert "ais_precision" not in before  # likewise
    model.config["ais_precision"] = "int8"
    assert _model_parameters(model)["ais_precision"] == "int8"
    model.set_ais_params(min_foreground=0.55)  # --ais-param: part of the thresholds recorded
    assert _model_parameters(model)["min_foreground"] == 0.55 and before["min_foreground"] == 0.0
    assert _model_parameters(ClassicalModel()) == ClassicalModel().params.as_dict()


def test_a_resume_with_other_settings_names_only_what_differs(tmp_path):
    from pathseg.errors import PathsegError
    from pathseg.wsi.chunks import check_resume, record_settings

    there = {"task": "tissue", "chunk": 512, "model_parameters": {"tta": 4, "stride": 128}, "weights": "a" * 64}
    record_settings(tmp_path, there)
    check_resume(tmp_path, there)  # the same run: resumes
    with pytest.raises(PathsegError) as err:
        check_resume(tmp_path, {**there, "task": "nuclei", "model_parameters": {"min_size": 20}, "weights": "b" * 64})
    assert 'other settings (task: "tissue" there, "nuclei" now)' in str(err.value)  # the rest follows from it
    with pytest.raises(PathsegError) as err:
        check_resume(tmp_path, {**there, "model_parameters": {"tta": 2, "stride": 128}, "weights": "b" * 64})
    said = str(err.value)
    assert 'model_parameters.tta: 4 there, 2 now; weights: "aaaaaaaaaaaa..." there, "bbbbbbbbbbbb..." now' in said


def test_a_plain_image_is_no_slide_and_a_refused_run_leaves_no_folder(tmp_path, capsys):
    from PIL import Image

    from pathseg.cli import main

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "tile.png")
    out = tmp_path / "run"
    assert main(["wsi", str(tmp_path / "tile.png"), "-o", str(out), "--mpp", "0.5", "-q"]) == 2
    assert "a PNG/JPEG image is no slide: segment it with `pathseg nuclei`" in capsys.readouterr().err
    assert not out.exists()  # no empty parts/ left behind


def test_a_roi_reaching_past_the_slide_is_clipped_with_a_note(tmp_path, caplog):
    from pathseg.wsi.chunks import plan_slide

    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    run = SlideRun(str(svs), str(tmp_path), model="classical", roi=(2000, 2900, 5000, 40), use_tissue_mask=False)
    with open_slide(svs) as slide, caplog.at_level("WARNING", logger="pathseg"):
        w, h = slide.dimensions
        plan = plan_slide(run, slide, slide.mpp, tmp_path)
    assert plan.region == (2000, 2900, w, 2940)
    assert f"--roi 2000,2900,5000,40 reaches past the slide ({w}x{h}); only its part inside the slide, " in caplog.text
    assert f"2000,2900,{w - 2000},40, is segmented" in caplog.text


def test_slide_geojson_traces_holes_as_a_tiles_geojson_does():
    from pathseg.nuclei.measure import geojson_features, measure_nuclei
    from pathseg.wsi.pipeline import _feature_strings, owned_nuclei

    yy, xx = np.mgrid[:80, :80]
    labels = np.zeros((80, 80), np.int32)
    r2 = (yy - 30) ** 2 + (xx - 30) ** 2
    labels[r2 < 15**2] = 1
    labels[r2 < 4**2] = 0  # a nucleus with a hole
    labels[(yy - 65) ** 2 + (xx - 65) ** 2 < 6**2] = 2
    rgb = np.full((80, 80, 3), 200, np.uint8)
    chunk = Chunk(index=0, inner=(0, 0, 80, 80), outer=(0, 0, 80, 80))
    part = owned_nuclei(chunk, 0.5, rgb, labels)
    slide = {
        f["properties"]["label"] - int(part["id"][0]) + 1: f for f in map(json.loads, _feature_strings(part, 1.0, None))
    }
    tile = {f["properties"]["label"]: f for f in geojson_features(labels, measure_nuclei(labels, rgb, 0.5))}
    assert sorted(slide) == sorted(tile) == [1, 2]
    for lab in (1, 2):
        assert slide[lab]["geometry"]["coordinates"] == tile[lab]["geometry"]["coordinates"]
    donut = [np.array(r) for r in slide[1]["geometry"]["coordinates"]]
    assert len(donut) == 2 and len(slide[2]["geometry"]["coordinates"]) == 1

    def shoelace(r):
        return 0.5 * abs(np.dot(r[:-1, 0], r[1:, 1]) - np.dot(r[1:, 0], r[:-1, 1]))

    # QuPath's area (outer minus hole) is the table's pixel count
    assert shoelace(donut[0]) - shoelace(donut[1]) == (labels == 1).sum()
    # a part written before holes were traced (resumed run) still gives its outer rings
    old = {k: v for k, v in part.items() if not k.startswith("hole_")}
    outer_only = [json.loads(t)["geometry"]["coordinates"] for t in _feature_strings(old, 1.0, None)]
    assert [len(c) for c in outer_only] == [1, 1]


def test_ais_params_shape_a_slide_run_and_its_resume_check(tmp_path):
    from pathseg.errors import PathsegError

    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    roi = (600, 900, 400, 400)
    out = str(tmp_path / "run")
    run_slide(SlideRun(str(svs), out, model="pathseg_nuclei_cpu", roi=roi, chunk=512), log=lambda *a: None)
    # no nucleus is that large: min_size=1e9 (model px) drops them all
    run = SlideRun(str(svs), str(tmp_path / "none"), model="pathseg_nuclei_cpu", roi=roi, chunk=512)
    run.ais_params = {"min_size": 1e9}
    run_slide(run, log=lambda *a: None)
    assert not zarr.open_array(str(tmp_path / "none" / "labels.zarr" / "0"), mode="r")[:].any()
    assert zarr.open_array(out + "/labels.zarr/0", mode="r")[:].any()
    run.out = out  # into the plain run's folder: other thresholds are refused, never mixed
    with pytest.raises(PathsegError, match="min_size: 20 there, 1000000000.0 now"):
        run_slide(run, log=lambda *a: None)
    run.task = "tissue"
    with pytest.raises(PathsegError, match="--ais-param is for nucleus runs"):
        run_slide(run, log=lambda *a: None)


def test_a_resume_check_shows_an_unstated_ais_setting_as_what_it_means(tmp_path):
    from pathseg.errors import PathsegError
    from pathseg.wsi.chunks import check_resume, record_settings

    params = {"ais_mpp": 0.38, "min_size": 20}
    there = {"task": "nuclei", "chunk": 512, "model_parameters": {**params, "ais_precision": "int8"}}
    record_settings(tmp_path, there)
    with pytest.raises(PathsegError, match='model_parameters.ais_precision: "int8" there, "float32" now'):
        check_resume(tmp_path, {**there, "model_parameters": params})  # float32 is recorded by its absence
    shifted = {**there, "model_parameters": {**params, "ais_precision": "int8", "ais_shift": [0.4, 0.45]}}
    with pytest.raises(PathsegError, match=r"model_parameters.ais_shift: null there, \[0.4, 0.45\] now"):
        check_resume(tmp_path, shifted)
    check_resume(tmp_path, {**there, "model_parameters": {**params, "ais_precision": "int8", "ais_shift": None}})
