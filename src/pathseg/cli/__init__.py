"""The ``pathseg`` command. It parses arguments, calls :mod:`pathseg.api` and prints; the logic lives elsewhere.

One module per command family: :mod:`.nuclei`, :mod:`.tissue`, :mod:`.evaluate`, :mod:`.masks`, :mod:`.models`,
:mod:`.slides` (``wsi``, ``demo``) and :mod:`.train` (``train``, ``pretrain``); shared helpers in :mod:`._common`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pathseg import __version__
from pathseg.allocator import tune_allocator
from pathseg.cli import evaluate, masks, models, nuclei, slides, tissue, train
from pathseg.cli._common import check_output_file, check_output_folder, expand_inputs, log, output_stem
from pathseg.errors import PathsegError

__all__ = ["build_parser", "expand_inputs", "main", "output_stem"]

EPILOG = """examples:
  pathseg demo                                  fetch a real slide and segment its nuclei
  pathseg nuclei tiles/*.png -o out/            label TIFF + QuPath GeoJSON + CSV per image
  pathseg nuclei slide.svs -o out/ --mpp 0.5    pixel size when the file carries none
  pathseg evaluate nuclei --pred out/ --gt masks/ --json scores.json
  pathseg masks tiles/ --geojson qupath/ -o data/   training masks from QuPath outlines
  pathseg tissue glas/*.png -o out/ --model run/best   class map + QuPath annotations + areas
  pathseg models list
"""


class _Version(argparse.Action):
    """``--version``: what a bug report needs, the devices a ``--device`` can name included."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def version_text() -> str:
    """``pathseg X (Python Y, torch Z; devices: cpu, cuda:0 NAME ...)``."""
    import platform

    import torch

    devices = ["cpu"] + [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return (
        f"pathseg {__version__} (Python {platform.python_version()}, torch {torch.__version__}; "
        f"devices: {', '.join(devices)})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pathseg",
        description="Segmentation for computational pathology (H&E): nuclei, tissue, whole slides.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="show pathseg's, Python's and PyTorch's versions and the devices"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars or notes (warnings and errors still print)"
    )
    common.add_argument("-v", "--verbose", action="store_true", help="print debugging details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    nuclei.add_parser(sub, common)
    tissue.add_parser(sub, common)
    evaluate.add_parser(sub, common)
    masks.add_parser(sub, common)
    models.add_parser(sub, common)
    slides.add_wsi_parser(sub, common)
    train.add_train_parser(sub, common)
    train.add_pretrain_parser(sub, common)
    slides.add_demo_parser(sub, common)
    return parser


class _StderrHandler(logging.Handler):
    """Writes records to whatever ``sys.stderr`` is at the time (so redirection and test capture work)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    tune_allocator()  # large blocks reused, not re-mapped every network pass (pathseg.allocator)
    try:
        if getattr(args, "output", None) is not None:  # every -o is a folder
            check_output_folder(Path(args.output))
        if getattr(args, "json", None) is not None:  # every --json is a file
            check_output_file(Path(args.json), "--json")
        return int(args.func(args) or 0)
    except PathsegError as exc:
        print(f"pathseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pathseg: interrupted", file=sys.stderr)
        return 130
