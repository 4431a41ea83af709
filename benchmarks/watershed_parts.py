"""The automatic path's watershed as one call against :func:`pathseg.nuclei.automatic.watershed_by_parts`.

Square images of growing size are tiled from MoNuSeg training images (1000² at 0.25 µm/px), the bundled model's
maps are computed once per size, and both watersheds run on the same seeds and mask (best of ``--repeats``, the
two interleaved). Prints seconds, the ratio and whether the labels are identical.

    python benchmarks/watershed_parts.py [--data ../shared/data/monuseg/train] [--sizes 1000 2000 3000 4000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from pathseg.cli._common import expand_inputs
from pathseg.io.images import read_image
from pathseg.models.zoo import get_nucleus_model
from pathseg.nuclei.automatic import AISParams, watershed_by_parts
from pathseg.table import format_table


def mosaic(files: list[Path], size: int) -> np.ndarray:
    """A size x size RGB image tiled from ``files`` (each cropped to 1000², used in turn)."""
    out = np.zeros((size, size, 3), np.uint8)
    k = 0
    for y in range(0, size, 1000):
        for x in range(0, size, 1000):
            tile = read_image(files[k % len(files)]).pixels[:1000, :1000]
            h, w = min(1000, size - y), min(1000, size - x)
            out[y : y + h, x : x + w] = tile[:h, :w]
            k += 1
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/monuseg/train"), help="images (0.25 µm/px)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 3000, 4000], help="image sides in px")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each watershed per size (best counts)")
    args = ap.parse_args(argv)
    files = expand_inputs([args.data])
    model = get_nucleus_model("pathseg_nuclei_cpu")
    p = AISParams.of(model.ais_params)
    rows = []
    for size in args.sizes:
        seg = model.initialized_segmenter(mosaic(files, size), 0.25)
        fg_map, centre, boundary = seg.maps
        sigma = p.distance_smoothing * seg.scale
        centre, boundary = ndi.gaussian_filter(centre, sigma), ndi.gaussian_filter(boundary, sigma)
        mask = fg_map > p.foreground_threshold
        markers, _ = ndi.label(
            (centre < p.center_distance_threshold) & (boundary < p.boundary_distance_threshold) & mask
        )
        one, parts = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            a = watershed(boundary, markers=markers, mask=mask)
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            b = watershed_by_parts(boundary, markers, mask)
            parts.append(time.perf_counter() - start)
        rows.append(
            {
                "size": f"{size}²",
                "one_call_s": min(one),
                "by_parts_s": min(parts),
                "ratio": min(one) / min(parts),
                "identical": str(bool(np.array_equal(a, b))),
            }
        )
        print(f"{size}²: {min(one):.3f} s -> {min(parts):.3f} s", file=sys.stderr, flush=True)
    print(format_table(rows, ["size", "one_call_s", "by_parts_s", "ratio", "identical"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
