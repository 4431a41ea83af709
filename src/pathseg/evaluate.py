"""Scoring folders of predictions against folders of ground truth, matched by file stem."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pathseg.errors import PathsegError
from pathseg.io.images import read_labels
from pathseg.metrics import instance_scores
from pathseg.progress import track

LABEL_SUFFIXES = {".png", ".tif", ".tiff"}
#: Suffixes pathseg adds to output stems; stripped when matching a prediction to its ground truth.
OUTPUT_TAGS = ("_instances", "_labels", "_classes")


def _stem(path: Path) -> str:
    stem = path.name
    for ext in (".ome.tiff", ".ome.tif", path.suffix):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    for tag in OUTPUT_TAGS:
        if stem.endswith(tag):
            return stem[: -len(tag)]
    return stem


def _label_files(folder: Path, subfolder: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise PathsegError(f"{folder}: not a folder")
    if (folder / subfolder).is_dir():
        folder = folder / subfolder
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES and not p.name.startswith("."):
            files.setdefault(_stem(p), p)
    return files


def match_folders(pred: Path, gt: Path, subfolder: str = "instance_masks") -> list[tuple[str, Path, Path]]:
    """Pairs (stem, prediction, ground truth) matched by stem. Errors if nothing matches or a prediction is missing."""
    preds = _label_files(pred, subfolder)
    gts = _label_files(gt, subfolder)
    common = sorted(set(preds) & set(gts))
    if not common:
        raise PathsegError(
            f"no prediction in {pred} matches a ground truth in {gt} by file stem "
            f"(e.g. prediction {next(iter(preds), 'none')!r}, ground truth {next(iter(gts), 'none')!r})"
        )
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise PathsegError(
            f"{len(missing)} ground-truth image(s) have no prediction in {pred}: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    return [(s, preds[s], gts[s]) for s in common]


def evaluate_instance_folders(pred: Path, gt: Path, quiet: bool = False) -> tuple[list[dict], dict]:
    """Instance metrics per matched image and their mean over images."""
    rows = []
    pairs = match_folders(pred, gt)
    for stem, p, g in track(pairs, total=len(pairs), desc="scoring", quiet=quiet):
        pl, gl = read_labels(p), read_labels(g)
        if pl.shape != gl.shape:
            raise PathsegError(f"{p}: shape {pl.shape} differs from ground truth {g} {gl.shape}")
        rows.append({"image": stem, **instance_scores(gl, pl)})
    keys = [k for k in rows[0] if k != "image"]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return rows, mean
