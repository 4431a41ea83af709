"""Tune a SAM-family model's AIS post-processing on the validation split of its training run (never on test).

Reconstructs the run's validation images from ``<run>/train_config.json`` (same folders, seed and fraction),
computes the decoder maps once per image exactly as ``segment`` does (network at the model's pixel size, maps
resampled to the images' own), then grid-searches the watershed thresholds with the cheap ``generate`` and scores
at the images' own pixel size, as ``benchmarks/nuclei.py`` does. ``--ais-mpp`` also searches the pixel size the
network runs at (µm/px; default: the model's own), ``--ais-tta`` the number of mirrored views the maps are averaged
over (1, 2 or 4; default: the model's own). Writes the best parameters into the model folder's config.json
(``ais_params``, and ``ais_mpp`` / ``ais_tta`` when searched) with ``--write``, and the search into
``benchmarks/results/tune_ais_<model>.json``.

    python benchmarks/tune_ais.py --run ~/.cache/pathseg/train/run2 [--model RUN/best] [--ais-mpp 0.5 0.42] [--write]
    python benchmarks/tune_ais.py --run RUN --model pathseg_nuclei_cpu_folder --ais-tta 1 2 4

``--data DIR --model FOLDER --mpp 0.25`` tunes on every image + instance mask pair in DIR instead of a run's
validation split (your own annotated images; images the model was trained on make optimistic figures). Several
folders pair with as many models, each folder's images scored with its own model, for cross-validation: models
trained with one fold of images left out each, every image scored by the model that never saw it, and the
parameters chosen on all of them together (``--write`` then writes into the first model's folder).

    python benchmarks/tune_ais.py --data FOLD_A FOLD_B --model RUN_A/best RUN_B/best --ais-mpp 0.38

``--grid KEY=V1,V2 ...`` replaces the values searched for a parameter (e.g. to move past a grid edge), and
``--tag`` names the results file ``tune_ais_<model>_<tag>.json`` so that an earlier search is kept.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from pathseg.io.atomic import atomic_open
from pathseg.metrics import instance_scores
from pathseg.models.folder import update_config
from pathseg.models.nucleus_sam import SamNucleusModel
from pathseg.models.zoo import list_models
from pathseg.stain import reference_stats
from pathseg.train.data import load_samples
from pathseg.train.nuclei import source_groups, split_validation

GRID = {
    "center_distance_threshold": [0.5, 0.6, 0.7, 0.8, 0.9],
    "boundary_distance_threshold": [0.3, 0.4, 0.5],
    "foreground_threshold": [0.4, 0.5, 0.6],
    "foreground_smoothing": [0.0, 0.5],
    "distance_smoothing": [0.5, 1.0],
    "min_size": [10, 20, 30, 40],
}


def parse_grid(specs: list[str]) -> dict[str, list[float]]:
    """GRID with the ``KEY=V1,V2`` overrides of ``specs`` applied."""
    grid = dict(GRID)
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or key not in GRID:
            raise SystemExit(f"--grid takes KEY=V1,V2 with KEY one of {', '.join(GRID)}; got {spec!r}")
        cast = int if key == "min_size" else float
        try:
            grid[key] = [cast(v) for v in values.split(",")]
        except ValueError:
            msg = f"--grid {key}: values must be {cast.__name__}s separated by commas; got {values!r}"
            raise SystemExit(msg) from None
    return grid


def search(groups: list[tuple[SamNucleusModel, list]], mpp: float, space: dict | None = None) -> list[dict]:
    """Score every point of ``space`` (default GRID) on the samples of every (model, samples) group, each sample
    with its group's model (``main`` gives every model the same ``ais_mpp``, ``ais_tta`` and stain), scores averaged
    over all samples; parameters the grid does not search keep the first model's own (config ``ais_params``)."""
    space = space or GRID
    model = groups[0][0]
    fixed = {k: v for k, v in model.ais_params.items() if k not in space}
    stain = "reinhard" if model.ais_stain else "off"
    setting = {"ais_mpp": model.ais_mpp, "ais_tta": model.ais_tta, "stain": stain}
    name = f"ais_mpp {model.ais_mpp:g}, ais_tta {model.ais_tta}, stain {stain}"
    segmenters = [(m.initialized_segmenter(s.image, mpp), s.labels) for m, samples in groups for s in samples]
    keys = list(space)
    grid = list(itertools.product(*(space[k] for k in keys)))
    results = []
    for i, values in enumerate(grid):
        if i % 100 == 0:
            print(f"{name}: {i}/{len(grid)} parameter sets", flush=True)
        params = {**fixed, **dict(zip(keys, values, strict=True))}
        rows = [instance_scores(gt, seg.generate(**params)) for seg, gt in segmenters]
        mean = {m: float(np.mean([r[m] for r in rows])) for m in ("msa", "aji", "pq")}
        results.append({"params": {**setting, **params}, **mean, "score": sum(mean.values())})
    best = max(results, key=lambda r: r["score"])
    print(f"{name}: best {json.dumps(best)}", flush=True)
    return results


