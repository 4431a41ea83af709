"""``pathseg models list|fetch|convert-ldm|int8``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pathseg.cli._common import add_image_mpp, int_at_least, log, positive_float
from pathseg.errors import PathsegError


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``pathseg models`` and its actions."""
    p = sub.add_parser("models", help="list, fetch and convert models")
    msub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = msub.add_parser("list", parents=[common], help="show every model, where it comes from, and offline status")
    m.set_defaults(func=cmd_models_list)
    m = msub.add_parser(
        "fetch",
        parents=[common],
        help="download models' weights into the cache now (e.g. on a login node, for compute nodes offline)",
        description="Download the weight files of the named models into the model cache ($PATHSEG_CACHE/models, "
        "default ~/.cache/pathseg/models), each checked against its published hash, so that later runs need no "
        "network (set PATHSEG_OFFLINE=1 there). Files already cached and verified are not fetched again. "
        "Bundled and built-in models need nothing. Example:\n  pathseg models fetch pathosam_vit_b sam_vit_b",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("names", nargs="+", metavar="NAME", help="model names (see `pathseg models list`)")
    m.set_defaults(func=cmd_models_fetch)
    m = msub.add_parser(
        "convert-ldm",
        parents=[common],
        help="convert an original latent-diffusion checkpoint (.ckpt + YAML) into a pathseg backbone",
        description="Convert a Large-Image-Diffusion / CompVis latent-diffusion Lightning checkpoint and its YAML "
        "config into a pathseg diffusion backbone folder (safetensors). Every key is mapped, checked or dropped "
        "by name (training-only loss weights); any other key stops the conversion. The checkpoint is read with "
        "weights_only=True, so no code in it runs. Example (after downloading the BRCA 20x model by hand):\n"
        "  pathseg models convert-ldm brca20x.ckpt --config only_ssl.yaml --name ldm_brca20x\n"
        "then `pathseg train tissue --backbone ldm_brca20x ...`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("checkpoint", type=Path, help="the .ckpt file (a Lightning checkpoint or a plain state dict)")
    m.add_argument("--config", type=Path, required=True, metavar="YAML", help="the model's original YAML config")
    m.add_argument("--name", default=None, help="model name (default: the checkpoint's stem)")
    m.add_argument(
        "-o", "--output", type=Path, default=None, help="output folder (default: the model cache, <cache>/models/NAME)"
    )
    m.add_argument("--mpp", type=positive_float, default=0.5, help="pixel size it was trained at (µm/px, default 0.5)")
    m.set_defaults(func=cmd_models_convert_ldm)
    add_int8_parser(msub, common)


def add_int8_parser(msub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``pathseg models int8``."""
    m = msub.add_parser(
        "int8",
        parents=[common],
        help="make a copy of a compact nucleus model whose automatic path runs in int8 (1.4x faster on x86 CPUs)",
        description="Calibrate the int8 automatic path of a compact nucleus model (pathseg_nuclei_cpu or one you "
        "trained): the images run through it as `pathseg nuclei` runs them while the range of every activation is "
        "recorded; the new folder OUT holds the model's files unchanged plus those ranges (ais_int8.safetensors) and "
        "'ais_precision': 'int8' in its config. A model with a class decoder gets its class path's ranges too "
        "(class_int8.safetensors, 'class_precision': 'int8'; 1.47x faster --classes). Weights are quantized per "
        "channel whenever it loads; prompts stay float32. Use a few images like those you will segment (4-16). On "
        "x86 CPUs only; elsewhere "
        "the model runs in float32 and says so. Example:\n"
        "  pathseg models int8 pathseg_nuclei_cpu tiles/ -o models/nuclei_int8\n"
        "  pathseg nuclei slide_tiles/ -o out/ --model models/nuclei_int8\n"
        "`pathseg nuclei --ais-precision float32|int8` chooses per run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("model", metavar="MODEL", help="a compact nucleus model: name (pathseg_nuclei_cpu) or folder")
    m.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE", help="calibration images, or folders of them")
    m.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="the new model folder")
    add_image_mpp(m)
    m.add_argument("--limit", type=int_at_least(1), default=16, help="use at most the first N images (default 16)")
    m.set_defaults(func=cmd_models_int8)


def cmd_models_int8(args: argparse.Namespace) -> int:
    from pathseg.api import resolve_mpp
    from pathseg.cli._common import check_output_folder, expand_inputs
    from pathseg.io.images import read_image
    from pathseg.models.quantize import calibrate, int8_unavailable, write_int8_folder
    from pathseg.models.zoo import get_entry, get_nucleus_model
    from pathseg.progress import Bar

    why = int8_unavailable()
    if why is not None:
        raise PathsegError(f"int8 cannot run here: {why}")
    check_output_folder(args.output)
    wanted = "int8 needs a compact nucleus model folder with an AIS decoder (pathseg_nuclei_cpu, or one that "
    wanted += "`pathseg train nuclei` wrote)"
    source = Path(args.model)
    if not source.is_dir():  # a name: only bundled models are folders (others are checkpoints to download or build)
        source = None if source.exists() or os.sep in args.model else get_entry(args.model).bundled
        if source is None:
            raise PathsegError(f"{args.model}: {wanted}")
    model = get_nucleus_model(args.model)
    if not getattr(model, "is_compact", False) or getattr(model, "ais", None) is None:
        raise PathsegError(f"{args.model}: {wanted}")
    inputs = expand_inputs(args.inputs)[: args.limit]
    assumed = []

    def images():  # one image in memory at a time
        for path in inputs:
            loaded = read_image(path)
            mpp, source = resolve_mpp(args.mpp, loaded.mpp, model.mpp)
            if source == "model default":
                assumed.append(path.name)
            yield loaded.pixels, mpp

    with Bar("calibrating", quiet=args.quiet) as bar:
        qparams = calibrate(model, images(), total=len(inputs), progress=bar)
    class_ranges = None
    if model.semantic is not None:  # its class path too, on the same images
        from pathseg.models.class_int8 import class_int8_info

        assumed.clear()
        with Bar("calibrating classes", quiet=args.quiet) as bar:
            ranges = calibrate(model, images(), total=len(inputs), progress=bar, classes=True)
        class_ranges = (ranges, class_int8_info(model, len(inputs)))
    if assumed:
        log.warning(
            "note: %d image(s) carry no pixel size (%s); assumed %g µm/px, the resolution model %r was made for. "
            "Pass --mpp if that is wrong: the ranges are observed at the scale the network sees.",
            len(assumed),
            ", ".join(assumed[:3]) + (" ..." if len(assumed) > 3 else ""),
            model.mpp,
            model.name,
        )
    out = write_int8_folder(source, args.output, qparams, model.int8_info(len(inputs)), class_ranges)
    paths = "automatic and class paths'" if class_ranges else "automatic path's"
    print(f"{out}: int8 ranges of the {paths} network from {len(inputs)} image(s); use it with --model {out}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from pathseg.models.zoo import default_nucleus_model, list_models
    from pathseg.table import format_table

    default = default_nucleus_model()
    rows = [
        {
            "name": e.name + (" *" if e.name == default else ""),
            "task": e.task,
            "µm/px": f"{e.mpp:g}",
            "offline": "yes" if e.offline() else "no",
            "source": e.source,
            "description": e.description,
        }
        for e in list_models()
    ]
    print(format_table(rows, ["name", "task", "µm/px", "offline", "source", "description"]))
    print("\n* default nucleus model (the best one available offline)")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from pathseg.models.zoo import ensure_file, get_entry, models_dir
    from pathseg.progress import Bar

    entries = [get_entry(name) for name in dict.fromkeys(args.names)]  # every name known before any download
    failed = 0
    for e in entries:
        if e.bundled is not None or not (e.files or e.manual):
            print(f"{e.name}: {'bundled' if e.bundled is not None else 'built-in'}, nothing to fetch")
            continue
        if e.manual:  # no program can fetch it: say where it is published, unless it is converted already
            if e.offline():
                print(f"{e.name}: {models_dir() / e.name} (converted by hand)")
            else:
                print(
                    f"{e.name}: published at {e.manual}; download it and convert it into {models_dir() / e.name}"
                    " (`pathseg models convert-ldm --help`)"
                )
                failed += 1
            continue
        for f in e.files:
            try:
                with Bar(f"{e.name}: {f.filename}", quiet=args.quiet) as bar:
                    path = ensure_file(f, progress=bar)
            except PathsegError as exc:
                failed += 1
                print(f"pathseg: error: {exc}", file=sys.stderr)
                continue
            print(f"{e.name}: {path} ({f.known_hash.split(':')[0]} verified)")
    return 1 if failed else 0


def cmd_models_convert_ldm(args: argparse.Namespace) -> int:
    from pathseg.models.diffusion.convert import convert_ldm
    from pathseg.models.zoo import models_dir

    for path in (args.checkpoint, args.config):
        if not path.is_file():
            raise PathsegError(f"{path}: file not found")
    name = args.name or args.checkpoint.stem
    out = args.output or models_dir() / name
    folder, report = convert_ldm(args.checkpoint, args.config, out, name=name, mpp=args.mpp)
    for family, n in report.items():
        print(f"  {family}: {n} tensors")
    print(f"backbone: {folder}")
    return 0
