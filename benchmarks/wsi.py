"""Whole-slide benchmark: peak memory, wall time and throughput of `pathseg wsi` on a large generated slide.

Builds a pyramidal JPEG-tiled TIFF of ``--size`` x ``--size`` px (default 40,000) by tiling real tissue from
CMU-1-Small-Region (mirrored, so there are no seams), then reports, measured in one run:
  - read-only pass: decode every region of the slide and do nothing (the I/O ceiling);
  - in memory: the same model on the slide's pixels already in RAM, region by region of the chunk grid without
    halo (its own throughput; the pipeline's reading, halo, stitching and writing are the overhead on top of it);
  - `pathseg wsi` with 1 and 2 workers: wall time, megapixels per second, peak RSS of the process tree.

    python benchmarks/wsi.py --size 40000 --model classical --work /tmp/pathseg-wsi-bench
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pathseg.io.slides import open_slide
from pathseg.models.zoo import get_nucleus_model
from pathseg.table import format_table

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"


def tissue_source(size: int = 2048) -> np.ndarray:
    """A tissue-rich square of the real slide, mirrored into a seamless 2x2 pattern (2*size px)."""
    with open_slide(SOURCE) as s:
        crop = s.read_region(0, 100, 800, size, size)
    top = np.concatenate([crop, crop[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)


def make_slide(path: Path, size: int, mpp: float = 0.499, tile: int = 512) -> None:
    """Pyramidal tiled TIFF of size x size px; every level generated tile by tile (bounded memory)."""
    import tifffile

    pattern = tissue_source()
    levels = [1]
    while size // (levels[-1] * 2) >= 1024:
        levels.append(levels[-1] * 2)

    def tiles(factor: int):
        pat = pattern[::factor, ::factor]
        ph, pw = pat.shape[:2]
        n = -(-size // factor // tile)
        big = np.tile(pat, (-(-tile * 2 // ph) + 1, -(-tile * 2 // pw) + 1, 1))
        for ty in range(n):
            for tx in range(n):
                y, x = (ty * tile) % ph, (tx * tile) % pw
                yield np.ascontiguousarray(big[y : y + tile, x : x + tile])

    with tifffile.TiffWriter(path, bigtiff=True) as w:
        for i, f in enumerate(levels):
            n = size // f
            kw = dict(shape=(n, n, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb", compression="jpeg")
            if i == 0:
                w.write(
                    tiles(f),
                    subifds=len(levels) - 1,
                    resolution=(1e4 / mpp, 1e4 / mpp),
                    resolutionunit="CENTIMETER",
                    **kw,
                )
            else:
                w.write(tiles(f), subfiletype=1, **kw)


def read_only(path: Path, chunk: int = 2048) -> tuple[float, float]:
    with open_slide(path) as s:
        w, h = s.dimensions
        start = time.perf_counter()
        for y in range(0, h, chunk):
            for x in range(0, w, chunk):
                s.read_region(0, x, y, min(chunk, w - x), min(chunk, h - y))
        seconds = time.perf_counter() - start
    return seconds, w * h / 1e6 / seconds


def in_memory(path: Path, model_name: str, chunk: int = 4096, every: int = 1) -> float:
    """The model alone on the slide's pixels already in memory: every ``every``-th region of the chunk grid (no
    halo) is read, then segmented under the clock; the model is fitted to the slide as the pipeline fits it (e.g. the
    classical model's slide-wide threshold), so both segment the same way. Megapixels per second."""
    from pathseg.wsi.chunks import chunk_grid, sample_regions

    model = get_nucleus_model(model_name)
    seconds, pixels = 0.0, 0
    with open_slide(path) as s:
        w, h = s.dimensions
        grid = chunk_grid((0, 0, w, h), (w, h), chunk, 64)
        if hasattr(model, "fit_slide"):
            model.fit_slide(sample_regions(s, 0, grid), s.mpp)
        for c in grid[::every]:
            x0, y0, x1, y1 = c.inner
            rgb = s.read_region(0, x0, y0, x1 - x0, y1 - y0)
            start = time.perf_counter()
            model.segment(rgb, s.mpp)
            seconds += time.perf_counter() - start
            pixels += rgb.shape[0] * rgb.shape[1]
    return pixels / 1e6 / seconds


def in_memory_tissue(path: Path, model_name: str, n: int = 2, chunk: int = 2048) -> tuple[float, int]:
    """A tissue model alone on ``n`` chunk-sized regions at its own pixel size, already in memory:
    (Mpx/s in model pixels, pyramid level the pipeline reads)."""
    from pathseg.models.zoo import get_tissue_model

    model = get_tissue_model(model_name)
    with open_slide(path) as s:
        level = s.best_level(model.mpp)
        regions = [s.read_region(level, i * chunk, i * chunk, chunk, chunk) for i in range(n)]
    start = time.perf_counter()
    for rgb in regions:
        model.probabilities(rgb)
    return n * chunk * chunk / 1e6 / (time.perf_counter() - start), level


def run_pipeline(path: Path, out: Path, model: str, workers: int, chunk: int, task: str = "nuclei") -> dict:
    import psutil

    cmd = [
        sys.executable,
        "-m",
        "pathseg.cli",
        "wsi",
        str(path),
        "-o",
        str(out),
        "--model",
        model,
        "--chunk",
        str(chunk),
        "--task",
        task,
        "-q",
    ]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pathseg wsi failed ({proc.returncode})")
    report = json.loads((out / "report.json").read_text())
    return {"seconds": seconds, "peak_rss_gb": peak / 2**30, "chunks": report["chunks_done"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=40_000, help="slide side in pixels (default 40,000)")
    ap.add_argument("--model", default="classical")
    ap.add_argument("--task", choices=["nuclei", "tissue"], default="nuclei")
    ap.add_argument("--workers", default="1,2", help="worker counts to run (default 1,2)")
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pathseg-wsi-bench"))
    ap.add_argument(
        "--in-memory-every",
        type=int,
        default=1,
        help="model-in-memory baseline on every N-th chunk region (default 1: all of the slide's pixels)",
    )
    args = ap.parse_args(argv)
    if not SOURCE.is_file():
        print(f"skipped: {SOURCE} is absent")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    slide = args.work / f"tiled_{args.size}.tif"
    if not slide.is_file():
        t = time.perf_counter()
        make_slide(slide, args.size)
        print(f"generated {slide} ({slide.stat().st_size / 2**30:.2f} GB) in {time.perf_counter() - t:.0f} s")
    rows = []
    seconds, rate = read_only(slide, args.chunk)
    rows.append({"run": "read-only pass (decode every region, level 0)", "seconds": seconds, "mpx_per_s": rate})
    if args.task == "tissue":  # throughput in the pixels the model sees (the level it reads)
        rate, level = in_memory_tissue(slide, args.model, chunk=min(args.chunk, 2048))
        with open_slide(slide) as s:
            w, h = s.levels[level].width, s.levels[level].height
        mpx = w * h / 1e6
    else:
        rate, mpx = in_memory(slide, args.model, args.chunk, args.in_memory_every), args.size * args.size / 1e6
    rows.append({"run": f"model in memory ({args.model})", "mpx_per_s": rate})
    for k in (int(v) for v in args.workers.split(",")):
        out = args.work / f"out_{k}"
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        r = run_pipeline(slide, out, args.model, k, args.chunk, args.task)
        rows.append(
            {
                "run": f"pathseg wsi, {k} worker(s)",
                "seconds": r["seconds"],
                "mpx_per_s": mpx / r["seconds"],
                "peak_rss_gb": r["peak_rss_gb"],
            }
        )
    in_mem = rows[1]["mpx_per_s"]
    for r in rows[2:]:
        r["overhead_vs_in_memory"] = f"{(in_mem / r['mpx_per_s'] - 1) * 100:+.0f}%"
    print(
        f"\n{args.size}x{args.size} px slide ({mpx:,.0f} Mpx processed), {args.task}, model {args.model}, "
        f"chunk {args.chunk}"
    )
    print(format_table(rows, ["run", "seconds", "mpx_per_s", "peak_rss_gb", "overhead_vs_in_memory"], ".2f"))
    out = Path("benchmarks/results") / f"wsi_{args.task}_{Path(args.model).name}_{args.size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