def model_folder(arg: Path, write: bool = False) -> Path:
    """``--model``'s folder: a path, or a bundled nucleus model's name (read-only: ``--write`` wants a copy you own)."""
    if arg.is_dir():
        return arg
    bundled = {e.name: e.bundled for e in list_models("nuclei") if e.bundled is not None}
    if str(arg) not in bundled:
        raise SystemExit(
            f"--model {arg}: no such folder, and not a bundled nucleus model ({', '.join(sorted(bundled))})"
        )
    if write:
        raise SystemExit(
            f"--write would change the installed {arg}: copy its folder ({bundled[str(arg)]}) and tune that"
        )
    return bundled[str(arg)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="training run folder (holds train_config.json)")
    ap.add_argument(
        "--data", type=Path, nargs="+", default=None, help="tune on these folders' pairs (one per --model), not --run's"
    )
    ap.add_argument("--mpp", type=float, default=0.25, help="pixel size of --data's images in µm/px (MoNuSeg: 0.25)")
    ap.add_argument(
        "--model",
        type=Path,
        nargs="+",
        default=None,
        help="model folder or bundled model name (default: RUN/best); with --data, one each",
    )
    ap.add_argument("--write", action="store_true", help="store the best parameters in the model's config.json")
    ap.add_argument("--ais-mpp", type=float, nargs="+", default=None, help="network pixel sizes to try (µm/px)")
    ap.add_argument(
        "--ais-tta", type=int, nargs="+", default=None, choices=(1, 2, 4), help="views to average the maps over"
    )
    ap.add_argument(
        "--stain",
        nargs="+",
        default=None,
        choices=("off", "reinhard"),
        help="colour normalisation before the network: reinhard matches each image to the mean LAB statistics of "
        "the run's training images (ais_stain); off: none",
    )
    ap.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2", help="values to search for a parameter")
    ap.add_argument("--tag", default="", help="suffix of the results file (tune_ais_<model>_<tag>.json)")
    args = ap.parse_args(argv)
    space = parse_grid(args.grid)
    if (args.run is None) == (args.data is None):
        raise SystemExit("give exactly one of --run (its validation split) or --data (a folder of images + masks)")
    if args.data is not None and (len(args.model or []) != len(args.data) or "reinhard" in (args.stain or [])):
        raise SystemExit("--data needs one --model per folder, and no --stain reinhard (its reference is a run's)")
    if args.run is not None:
        if len(args.model or []) > 1:
            raise SystemExit("--run takes one --model")
        cfg = json.loads((args.run / "train_config.json").read_text())
        samples = load_samples(cfg["data"], cfg["mpp_in"], cfg["mpp_in"])  # the images' own pixel size
        train, val = split_validation(samples, cfg["val_fraction"], cfg["seed"], source_groups(cfg["data"]))
        mpp, folds = cfg["mpp_in"], [val]
    else:
        train, mpp, folds = [], args.mpp, [load_samples([d], args.mpp, args.mpp) for d in args.data]
        for folder, fold in zip(args.data, folds, strict=True):
            if not fold:
                raise SystemExit(f"--data {folder}: no image + instance mask pairs found")
    dirs = [model_folder(d, args.write) for d in args.model] if args.model else [args.run / "best"]
    model_dir = dirs[0]
    models = [SamNucleusModel.from_pretrained(d) for d in dirs]
    model = models[0]
    val = [s for fold in folds for s in fold]
    print(f"tuning images: {', '.join(s.name for s in val)}")
    own_stain = model.ais_stain
    current = {"ais_mpp": model.ais_mpp, "ais_tta": model.ais_tta, "stain": "reinhard" if own_stain else "off"}
    current.update({**dict.fromkeys(GRID), **model.ais_params})  # keys outside GRID are kept by every search
    stains = {"off": None}
    if "reinhard" in (args.stain or []):  # the training images' colours: never the validation images'
        stains["reinhard"] = reference_stats([s.image for s in train])
        print(f"reinhard reference (LAB mean, std of {len(train)} training images): {json.dumps(stains['reinhard'])}")
    elif own_stain:
        stains["reinhard"] = own_stain
    settings = list(
        itertools.product(
            args.ais_mpp or [model.ais_mpp], args.ais_tta or [model.ais_tta], args.stain or [current["stain"]]
        )
    )
    results = []
    for ais_mpp, ais_tta, stain in settings:
        for m in models:
            m.config.update(ais_mpp=ais_mpp, ais_tta=ais_tta, ais_stain=stains[stain])
        results += search(list(zip(models, folds, strict=True)), mpp, space)
    results.sort(key=lambda r: -r["score"])
    best = results[0]
    default = next((r for r in results if r["params"] == current), None)
    print(f"best on validation (mSA + AJI + PQ): {json.dumps(best)}")
    if default:
        print(f"current parameters:                 {json.dumps(default)}")
    out = Path("benchmarks/results") / f"tune_ais_{model.name}{'_' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as f:
        per_setting = {
            f"ais_mpp {m:g}, ais_tta {v}, stain {c}": max(
                (
                    r
                    for r in results
                    if (r["params"]["ais_mpp"], r["params"]["ais_tta"], r["params"]["stain"]) == (m, v, c)
                ),
                key=lambda r: r["score"],
            )
            for m, v, c in settings
        }
        json.dump(
            {
                "validation": [s.name for s in val],
                "models": {str(d): [s.name for s in fold] for d, fold in zip(dirs, folds, strict=True)},
                "stain_reference": stains.get("reinhard"),
                "grid": space,
                "best": best,
                "best_per_setting": per_setting,
                # the model's own parameters (None when the grid leaves them out) and their rank among all points
                "current": default and {**default, "rank": results.index(default) + 1, "of": len(results)},
                "top10": results[:10],
            },
            f,
            indent=2,
        )
    if args.write:
        params = dict(best["params"])
        ais_mpp, ais_tta, stain = params.pop("ais_mpp"), params.pop("ais_tta"), params.pop("stain")
        entries = {"ais_params": {**model.config.get("ais_params", {}), **params}}
        if args.ais_mpp:
            entries["ais_mpp"] = ais_mpp
        if args.ais_tta:
            entries["ais_tta"] = ais_tta
        if args.stain:
            entries["ais_stain"] = stains[stain]
        print(f"wrote {', '.join(entries)} into {update_config(model_dir, entries)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
