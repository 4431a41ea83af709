"""Automatic nuclei with BatchNorm folded into the convolutions (the default) against the trained modules as they
are, in one run: seconds per image both ways (interleaved, so the machine's drift hits both), the largest map
difference, label pixels that differ, and the scores both ways.

    python benchmarks/fused_speed.py --data ../shared/data/monuseg/test --model pathseg_nuclei_cpu
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pathseg.io.images import read_image, read_labels
from pathseg.metrics import instance_scores
from pathseg.models.zoo import get_nucleus_model
from pathseg.table import format_table
from pathseg.train.data import find_pairs

COLUMNS = ["image", "mpx", "s_plain", "s_folded", "speedup", "max_map_diff", "label_px_diff", "msa_plain", "msa_folded"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/monuseg/test"), help="images/ + instance_masks/")
    ap.add_argument("--model", default="pathseg_nuclei_cpu", help="a compact nucleus model (name or folder)")
    ap.add_argument("--mpp", type=float, default=0.25, help="pixel size of the images in µm/px (MoNuSeg: 0.25)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"skipped: {args.data} not found", file=sys.stderr)
        return 0
    model = get_nucleus_model(args.model)
    model.set_ais_precision("float32")  # the fold is compared in float32 (int8 always builds on the folded net)
    pairs = find_pairs(args.data)[: args.limit]
    rows = []
    for i, (path, mask_path) in enumerate(pairs):
        rgb, gt = read_image(path).pixels, read_labels(mask_path)
        out = {}
        for fold in (False, True) if i % 2 == 0 else (True, False):
            model.fold_batchnorm = fold
            model.inference_nets()  # a fold happens once per model, not per image: keep it out of the timing
            start = time.perf_counter()
            seg = model.initialized_segmenter(rgb, args.mpp)
            labels = seg.generate(**model.ais_params)
            out[fold] = (time.perf_counter() - start, seg.maps, labels)
        (s0, m0, l0), (s1, m1, l1) = out[False], out[True]
        rows.append(
            {
                "image": path.stem,
                "mpx": rgb.shape[0] * rgb.shape[1] / 1e6,
                "s_plain": s0,
                "s_folded": s1,
                "speedup": s0 / s1,
                "max_map_diff": f"{float(np.abs(m0 - m1).max()):.1e}",
                "label_px_diff": int(((l0 > 0) != (l1 > 0)).sum() + ((l0 > 0) & (l1 > 0) & (l0 != l1)).sum()),
                "msa_plain": instance_scores(gt, l0)["msa"],
                "msa_folded": instance_scores(gt, l1)["msa"],
            }
        )
        print(f"{path.stem}: {s0:.2f} s -> {s1:.2f} s", file=sys.stderr, flush=True)
    total = {k: float(np.sum([r[k] for r in rows])) for k in ("mpx", "s_plain", "s_folded")}
    mean = {
        **total,
        "image": "all",
        "speedup": total["s_plain"] / total["s_folded"],
        "max_map_diff": max((r["max_map_diff"] for r in rows), key=float),
        "label_px_diff": sum(r["label_px_diff"] for r in rows),
        "msa_plain": float(np.mean([r["msa_plain"] for r in rows])),
        "msa_folded": float(np.mean([r["msa_folded"] for r in rows])),
    }
    print(f"\nmodel {args.model} on {args.data} ({len(rows)} images, torch threads {torch.get_num_threads()})")
    print(format_table(rows + [mean], COLUMNS))
    print(
        f"automatic path: {total['mpx'] / total['s_plain']:.2f} Mpx/s as trained, "
        f"{total['mpx'] / total['s_folded']:.2f} Mpx/s folded ({mean['speedup']:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
