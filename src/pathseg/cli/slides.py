"""``pathseg wsi`` (whole slides, chunked and resumable) and ``pathseg demo``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pathseg.cli._common import (
    add_ais_params,
    add_ais_precision,
    add_class_precision,
    add_device,
    add_tissue_inference,
    int_at_least,
    log,
    output_stem,
    positive_float,
)
from pathseg.errors import PathsegError
from pathseg.progress import Bar


def add_wsi_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``pathseg wsi``."""
    p = sub.add_parser(
        "wsi",
        parents=[common],
        help="segment nuclei in a whole-slide image (bounded memory, resumable)",
        description="Segment a whole slide chunk by chunk (each with a halo; every nucleus kept whole, once). Writes "
        "OUTDIR/labels.zarr (uint32 nucleus ids, multiscale OME-Zarr), nuclei.geojson (QuPath detections), "
        "nuclei.csv and report.json. "
        "Re-running the same command resumes after the last finished chunk (a run with other settings into the same "
        "OUTDIR is refused, never mixed).",
    )
    p.add_argument("slide", type=Path, metavar="SLIDE", help="svs, ndpi, mrxs, scn, OME-TIFF, tiled TIFF, ...")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    p.add_argument(
        "--task",
        choices=["nuclei", "tissue"],
        default="nuclei",
        help="nuclei (labels.zarr, nuclei.geojson, nuclei.csv/.parquet) or tissue (classes.zarr, tissue.geojson "
        "annotations, tissue_areas.csv); default nuclei",
    )
    p.add_argument("--model", default=None, help="model name or path; default: best offline")
    p.add_argument(
        "--mpp",
        type=positive_float,
        default=None,
        help="µm/px of level 0 when the slide's metadata has none (required then)",
    )
    p.add_argument("--roi", default=None, metavar="X,Y,W,H", help="only this region (level-0 pixels)")
    p.add_argument(
        "--chunk", type=int_at_least(256), default=4096, help="chunk size in working-level pixels (default 4096)"
    )
    p.add_argument(
        "--halo",
        type=int_at_least(0),
        default=64,
        help="context around each chunk in pixels (default 64, more than a nucleus diameter)",
    )
    p.add_argument("--no-tissue-mask", action="store_true", help="process every chunk, tissue or not")
    p.add_argument(
        "--workers",
        type=int_at_least(0),
        default=0,
        help="run chunks on a local Dask cluster of N processes (default: in this process)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="use an existing dask.distributed scheduler, e.g. tcp://10.0.0.5:8786 (see README)",
    )
    p.add_argument(
        "--classes",
        action="store_true",
        help="also classify every nucleus (a model with a class decoder): classes.zarr, QuPath "
        "classification in the GeoJSON, class columns in the tables",
    )
    add_ais_precision(p, "nuclei: ")
    add_ais_params(p, "nuclei: ")
    add_class_precision(p, "nuclei: ")
    add_tissue_inference(p, "--task tissue: ")
    add_device(p)
    p.set_defaults(func=cmd_wsi)


def add_demo_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``pathseg demo``."""
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="fetch a real slide and segment its nuclei",
        description="Fetch the CC0 slide CMU-1-Small-Region.svs (sha256-checked, cached), segment its nuclei with "
        "the best model available offline and say how to open the results in QuPath and napari.",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("pathseg-demo"),
        metavar="OUTDIR",
        help="folder for the results (default: ./pathseg-demo)",
    )
    p.add_argument("--slide", type=Path, default=None, help="use this slide instead of downloading the demo slide")
    p.add_argument("--model", default=None, help="model name; default: best offline")
    add_device(p)
    p.set_defaults(func=cmd_demo)


def _roi(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise PathsegError(f"--roi must be X,Y,W,H in level-0 pixels, got {text!r}") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise PathsegError(f"--roi needs x, y >= 0 and w, h > 0, got {text!r}")
    return x, y, w, h


def cmd_wsi(args: argparse.Namespace) -> int:
    from pathseg.wsi.pipeline import SlideRun, run_slide

    if args.workers and args.scheduler:
        raise PathsegError(
            "--workers starts a local Dask cluster and --scheduler uses an existing one: give one of them "
            "(an existing cluster's size is set where its workers start)"
        )
    run = SlideRun(
        str(args.slide),
        str(args.output),
        model=args.model,
        mpp=args.mpp,
        roi=_roi(args.roi),
        chunk=args.chunk,
        halo=args.halo,
        use_tissue_mask=not args.no_tissue_mask,
        workers=args.workers,
        scheduler=args.scheduler,
        classes=args.classes,
        task=args.task,
        tta=args.tta,
        tta_space=args.tta_space,
        stride=args.stride,
        precision=args.precision,
        ais_precision=args.ais_precision,
        class_precision=args.class_precision,
        ais_params=dict(args.ais_params) if args.ais_params else None,
        clean=not args.no_clean,
        device=args.device,
    )
    with Bar("chunks", quiet=args.quiet) as bar:
        report = run_slide(run, progress=bar, log=lambda m: log.warning("%s", m))
    print(
        f"{args.slide}: {report['chunks_done']} of {report['chunks']} chunks done "
        f"({report['chunks'] - report['chunks_with_tissue']} without tissue, {len(report['chunks_failed'])} failed) "
        f"in {report['seconds']:.1f} s at {report['mpp']:g} µm/px"
    )
    for kind, path in report["outputs"].items():
        print(f"  {kind:8s} {path}")
    return 1 if report["chunks_failed"] else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathseg.api import segment_nuclei, write_nuclei_outputs
    from pathseg.demo import fetch_demo_slide, how_to_open
    from pathseg.models.zoo import get_nucleus_model

    if args.slide is not None:
        slide = args.slide
    else:
        with Bar("download", quiet=args.quiet) as bar:
            slide = fetch_demo_slide(progress=bar)
    model = get_nucleus_model(args.model)
    print(f"slide: {slide}\nmodel: {model.name}")
    start = time.perf_counter()
    with Bar("nuclei", quiet=args.quiet) as bar:
        result = segment_nuclei(slide, model, progress=bar, device=args.device)
    paths = write_nuclei_outputs(result, args.output, output_stem(slide))
    h, w = result.labels.shape
    print(
        f"{result.count} nuclei in {w}x{h} px at {result.mpp:g} µm/px ({result.mpp_source}) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    for kind, path in paths.items():
        print(f"  {kind:9s} {path}")
    print(how_to_open(slide.resolve(), {k: p.resolve() for k, p in paths.items()}))
    return 0
