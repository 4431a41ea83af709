"""``pathseg nuclei``: nucleus instances (automatic or prompted) in images."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pathseg.cli._common import (
    add_ais_params,
    add_ais_precision,
    add_class_precision,
    add_device,
    add_image_mpp,
    add_inputs_and_output,
    add_max_pixels,
    add_skip_existing,
    companion_file,
    expand_inputs,
    log,
    output_stem,
    without_finished,
)
from pathseg.errors import PathsegError
from pathseg.models.base import needs_ais_decoder, set_ais_options
from pathseg.progress import Bar


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``pathseg nuclei``."""
    p = sub.add_parser(
        "nuclei",
        parents=[common],
        help="segment nuclei in images",
        description="Segment nuclei. Writes per input <stem>_instances.tif (uint32 labels), <stem>.geojson "
        "(QuPath detections) and <stem>_nuclei.csv (one row per nucleus, px and µm).",
    )
    add_inputs_and_output(p)
    p.add_argument("--model", default=None, help="model name (see `pathseg models list`); default: best offline")
    add_image_mpp(p)
    add_max_pixels(p)
    p.add_argument(
        "--prompts",
        type=Path,
        default=None,
        metavar="FILE",
        help="segment one nucleus per prompt instead of all automatically: points.csv (x,y[,label][,object]) or "
        "boxes.geojson (polygons -> boxes, points and multipoints -> one nucleus per point), in image pixels, for "
        "one input image; or a folder holding <stem>.csv / <stem>.geojson for each input. Needs a SAM-family model",
    )
    p.add_argument(
        "--box-margin",
        type=float,
        default=None,
        metavar="PX",
        help="with --prompts: a box bounds its nucleus; mask pixels more than PX image pixels outside the box are "
        "dropped (default 0; negative: unbounded masks, as SAM gives them)",
    )
    p.add_argument(
        "--box-from-ais",
        type=float,
        default=None,
        metavar="IOU",
        help="with --prompts: a box takes the automatic segmentation's nucleus whose bounding box overlaps it with at "
        "least this IoU, else the mask decoder's mask (0: always the decoder's; default: the model's config "
        "'box_from_ais')",
    )
    p.add_argument(
        "--box-fit",
        choices=["on", "off"],
        default=None,
        help="with --prompts: on = a box takes the candidate mask (the decoder's 3, the --box-from-ais nucleus) whose "
        "bounding box best fits it; off = the decoder's single mask or that nucleus (default: the model's config "
        "'box_fit'; on for pathseg_nuclei_cpu)",
    )
    p.add_argument(
        "--overlap",
        choices=["smaller", "first"],
        default=None,
        help="with --prompts: who keeps a pixel that several nuclei's masks claim: smaller = the smallest of them "
        "(default; as PathoSAM composes prompt masks), first = the earliest prompt in the file",
    )
    p.add_argument(
        "--mode",
        choices=["ais", "apg", "amg"],
        default="ais",
        help="automatic mode: ais = decoder maps + watershed (default, fastest); apg = SAM prompts at "
        "the AIS seeds; amg = SAM's grid of point prompts (SAM-family models only)",
    )
    p.add_argument(
        "--ais-views",
        type=int,
        choices=[1, 2, 4],
        default=None,
        help="mirrored views the automatic maps are averaged over (each view is one more network pass; default: the "
        "model's config 'ais_tta', 1 for pathseg_nuclei_cpu). On stains unlike its MoNuSeg training images more "
        "views scored higher (CoNSeP train, mSA + AJI + PQ: 1 view 0.915, 2 views 0.942, 4 views 0.987); on "
        "MoNuSeg its thresholds suit 1 view (2 views: test mSA 0.381 against 0.395)",
    )
    p.add_argument(
        "--ais-shift",
        type=float,
        nargs=2,
        metavar=("DY", "DX"),
        default=None,
        help="move the automatic maps back by the AIS decoder's own displacement, in network pixels (default: the "
        "model's config 'ais_shift', none for pathseg_nuclei_cpu). pathseg_nuclei_cpu's decoder puts nuclei "
        "0.415 0.455 network px down and right of where an unbiased decoder does; '--ais-shift 0.415 0.455' "
        "undoes it (CoNSeP train mSA 0.178 -> 0.198). MoNuSeg's annotations sit ~0.5 px right of their nuclei, "
        "which is why the bundled model leaves it off (MoNuSeg validation mSA 0.304 -> 0.298)",
    )
    add_ais_precision(p)
    add_ais_params(p)
    p.add_argument(
        "--no-stain",
        action="store_true",
        help="the automatic path sees the image's colours as they are: a model with 'ais_stain' in its config "
        "(written by benchmarks/tune_ais.py --stain reinhard --write; pathseg_nuclei_cpu has none) otherwise "
        "matches each image's LAB colour statistics to its training images' first",
    )
    p.add_argument(
        "--classes",
        action="store_true",
        help="also give every nucleus one class (probability-weighted vote over its pixels): writes "
        "<stem>_classes.tif and adds classification to the GeoJSON and class columns to the CSV",
    )
    add_class_precision(p)
    add_device(p)
    add_skip_existing(p)
    p.set_defaults(func=cmd_nuclei)


