"""Tissue model speed: seconds per GlaS image of ``TissueModel.probabilities`` (what ``pathseg tissue`` runs per
image, without reading and writing files), by test-time views, where they are taken (``tta_space``) and the
backbone's memory layout, in one run.

The settings are interleaved image by image (every setting sees the same images under the same machine load), after
one warm-up pass per setting; the class maps of the two layouts are compared pixel by pixel.

    python benchmarks/tissue_speed.py --model pathseg_tissue --images 5 --tta 1 4 --tta-space image latent
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
    ap.add_argument("--tta-space", nargs="+", choices=["image", "latent"], default=["image"], help="view spaces")
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
    views = [(t, sp) for t in args.tta for sp in args.tta_space if t > 1 or sp == "image"]  # 1 view: same either way
    settings = [(t, sp, cl) for t, sp in views for cl in (False, True)]
    seconds: dict[tuple, list[float]] = {s: [] for s in settings}
    differ = dict.fromkeys(views, 0)  # class pixels that differ between the two layouts
    for i, img in enumerate([images[0], *images]):
        maps = {}
        for tta, space, cl in settings:
            model.tta, model.tta_space, model.channels_last = tta, space, cl
            t = time.perf_counter()
            maps[(tta, space, cl)] = model.probabilities(img, args.mpp).argmax(0)
            if i > 0:  # the first pass warms up
                seconds[(tta, space, cl)].append(time.perf_counter() - t)
        for tta, space in views:
            differ[(tta, space)] += int((maps[(tta, space, False)] != maps[(tta, space, True)]).sum()) if i else 0
    base = float(np.mean(seconds[(max(args.tta), "image", False)]))
    rows = []
    for tta, space, cl in settings:
        s = float(np.mean(seconds[(tta, space, cl)]))
        rows.append(
            {
                "tta": tta,
                "tta_space": space,
                "layout": "channels_last" if cl else "contiguous",
                "s_per_image": s,
                "vs_layout": float(np.mean(seconds[(tta, space, False)])) / s,
                "vs_most_views": base / s,
                "class_px_differing": differ[(tta, space)] if cl else "",
            }
        )
    print(f"{args.model}: {len(images)} images of {args.data}, {torch.get_num_threads()} threads")
    print("vs_layout: speed-up over the contiguous layout; vs_most_views: over image views, contiguous, most views")
    columns = ["tta", "tta_space", "layout", "s_per_image", "vs_layout", "vs_most_views", "class_px_differing"]
    print(format_table(rows, columns, floatfmt=".2f"))
    out = Path("benchmarks/results") / f"tissue_speed_{model.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as f:
        json.dump({"model": args.model, "images": [p.name for p in paths[: args.images]], "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
