"""Whole-slide tissue classes: chunks on one global patch grid equal one pass (no seams); outputs; resume."""

import json

import numpy as np
import torch
import zarr

from pathseg.io.slides import open_slide
from pathseg.models import precision as prec
from pathseg.tissue.model import TissueModel
from pathseg.wsi.pipeline import SlideRun, run_slide
from tests.conftest import shared_data
from tests.test_diffusion_backbone import tiny_config


def tiny_tissue_model(mpp: float) -> TissueModel:
    torch.manual_seed(0)
    cfg = {
        "name": "tiny_tissue",
        "mpp": mpp,
        "classes": [
            {"name": "background", "color": [0, 0, 0]},
            {"name": "gland", "color": [0, 200, 0]},
            {"name": "stroma", "color": [200, 0, 100]},
        ],
        "features": {"timesteps": [10], "blocks": [3], "seed": 0},
        "head": {"hidden": 8},
        "patch_size": 64,
        "backbone": tiny_config(),
    }
    model = TissueModel(cfg).eval()
    with torch.no_grad():  # amplify the random head so the classes vary across the image
        model.head.classify.weight.mul_(50)
        model.head.classify.bias.zero_()
    return model


def test_chunked_tissue_equals_one_pass_and_writes_outputs(tmp_path):
    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    roi = (300, 700, 230, 190)
    model = tiny_tissue_model(0.499)
    run = SlideRun(
        str(svs), str(tmp_path / "t"), model=model, roi=roi, chunk=70, halo=0, task="tissue", use_tissue_mask=False
    )
    report = run_slide(run, log=lambda *a: None)
    assert report["task"] == "tissue" and report["chunks"] == report["chunks_done"] == 12
    chunked = zarr.open_array(str(tmp_path / "t" / "classes.zarr" / "0"), mode="r")[700:890, 300:530]
    with open_slide(svs) as s:
        rgb = s.read_region(0, 300, 700, 230, 190)
    single = model.segment(rgb) + 1  # classes.zarr: 0 = not analysed, k + 1 = class k
    assert len(np.unique(single)) > 1  # the comparison is not between two constant maps
    assert np.array_equal(chunked, single)
    fc = json.loads((tmp_path / "t" / "tissue.geojson").read_text())
    assert fc["features"] and {f["properties"]["classification"]["name"] for f in fc["features"]} <= {"gland", "stroma"}
    rows = (tmp_path / "t" / "tissue_areas.csv").read_text().splitlines()
    assert sum(int(r.split(",")[2]) for r in rows[1:]) == 230 * 190
    props = zarr.open_group(str(tmp_path / "t" / "classes.zarr"), mode="r").attrs["image-label"]["properties"]
    assert [p["class"] for p in props] == ["background", "gland", "stroma"]


def test_tissue_run_resumes(tmp_path):
    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    model = tiny_tissue_model(0.499)
    run = SlideRun(
        str(svs),
        str(tmp_path / "r"),
        model=model,
        roi=(0, 0, 200, 150),
        chunk=100,
        halo=0,
        task="tissue",
        use_tissue_mask=False,
    )
    run_slide(run, log=lambda *a: None)
    ref = zarr.open_array(str(tmp_path / "r" / "classes.zarr" / "0"), mode="r")[:]
    parts = sorted((tmp_path / "r" / "parts").glob("tissue_*.npz"))
    parts[0].unlink()
    run_slide(run, log=lambda *a: None)
    assert np.array_equal(ref, zarr.open_array(str(tmp_path / "r" / "classes.zarr" / "0"), mode="r")[:])


def test_tissue_run_tta_stride_and_other_settings_refused_on_resume(tmp_path, monkeypatch):
    import pytest

    from pathseg.errors import PathsegError

    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    model = tiny_tissue_model(0.499)
    roi = (40, 60, 150, 120)
    run = SlideRun(
        str(svs), str(tmp_path / "v"), model=model, roi=roi, chunk=80, halo=0, task="tissue", use_tissue_mask=False
    )
    run.tta, run.stride = 2, model.patch // 2
    report = run_slide(run, log=lambda *a: None)
    assert model.tta == 1 and "stride" not in model.config  # the caller's model is left as it was
    assert report["model_parameters"]["tta"] == 2 and report["model_parameters"]["stride"] == model.patch // 2
    chunked = zarr.open_array(str(tmp_path / "v" / "classes.zarr" / "0"), mode="r")[60:180, 40:190]
    with open_slide(svs) as s:
        rgb = s.read_region(0, *roi)
    model.tta, model.step = 2, model.patch // 2
    assert np.array_equal(chunked, model.segment(rgb) + 1)
    model.tta = 1
    assert not np.array_equal(chunked, model.segment(rgb) + 1)  # the views changed the map
    parts = sorted((tmp_path / "v" / "parts").glob("tissue_*.npz"))
    run.tta = 4  # a resumed run with other views would mix two runs' chunks: refused, nothing touched
    with pytest.raises(PathsegError, match=r"tta.*2.*there.*4.*now"):
        run_slide(run, log=lambda *a: None)
    run.tta, run.tta_space = 2, "latent"  # views of the latent: also another map
    with pytest.raises(PathsegError, match=r"model_parameters.tta_space: null there, \"latent\" now"):
        run_slide(run, log=lambda *a: None)
    assert model.tta_space == "image"  # the caller's model is left as it was
    run.tta_space, run.precision = None, "bfloat16"  # other arithmetic: another map too
    with pytest.raises(PathsegError, match=r"model_parameters.precision: \S+ there, \"bfloat16\" now"):
        run_slide(run, log=lambda *a: None)
    # "auto" is resolved once where the run is planned and recorded as what it meant there, so a resume on a
    # machine where it means other arithmetic is refused (and Dask workers all get the planner's choice)
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)
    run.precision = "auto"
    with pytest.raises(PathsegError, match=r"model_parameters.precision: \S+ there, \"bfloat16\" now"):
        run_slide(run, log=lambda *a: None)
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    assert run_slide(run, log=lambda *a: None)["chunks_done"] == report["chunks_done"]  # float32 here: resumes
    run.precision = None
    with torch.no_grad():  # same name and parameters, other weights (a model folder retrained in place)
        model.head.classify.bias.add_(0.1)
    with pytest.raises(PathsegError, match=r"weights: \"[0-9a-f]{12}\.\.\.\" there"):
        run_slide(run, log=lambda *a: None)
    assert sorted((tmp_path / "v" / "parts").glob("tissue_*.npz")) == parts


