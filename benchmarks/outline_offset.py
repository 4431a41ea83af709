"""Where a model's automatic nuclei sit relative to their annotations: the mean centroid offset of matched nuclei.

Every image + instance mask pair of the ``--data`` folders is segmented by ``--model`` (its automatic path, its own
thresholds) at each ``--ais-mpp`` (µm/px the network runs at; default the model's own); each predicted nucleus that
matches an annotated one at IoU >= ``--min-iou`` adds (predicted - annotated centroid) in image pixels. An offset
that stays the same in image pixels whatever the network's pixel size lies in the annotations (a network trained
with flips and 90-degree rotations cannot learn a fixed offset), one that scales with it in the pipeline or the
model. Prints a table (per image and pooled) and writes ``benchmarks/results/outline_offset_<tag>.json``.

    python benchmarks/outline_offset.py --data ../shared/data/monuseg/train --model pathseg_nuclei_cpu \\
        --ais-mpp 0.25 0.38 0.5 --tag shipped_train
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pathseg.io.atomic import atomic_open
from pathseg.metrics.overlap import Overlap
from pathseg.models.zoo import get_nucleus_model
from pathseg.train.data import load_samples


def matched_offsets(gt: np.ndarray, pred: np.ndarray, min_iou: float = 0.5) -> np.ndarray:
    """(k, 2) centroid offsets (dy, dx) in pixels, predicted minus annotated, of the pairs matched at ``min_iou``.

    ``min_iou`` must be at least 0.5, which keeps the pairs one-to-one."""
    if min_iou < 0.5:
        raise ValueError(f"min_iou must be >= 0.5 (one-to-one pairs), got {min_iou}")
    ov = Overlap.of(gt, pred)
    keep = ov.iou >= min_iou
    if not keep.any():
        return np.zeros((0, 2))
    ones = np.ones(gt.shape, np.uint8)
    cg = np.asarray(ndi.center_of_mass(ones, gt, ov.gt_ids[ov.pairs[keep, 0]]))
    cp = np.asarray(ndi.center_of_mass(ones, pred, ov.pred_ids[ov.pairs[keep, 1]]))
    return cp - cg


def mean_offset(d: np.ndarray) -> tuple[float, float]:
    """Mean (dy, dx) of (k, 2) offsets; NaN when there are none."""
    dy, dx = d.mean(0) if len(d) else (np.nan, np.nan)
    return float(dy), float(dx)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, nargs="+", required=True, help="folders of images + instance masks")
    ap.add_argument("--model", default="pathseg_nuclei_cpu", help="model folder or zoo name")
    ap.add_argument("--mpp", type=float, default=0.25, help="pixel size of the images in µm/px (MoNuSeg: 0.25)")
    ap.add_argument("--ais-mpp", type=float, nargs="*", default=[], help="network pixel sizes (µm/px) to compare")
    ap.add_argument("--min-iou", type=float, default=0.5, help="IoU at which a nucleus counts as matched")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = ap.parse_args(argv)
    if not 0.5 <= args.min_iou <= 1:
        raise SystemExit(f"--min-iou must be in [0.5, 1] (one-to-one pairs), got {args.min_iou}")
    model = get_nucleus_model(args.model)
    samples = load_samples(args.data, args.mpp, args.mpp)
    if not samples:
        raise SystemExit(f"no image + instance mask pairs in {', '.join(map(str, args.data))}")
    results = []
    for ais_mpp in args.ais_mpp or [model.ais_mpp]:
        model.config["ais_mpp"] = ais_mpp
        rows, pooled = [], []
        for s in samples:
            d = matched_offsets(s.labels, model.segment(s.image, args.mpp), args.min_iou)
            pooled.append(d)
            dy, dx = mean_offset(d)
            rows.append({"image": s.name, "matched": len(d), "dy": dy, "dx": dx})
            print(f"ais_mpp {ais_mpp:.2f}  {s.name:28s} {len(d):5d} matched  dy {dy:+.3f}  dx {dx:+.3f}", flush=True)
        d = np.concatenate(pooled)
        dy, dx = mean_offset(d)
        results.append({"ais_mpp": ais_mpp, "matched": len(d), "dy": dy, "dx": dx, "images": rows})
        print(f"ais_mpp {ais_mpp:.2f}  {'all (pooled)':28s} {len(d):5d} matched  dy {dy:+.3f}  dx {dx:+.3f}")
    out = Path("benchmarks/results") / f"outline_offset{'_' + args.tag if args.tag else ''}.json"
    with atomic_open(out, "w") as f:
        json.dump({"model": str(args.model), "data": [str(d) for d in args.data], "results": results}, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
