"""Interactive segmentation with prompts simulated from the ground truth, as PathoSAM evaluates it.

Per test image and ground-truth nucleus: (1) one positive point at the object's innermost pixel, (2) one box
(the object's bounding box), (3) the point followed by ``--corrections`` corrective rounds (a point in the
largest error region, positive in a missed part / negative in a false part, with the previous logits fed back).
Each object's best mask is painted into a label image (in object order), scored with mSA against the ground truth.

    python benchmarks/interactive.py --data ../shared/data/monuseg/test --model pathseg_nuclei_cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from pathseg.io.atomic import atomic_open
from pathseg.io.images import read_image, read_labels
from pathseg.metrics import instance_scores
from pathseg.models.zoo import get_nucleus_model
from pathseg.nuclei.interactive import Predictor
from pathseg.nuclei.simulate import simulate_prompts
from pathseg.table import format_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/monuseg/test"))
    ap.add_argument("--model", required=True, help="a SAM-family model (zoo name, checkpoint or model folder)")
    ap.add_argument("--mpp", type=float, default=0.25, help="pixel size of the images (µm/px)")
    ap.add_argument("--corrections", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-refiner", action="store_true", help="drop the model's mask refiner (to measure its effect)")
    args = ap.parse_args(argv)
    model = get_nucleus_model(args.model)
    name = model.name
    if args.no_refiner and getattr(model, "refiner", None) is not None:
        model.refiner = None
        name += "_no_refiner"
    images = sorted((args.data / "images").glob("*.png"))[: args.limit]
    rows = []
    for path in images:
        rgb = read_image(path).pixels
        gt = read_labels(args.data / "instance_masks" / path.name).astype(np.int64)
        t = time.perf_counter()
        pred = Predictor(model)
        pred.set_image(rgb, args.mpp)
        res = simulate_prompts(pred, gt, args.corrections)
        row = {"image": path.stem, "n_gt": int(gt.max()), "seconds": time.perf_counter() - t}
        for k, lab in res.items():
            row[f"msa_{k}"] = instance_scores(gt, lab)["msa"]
        rows.append(row)
        print(
            f"{path.stem}: " + " ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("msa")),
            file=sys.stderr,
            flush=True,
        )
    cols = ["image", "n_gt", "msa_point", "msa_box", "msa_corrected", "seconds"]
    mean = {c: float(np.mean([r[c] for r in rows])) for c in cols[1:]}
    print(f"\ninteractive, model {name}, {len(rows)} images, {args.corrections} corrections")
    print(format_table(rows + [{**mean, "image": "mean", "n_gt": f"{mean['n_gt']:.0f}"}], cols))
    out = args.json or Path("benchmarks/results") / f"interactive_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as f:
        json.dump({"model": name, "corrections": args.corrections, "images": rows, "mean": mean}, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
