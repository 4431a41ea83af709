"""Integration tests on ../shared/data (skipped cleanly when it is absent)."""

import functools
import http.server
import threading

import numpy as np
import pytest

from pathseg.cli import main
from pathseg.demo import DEMO_NAME, fetch_demo_slide
from pathseg.io.images import read_image, read_labels
from pathseg.metrics import instance_scores
from pathseg.models.classical import ClassicalModel
from tests.conftest import shared_data

pytestmark = pytest.mark.integration


def test_openslide_svs_with_pixel_size():
    svs = shared_data("wsi", "CMU-1-Small-Region.svs")
    im = read_image(svs)
    assert im.pixels.shape == (2967, 2220, 3) and im.pixels.dtype == np.uint8
    assert im.mpp == pytest.approx(0.499)
    assert im.notes == []


def test_classical_meets_the_floor_on_monuseg_test():
    """Outcome of the foundation issue: AJI >= 0.54 and PQ >= 0.46 on all 14 MoNuSeg test images.

    Parameters were tuned on a validation split of MoNuSeg train (benchmarks/tune_classical.py), never on test.
    """
    root = shared_data("monuseg", "test")
    model = ClassicalModel()
    scores = []
    for path in sorted((root / "images").glob("*.png")):
        gt = read_labels(root / "instance_masks" / path.name)
        scores.append(instance_scores(gt, model.segment(read_image(path).pixels, 0.25)))
    assert len(scores) == 14
    aji = np.mean([s["aji"] for s in scores])
    pq = np.mean([s["pq"] for s in scores])
    assert aji >= 0.54, aji
    assert pq >= 0.46, pq


def test_cli_on_a_real_tile_and_evaluate(tmp_path, capsys):
    root = shared_data("monuseg", "test")
    image = sorted((root / "images").glob("*.png"))[0]
    out = tmp_path / "out"
    assert main(["nuclei", str(image), "-o", str(out), "-q"]) == 0
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    (gt_dir / image.name).symlink_to(root / "instance_masks" / image.name)
    assert main(["evaluate", "nuclei", "--pred", str(out), "--gt", str(gt_dir), "-q"]) == 0
    table = capsys.readouterr().out
    assert image.stem in table and "mean (1)" in table


def test_demo_slide_download_with_real_hash(tmp_path):
    """The demo's download path, end to end, with the real slide served over loopback."""
    folder = shared_data("wsi")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{DEMO_NAME}"
        path = fetch_demo_slide(url, wheel=None, dest=tmp_path / DEMO_NAME)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert path.stat().st_size == (folder / DEMO_NAME).stat().st_size
    # a second call uses the verified cache (the server is gone now)
    assert fetch_demo_slide(url, wheel=None, dest=tmp_path / DEMO_NAME, timeout=1) == path


def test_class_evaluation_reads_the_consep_layout(tmp_path):
    """CoNSeP ground truth scored against itself through the real folder layout: F_d = 1, every F_c = 1."""
    import tifffile

    from pathseg.evaluate import evaluate_class_folders

    root = shared_data("consep", "test")
    gt = tmp_path / "gt"
    for sub in ("instance_masks", "type_masks"):
        (gt / sub).mkdir(parents=True)
    pred = tmp_path / "pred"
    pred.mkdir()
    for path in sorted((root / "instance_masks").glob("*.png"))[:6]:
        for sub in ("instance_masks", "type_masks"):
            (gt / sub / path.name).symlink_to(root / sub / path.name)
        tifffile.imwrite(pred / f"{path.stem}_instances.tif", read_labels(path).astype(np.uint32))
        tifffile.imwrite(pred / f"{path.stem}_classes.tif", read_labels(root / "type_masks" / path.name))
    (gt / "classes.csv").symlink_to(root.parent / "classes.csv")
    res = evaluate_class_folders(pred, gt, quiet=True)
    assert res["images"] == 6 and res["f_d"] == 1.0
    assert {c["name"] for c in res["classes"]} >= {"inflammatory", "epithelial"}
    assert all(c["f_c"] in (1.0,) or np.isnan(c["f_c"]) for c in res["classes"])
