"""The `pathseg` command end to end on synthetic images (no network, no shared data)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pathseg.cli import main
from tests.conftest import synthetic_nuclei


@pytest.fixture
def tiles(tmp_path):
    folder = tmp_path / "tiles"
    masks = tmp_path / "masks"
    folder.mkdir()
    masks.mkdir()
    for i in range(2):
        rgb, gt = synthetic_nuclei(seed=i)
        Image.fromarray(rgb).save(folder / f"t{i}.png")
        Image.fromarray(gt.astype(np.uint16)).save(masks / f"t{i}.png")
    return folder, masks


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "pathseg demo" in out and "evaluate" in out
    with pytest.raises(SystemExit):
        main(["nuclei", "--help"])
    assert "--mpp" in capsys.readouterr().out


def test_python_dash_m_pathseg_runs_the_command():
    import subprocess
    import sys

    import torch

    import pathseg

    done = subprocess.run([sys.executable, "-m", "pathseg", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert pathseg.__version__ in done.stdout
    assert f"torch {torch.__version__}" in done.stdout and "devices: cpu" in done.stdout  # for bug reports


def test_nuclei_then_evaluate(tiles, tmp_path, capsys):
    folder, masks = tiles
    out = tmp_path / "out"
    assert main(["nuclei", str(folder), "-o", str(out), "--model", "classical", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "assumed 0.25 µm/px" in captured.err  # said once for the run
    assert captured.err.count("assumed") == 1
    for i in range(2):
        for name in (f"t{i}_instances.tif", f"t{i}.geojson", f"t{i}_nuclei.csv"):
            assert (out / name).is_file()
    report = tmp_path / "scores.json"
    assert main(["evaluate", "nuclei", "--pred", str(out), "--gt", str(masks), "--json", str(report), "-q"]) == 0
    table = capsys.readouterr().out
    assert "mean (2)" in table and "aji" in table
    scores = json.loads(report.read_text())
    assert len(scores["images"]) == 2 and scores["mean"]["sa50"] > 0.9


def test_mpp_from_file_is_used(tmp_path, capsys):
    rgb, _ = synthetic_nuclei()
    tifffile.imwrite(tmp_path / "s.tif", rgb, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    assert main(["nuclei", str(tmp_path / "s.tif"), "-o", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "0.5 µm/px (file)" in captured.out and "assumed" not in captured.err


def test_user_errors_have_no_traceback(tmp_path, capsys):
    (tmp_path / "junk.png").write_text("not an image")
    code = main(["nuclei", str(tmp_path / "junk.png"), str(tmp_path / "missing.png"), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert "junk.png: not a recognised image format" in err and "missing.png: file not found" in err
    assert "Traceback" not in err
    assert main(["nuclei", str(tmp_path / "junk.png"), "-o", str(tmp_path / "o"), "--model", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_bad_mpp_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["nuclei", "x.png", "-o", str(tmp_path), "--mpp", "-1"])
    assert "must be > 0" in capsys.readouterr().err


def test_a_magnification_given_as_mpp_is_refused_before_the_model_runs(tmp_path, capsys):
    rgb, _ = synthetic_nuclei()  # 40x -> resampled 105x a side to 0.38 µm/px: ~GB of memory, refused instead
    Image.fromarray(rgb).save(tmp_path / "t.png")
    assert main(["nuclei", str(tmp_path / "t.png"), "-o", str(tmp_path / "o"), "--mpp", "40", "-q"]) == 1
    err = capsys.readouterr().err
    assert "t.png: at 40 µm/px" in err and "not the magnification" in err and "Traceback" not in err
    assert not list((tmp_path / "o").glob("t*"))
    assert main(["tissue", str(tmp_path / "t.png"), "-o", str(tmp_path / "o"), "--mpp", "40", "-q"]) == 1
    assert "not the magnification" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_made_stops_the_run_first(tmp_path, capsys):
    rgb, _ = synthetic_nuclei()
    Image.fromarray(rgb).save(tmp_path / "t.png")
    for out, says in ((tmp_path / "t.png", "is a file, not a folder"), (tmp_path / "t.png" / "o", "cannot be made")):
        assert main(["nuclei", str(tmp_path / "t.png"), "-o", str(out), "--model", "classical", "-q"]) == 2
        assert says in capsys.readouterr().err
    assert main(["train", "nuclei", "--data", str(tmp_path), "-o", str(tmp_path / "t.png")]) == 2  # every -o
    assert "is a file, not a folder" in capsys.readouterr().err
    for json_out, says in (
        (tmp_path, "is a folder; give a file name"),
        (tmp_path / "t.png" / "s.json", "t.png is a file"),
    ):
        assert main(["evaluate", "nuclei", "--pred", "p", "--gt", "g", "--json", str(json_out)]) == 2  # before scoring
        assert says in capsys.readouterr().err


def test_evaluate_tissue_leaves_nucleus_labels_in_the_same_folder_alone(tmp_path, capsys):
    (tmp_path / "gt" / "masks").mkdir(parents=True)
    (tmp_path / "pred").mkdir()
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    for stem in ("a", "b"):
        Image.fromarray(mask).save(tmp_path / "gt" / "masks" / f"{stem}.png")
        tifffile.imwrite(tmp_path / "pred" / f"{stem}_instances.tif", mask.astype(np.uint32) * 7)  # nuclei, not classes
    tifffile.imwrite(tmp_path / "pred" / "a_classes.tif", mask)
    args = ["evaluate", "tissue", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "-q"]
    assert main(args) == 2
    assert "have no prediction in" in capsys.readouterr().err  # b has nucleus labels only
    (tmp_path / "gt" / "masks" / "b.png").unlink()
    assert main([*args, "--json", str(tmp_path / "s.json")]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["images"] == 1 and scores["mean_iou"] == 1.0


def test_evaluate_reports_missing_predictions_and_scores_the_predicted_only_when_asked(tiles, tmp_path, capsys):
    folder, masks = tiles
    out = tmp_path / "out"
    main(["nuclei", str(folder / "t0.png"), "-o", str(out), "-q", "--model", "classical"])
    n_gt = len(list(masks.iterdir()))
    args = ["evaluate", "nuclei", "--pred", str(out), "--gt", str(masks)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{n_gt - 1} ground-truth image(s) have no prediction" in err and "add --only-predicted" in err
    assert main([*args, "--only-predicted", "--json", str(tmp_path / "s.json")]) == 0
    assert f"scoring the 1 of {n_gt} ground-truth images with a prediction" in capsys.readouterr().err
    scores = json.loads((tmp_path / "s.json").read_text())
    assert [r["image"] for r in scores["images"]] == ["t0"] and scores["mean"]["sa50"] > 0.5


def test_models_list(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "classical" in out and "built-in" in out and "offline" in out


def test_demo_with_local_slide(tmp_path, capsys):
    rgb, _ = synthetic_nuclei()
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, rgb, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    assert main(["demo", "--slide", str(slide), "-o", str(tmp_path / "demo"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "QuPath" in out and "napari" in out
    assert (tmp_path / "demo" / "slide.geojson").is_file()


def test_inputs_expand_folders_and_dataset_layouts(tmp_path):
    from pathseg.cli import expand_inputs
    from pathseg.errors import PathsegError

    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "masks").mkdir()
    for name in ("b.png", "a.tif", "notes.txt", "._a.tif", "b_instances.tif", "b_tissue.tif"):
        # ._a.tif: macOS metadata beside a.tif; b_*.tif: pathseg's outputs written into the input folder
        (tmp_path / "set" / "images" / name).write_bytes(b"")
    (tmp_path / "set" / "masks" / "a.png").write_bytes(b"")
    images = [tmp_path / "set" / "images" / n for n in ("a.tif", "b.png")]
    assert expand_inputs([tmp_path / "set"]) == images  # a dataset folder: its images/, never its masks/
    assert expand_inputs([tmp_path / "set" / "images"]) == images
    (tmp_path / "empty").mkdir()
    with pytest.raises(PathsegError, match="folder holds no image files"):
        expand_inputs([tmp_path / "empty"])
    # each file once, in the order first named; two files that would write under one name are refused
    a_tif = tmp_path / "set" / "images" / "a.tif"
    assert expand_inputs([a_tif, tmp_path / "set", tmp_path / "set" / "images" / ".." / "images" / "a.tif"]) == images
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.png").write_bytes(b"")
    with pytest.raises(PathsegError, match=r"a.tif and .*other/a.png would write their results under one name, 'a'"):
        expand_inputs([tmp_path / "set", tmp_path / "other"])
    (tmp_path / "nest" / "day1").mkdir(parents=True)
    (tmp_path / "nest" / "day1" / "c.png").write_bytes(b"")
    with pytest.raises(PathsegError, match=r"sub-folders hold 1, but are not searched: name them, e.g. .*nest/\*/"):
        expand_inputs([tmp_path / "nest"])
    with pytest.raises(PathsegError, match="no file matches this pattern"):  # a glob the shell left unexpanded
        expand_inputs([tmp_path / "nest" / "*.png"])
    with pytest.raises(PathsegError, match="reads local files; download it first"):
        expand_inputs([Path("https://example.org/tile.png")])
    (tmp_path / "hv" / "Images").mkdir(parents=True)  # CoNSeP as HoVer-Net ships it
    (tmp_path / "hv" / "Images" / "d.png").write_bytes(b"")
    assert expand_inputs([tmp_path / "hv"]) == [tmp_path / "hv" / "Images" / "d.png"]


def test_ais_views_reach_the_network_and_need_an_ais_decoder(tmp_path, monkeypatch, capsys):
    from pathseg.models.nucleus_sam import SamNucleusModel

    rgb, _ = synthetic_nuclei()
    Image.fromarray(rgb).save(tmp_path / "t.png")
    passes = []
    original = SamNucleusModel._maps_once
    monkeypatch.setattr(SamNucleusModel, "_maps_once", lambda self, x: passes.append(1) or original(self, x))
    counts = {}
    for views in (1, 4):
        passes.clear()
        out = tmp_path / f"o{views}"
        assert main(["nuclei", str(tmp_path / "t.png"), "-o", str(out), "--ais-views", str(views), "-q"]) == 0
        assert (out / "t_instances.tif").is_file()
        counts[views] = len(passes)
    assert counts[1] >= 1 and counts[4] == 4 * counts[1]
    assert (
        main(["nuclei", str(tmp_path / "t.png"), "-o", str(tmp_path / "c"), "--model", "classical", "--ais-views", "2"])
        == 2
    )
    assert "--ais-views needs a SAM-family model" in capsys.readouterr().err


def test_ais_shift_reaches_the_maps_and_is_checked_before_any_image(tmp_path, monkeypatch, capsys):
    from pathseg.models.nucleus_sam import SamNucleusModel

    rgb, _ = synthetic_nuclei()
    Image.fromarray(rgb).save(tmp_path / "t.png")
    seen = []
    original = SamNucleusModel.predict_maps
    monkeypatch.setattr(
        SamNucleusModel, "predict_maps", lambda self, x: seen.append(self.ais_shift) or original(self, x)
    )
    assert main(["nuclei", str(tmp_path / "t.png"), "-o", str(tmp_path / "a"), "--ais-shift", "0.4", "0.5", "-q"]) == 0
    assert seen and set(seen) == {(0.4, 0.5)} and (tmp_path / "a" / "t_instances.tif").is_file()
    seen.clear()
    assert main(["nuclei", str(tmp_path / "t.png"), "-o", str(tmp_path / "b"), "--ais-shift", "0", "9", "-q"]) == 2
    assert not seen and "ais_shift must be [dy, dx]" in capsys.readouterr().err
    args = [
        "nuclei",
        str(tmp_path / "t.png"),
        "-o",
        str(tmp_path / "c"),
        "--model",
        "classical",
        "--ais-shift",
        "1",
        "1",
    ]
    assert main(args) == 2
    assert "--ais-shift needs a SAM-family model" in capsys.readouterr().err


def test_ais_params_reach_the_watershed_and_are_checked_before_any_image(tmp_path, monkeypatch, capsys):
    from pathseg.nuclei import automatic

    rgb, _ = synthetic_nuclei()
    Image.fromarray(rgb).save(tmp_path / "t.png")
    seen = []
    original = automatic.watershed_from_maps
    monkeypatch.setattr(automatic, "watershed_from_maps", lambda *a, **k: seen.append(a[3]) or original(*a, **k))
    args = ["nuclei", str(tmp_path / "t.png"), "-q", "--ais-param", "min_foreground=0.55"]
    assert main([*args, "-o", str(tmp_path / "a"), "--ais-param", "outline_levels=0.3,0.5"]) == 0
    assert seen[-1].min_foreground == 0.55 and seen[-1].outline_levels == (0.3, 0.5)
    assert seen[-1].foreground_threshold == 0.4  # the bundled model's own value where none is given
    seen.clear()
    assert main([*args, "-o", str(tmp_path / "b"), "--ais-param", "foreground_threshold=1.5"]) == 2
    assert not seen and "foreground_threshold must lie in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "-o", str(tmp_path / "c"), "--ais-param", "threshold=0.5"])
    assert "NAME one of center_distance_threshold" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "d"), "--model", "classical"]) == 2
    assert "--ais-param needs a SAM-family model" in capsys.readouterr().err
    assert not seen and not (tmp_path / "b").exists()


def test_no_stain_turns_the_automatic_paths_normalisation_off(tmp_path, monkeypatch):
    import pathseg.stain
    from pathseg.models.nucleus_sam import SamNucleusModel, compact_config

    rgb, _ = synthetic_nuclei()
    Image.fromarray(rgb).save(tmp_path / "t.png")
    cfg = compact_config(mpp=0.5, tile=128)
    cfg["halo"] = 16
    cfg["ais_stain"] = pathseg.stain.reference_stats([rgb])
    folder = SamNucleusModel(cfg).save_pretrained(tmp_path / "m")
    calls = []
    original = pathseg.stain.reinhard
    monkeypatch.setattr(pathseg.stain, "reinhard", lambda *a, **k: calls.append(1) or original(*a, **k))
    for flags, normalised in (([], True), (["--no-stain"], False)):
        calls.clear()
        out = tmp_path / f"o{len(flags)}"
        assert main(["nuclei", str(tmp_path / "t.png"), "-o", str(out), "--model", str(folder), "-q", *flags]) == 0
        assert (out / "t_instances.tif").is_file() and bool(calls) == normalised


def test_tables_align_numbers_right_and_text_left():
    from pathseg.table import format_table

    rows = [{"name": "a", "where": "bundled", "n": 5, "x": 0.5}, {"name": "long", "where": "download", "n": 12}]
    assert format_table(rows, ["name", "where", "n", "x"]).splitlines() == [
        "name  where      n      x",
        "----  --------  --  -----",
        "a     bundled    5  0.500",
        "long  download  12",
    ]


def test_numeric_options_out_of_range_are_refused_by_name(capsys):
    for argv, said in (
        (["train", "nuclei", "--data", "d", "-o", "o", "--batch", "0"], "argument --batch: must be >= 1, got 0"),
        (["train", "nuclei", "--data", "d", "-o", "o", "--val-every", "0"], "--val-every: must be >= 1"),
        (["train", "nuclei", "--data", "d", "-o", "o", "--val-fraction", "1"], "--val-fraction: must be >= 0 and < 1"),
        (["train", "nuclei", "--data", "d", "-o", "o", "--lr", "-1"], "--lr: must be > 0"),
        (["train", "tissue", "--data", "d", "-o", "o", "--backbone", "b", "--label-fraction", "0"], "must be > 0"),
        (["wsi", "s.svs", "-o", "o", "--chunk", "0"], "--chunk: must be >= 256"),
        (["wsi", "s.svs", "-o", "o", "--halo", "-1"], "--halo: must be >= 0"),
        (["nuclei", "t.png", "-o", "o", "--max-pixels", "x"], "--max-pixels: not a whole number: 'x'"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and said in capsys.readouterr().err


def test_a_run_without_validation_says_what_best_is(capsys):
    import argparse

    from pathseg.cli.train import _train

    args = argparse.Namespace(quiet=True, output="runs/x")
    assert _train(lambda cfg, progress, log: {"msa": -1.0}, None, args) == 0
    assert "no validation split: the model after the last step is runs/x/best" in capsys.readouterr().out


def test_skip_existing_resumes_a_folder_run(tmp_path, capsys):
    for i in range(2):
        Image.fromarray(synthetic_nuclei(seed=i)[0]).save(tmp_path / f"t{i}.png")
    run = ["nuclei", str(tmp_path / "t0.png"), str(tmp_path / "t1.png"), "-o", str(tmp_path / "out"), "--model"]
    assert main([*run, "classical", "--mpp", "0.25", "-q"]) == 0
    kept = (tmp_path / "out" / "t0_instances.tif").stat().st_mtime_ns
    (tmp_path / "out" / "t1.geojson").unlink()  # t1 interrupted: one of its outputs missing
    capsys.readouterr()
    assert main([*run, "classical", "--mpp", "0.25", "--skip-existing"]) == 0
    said = capsys.readouterr()
    assert "--skip-existing: 1 of 2 input(s) have their outputs" in said.err and "t0.png" not in said.out
    assert (tmp_path / "out" / "t1.geojson").is_file()
    assert (tmp_path / "out" / "t0_instances.tif").stat().st_mtime_ns == kept
    assert main([*run, "classical", "--mpp", "0.25"]) == 0
    assert re.search(r"^2 images: \d+ nuclei in \d+ s \(\d+\.\d s per image\) -> ", capsys.readouterr().out, re.M)


def test_evaluate_reads_hovernet_mat_ground_truth_with_its_classes(tmp_path, capsys):
    from scipy.io import savemat

    _, gt = synthetic_nuclei((80, 90), n=5, radius=8, seed=4)
    types = np.where(gt > 0, 1 + gt % 2, 0).astype(np.int32)
    (tmp_path / "Labels").mkdir()
    savemat(tmp_path / "Labels" / "t.mat", {"inst_map": gt.astype(np.float64), "type_map": types})
    (tmp_path / "pred").mkdir()
    tifffile.imwrite(tmp_path / "pred" / "t_instances.tif", gt.astype(np.uint32))
    tifffile.imwrite(tmp_path / "pred" / "t_classes.tif", types.astype(np.uint8))
    argv = ["evaluate", "nuclei", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path), "--classes"]  # finds Labels/
    assert main([*argv, "-q"]) == 0
    said = capsys.readouterr().out
    assert "F_d 1.000, accuracy of paired nuclei 1.000" in said
    tifffile.imwrite(tmp_path / "flat.tif", gt.astype(np.uint16))  # instance masks alone: no classes to score
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat.tif").rename(tmp_path / "flat" / "t.tif")
    argv[5] = str(tmp_path / "flat")
    assert main([*argv, "-q"]) == 2
    assert "--classes needs type_masks/" in capsys.readouterr().err
