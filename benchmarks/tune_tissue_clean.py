"""Pick a tissue model's class-map cleaning (hole filling, speck absorption; areas in µm²) and, with ``--tta``,
``--stride``, ``--tta-space`` and ``--precision``, its test-time views, patch stride, where the views are taken
(image or latent) and its arithmetic, on the validation split of its training run (never on test).

Reconstructs the run's validation images from ``<run>/train_config.json`` (same folders, class map, seed and
fraction), computes the model's class probabilities once per image and setting at the images' own pixel size, then
scores every grid point of :class:`pathseg.tissue.postprocess.CleanParams` by pooled mean Dice over the classes.
Writes the best into the model folder's config.json (``clean``, and ``tta`` / ``stride`` / ``tta_space`` /
``precision`` when searched) with ``--write``, and the search into
``benchmarks/results/tune_tissue_clean_<model>.json``.

    python benchmarks/tune_tissue_clean.py --run /tmp/pathseg-glas/a_100 [--model MODEL_FOLDER] [--tta 1 2 4 8]
        [--stride 192 128 96] [--tta-space image latent] [--precision float32 bfloat16] [--tag TAG] [--write]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pathseg.io.atomic import atomic_open
from pathseg.metrics.glas import glas_scores
from pathseg.metrics.semantic import confusion_matrix, confusion_scores
from pathseg.models.folder import update_config
from pathseg.models.precision import PRECISIONS
from pathseg.tissue.classes import IGNORE, load_class_map
from pathseg.tissue.data import load_tissue_samples
from pathseg.tissue.model import TTA_SPACES, TissueModel
from pathseg.tissue.postprocess import CleanParams, clean_classes
from pathseg.train.tissue import TissueTrainConfig, _split

GRID = {"max_hole_um2": [0, 250, 500, 1000, 2000, 5000], "min_area_um2": [0, 250, 500, 1000, 2000, 5000]}


def clean_grid(probs: list[np.ndarray], samples, mpp: float) -> list[dict]:
    """Pooled mean Dice / mIoU (and mean object F1 for binary masks) of every cleaning grid point."""
    k = probs[0].shape[0]
    raw = [p.argmax(0).astype(np.uint8) for p in probs]
    truth = [ndi.label(s.target == 1)[0] for s in samples] if k == 2 else [None] * len(samples)  # labelled once
    rows = []
    for values in itertools.product(*GRID.values()):
        params = CleanParams(**dict(zip(GRID, values, strict=True)))
        cm, objects = np.zeros((k, k)), []
        for r, s, t in zip(raw, samples, truth, strict=True):
            pred = clean_classes(r, mpp, params)
            cm += confusion_matrix(s.target, pred, k, IGNORE)
            if t is not None:
                objects.append(glas_scores(t, ndi.label(pred == 1)[0])["object_f1"])
        sem = confusion_scores(cm)
        row = {**params.as_dict(), "mean_dice": sem["mean_dice"], "miou": sem["mean_iou"]}
        if objects:
            row["object_f1"] = float(np.mean(objects))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="tissue training run folder (holds train_config.json)")
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: RUN/best)")
    ap.add_argument("--write", action="store_true", help="store the best cleaning in the model's config.json")
    ap.add_argument(
        "--tta", type=int, nargs="+", choices=[1, 2, 4, 8], default=None, help="test-time view counts to compare"
    )
    ap.add_argument(
        "--stride", type=int, nargs="+", default=None, help="patch strides to compare (px at the model's µm/px)"
    )
    ap.add_argument(
        "--tta-space", nargs="+", choices=list(TTA_SPACES), default=None, help="where test-time views are taken"
    )
    ap.add_argument("--precision", nargs="+", choices=list(PRECISIONS), default=None, help="arithmetic to compare")
    ap.add_argument("--tag", default=None, help="results file suffix (default: the model's name)")
    args = ap.parse_args(argv)
    cfg = TissueTrainConfig(**json.loads((args.run / "train_config.json").read_text()))
    if cfg.mpp_in is None:
        print("the run's train_config.json has no mpp_in: the images' pixel size is needed for areas in µm²")
        return 2
    model_dir = args.model or args.run / "best"
    model = TissueModel.from_pretrained(model_dir)
    _, val = _split(load_tissue_samples(cfg.data, load_class_map(cfg.classes)), cfg)
    print(f"validation split: {len(val)} images")
    clean_now = model.config.get("clean") or {}
    current = {
        "tta": model.tta,
        "stride": model.step,
        "tta_space": model.tta_space,
        "precision": model.precision,
        **{key: clean_now.get(key, 0) for key in GRID},
    }
    results = []
    spaces, precisions = args.tta_space or [model.tta_space], args.precision or [model.precision]
    settings = itertools.product(args.stride or [model.step], args.tta or [model.tta], spaces, precisions)
    for stride, tta, space, precision in settings:
        model.step, model.tta, model.tta_space, model.precision = stride, tta, space, precision
        start = time.perf_counter()
        probs = [model.probabilities(s.image, cfg.mpp_in) for s in val]
        seconds = (time.perf_counter() - start) / len(val)
        rows = clean_grid(probs, val, cfg.mpp_in)
        setting = {"tta": tta, "stride": stride, "tta_space": space, "precision": precision}
        results += [{**setting, **row, "s_per_image": seconds} for row in rows]
        print(f"stride {stride}, tta {tta} ({space}, {precision}): {seconds:.1f} s / image", flush=True)
    results.sort(key=lambda r: -r["mean_dice"])
    best = results[0]
    keys = ("stride", "tta", "tta_space", "precision")
    for setting in sorted({tuple(r[k] for k in keys) for r in results}):
        these = [r for r in results if tuple(r[k] for k in keys) == setting]
        none = next(r for r in these if r["max_hole_um2"] == 0 and r["min_area_um2"] == 0)
        name = "stride {}, tta {} ({}, {})".format(*setting)
        print(f"{name}, best:   {json.dumps(these[0])}")
        print(f"{name}, no cleaning: {json.dumps(none)}")
    now = next((r for r in results if all(r[k] == v for k, v in current.items())), None)
    if now:
        print(f"current setting:    {json.dumps(now)}")
    print(f"best on validation: {json.dumps(best)}")
    out = Path("benchmarks/results") / f"tune_tissue_clean_{args.tag or model.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as f:
        json.dump(
            {"run": str(args.run), "validation_images": len(val), "current": now, "best": best, "rows": results},
            f,
            indent=2,
        )
    if args.write:
        entries = {"clean": {key: best[key] for key in GRID}}
        if args.tta:
            entries["tta"] = best["tta"]
        if args.stride:
            entries["stride"] = best["stride"]
        if args.tta_space:
            entries["tta_space"] = best["tta_space"]
        if args.precision:
            entries["precision"] = best["precision"]
        print(f"wrote {', '.join(entries)} into {update_config(model_dir, entries)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
