"""Shared pieces of the ``pathseg`` command: input expansion, output names and argument helpers."""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path

from pathseg.errors import PathsegError
from pathseg.io.export import LABEL_TAGS
from pathseg.io.images import image_files

log = logging.getLogger("pathseg")

IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".svs",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".bif",
    ".svslide",
}


def _number(ok, rule: str, doc: str):
    """An argparse type: a float for which ``ok(value)`` holds, else an error saying it ``must be {rule}``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__doc__ = doc
    return parse


positive_float = _number(lambda v: 0 < v < math.inf, "> 0", "An argparse type: a number > 0.")
non_negative_float = _number(lambda v: 0 <= v < math.inf, ">= 0", "An argparse type: a number >= 0.")
fraction = _number(lambda v: 0 <= v < 1, ">= 0 and < 1", "An argparse type: a share in [0, 1).")
share = _number(lambda v: 0 < v <= 1, "> 0 and <= 1", "An argparse type: a share in (0, 1].")


def int_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    return parse


def add_inputs_and_output(p: argparse.ArgumentParser) -> None:
    """The INPUT... and -o OUTDIR arguments of the image-segmenting commands."""
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="image files or folders of images (a dataset folder holding images/ gives those)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR", help="folder for the results")


def add_skip_existing(p: argparse.ArgumentParser) -> None:
    """The --skip-existing flag of the image-segmenting commands (resuming a folder run)."""
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave out inputs whose outputs are all in OUTDIR already, e.g. to resume an interrupted run over a "
        "folder with the same settings (outputs appear whole or not at all, so a present file is complete)",
    )


def without_finished(inputs: list[Path], outdir: Path, suffixes: list[str]) -> list[Path]:
    """``inputs`` less those whose outputs ``outdir/<stem><suffix>`` all exist (``--skip-existing``), said once."""
    done = [p for p in inputs if all((Path(outdir) / f"{output_stem(p)}{x}").is_file() for x in suffixes)]
    if done:
        log.info("--skip-existing: %d of %d input(s) have their outputs in %s", len(done), len(inputs), outdir)
    return [p for p in inputs if p not in done]


def add_image_mpp(p: argparse.ArgumentParser) -> None:
    """The --mpp of the commands that read images for a model: the user's, else the file's, else the model's own."""
    p.add_argument(
        "--mpp",
        type=positive_float,
        default=None,
        help="pixel size in µm/px; overrides the file's. Without it and without file metadata the "
        "model's own resolution is assumed",
    )


def add_max_pixels(p: argparse.ArgumentParser, resampled: bool = True) -> None:
    """The --max-pixels cap of the image-reading commands (``resampled``: those that resample to a model's µm/px)."""
    p.add_argument(
        "--max-pixels",
        type=int_at_least(1),
        default=None,
        help="refuse images with more pixels than this"
        + (", as read or as resampled to the model's pixel size" if resampled else "")
        + " (default 100e6, or $PATHSEG_MAX_PIXELS)",
    )


