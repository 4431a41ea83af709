"""``pathseg tissue``: tissue / gland classes in images."""

from __future__ import annotations

import argparse
import sys
import time

from pathseg.cli._common import (
    add_device,
    add_image_mpp,
    add_inputs_and_output,
    add_max_pixels,
    add_skip_existing,
    add_tissue_inference,
    expand_inputs,
    output_stem,
    without_finished,
)
from pathseg.errors import PathsegError
from pathseg.progress import Bar


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``pathseg tissue``."""
    p = sub.add_parser(
        "tissue",
        parents=[common],
        help="segment tissue / gland classes in images",
        description="Segment tissue classes (e.g. glands) with a tissue model (diffusion features + head). Writes "
        "per input <stem>_tissue.tif (uint8 class ids), <stem>_tissue.geojson (class regions as QuPath annotations, "
        "with classification names and colours) and <stem>_tissue_areas.csv (area per class in px, µm², mm²); "
        "named apart from `pathseg nuclei`'s outputs, so both can write into one folder.",
    )
    add_inputs_and_output(p)
    p.add_argument("--model", default=None, help="tissue model name or folder (default: the bundled one)")
    add_image_mpp(p)
    add_max_pixels(p)
    add_tissue_inference(p)
    add_device(p)
    add_skip_existing(p)
    p.set_defaults(func=cmd_tissue)


def cmd_tissue(args: argparse.Namespace) -> int:
    from pathseg.api import segment_tissue, write_tissue_outputs
    from pathseg.models.device import place
    from pathseg.models.zoo import get_tissue_model

    inputs = expand_inputs(args.inputs)
    if args.skip_existing:
        inputs = without_finished(inputs, args.output, ["_tissue.tif", "_tissue.geojson", "_tissue_areas.csv"])
        if not inputs:
            return 0
    model = get_tissue_model(args.model).with_settings(args.tta, args.tta_space, args.stride, args.precision)
    model = place(model, args.device)
    failures = 0
    from pathseg.progress import track

    for path in track(inputs, total=len(inputs), desc="images", quiet=args.quiet or len(inputs) == 1):
        start = time.perf_counter()
        try:
            with Bar(path.name, quiet=args.quiet or len(inputs) > 1) as bar:  # one image: a bar over its patches
                result = segment_tissue(
                    path, model, mpp=args.mpp, max_pixels=args.max_pixels, clean=not args.no_clean, progress=bar
                )
                paths = write_tissue_outputs(result, args.output, output_stem(path))
        except PathsegError as exc:
            print(f"pathseg: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        if not args.quiet:
            shares = ", ".join(
                f"{n['name']} {100 * float((result.classes == k).mean()):.1f}%" for k, n in enumerate(result.names)
            )
            print(
                f"{path}: {shares} at {result.mpp:g} µm/px ({result.mpp_source}) in "
                f"{time.perf_counter() - start:.1f} s -> {paths['classes'].name}, {paths['geojson'].name}, "
                f"{paths['areas'].name}"
            )
    if failures:
        print(f"pathseg: {failures} of {len(inputs)} input(s) failed", file=sys.stderr)
        return 1
    return 0