def cmd_nuclei(args: argparse.Namespace) -> int:
    from pathseg.api import segment_nuclei, segment_nuclei_prompted, write_nuclei_outputs
    from pathseg.models.class_int8 import set_class_precision
    from pathseg.models.device import place
    from pathseg.models.zoo import get_nucleus_model

    inputs = expand_inputs(args.inputs)
    if args.skip_existing:
        suffixes = ["_instances.tif", ".geojson", "_nuclei.csv"] + (["_classes.tif"] if args.classes else [])
        inputs = without_finished(inputs, args.output, suffixes)
        if not inputs:
            return 0
    model = get_nucleus_model(args.model)
    if args.ais_views is not None:
        needs_ais_decoder(model, "--ais-views")
        model.config["ais_tta"] = args.ais_views
    if args.ais_shift is not None:
        needs_ais_decoder(model, "--ais-shift")
        model.config["ais_shift"] = list(args.ais_shift)
        model.ais_shift  # noqa: B018 - checks the values now rather than at the first image
    set_ais_options(model, args.ais_precision, dict(args.ais_params or []))
    if args.classes and getattr(model, "semantic", None) is None:  # said once, not once per image
        raise PathsegError(f"--classes needs a model with a class decoder; {model.name!r} has none")
    if args.class_precision is not None:
        if not args.classes:
            raise PathsegError("--class-precision goes with --classes")
        set_class_precision(model, args.class_precision)
    if args.mode != "ais" and not hasattr(model, "sam"):
        raise PathsegError(f"--mode {args.mode} needs a SAM-family model; {model.name!r} only does automatic (ais)")
    if args.no_stain and getattr(model, "ais_stain", None) is not None:
        model.config["ais_stain"] = None
    model = place(model, args.device, args.ais_precision, args.class_precision)
    prompt_only = {
        "--box-margin": args.box_margin,
        "--box-from-ais": args.box_from_ais,
        "--box-fit": args.box_fit,
        "--overlap": args.overlap,
    }
    given = [flag for flag, value in prompt_only.items() if value is not None]
    if args.prompts is None and given:
        verb = "goes" if len(given) == 1 else "go"
        raise PathsegError(f"{', '.join(given)} {verb} with --prompts; automatic segmentation has no prompts to bound")
    prompts = None
    if args.prompts is not None:
        from pathseg.io.prompts import read_prompts

        if args.mode != "ais":
            raise PathsegError(f"--mode {args.mode} is an automatic mode; with --prompts each prompt gives one nucleus")
        if args.prompts.is_dir():  # one prompt file per image, by stem
            files = {p: companion_file(p, args.prompts, (".csv", ".geojson", ".json")) for p in inputs}
            missing = [p.name for p, f in files.items() if f is None]
            if missing:
                more = " ..." if len(missing) > 5 else ""
                raise PathsegError(
                    f"{len(missing)} image(s) have no <stem>.csv / .geojson in {args.prompts}: "
                    f"{', '.join(missing[:5])}{more}"
                )
        elif len(inputs) != 1:
            raise PathsegError(
                "--prompts FILE goes with exactly one input image (prompt coordinates are per image); for several, "
                "give a folder holding <stem>.csv or <stem>.geojson per image"
            )
        else:
            files = {inputs[0]: args.prompts}
        prompts = {p: read_prompts(f) for p, f in files.items()}  # every file read and checked before any image
    failures = 0
    assumed = []
    found, began = 0, time.perf_counter()
    for path in inputs:
        start = time.perf_counter()
        try:
            with Bar(path.name, quiet=args.quiet) as bar:
                if prompts is not None:
                    result = segment_nuclei_prompted(
                        path,
                        prompts[path],
                        model,
                        mpp=args.mpp,
                        max_pixels=args.max_pixels,
                        progress=bar,
                        box_margin=0.0 if args.box_margin is None else None if args.box_margin < 0 else args.box_margin,
                        box_from_ais="model" if args.box_from_ais is None else args.box_from_ais or None,
                        box_fit="model" if args.box_fit is None else args.box_fit == "on",
                        overlap=args.overlap or "smaller",
                        classes=args.classes,
                    )
                else:
                    result = segment_nuclei(
                        path,
                        model,
                        mpp=args.mpp,
                        max_pixels=args.max_pixels,
                        progress=bar,
                        mode=args.mode,
                        classes=args.classes,
                    )
                paths = write_nuclei_outputs(result, args.output, output_stem(path))
        except PathsegError as exc:
            print(f"pathseg: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        if result.mpp_source == "model default":
            assumed.append(path.name)
        found += result.count
        if not args.quiet:
            print(
                f"{path}: {_nuclei(result.count)} at {result.mpp:g} µm/px ({result.mpp_source}) "
                f"in {time.perf_counter() - start:.1f} s -> {paths['instances'].name}, {paths['geojson'].name}, "
                f"{paths['table'].name}"
            )
    done = len(inputs) - failures
    if done > 1 and not args.quiet:
        took = time.perf_counter() - began
        print(f"{done} images: {_nuclei(found)} in {took:.0f} s ({took / done:.1f} s per image) -> {args.output}")
    if assumed:
        log.warning(
            "note: %d input(s) carry no pixel size (%s); assumed %g µm/px, the resolution model %r was made for. "
            "Pass --mpp to set it.",
            len(assumed),
            ", ".join(assumed[:3]) + (" ..." if len(assumed) > 3 else ""),
            model.mpp,
            model.name,
        )
    if failures:
        print(f"pathseg: {failures} of {len(inputs)} input(s) failed", file=sys.stderr)
        return 1
    return 0


def _nuclei(count: int) -> str:
    return f"{count} nucleus" if count == 1 else f"{count} nuclei"
