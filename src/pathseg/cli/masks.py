"""``pathseg masks``: a training / evaluation folder from images and their GeoJSON outlines (e.g. from QuPath)."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import numpy as np

from pathseg.cli._common import add_max_pixels, companion_file, expand_inputs, log
from pathseg.errors import PathsegError
from pathseg.progress import track


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``pathseg masks``."""
    p = sub.add_parser(
        "masks",
        parents=[common],
        help="make instance masks from GeoJSON outlines (QuPath), for training and evaluation",
        description=textwrap.fill(  # wrapped here: the raw formatter keeps the example's lines as they are
            "Turn each image's GeoJSON outlines (a QuPath export, or pathseg's own <stem>.geojson after "
            "correcting it in QuPath) into a dataset folder: OUT/images/ (copies), OUT/instance_masks/<stem>.tif "
            "(uint32, one id per Polygon / MultiPolygon feature, holes left out) and, when the outlines carry QuPath "
            "classes, OUT/type_masks/<stem>.tif with OUT/classes.csv. `pathseg train nuclei --data OUT` and "
            "`pathseg evaluate nuclei --gt OUT` read it. Coordinates are image pixels; a pixel belongs to an outline "
            "when its centre lies inside.",
            width=79,
        ),
        epilog="example:\n"
        "  pathseg nuclei tiles/ -o out/             # then correct out/*.geojson in QuPath and export them\n"
        "  pathseg masks tiles/ --geojson out/ -o data/\n"
        "  pathseg train nuclei --data data/ -o runs/mine --init pathseg_nuclei_cpu --decoder-only --model-mpp 0.35",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="IMAGE",
        help="image files or folders of images, each with <stem>.geojson (beside it, or in --geojson)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="dataset folder to write")
    p.add_argument(
        "--geojson",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder holding <stem>.geojson for each image (default: each image's own folder)",
    )
    p.add_argument(
        "--classes",
        nargs="+",
        default=None,
        metavar="NAME",
        help="class names in id order (1, 2, ...); features of other classes are refused, features without one get "
        "0 (default: every class the files carry, sorted by name; none: no type masks). To keep a model's ids, "
        "give its classes in order, e.g. other inflammatory epithelial spindle-shaped for pathseg_nuclei_cpu",
    )
    p.add_argument(
        "--overlap",
        choices=["smaller", "first"],
        default="smaller",
        help="who keeps a pixel two outlines claim: smaller = the smaller object (default), first = the earlier "
        "feature in the file",
    )
    p.add_argument(
        "--tissue",
        action="store_true",
        help="the outlines are tissue regions with QuPath classes: write OUT/masks/<stem>.tif (class ids, 0 where "
        "nothing is drawn) and OUT/classes.json, for `pathseg train tissue --data OUT --classes OUT/classes.json` "
        "(undrawn pixels are ignored in training)",
    )
    add_max_pixels(p, resampled=False)
    p.set_defaults(func=cmd_masks)


def cmd_masks(args: argparse.Namespace) -> int:
    from pathseg.api import write_masks
    from pathseg.io.annotations import classes_in
    from pathseg.io.atomic import atomic_open

    images = expand_inputs(args.inputs)
    sources = {image: companion_file(image, args.geojson, (".geojson", ".json")) for image in images}
    missing = [image.name for image, source in sources.items() if source is None]
    if missing:
        where = args.geojson or "beside the images"
        raise PathsegError(
            f"{len(missing)} image(s) have no <stem>.geojson ({where}): {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    found = classes_in(list(sources.values()))  # names and QuPath's colours, in one reading of the files
    names = args.classes if args.classes is not None else list(found)
    if len(names) > 254 or len(set(names)) != len(names):
        raise PathsegError("--classes: up to 254 distinct names")
    if args.tissue and not names:
        raise PathsegError("--tissue: the outlines carry no QuPath classes; tissue masks need one class per region")
    class_ids = {name: k for k, name in enumerate(names, start=1)} if names else None
    out = args.output
    total = 0
    for image in track(images, total=len(images), desc="masks", quiet=args.quiet):
        made = write_masks(image, sources[image], out, class_ids, args.overlap, args.max_pixels, args.tissue)
        if args.tissue:
            continue
        areas = np.bincount(made.labels.ravel())[1:]
        areas = areas[areas > 0]
        count = len(areas)
        total += count
        if count >= 5 and areas.max() > 50 * np.median(areas):  # e.g. the region the nuclei were drawn in
            log.warning(
                "%s: one object covers %d px, %d times the median object; a region annotation among the nuclei? "
                "Leave it out of the export (e.g. export detections only) if it is not an object",
                image.name,
                areas.max(),
                areas.max() // np.median(areas),
            )
        left = [f"{n} {kind}" for kind, n in made.skipped.items()]
        if made.outside:
            left.append(f"{made.outside} outline(s) holding no pixel of the image")
        log.info("%s: %s%s", image.name, _objects(count), f" ({', '.join(left)} left out)" if left else "")
    if args.tissue:
        classes = [{"name": n, "color": found.get(n) or [128, 128, 128], "codes": [k]} for n, k in class_ids.items()]
        with atomic_open(out / "classes.json", "w") as f:
            json.dump({"classes": classes, "ignore": [0]}, f, indent=1)
        print(
            f"{len(images)} image(s) -> {out}/masks ({', '.join(f'{k} {n}' for n, k in class_ids.items())}; 0 = not "
            f"drawn)\nuse it with: pathseg train tissue --data {out} --classes {out}/classes.json --backbone ..."
        )
        return 0
    if class_ids:
        with atomic_open(out / "classes.csv", "w") as f:
            f.write("id,name\n0,background\n" + "".join(f"{k},{name}\n" for name, k in class_ids.items()))
    print(
        f"{_objects(total)} in {len(images)} image(s) -> {out}/instance_masks"
        + (f", {out}/type_masks ({', '.join(f'{k} {name}' for name, k in class_ids.items())})" if class_ids else "")
        + f"\nuse it with: pathseg train nuclei --data {out} ...   or   pathseg evaluate nuclei --gt {out} ..."
    )
    return 0


def _objects(count: int) -> str:
    return f"{count} object" if count == 1 else f"{count} objects"
