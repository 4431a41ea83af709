"""How many nuclei the flat-fill filter removes from real images (it should remove none), and what it does on fill.

For each folder, every image is segmented by the model's automatic path without the filter, and the objects
:func:`pathseg.nuclei.automatic.drop_flat_fill` would remove are counted (no ground truth is read, so test folders
may be checked). Then the first image of the first folder is segmented again with its left half blacked out, with
and without the filter, to show the strip objects it removes. Prints a table.

    python benchmarks/flat_fill.py --data ../shared/data/monuseg/train ../shared/data/consep/train [--mpp 0.25]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import pathseg.models.nucleus_sam as nucleus_sam
from pathseg.cli._common import expand_inputs
from pathseg.io.images import read_image
from pathseg.models.zoo import get_nucleus_model
from pathseg.nuclei.automatic import drop_flat_fill
from pathseg.table import format_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, nargs="+", required=True, help="image folders or dataset folders")
    ap.add_argument("--mpp", type=float, nargs="+", default=[0.25], help="pixel size per folder (or one for all)")
    ap.add_argument("--model", default="pathseg_nuclei_cpu", help="a SAM-family nucleus model")
    args = ap.parse_args(argv)
    if len(args.mpp) not in (1, len(args.data)):
        ap.error("give one --mpp, or one per --data folder")
    mpps = args.mpp * len(args.data) if len(args.mpp) == 1 else args.mpp
    model = get_nucleus_model(args.model)
    nucleus_sam.drop_flat_fill = lambda labels, rgb: labels  # segment without the filter; count what it removes
    rows = []
    for folder, mpp in zip(args.data, mpps, strict=True):
        files = expand_inputs([folder])
        nuclei = removed = 0
        for path in files:
            rgb = read_image(path).pixels
            labels = model.segment(rgb, mpp)
            nuclei += int(labels.max())
            removed += int(labels.max()) - int(drop_flat_fill(labels, rgb).max())
        rows.append({"images": f"{folder} ({len(files)})", "nuclei": nuclei, "removed": removed})
        print(f"{folder}: {removed} of {nuclei} nuclei removed", file=sys.stderr, flush=True)
    first = expand_inputs([args.data[0]])[0]
    rgb = read_image(first).pixels.copy()
    half = rgb.shape[1] // 2
    rgb[:, :half] = 0
    labels = model.segment(rgb, mpps[0])
    kept = drop_flat_fill(labels, rgb)
    in_fill = np.unique(labels[:, :half])
    rows.append(
        {
            "images": f"{first.name}, left half black",
            "nuclei": int(labels.max()),
            "removed": int(labels.max() - kept.max()),
        }
    )
    print(format_table(rows, ["images", "nuclei", "removed"]))
    print(
        f"objects reaching into the black half: {len(in_fill) - 1} without the filter, "
        f"{len(np.unique(kept[:, :half])) - 1} with it"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
