"""Tissue model speed: seconds per GlaS image of ``TissueModel.probabilities`` (what ``pathseg tissue`` runs per
image, without reading and writing files), by test-time views, where they are taken (``tta_space``), arithmetic
(``precision``) and the backbone's memory layout, in one run.

The settings are interleaved image by image (every setting sees the same images under the same machine load), after
one warm-up pass per setting; each class map is compared pixel by pixel with that of the same views at the first
precision and layout given.

    python benchmarks/tissue_speed.py --model pathseg_tissue --images 5 --tta 1 4 --tta-space image latent
    python benchmarks/tissue_speed.py --tta 4 8 --tta-space image latent --precision float32 bfloat16 \\
        --layout channels_last --tag precision
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
from pathseg.models.precision import PRECISIONS
from pathseg.models.zoo import get_tissue_model
from pathseg.table import format_table

LAYOUTS = {"contiguous": False, "channels_last": True}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pathseg_tissue", help="tissue model (zoo name or folder)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/glas/testA/images"))
    ap.add_argument("--mpp", type=float, default=0.62, help="pixel size of the images (µm/px)")
    ap.add_argument("--images", type=int, default=5, help="how many images (the first, sorted by name)")
    ap.add_argument("--tta", type=int, nargs="+", default=[1, 4], help="test-time views to time")
    ap.add_argument("--tta-space", nargs="+", choices=["image", "latent"], default=["image"], help="view spaces")
    ap.add_argument("--precision", nargs="+", choices=list(PRECISIONS), default=["float32"], help="arithmetic")
    ap.add_argument("--layout", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS), help="memory layouts")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--tag", default=None, help="results file suffix (default: the model's name)")
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
    settings = [(*v, pr, lay) for v in views for pr in args.precision for lay in args.layout]
    seconds: dict[tuple, list[float]] = {s: [] for s in settings}
    differ = dict.fromkeys(settings, 0)  # class pixels that differ from the views' first precision and layout

    def reference(key: tuple) -> tuple:
        """The setting ``key``'s views at the first precision and layout given: what it is compared with."""
        return (*key[:2], args.precision[0], args.layout[0])

    for i, img in enumerate([images[0], *images]):
        maps = {}
        for tta, space, precision, layout in settings:
            model.tta, model.tta_space, model.precision = tta, space, precision
            model.channels_last = LAYOUTS[layout]
            t = time.perf_counter()
            maps[(tta, space, precision, layout)] = model.probabilities(img, args.mpp).argmax(0)
            if i > 0:  # the first pass warms up
                seconds[(tta, space, precision, layout)].append(time.perf_counter() - t)
        for key in settings if i else ():
            differ[key] += int((maps[key] != maps[reference(key)]).sum())
    first = (max(args.tta), args.tta_space[0], args.precision[0], args.layout[0])
    base = float(np.mean(seconds[first])) if first in seconds else None
    rows = []
    for key in settings:
        s = float(np.mean(seconds[key]))
        ref = float(np.mean(seconds[reference(key)]))
        rows.append(
            {
                **dict(zip(("tta", "tta_space", "precision", "layout"), key, strict=True)),
                "s_per_image": s,
                "vs_first": ref / s,
                "vs_most_views": base / s if base else "",
                "class_px_differing": differ[key],
            }
        )
    pixels = sum(img.shape[0] * img.shape[1] for img in images)
    print(f"{args.model}: {len(images)} images of {args.data} ({pixels} px), {torch.get_num_threads()} threads")
    print(
        f"vs_first: speed-up over the same views at {args.precision[0]}, {args.layout[0]} (class_px_differing: "
        f"pixels whose class differs from it); vs_most_views: over {first[0]} {first[1]} views at that setting"
    )
    columns = ["tta", "tta_space", "precision", "layout", "s_per_image", "vs_first", "vs_most_views"]
    print(format_table(rows, [*columns, "class_px_differing"], floatfmt=".2f"))
    out = Path("benchmarks/results") / f"tissue_speed_{args.tag or model.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as f:
        json.dump({"model": args.model, "images": [p.name for p in paths[: args.images]], "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
