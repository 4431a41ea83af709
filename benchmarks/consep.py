"""Nucleus classification benchmark on CoNSeP test tiles (or any folder in that layout).

Per tile: automatic nucleus segmentation, class probabilities, one class per nucleus by the probability-weighted
vote. Pooled over all tiles: HoVer-Net's detection F1 (F_d) and per-class F_c (centroids paired within
``--radius`` px), per-class Dice of the voted class map, and the share of predicted nuclei whose pixels a
per-pixel argmax would split between classes (the vote never does).

    python benchmarks/consep.py --data ../shared/data/consep/test --model MODEL_WITH_CLASSES
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from pathseg.cli._common import add_ais_precision, add_class_precision
from pathseg.errors import PathsegError
from pathseg.evaluate import _class_names
from pathseg.io.atomic import atomic_open
from pathseg.io.images import read_image, read_labels
from pathseg.metrics.classes import nuclei_with_classes, pair_centroids, type_scores
from pathseg.models.base import set_ais_options
from pathseg.models.class_int8 import set_class_precision
from pathseg.models.zoo import get_nucleus_model
from pathseg.nuclei.classes import argmax_disagreement, vote_classes
from pathseg.table import format_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/consep/test"))
    ap.add_argument("--model", required=True, help="a nucleus model with a class decoder")
    ap.add_argument("--mpp", type=float, default=0.25, help="pixel size of the tiles (CoNSeP: 40x, ~0.25 µm/px)")
    ap.add_argument("--radius", type=float, default=12.0)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    add_ais_precision(ap)
    add_class_precision(ap)
    args = ap.parse_args(argv)
    model = get_nucleus_model(args.model)
    if getattr(model, "semantic", None) is None:
        print(f"model {model.name} has no class decoder", file=sys.stderr)
        return 2
    try:
        set_ais_options(model, args.ais_precision)
        if args.class_precision is not None:
            set_class_precision(model, args.class_precision)
    except PathsegError as e:
        print(e, file=sys.stderr)
        return 2
    tiles = sorted((args.data / "images").glob("*"))[: args.limit]
    pools = {k: [] for k in ("pt", "pp", "ut", "up")}
    n_cls = model.semantic.out_channels
    inter, total = np.zeros(n_cls), np.zeros(n_cls)
    split, n_pred = 0, 0
    start = time.perf_counter()
    for path in tiles:
        rgb = read_image(path).pixels
        gt = read_labels(args.data / "instance_masks" / f"{path.stem}.png")
        gt_types = read_labels(args.data / "type_masks" / f"{path.stem}.png")
        labels = model.segment(rgb, args.mpp)
        probs = model.class_probabilities(rgb, args.mpp)
        ids, cls, _ = vote_classes(labels, probs)
        split += int(argmax_disagreement(labels, probs).sum())
        n_pred += ids.size
        lut = np.zeros(int(labels.max()) + 1, dtype=np.int64)
        lut[ids] = cls
        pred_types = lut[labels]
        t_xy, t_c = nuclei_with_classes(gt, gt_types)
        p_xy, p_c = nuclei_with_classes(labels, pred_types)
        pairs, ut, up = pair_centroids(t_xy, p_xy, args.radius)
        for k, v in (("pt", t_c[pairs[:, 0]]), ("pp", p_c[pairs[:, 1]]), ("ut", t_c[ut]), ("up", p_c[up])):
            pools[k].append(v)
        for c in range(1, n_cls):
            a, b = pred_types == c, gt_types == c
            inter[c] += (a & b).sum()
            total[c] += a.sum() + b.sum()
    classes = list(range(1, n_cls))
    scores = type_scores(*(np.concatenate(pools[k]) for k in ("pt", "pp", "ut", "up")), classes)
    names = _class_names(args.data)
    rows = [
        {
            "class": names.get(c, model.class_names[c]["name"]),
            "f_c": scores[f"f_c{c}"],
            "dice": float(2 * inter[c] / total[c]) if total[c] else float("nan"),
        }
        for c in classes
    ]
    seconds = time.perf_counter() - start
    print(f"\nmodel {model.name} on {args.data} ({len(tiles)} tiles, {seconds / max(len(tiles), 1):.2f} s per tile)")
    print(
        f"F_d {scores['f_d']:.3f}; class accuracy of paired nuclei {scores['accuracy']:.3f}; "
        f"nuclei an argmax would split between classes: {split} of {n_pred} ({100 * split / max(n_pred, 1):.1f}%), "
        "0 with the vote"
    )
    print(format_table(rows, ["class", "f_c", "dice"]))
    out = args.json or Path("benchmarks/results") / f"consep_{model.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as f:
        json.dump(
            {
                "model": model.name,
                "ais_precision": model.ais_precision,
                "class_precision": model.config.get("class_precision", "float32"),
                "tiles": len(tiles),
                "f_d": scores["f_d"],
                "accuracy": scores["accuracy"],
                "classes": rows,
                "argmax_split": split,
                "nuclei": n_pred,
            },
            f,
            indent=2,
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
