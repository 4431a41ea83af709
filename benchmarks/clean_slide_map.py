"""Slide class-map cleaning: wall time and peak memory of ``clean_blocks`` on a large generated class map.

``pathseg wsi --task tissue`` cleans the assembled class map block by block (``pathseg.wsi.tissue.clean_blocks``),
each block inside a halo wider than the largest area cleaned. This builds a ``--size`` x ``--size`` uint8 class map
in a zarr array (blobs of two classes with small holes and specks, a not-analysed strip), then cleans it with the
bundled tissue model's areas at ``--mpp`` µm/px, once per ``--blocks`` size, each in a fresh process, and prints
seconds, Mpx/s, pixels changed and the cleaning's peak memory (peak RSS minus the RSS before it started).

    python benchmarks/clean_slide_map.py --size 16384 --blocks 2048 4096
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import numpy as np

from pathseg.table import format_table

RESULTS = Path(__file__).resolve().parent / "results"


def make_map(path: Path, size: int, seed: int = 0, tile: int = 2048) -> None:
    """A (size, size) class map in ``path`` (zarr), written tile by tile: classes 1, 2 in blobs, 3 in specks."""
    import zarr
    from scipy import ndimage as ndi

    arr = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(1024, 1024), dtype="uint8", fill_value=0)
    rng = np.random.default_rng(seed)
    for y in range(0, size, tile):
        for x in range(0, size, tile):
            coarse = ndi.gaussian_filter(rng.random((tile, tile), dtype=np.float32), 12)
            fine = ndi.gaussian_filter(rng.random((tile, tile), dtype=np.float32), 2)
            classes = np.where(coarse > np.median(coarse), 1, 2).astype(np.uint8)
            classes[fine > np.quantile(fine, 0.985)] = 3
            arr[y : y + tile, x : x + tile] = classes[: size - y, : size - x]
    arr[:, size // 3 : size // 3 + 64] = 0  # a not-analysed strip


def _clean(src: str, dst: str, mpp: float, params: dict, block: int, queue) -> None:
    import psutil
    import zarr

    from pathseg.wsi.tissue import clean_blocks

    raw = zarr.open_array(src, mode="r")
    out = zarr.open_array(dst, mode="w", shape=raw.shape, chunks=(1024, 1024), dtype="uint8", fill_value=0)
    rss0 = psutil.Process().memory_info().rss
    start = time.perf_counter()
    clean_blocks(raw, out, mpp, params, block=block)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    changed = sum(
        int((np.asarray(raw[y : y + 4096]) != np.asarray(out[y : y + 4096])).sum())
        for y in range(0, raw.shape[0], 4096)
    )
    queue.put({"seconds": seconds, "peak_gb": (peak - rss0) / 2**30, "changed": changed})


def main(argv: list[str] | None = None) -> int:
    from pathseg.models.zoo import get_tissue_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16384, help="map side in pixels (default 16384)")
    ap.add_argument("--blocks", type=int, nargs="+", default=[2048, 4096], help="block sizes to run (pixels)")
    ap.add_argument("--mpp", type=float, default=None, help="µm/px of the map (default: the bundled model's)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pathseg-clean-bench"))
    ap.add_argument("--tag", default="", help="suffix of benchmarks/results/clean_slide_map<_TAG>.json")
    args = ap.parse_args(argv)

    model = get_tissue_model(None)
    params, mpp = model.config["clean"], args.mpp or model.mpp
    args.work.mkdir(parents=True, exist_ok=True)
    src = args.work / "raw.zarr"
    start = time.perf_counter()
    make_map(src, args.size)
    print(f"generated a {args.size}² map in {time.perf_counter() - start:.0f} s; cleaning {params} at {mpp} µm/px")
    rows = []
    ctx = mp.get_context("spawn")
    for block in args.blocks:
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_clean, args=(str(src), str(args.work / f"clean_{block}.zarr"), mpp, params, block, queue)
        )
        proc.start()
        res = queue.get()
        proc.join()
        mpx = args.size**2 / 1e6
        rows.append({"block": block, "mpx": round(mpx, 1), **res, "mpx_per_s": mpx / res["seconds"]})
        print(rows[-1], flush=True)
    print(format_table(rows, ["block", "mpx", "seconds", "mpx_per_s", "peak_gb", "changed"]))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"clean_slide_map{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({"size": args.size, "mpp": mpp, "clean": params, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
