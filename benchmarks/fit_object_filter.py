"""Fit the automatic path's learned object filter (:mod:`pathseg.nuclei.object_filter`) by cross-validation.

Each ``--data`` folder (images + instance masks) pairs with a ``--model`` that never saw its images (e.g. decoders
trained with that fold left out). Every image's maps come from its own model at ``--ais-mpp`` and are cut by the
watershed with the ``--write`` model's ``ais_params`` (else the first model's); each object is labelled kept when
its best IoU with a true nucleus is at least ``--target-iou`` (default 0.5: a match; 0.1 keeps every object over a
nucleus, so only objects over no annotated nucleus are learnt as the drop class). Cross-fitting judges the filter:
each folder's objects are scored by a filter fit on the other folders' objects, the ``--check`` folders (scored by
``--check-model``) by a filter fit on every folder. Objects of ``--extra`` folders (scored by ``--check-model``,
e.g. another dataset whose annotations the filter should respect) join every fit and are never scored. The
keep-probability threshold with the best mean mSA + AJI + PQ over the folds and ``--check`` images is chosen, the
filter is refit on every folder's objects (folds and ``--extra``), and ``--write FOLDER`` stores it in FOLDER's
config.json (``ais_params["object_filter"]``).
Results: ``benchmarks/results/object_filter_<tag>.json``.

    python benchmarks/fit_object_filter.py --data FOLD_A FOLD_B --model RUN_A/best RUN_B/best \\
        --check VAL --check-model pathseg_nuclei_cpu --ais-mpp 0.38 --write FOLDER
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pathseg.io.atomic import atomic_open
from pathseg.metrics import instance_scores
from pathseg.metrics.overlap import Overlap
from pathseg.models.folder import read_config, update_config
from pathseg.models.nucleus_sam import SamNucleusModel
from pathseg.models.zoo import get_nucleus_model
from pathseg.nuclei.automatic import AISParams, watershed_from_maps
from pathseg.nuclei.object_filter import fit_logistic, keep_probability, object_features
from pathseg.train.data import load_samples

THRESHOLDS = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)


def best_iou(gt: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each predicted object's (labels 1..n) highest IoU with any true nucleus."""
    ov = Overlap.of(gt, labels)
    best = np.zeros(ov.n_pred)
    np.maximum.at(best, ov.pairs[:, 1], ov.iou)
    return best


def objects(model: SamNucleusModel, folder: Path, mpp: float, params: AISParams, target_iou: float) -> list[dict]:
    """Per image of ``folder``: true labels, watershed labels, object features and 0/1 keep targets."""
    out = []
    for s in load_samples([folder], mpp, mpp):
        seg = model.initialized_segmenter(s.image, mpp)
        labels = watershed_from_maps(*seg.maps, params, seg.scale).astype(np.int64)
        x = object_features(labels, *seg.maps, scale=seg.scale)
        y = best_iou(s.labels, labels) >= target_iou
        out.append({"name": s.name, "gt": s.labels, "labels": labels, "x": x, "y": y})
    return out


def score(images: list[dict], fits: list[dict], threshold: float) -> dict[str, float]:
    """Mean mSA, AJI, PQ over ``images``, each with its objects under ``fits[i]`` below ``threshold`` removed."""
    rows = []
    for im, fit in zip(images, fits, strict=True):
        drop = np.concatenate([[False], keep_probability(im["x"], fit) < threshold])
        rows.append(instance_scores(im["gt"], np.where(drop[im["labels"]], 0, im["labels"])))
    mean = {m: float(np.mean([r[m] for r in rows])) for m in ("msa", "aji", "pq")}
    return {**mean, "score": sum(mean.values())}


def pooled_fit(groups: list[list[dict]]) -> dict:
    images = [im for g in groups for im in g]
    return fit_logistic(np.concatenate([im["x"] for im in images]), np.concatenate([im["y"] for im in images]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, nargs="+", required=True, help="folds of images + instance masks (2 or more)")
    ap.add_argument("--model", type=Path, nargs="+", required=True, help="one model folder per --data folder")
    ap.add_argument("--check", type=Path, nargs="*", default=[], help="more folders, scored by --check-model")
    ap.add_argument("--check-model", default=None, help="model (folder or name) for --check (the one written to)")
    ap.add_argument("--extra", type=Path, nargs="*", default=[], help="folders whose objects join every fit")
    ap.add_argument("--mpp", type=float, default=0.25, help="pixel size of the images in µm/px (MoNuSeg: 0.25)")
    ap.add_argument("--ais-mpp", type=float, default=None, help="pixel size the networks run at (default: own)")
    ap.add_argument("--write", type=Path, default=None, help="model folder whose config.json receives the filter")
    ap.add_argument("--target-iou", type=float, default=0.5, help="best IoU at which an object is a keep target")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = ap.parse_args(argv)
    if len(args.data) < 2 or len(args.model) != len(args.data):
        raise SystemExit("give 2 or more --data folds and one --model per fold")
    if not 0 < args.target_iou <= 1:
        raise SystemExit(f"--target-iou must be in (0, 1], got {args.target_iou}")
    if (args.check or args.extra) and args.check_model is None:
        raise SystemExit("--check and --extra need --check-model")
    models = [SamNucleusModel.from_pretrained(d) for d in args.model]
    check_model = get_nucleus_model(args.check_model) if args.check_model else None
    # the thresholds of the model written to (only its config is read), else of the check model or the first model
    own = read_config(args.write).get("ais_params", {}) if args.write else (check_model or models[0]).ais_params
    params = AISParams.of({**own, "object_filter": None})
    if args.ais_mpp:
        for m in [*models, *([check_model] if check_model else [])]:
            m.config["ais_mpp"] = args.ais_mpp
    folds = [objects(m, d, args.mpp, params, args.target_iou) for m, d in zip(models, args.data, strict=True)]
    checks = [im for d in args.check for im in objects(check_model, d, args.mpp, params, args.target_iou)]
    extra = [im for d in args.extra for im in objects(check_model, d, args.mpp, params, args.target_iou)]
    full = pooled_fit([*folds, extra])
    images, fits = [], []
    for i, fold in enumerate(folds):  # cross-fit: each fold scored by a filter that never saw its objects
        fit = pooled_fit([*folds[:i], *folds[i + 1 :], extra])
        images += fold
        fits += [fit] * len(fold)
    images += checks
    fits += [full] * len(checks)
    table = []
    for t in THRESHOLDS:
        row = {"threshold": t, **score(images, fits, t)}
        if checks:
            row["check"] = score(checks, [full] * len(checks), t)["score"]
        table.append(row)
        print(json.dumps(row), flush=True)
    best = max(table, key=lambda r: r["score"])
    model = {**full, "threshold": best["threshold"]}
    print(f"best threshold {best['threshold']}: mSA + AJI + PQ {best['score']:.4f} (no filter {table[0]['score']:.4f})")
    out = Path("benchmarks/results") / f"object_filter{'_' + args.tag if args.tag else ''}.json"
    with atomic_open(out, "w") as f:
        json.dump(
            {
                "folds": {str(d): [im["name"] for im in fold] for d, fold in zip(args.data, folds, strict=True)},
                "check": [im["name"] for im in checks],
                "extra": [im["name"] for im in extra],
                "ais_params": params.as_dict(),
                "target_iou": args.target_iou,
                "table": table,
                "best": best,
                "filter": model,
            },
            f,
            indent=2,
        )
    if args.write and best["threshold"] > 0:
        update_config(args.write, {"ais_params": {**own, "object_filter": model}})
        print(f"wrote the filter into {args.write / 'config.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
