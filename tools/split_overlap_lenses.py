"""Write a copy of a nucleus data folder whose instance masks have their overlap lenses split between the two nuclei
they sit between (:func:`pathseg.nuclei.overlaps.split_overlap_lenses`).

    python tools/split_overlap_lenses.py --data ../shared/data/monuseg/train -o runs/monuseg_lenses_split/train

With a ``manifest.csv`` that has an ``instance_source`` column beside ``images/`` or one folder up (MoNuSeg's), only
masks whose source is ``--source`` (default ``derived_from_colour_mask``: rebuilt from colour renderings) change;
``--source any`` changes every mask. Images and the manifest are copied unchanged; ``lenses.csv`` lists the
lenses split per image.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pathseg.io.images import read_labels
from pathseg.nuclei.overlaps import split_overlap_lenses
from pathseg.train.data import find_manifest, find_pairs


def mask_sources(manifest: Path | None) -> dict[str, str]:
    """Image id -> ``instance_source`` from ``manifest`` ({} if there is none or it has no such column)."""
    if manifest is None:
        return {}
    with manifest.open(newline="") as f:
        return {r["id"]: r["instance_source"] for r in csv.DictReader(f) if r.get("instance_source")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="folder with images/ and instance_masks/")
    ap.add_argument("-o", "--output", type=Path, required=True, help="new folder (must not exist yet)")
    ap.add_argument("--source", default="derived_from_colour_mask", help="instance_source to change, or 'any'")
    ap.add_argument("--min-contact", type=float, default=0.5, help="least share of a lens's outer ring on nuclei")
    ap.add_argument("--max-area-ratio", type=float, default=0.5, help="largest lens area / its smaller nucleus's")
    args = ap.parse_args(argv)
    if args.output.exists():
        print(f"error: {args.output} exists; give a new folder", file=sys.stderr)
        return 2
    pairs = find_pairs(args.data)
    manifest = find_manifest(args.data)
    sources = mask_sources(manifest)
    if args.source != "any" and not sources:
        print(f"error: no manifest.csv with instance_source for {args.data}; use --source any", file=sys.stderr)
        return 2
    work = args.output.with_name(args.output.name + ".partial")  # renamed to --output once complete
    shutil.rmtree(work, ignore_errors=True)
    (work / "images").mkdir(parents=True)
    (work / "instance_masks").mkdir()
    if manifest is not None:  # keeps the trainer's grouping of tiles by source image (CoNSeP-style manifests)
        shutil.copyfile(manifest, work / "manifest.csv")
    total = 0
    with open(work / "lenses.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["id", "instance_source", "lenses_split"])
        for image, mask in pairs:
            shutil.copyfile(image, work / "images" / image.name)
            labels = read_labels(mask)
            if labels.max() > np.iinfo(np.uint16).max:
                raise SystemExit(f"error: {mask} has more than 65535 instances (uint16 PNG masks)")
            source = sources.get(image.stem, "")
            n = 0
            if args.source == "any" or source == args.source:
                labels, n = split_overlap_lenses(labels, args.min_contact, args.max_area_ratio)
            Image.fromarray(labels.astype(np.uint16)).save(work / "instance_masks" / f"{mask.stem}.png")
            rows.writerow([image.stem, source, n])
            total += n
    work.rename(args.output)
    print(f"{len(pairs)} images, {total} lenses split -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
