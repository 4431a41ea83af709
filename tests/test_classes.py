"""Nucleus classes: the per-nucleus vote and HoVer-Net's classification metrics, on hand-computed cases."""

import numpy as np
import pytest

from pathseg.metrics.classes import classification_scores, pair_centroids
from pathseg.nuclei.classes import argmax_disagreement, vote_classes


def test_vote_gives_one_class_per_nucleus_where_argmax_splits():
    labels = np.array([[1, 1, 1, 0, 2, 2]])
    # classes: 0 background, 1, 2. Nucleus 1: pixels favour 1, 1, 2 (but the 2 is weak); nucleus 2: all class 2
    probs = np.array(
        [
            [[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]],
            [[0.9, 0.8, 0.4, 0.0, 0.1, 0.2]],
            [[0.1, 0.2, 0.6, 0.0, 0.9, 0.8]],
        ]
    )
    ids, cls, p = vote_classes(labels, probs)
    assert ids.tolist() == [1, 2] and cls.tolist() == [1, 2]
    # nucleus 1: class-1 mass 2.1, class-2 mass 0.9 -> 0.7 / 0.3
    assert p[0].tolist() == pytest.approx([0.0, 0.7, 0.3])
    assert argmax_disagreement(labels, probs).tolist() == [True, False]


def test_pairing_by_centroid_distance():
    true = np.array([[0, 0], [10, 0], [50, 50]])
    pred = np.array([[1, 0], [9, 0], [100, 100]])
    pairs, un_t, un_p = pair_centroids(true, pred, radius=5)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 0), (1, 1)]
    assert un_t.tolist() == [2] and un_p.tolist() == [2]


def test_classification_scores_by_hand():
    true_xy = np.array([[0, 0], [20, 0], [40, 0], [60, 0]])
    true_c = np.array([1, 1, 2, 2])
    pred_xy = np.array([[1, 0], [21, 0], [41, 0], [200, 0]])
    pred_c = np.array([1, 2, 2, 1])
    s = classification_scores(true_xy, true_c, pred_xy, pred_c, classes=[1, 2], radius=12)
    # 3 pairs, 1 unpaired true (class 2), 1 unpaired pred (class 1): F_d = 6 / (6 + 1 + 1)
    assert s["f_d"] == pytest.approx(6 / 8)
    assert s["accuracy"] == pytest.approx(2 / 3)
    # class 1: paired with 1 on either side: (1,1), (1,2) -> TP 1, FN 1; unpaired pred of class 1: 1
    assert s["f_c1"] == pytest.approx(2 * 1 / (2 * 1 + 2 * 1 + 1))
    # class 2: (1,2), (2,2) -> TP 1, FP 1; unpaired true of class 2: 1
    assert s["f_c2"] == pytest.approx(2 * 1 / (2 * 1 + 2 * 1 + 1))


def test_evaluate_classes_cli_on_an_oracle(tmp_path, capsys):
    """Ground truth scored against itself: every F_c and Dice is 1."""
    import tifffile
    from PIL import Image

    from pathseg.cli import main
    from tests.conftest import synthetic_nuclei

    gt_dir, pred = tmp_path / "gt", tmp_path / "pred"
    (gt_dir / "instance_masks").mkdir(parents=True)
    (gt_dir / "type_masks").mkdir()
    pred.mkdir()
    (gt_dir / "classes.csv").write_text("id,name\n0,background\n1,tumour\n2,immune\n")
    for i in range(2):
        _, lab = synthetic_nuclei(seed=i)
        types = np.where(lab > 0, 1 + lab % 2, 0).astype(np.uint8)
        Image.fromarray(lab.astype(np.uint16)).save(gt_dir / "instance_masks" / f"t{i}.png")
        Image.fromarray(types).save(gt_dir / "type_masks" / f"t{i}.png")
        tifffile.imwrite(pred / f"t{i}_instances.tif", lab.astype(np.uint32))
        tifffile.imwrite(pred / f"t{i}_classes.tif", types)

    def evaluate() -> int:
        args = ["evaluate", "nuclei", "--pred", str(pred), "--gt", str(gt_dir), "--classes", "-q"]
        return main([*args, "--json", str(tmp_path / "s.json")])

    assert evaluate() == 0
    out = capsys.readouterr().out
    assert "F_d 1.000" in out and "tumour" in out and "immune" in out
    import json

    cls = json.loads((tmp_path / "s.json").read_text())["classes"]
    assert all(c["f_c"] == 1.0 and c["dice"] == 1.0 for c in cls["classes"])
    # swap the classes of the prediction: detection stays perfect, classification fails
    for i in range(2):
        t = tifffile.imread(pred / f"t{i}_classes.tif")
        tifffile.imwrite(pred / f"t{i}_classes.tif", np.where(t > 0, 3 - t, 0).astype(np.uint8))
    evaluate()
    cls = json.loads((tmp_path / "s.json").read_text())["classes"]
    assert cls["f_d"] == 1.0 and cls["accuracy"] == 0.0 and all(c["f_c"] == 0.0 for c in cls["classes"])


