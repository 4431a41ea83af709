"""Tissue model speed: seconds per GlaS image of ``TissueModel.probabilities`` (what ``pathseg tissue`` runs per
image, without reading and writing files), by test-time views and the backbone's memory layout, in one run.

The settings are interleaved image by image (every setting sees the same images under the same machine load), after
one warm-up pass per setting; the class maps of the two layouts are compared pixel by pixel.

    python benchmarks/tissue_speed.py --model pathseg_tissue --images 5 --tta 1 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pathseg.io.atomic import atomic_open
from pathseg.io.images import read_image
from pathseg.models.zoo import get_tissue_model
from pathseg.table import format_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pathseg_tissue", help="tissue model (zoo name or folder)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/glas/testA/images"))
    ap.add_argument("--mpp", type=float, default=0.62, help="pixel size of the images (µm/px)")
    ap.add_argument("--images", type=int, default=5, help="how many images (the first, sorted by name)")
    ap.add_argument("--tta", type=int, nargs="+", default=[1, 4], help="test-time views to time")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = sorted(p for p in args.data.iterdir() if p.suffix.lower() in (".png", ".bmp", ".tif", ".jpg"))
    if not paths:
        print(f"no images in {args.data}; skipped", file=sys.stderr)
        return 0
    images = [read_image(p).pixels for p in paths[: args.images]]
    model = get_tissue_model(args.model)
    settings = [(tta, cl) for tta in args.tta for cl in (False, True)]
    seconds: dict[tuple[int, bool], list[float]] = {s: [] for s in settings}
    differ: dict[int, int] = dict.fromkeys(args.tta, 0)
    for i, img in enumerate([images[0], *images]):
        maps = {}
        for tta, cl in settings:
            model.tta, model.channels_last = tta, cl
            t = time.perf_counter()
            maps[(tta, cl)] = model.probabilities(img, args.mpp).argmax(0)
            if i > 0:  # the first pass warms up
                seconds[(tta, cl)].append(time.perf_counter() - t)
        for tta in args.tta:
            differ[tta] += int((maps[(tta, False)] != maps[(tta, True)]).sum()) if i > 0 else 0
    rows = []
    for tta, cl in settings:
        s = float(np.mean(seconds[(tta, cl)]))
        plain = float(np.mean(seconds[(tta, False)]))
        rows.append(
            {
                "tta": tta,
                "layout": "channels_last" if cl else "contiguous",
                "s_per_image": s,
                "speedup": plain / s,
                "class_px_differing": differ[tta] if cl else "",
            }
        )
    print(f"{args.model}: {len(images)} images of {args.data}, {torch.get_num_threads()} threads")
    print(format_table(rows, ["tta", "layout", "s_per_image", "speedup", "class_px_differing"], floatfmt=".2f"))
    out = Path("benchmarks/results") / f"tissue_speed_{model.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as f:
        json.dump({"model": args.model, "images": [p.name for p in paths[: args.images]], "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
