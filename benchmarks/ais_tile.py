"""The automatic path's tile size: seconds, and agreement with one pass over the whole image, per tile size.

A compact model is fully convolutional, so an image can be segmented in one network pass; tiles bound memory, and
their halo (``halo`` network pixels) is computed twice, which costs time: a 672-px tile with a 64-px halo computes
(672 / 544)² = 1.5x its inner area. Each size is timed on the same image in one run, and its labels are compared
with those of a single pass (SA50, AJI, share of pixels whose nucleus differs) — the reference a tiling should match.

    python benchmarks/ais_tile.py --image ../shared/data/wsi/CMU-1-Small-Region.svs --roi 0,0,1500,1500 \
        --tiles 672 1024 1344
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pathseg.io.images import read_image
from pathseg.metrics import instance_scores
from pathseg.models.zoo import get_nucleus_model
from pathseg.resize import scaled_size
from pathseg.table import format_table
from pathseg.tiling import tile_grid

COLUMNS = ["tile", "tiles", "seconds", "mpx_per_s", "vs_first", "sa50", "aji", "px_differ"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=Path("../shared/data/wsi/CMU-1-Small-Region.svs"))
    ap.add_argument("--roi", default="0,0,1500,1500", help="X,Y,W,H of the image to use (pixels)")
    ap.add_argument("--model", default="pathseg_nuclei_cpu", help="a compact nucleus model (name or folder)")
    ap.add_argument("--tiles", type=int, nargs="+", default=[672, 1024, 1344], help="tile sizes (network pixels)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per size (the fastest is reported)")
    args = ap.parse_args(argv)
    if not args.image.is_file():
        print(f"skipped: {args.image} not found", file=sys.stderr)
        return 0
    x, y, w, h = (int(v) for v in args.roi.split(","))
    loaded = read_image(args.image)
    rgb = np.ascontiguousarray(loaded.pixels[y : y + h, x : x + w])
    mpp = loaded.mpp or 0.25
    model = get_nucleus_model(args.model)
    model.inference_nets()

    def run(tile: int) -> tuple[float, np.ndarray, int]:
        model.config["tile"] = tile
        best, labels = np.inf, None
        for _ in range(args.repeats):
            start = time.perf_counter()
            labels = model.segment(rgb, mpp)
            best = min(best, time.perf_counter() - start)
        return best, labels, len(tile_grid(network_size, tile, int(model.config.get("halo", 64))))

    network_size = scaled_size(rgb.shape, mpp / model.ais_mpp)
    whole = max(*network_size, *args.tiles)
    _, reference, _ = run(whole)
    rows = []
    for tile in args.tiles:
        seconds, labels, n = run(tile)
        s = instance_scores(reference, labels)
        rows.append(
            {
                "tile": tile,
                "tiles": n,
                "seconds": seconds,
                "mpx_per_s": rgb.shape[0] * rgb.shape[1] / 1e6 / seconds,
                "sa50": s["sa50"],
                "aji": s["aji"],
                "px_differ": float(((reference > 0) != (labels > 0)).mean()),
            }
        )
    for r in rows:
        r["vs_first"] = rows[0]["seconds"] / r["seconds"]
    print(
        f"\n{args.image.name} {w}x{h} px at {mpp:g} µm/px, model {args.model} (network at {model.ais_mpp:g} µm/px, "
        f"halo {model.config.get('halo', 64)}), torch threads {torch.get_num_threads()}; "
        f"agreement with one pass of {whole} px"
    )
    print(format_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
