"""Speed of the int8 automatic path against float32, one model, both ways interleaved image by image.

Each image is segmented by ``model.segment`` in float32 and in int8 (order alternating, the network built before the
clock starts), and the two label images are compared with each other (AJI and foreground agreement; no ground
truth is read, so a test folder can be timed without scoring it). Prints a table and the pooled speed ratio.

    python benchmarks/int8_speed.py --data ../shared/data/monuseg/test [--model MODEL_WITH_INT8_RANGES]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pathseg.allocator import tune_allocator
from pathseg.cli._common import expand_inputs
from pathseg.io.atomic import atomic_open
from pathseg.io.images import read_image
from pathseg.metrics import instance_scores
from pathseg.models.zoo import get_nucleus_model
from pathseg.table import format_table

COLUMNS = ["image", "float32_s", "int8_s", "speedup", "n_float32", "n_int8", "aji_between", "fg_agree"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="pathseg_nuclei_cpu",
        help="a nucleus model with int8 ranges (default: the bundled one; others: `pathseg models int8`)",
    )
    ap.add_argument("--data", type=Path, default=Path("../shared/data/monuseg/test"), help="images or a dataset")
    ap.add_argument("--mpp", type=float, default=0.25, help="pixel size of the images in µm/px (MoNuSeg: 0.25)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/int8_speed.json"))
    args = ap.parse_args(argv)
    tune_allocator()
    model = get_nucleus_model(args.model)
    if getattr(model, "int8_qparams", None) is None:
        print(f"{args.model}: no int8 ranges; make them with `pathseg models int8`", file=sys.stderr)
        return 2
    paths = expand_inputs([args.data])[: args.limit]
    model.config["ais_precision"] = "int8"
    if model.int8_features() is None:
        print("int8 cannot run here (see the warning above)", file=sys.stderr)
        return 2
    rows, pixels = [], 0
    for i, path in enumerate(paths):
        rgb = read_image(path).pixels
        pixels += rgb.shape[0] * rgb.shape[1]
        labels, seconds = {}, {}
        for precision in ("float32", "int8") if i % 2 == 0 else ("int8", "float32"):
            model.config["ais_precision"] = precision
            start = time.perf_counter()
            labels[precision] = model.segment(rgb, args.mpp)
            seconds[precision] = time.perf_counter() - start
        agree = instance_scores(labels["float32"], labels["int8"])
        rows.append(
            {
                "image": path.stem,
                "float32_s": seconds["float32"],
                "int8_s": seconds["int8"],
                "speedup": seconds["float32"] / seconds["int8"],
                "n_float32": int(labels["float32"].max()),
                "n_int8": int(labels["int8"].max()),
                "aji_between": agree["aji"],
                "fg_agree": float(np.mean((labels["float32"] > 0) == (labels["int8"] > 0))),
            }
        )
        print(f"{path.stem}: {rows[-1]['speedup']:.2f}x", file=sys.stderr, flush=True)
    total = {p: sum(r[f"{p}_s"] for r in rows) for p in ("float32", "int8")}
    mpx = pixels / 1e6
    mean = {k: float(np.mean([r[k] for r in rows])) for k in COLUMNS[1:]}
    mean["speedup"] = total["float32"] / total["int8"]  # pooled
    print(f"\nmodel {args.model} on {args.data} ({len(rows)} images, torch threads {torch.get_num_threads()})")
    print(format_table([*rows, {**mean, "image": "mean (speedup pooled)"}], COLUMNS))
    print(f"float32 {mpx / total['float32']:.2f} Mpx/s, int8 {mpx / total['int8']:.2f} Mpx/s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.json, "w") as f:
        json.dump({"model": str(args.model), "data": str(args.data), "images": rows, "mean": mean}, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
