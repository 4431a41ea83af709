"""``pathseg`` commands with glibc's allocator as it comes (``PATHSEG_MALLOC=system``) and as pathseg tunes it
(:mod:`pathseg.allocator`), alternating in one run: wall seconds, user and system CPU seconds, peak RSS.

    python benchmarks/allocator.py   # nuclei on MoNuSeg test, wsi on the demo slide, tissue on 6 GlaS images
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pathseg.table import format_table

CHILD = """
import json, resource, sys, time
from pathseg.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
r = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"code": code, "wall": time.perf_counter() - start, "user": r.ru_utime, "sys": r.ru_stime,
                  "peak_rss_mb": r.ru_maxrss / 1024}))
"""

COLUMNS = ["command", "allocator", "wall", "user", "sys", "peak_rss_mb", "speedup"]


def run(argv: list[str], allocator: str) -> dict:
    env = {**os.environ, "PATHSEG_MALLOC": "system" if allocator == "system" else ""}
    out = subprocess.run([sys.executable, "-c", CHILD, *argv, "-q"], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"{' '.join(argv)} returned {result['code']}:\n{out.stderr}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    ap.add_argument("--repeats", type=int, default=2, help="runs per command and allocator (alternating)")
    ap.add_argument("--only", nargs="+", default=None, help="only the commands whose name starts with these words")
    args = ap.parse_args(argv)
    images, slide = args.data / "monuseg" / "test" / "images", args.data / "wsi" / "CMU-1-Small-Region.svs"
    glands = sorted((args.data / "glas" / "testA" / "images").glob("testA_*.png"))[:6]
    if not images.is_dir() or not slide.is_file() or not glands:
        print(f"skipped: {images}, {slide} or GlaS testA not found", file=sys.stderr)
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            "nuclei MoNuSeg test (14 x 1 Mpx)": ["nuclei", str(images), "--mpp", "0.25", "-o", f"{tmp}/n"],
            "wsi demo slide, 1024-px chunks": ["wsi", str(slide), "--chunk", "1024", "-o", f"{tmp}/w"],
            "tissue 6 GlaS testA images": ["tissue", *map(str, glands), "--mpp", "0.62", "-o", f"{tmp}/t"],
        }
        for name, cmd in commands.items():
            if args.only and not any(name.startswith(w) for w in args.only):
                continue
            seen: dict[str, list[dict]] = {"system": [], "pathseg": []}
            for i in range(args.repeats):
                for allocator in ("system", "pathseg") if i % 2 == 0 else ("pathseg", "system"):
                    out = cmd[-1]
                    subprocess.run(["rm", "-rf", out], check=True)
                    seen[allocator].append(run(cmd, allocator))
            for allocator, runs in seen.items():
                best = min(runs, key=lambda r: r["wall"])
                rows.append({"command": name, "allocator": allocator, **{k: best[k] for k in COLUMNS[2:6]}})
            rows[-1]["speedup"] = rows[-2]["wall"] / rows[-1]["wall"]
            print(f"{name}: done", file=sys.stderr, flush=True)
    print(f"\nfastest of {args.repeats} runs each, seconds and MB (peak RSS of the whole process)")
    print(format_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