def test_nuclei_cli_with_classes(tmp_path, capsys):
    import csv
    import json

    import tifffile
    from PIL import Image

    from pathseg.cli import main
    from pathseg.models.nucleus_sam import SamNucleusModel, compact_config
    from tests.conftest import synthetic_nuclei

    cfg = compact_config(mpp=0.25, tile=128)
    cfg["halo"] = 16
    cfg["semantic_decoder"] = {**cfg["ais_decoder"], "out_channels": 3}
    cfg["semantic_classes"] = [
        {"name": "background", "color": [0, 0, 0]},
        {"name": "tumour", "color": [200, 0, 0]},
        {"name": "immune", "color": [0, 0, 200]},
    ]
    SamNucleusModel(cfg).save_pretrained(tmp_path / "model")
    rgb, gt = synthetic_nuclei((128, 128), n=6, radius=12, seed=0)
    Image.fromarray(rgb).save(tmp_path / "t.png")
    # a random model's AIS path finds no useful nuclei, so classify the known nuclei through the API
    from pathseg.api import NucleiResult, classify_nuclei, write_nuclei_outputs
    from pathseg.nuclei.measure import measure_nuclei

    model = SamNucleusModel.from_pretrained(tmp_path / "model")
    labels = gt.astype(np.uint32)
    result = NucleiResult(labels, measure_nuclei(labels, rgb, 0.25), 0.25, "argument", model.name, rgb)
    result.classes = classify_nuclei(model, result)
    paths = write_nuclei_outputs(result, tmp_path / "out", "t")
    cls_map = tifffile.imread(paths["classes"])
    # one class per nucleus: every nucleus's pixels share a single class in the class map
    for lab in range(1, int(labels.max()) + 1):
        assert len(np.unique(cls_map[labels == lab])) == 1
        assert cls_map[labels == lab][0] in (1, 2)  # never background
    feats = json.loads(paths["geojson"].read_text())["features"]
    assert all(f["properties"]["classification"]["name"] in ("tumour", "immune") for f in feats)
    with open(paths["table"]) as fh:
        rows = list(csv.DictReader(fh))
    assert {"class_id", "class_name", "p_tumour", "p_immune"} <= set(rows[0])
    assert all(abs(float(r["p_tumour"]) + float(r["p_immune"]) - 1) < 1e-5 for r in rows)
    columns = result.columns()  # what Python users get: the CSV's columns, classes included
    assert list(columns) == list(rows[0]) and [str(v) for v in columns["class_name"]] == [r["class_name"] for r in rows]
    # and the CLI flag runs end to end (a model without a class decoder says so)
    assert (
        main(
            [
                "nuclei",
                str(tmp_path / "t.png"),
                "-o",
                str(tmp_path / "cli"),
                "--model",
                str(tmp_path / "model"),
                "--classes",
                "-q",
            ]
        )
        == 0
    )
    no_classes = ["--model", "classical", "--classes", "-q"]
    assert main(["nuclei", str(tmp_path / "t.png"), "-o", str(tmp_path / "c2"), *no_classes]) == 2  # before any image
    assert "--classes needs a model with a class decoder; 'classical' has none" in capsys.readouterr().err