def _blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A (H, W) map of classes 1..3 in blobs of many sizes (small holes and specks among them), 0 in one strip."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    coarse = ndi.gaussian_filter(rng.random(shape), 6)
    fine = ndi.gaussian_filter(rng.random(shape), 1.5)
    classes = np.where(coarse > np.median(coarse), 1, 2).astype(np.uint8)
    classes[fine > np.quantile(fine, 0.97)] = 3
    classes[:, 150:158] = 0  # not analysed (a failed or skipped chunk)
    return classes


def test_clean_blocks_equals_cleaning_the_whole_map():
    from pathseg.tissue.postprocess import clean_classes
    from pathseg.wsi.tissue import clean_blocks

    raw = _blobs((230, 310), seed=0)
    params = {"max_hole_um2": 30.0, "min_area_um2": 20.0}  # at 0.5 µm/px: 120 and 80 px, a 122-px halo
    whole = clean_classes(raw, 0.5, params)
    whole = np.where((raw == 0) | (whole == 0), raw, whole)  # not analysed stays so, nothing becomes it
    assert (whole != raw).sum() > 200  # the cleaning has work to do
    out = np.zeros_like(raw)
    calls = []
    counts = clean_blocks(raw, out, 0.5, params, block=64, progress=lambda *a: calls.append(a))  # 4 x 5 blocks
    assert np.array_equal(out, whole)
    assert counts[:3].tolist() == [(whole == k).sum() for k in (1, 2, 3)]
    assert np.array_equal(out == 0, raw == 0)
    assert [c[:2] for c in calls] == [(i, 20) for i in range(1, 21)]  # progress once per block


def test_clean_blocks_refuses_a_halo_beyond_its_memory_bound():
    import pytest

    from pathseg.errors import PathsegError
    from pathseg.wsi.tissue import clean_blocks

    big = np.broadcast_to(np.uint8(1), (20_000, 20_000))  # refused from its shape, before a pixel is read
    with pytest.raises(PathsegError, match=r"halo.*memory bound"):  # the window: (4096 + 2 halo)², clipped to the map
        clean_blocks(big, None, 1.0, {"max_hole_um2": 1e6, "min_area_um2": 0.0})
    small = np.ones((8, 8), np.uint8)  # the same areas on a map that fits at once
    clean_blocks(small, small.copy(), 1.0, {"max_hole_um2": 1e6, "min_area_um2": 0.0})


def test_slide_class_map_is_cleaned_as_the_model_says_unless_no_clean(tmp_path, monkeypatch):
    from pathseg.tissue.postprocess import clean_classes

    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    model = tiny_tissue_model(0.499)
    model.config["clean"] = {"max_hole_um2": 20.0, "min_area_um2": 10.0}
    out = tmp_path / "c"
    roi = (300, 700, 230, 190)
    run = SlideRun(str(svs), str(out), model, roi=roi, chunk=80, halo=0, use_tissue_mask=False, task="tissue")
    run.clean = False
    report = run_slide(run, log=lambda *a: None)
    assert report["model_parameters"]["clean"] is None
    raw = zarr.open_array(str(out / "classes.zarr" / "0"), mode="r")[:]
    parts = {p: p.stat().st_mtime_ns for p in (out / "parts").glob("tissue_*.npz")}
    run.clean = True  # the same parts, re-assembled with cleaning: resumes, computes no chunk again
    report = run_slide(run, log=lambda *a: None)
    assert {p: p.stat().st_mtime_ns for p in (out / "parts").glob("tissue_*.npz")} == parts
    assert report["model_parameters"]["clean"] == model.config["clean"]
    cleaned = zarr.open_array(str(out / "classes.zarr" / "0"), mode="r")[:]
    expected = clean_classes(raw, 0.499, model.config["clean"])
    expected = np.where((raw == 0) | (expected == 0), raw, expected)
    assert not np.array_equal(cleaned, raw) and np.array_equal(cleaned, expected)
    rows = (out / "tissue_areas.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[2]) for r in rows] == [(cleaned == k + 1).sum() for k in range(3)]
    assert not (out / "parts" / "classes_raw.zarr").exists()
    monkeypatch.setattr("pathseg.wsi.tissue.MAX_CLEAN_WINDOW", 1_000_000)  # below this slide's map: warned, uncleaned
    logged = []
    run.out = str(tmp_path / "d")
    report = run_slide(run, log=logged.append)
    assert report["model_parameters"]["clean"] is None and any("left uncleaned" in m for m in logged)
    assert np.array_equal(zarr.open_array(str(tmp_path / "d" / "classes.zarr" / "0"), mode="r")[:], raw)


def test_no_clean_is_refused_for_nucleus_runs(tmp_path):
    import pytest

    from pathseg.errors import PathsegError

    with pytest.raises(PathsegError, match="--no-clean is for tissue runs"):
        run_slide(SlideRun(str(tmp_path / "none.svs"), str(tmp_path / "o"), clean=False), log=lambda *a: None)
