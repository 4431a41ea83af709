"""Benchmark a nucleus model on a folder of images + instance masks (MoNuSeg layout).

Prints per-image and mean mSA, SA50, AJI, PQ, Dice, seconds per image and megapixels per second, and writes
them as JSON. Thresholds of any model are fixed beforehand (tuned on validation data, never on this folder).

    python benchmarks/nuclei.py --data ../shared/data/monuseg/test --model classical
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import pathseg
from pathseg.allocator import tune_allocator
from pathseg.cli._common import add_ais_params, add_ais_precision, add_device
from pathseg.errors import PathsegError
from pathseg.io.atomic import atomic_open
from pathseg.io.images import read_image, read_labels
from pathseg.metrics import instance_scores
from pathseg.models.base import set_ais_options
from pathseg.models.device import module_device, place
from pathseg.models.zoo import default_nucleus_model, get_nucleus_model
from pathseg.table import format_table
from pathseg.train.data import find_pairs

COLUMNS = ["image", "n_gt", "n_pred", "msa", "sa50", "aji", "pq", "dice", "seconds", "mpx_per_s", "metric_s"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/data/monuseg/test"),
        help="folder with images/ and instance_masks/ (default: MoNuSeg test)",
    )
    ap.add_argument("--model", default=None, help="model name (default: the best offline model)")
    ap.add_argument("--mpp", type=float, default=0.25, help="pixel size of the images in µm/px (MoNuSeg: 0.25)")
    ap.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the results (default: benchmarks/results/nuclei_<model>_<data>.json)",
    )
    ap.add_argument("--limit", type=int, default=None, help="only the first N images (for a quick look)")
    ap.add_argument("--mode", default="ais", choices=["ais", "apg", "amg"], help="automatic mode (SAM-family models)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_ais_precision(ap)
    add_ais_params(ap)
    add_device(ap)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_allocator()  # as the pathseg command runs (PATHSEG_MALLOC=system: glibc's defaults)

    try:
        pairs = find_pairs(args.data)  # images/ of any image format with instance_masks/ of the same stem
    except PathsegError as e:
        print(e, file=sys.stderr)
        return 2
    pairs = pairs[: args.limit] if args.limit else pairs
    name = args.model or default_nucleus_model()
    if name.startswith("random:"):  # architecture speed only: a SAM of this size with random weights
        from pathseg.models.nucleus_sam import SamNucleusModel, default_config

        model = SamNucleusModel(default_config(name.split(":", 1)[1], name=name)).eval()
    else:
        model = get_nucleus_model(name)
    try:
        set_ais_options(model, args.ais_precision, dict(args.ais_params or []))
        model = place(model, args.device, args.ais_precision)
    except PathsegError as e:
        print(e, file=sys.stderr)
        return 2
    mpp = args.mpp
    rows, pixels = [], []
    for path, mask_path in pairs:
        rgb = read_image(path).pixels
        gt = read_labels(mask_path)
        pixels.append(gt.size)
        start = time.perf_counter()
        pred = model.segment(rgb, mpp, mode=args.mode) if args.mode != "ais" else model.segment(rgb, mpp)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        scores = instance_scores(gt, pred)
        metric_s = time.perf_counter() - start
        row = {
            "image": path.stem,
            **scores,
            "seconds": seconds,
            "mpx_per_s": rgb.shape[0] * rgb.shape[1] / 1e6 / seconds,
            "metric_s": metric_s,
        }
        row["n_gt"], row["n_pred"] = int(row["n_gt"]), int(row["n_pred"])
        rows.append(row)
        print(
            f"{path.stem}: aji {scores['aji']:.3f} pq {scores['pq']:.3f} msa {scores['msa']:.3f} ({seconds:.2f} s)",
            file=sys.stderr,
            flush=True,
        )
    keys = [c for c in COLUMNS if c != "image"]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    total_mpx = sum(pixels) / 1e6
    mean["mpx_per_s"] = total_mpx / sum(r["seconds"] for r in rows)  # pooled throughput
    print(f"\nmodel {name} on {args.data} ({len(rows)} images, {mpp:g} µm/px, torch threads {torch.get_num_threads()})")
    print(
        format_table(
            rows + [{**mean, "image": "mean", "n_gt": f"{mean['n_gt']:.0f}", "n_pred": f"{mean['n_pred']:.0f}"}],
            COLUMNS,
        )
    )
    tag = name.replace(":", "_").replace("/", "_") + ("" if args.mode == "ais" else f"_{args.mode}")
    tag += f"_{args.ais_precision}" if args.ais_precision else ""
    tag += "".join(f"_{k}{v if not isinstance(v, tuple) else '-'.join(map(str, v))}" for k, v in args.ais_params or [])
    out = args.json or Path("benchmarks/results") / f"nuclei_{tag}_{args.data.parent.name}_{args.data.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as f:
        json.dump(
            {
                "model": name,
                "data": str(args.data),
                "mpp": mpp,
                "ais_params": getattr(model, "ais_params", None),
                "pathseg": pathseg.__version__,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "device": str(module_device(model)) if isinstance(model, torch.nn.Module) else "cpu",
                "images": rows,
                "mean": mean,
            },
            f,
            indent=2,
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