def _ais_param(text: str) -> tuple[str, float | tuple[float, ...]]:
    from pathseg.nuclei.automatic import AISParams

    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_")
    known = [f for f in AISParams.__dataclass_fields__ if f != "object_filter"]
    if not sep or name not in known:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of {', '.join(known)}; got {text!r}")
    try:
        if name == "outline_levels":
            return name, tuple(float(v) for v in value.split(",") if v.strip())
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: not a number: {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{name}: not a finite number: {value!r}")
    return name, number


def add_device(p: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda|cuda:N``: where the network runs (:func:`pathseg.models.device.resolve_device`)."""
    p.add_argument(
        "--device",
        default="auto",
        help="where the network runs: auto (default: the first CUDA GPU if there is one, else the CPU), cpu, cuda or "
        "cuda:N. Only the network moves (images and results stay in main memory); int8 (--ais-precision) runs on "
        "CPUs only",
    )


def add_ais_precision(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--ais-precision float32|int8``: the arithmetic of the automatic path's network for this run."""
    p.add_argument(
        "--ais-precision",
        choices=["float32", "int8"],
        default=None,
        help=f"{prefix}arithmetic of the automatic path's network (default: the model's config 'ais_precision', "
        "float32 unless the model was made by `pathseg models int8`; int8 for pathseg_nuclei_cpu). int8 needs the "
        "activation ranges that command calibrates; x86 CPUs only. pathseg_nuclei_cpu: 1.40x faster, MoNuSeg "
        "validation mSA + AJI + PQ 1.4485 in int8, 1.4483 in float32",
    )


def add_class_precision(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--class-precision float32|int8``: the arithmetic of the class path's network for a ``--classes`` run."""
    p.add_argument(
        "--class-precision",
        choices=["float32", "int8"],
        default=None,
        help=f"{prefix}with --classes: arithmetic of the class path's network (default: the model's config "
        "'class_precision'; int8 for pathseg_nuclei_cpu, 1.47x faster, CoNSeP train class accuracy 0.798 against "
        "0.799 in float32). int8 needs ranges from `pathseg models int8`; x86 CPUs only",
    )


def add_ais_params(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--ais-param NAME=VALUE`` (repeatable): the automatic path's thresholds for this run."""
    p.add_argument(
        "--ais-param",
        dest="ais_params",
        action="append",
        type=_ais_param,
        default=None,
        metavar="NAME=VALUE",
        help=f"{prefix}override one of the automatic path's thresholds for this run (repeatable; default: the "
        "model's config 'ais_params', tuned on its validation split). NAME: foreground_threshold, "
        "center_distance_threshold, boundary_distance_threshold (0-1), foreground_smoothing, distance_smoothing "
        "(σ, model px), min_size (model px), min_foreground (0-1: nuclei whose mean foreground probability is "
        "lower are dropped; 0 keeps all), outline_levels (comma list). pathseg_nuclei_cpu: foreground 0.4, "
        "centre 0.5, boundary 0.5, σ 0 / 0.5, min_size 20, min_foreground 0. E.g. min_foreground=0.55 leaves "
        "faint nuclei out as MoNuSeg's annotators did: MoNuSeg test mSA 0.395 -> 0.409, but CoNSeP test "
        "detection F_d 0.680 -> 0.651 (float32, benchmarks/NUCLEI.md session 35)",
    )


def add_tissue_inference(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--tta``, ``--tta-space``, ``--precision``, ``--stride`` and ``--no-clean``: a tissue model's test-time
    views, arithmetic, patch stride and cleaning, for ``pathseg tissue`` and ``pathseg wsi``."""
    p.add_argument(
        "--tta",
        type=int,
        choices=[1, 2, 4, 8],
        default=None,
        help=prefix + "test-time views per patch, averaged: 1 = none, 2 = + mirror, 4 = quarter turns, 8 = all "
        "(time grows with the views; default: the model's config 'tta', 1 if absent)",
    )
    p.add_argument(
        "--tta-space",
        choices=["image", "latent"],
        default=None,
        help=prefix + "where the test-time views are taken: 'image' encodes every turned patch; 'latent' encodes "
        "each patch once and turns its latent, about 2x faster at 4 views, a little less accurate (bundled "
        "model, GlaS validation: mIoU 0.799 vs 0.802; 1 view: 0.787); default: the model's config 'tta_space', "
        "else image",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        default=None,
        help=prefix + "arithmetic of the network: 'bfloat16' runs it under bfloat16 autocast, 1.5-1.75x faster "
        "on a CPU with native bfloat16 (avx512_bf16 / AMX), with about 0.25%% of pixels changing class (bundled "
        "model, GlaS); 'auto' takes bfloat16 only where the CPU or GPU has it natively (others emulate it); "
        "default: the model's config 'precision', else float32",
    )
    p.add_argument(
        "--stride",
        type=int_at_least(1),
        default=None,
        metavar="PX",
        help=prefix + "step between the model's patches, in pixels at the model's µm/px (1 to the patch size; "
        "smaller blends more overlapping patches per pixel and costs more patches; default: the model's config "
        "'stride', else 3/4 of the patch)",
    )
    p.add_argument(
        "--no-clean",
        action="store_true",
        help=prefix + "keep the raw per-pixel argmax: skip the model's cleaning (small holes filled, small specks "
        "absorbed; areas in its config's 'clean', µm²)",
    )


def check_output_folder(folder: Path) -> None:
    """Refuse an output folder (-o) that cannot be made or written, before any work: a file in its place or on its
    path, or a folder without write permission. Nothing is created here."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"cannot be made: {existing} is a file"
        raise PathsegError(f"-o {folder}: {where}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PathsegError(f"-o {folder}: {existing} is not writable")


def check_output_file(path: Path, option: str) -> None:
    """Refuse, before any work, an output file that is a folder or whose folder cannot be made or written."""
    path = Path(path)
    if path.is_dir():
        raise PathsegError(f"{option} {path}: is a folder; give a file name, e.g. {path / 'scores.json'}")
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        raise PathsegError(f"{option} {path}: cannot be written: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PathsegError(f"{option} {path}: {existing} is not writable")


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given; folders expanded to the image files they hold (sorted). A dataset folder without image files
    of its own but with an ``images/`` sub-folder (the MoNuSeg / GlaS / CoNSeP layout) gives that sub-folder's;
    hidden files and pathseg's own label / class TIFFs (``LABEL_TAGS``) are left out. A file named twice
    comes once. Two files whose results would take one name (``a/t.png`` and ``b/t.png``, or ``t.png`` and
    ``t.tif``) are refused before any work, so that neither overwrites the other's."""

    out: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = image_files(path, IMAGE_SUFFIXES)
            for sub in ("images", "Images"):  # a dataset folder (HoVer-Net's CoNSeP: Images/)
                if not found and (path / sub).is_dir():
                    found = image_files(path / sub, IMAGE_SUFFIXES)
            ours = [p for p in found if p.suffix.lower() == ".tif" and p.stem.endswith(LABEL_TAGS)]
            if ours:  # label and class images pathseg wrote into the folder are no inputs
                log.info(
                    "note: %s: %d label / class image(s) pathseg wrote left out, e.g. %s", path, len(ours), ours[0].name
                )
                found = [p for p in found if p not in ours]
            if not found:
                below = sum(len(image_files(d, IMAGE_SUFFIXES)) for d in path.iterdir() if d.is_dir())
                hint = (
                    f"; its sub-folders hold {below}, but are not searched: name them, e.g. {path}/*/" if below else ""
                )
                raise PathsegError(f"{path}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}){hint}")
            out.extend(found)
        elif not path.exists() and str(path).split(":/")[0] in ("http", "https", "ftp", "s3", "gs"):
            raise PathsegError(f"{path}: pathseg reads local files; download it first (e.g. curl -O URL)")
        elif not path.exists() and any(c in path.name for c in "*?"):
            raise PathsegError(f"{path}: no file matches this pattern")
        else:
            out.append(path)
    unique: dict[Path, Path] = {}  # each file at its first mention
    for path in out:
        unique.setdefault(path.resolve(), path)
    stems: dict[str, Path] = {}
    for path in unique.values():
        other = stems.setdefault(output_stem(path), path)
        if other is not path:
            raise PathsegError(
                f"{other} and {path} would write their results under one name, {output_stem(path)!r}; "
                "give them separate output folders (-o) or rename one"
            )
    return list(unique.values())


def companion_file(image: Path, folder: Path | None, suffixes: tuple[str, ...]) -> Path | None:
    """The file ``<stem><suffix>`` that goes with ``image`` (its prompts, its outlines) in ``folder`` or beside the
    image; the first suffix found wins; None when there is none."""
    where = folder if folder is not None else image.parent
    for stem in dict.fromkeys((output_stem(image), Path(image.name).stem)):
        for suffix in suffixes:
            if (where / f"{stem}{suffix}").is_file():
                return where / f"{stem}{suffix}"
    return None


def output_stem(path: Path) -> str:
    name = path.name
    for double in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(double):
            return name[: -len(double)]
    return path.stem
