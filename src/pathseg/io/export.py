"""Writing results: label TIFF, QuPath GeoJSON and CSV tables. Every writer is atomic (temp file + rename)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from pathseg.io.atomic import atomic_open, atomic_path

#: Tags of the label / class images pathseg writes: ``<stem>_instances.tif`` (nuclei), ``<stem>_classes.tif``
#: (nucleus classes), ``<stem>_tissue.tif`` (tissue classes).
LABEL_TAGS = ("_instances", "_classes", "_tissue")


def write_label_tiff(path: str | os.PathLike, labels: np.ndarray, mpp: float | None = None) -> Path:
    """Write a label image as a zlib-compressed TIFF (uint32 unless given uint8/uint16).

    When ``mpp`` is given the TIFF resolution tags carry it (pixels per cm), so QuPath, napari and Fiji see the scale.
    """
    import tifffile

    labels = np.asarray(labels)
    if labels.dtype not in (np.uint8, np.uint16, np.uint32):
        labels = labels.astype(np.uint32)
    kwargs = {}
    if mpp:
        kwargs = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels, compression="zlib", photometric="minisblack", **kwargs)
    return Path(path)


def write_geojson(path: str | os.PathLike, features: Iterable[Mapping]) -> Path:
    """Stream GeoJSON features to a FeatureCollection file (never built whole in memory)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for i, feature in enumerate(features):
            if i:
                f.write(",\n")
            f.write(json.dumps(feature, separators=(",", ":")))
        f.write("\n]}\n")
    return Path(path)


def write_csv(path: str | os.PathLike, columns: Mapping[str, np.ndarray | list]) -> Path:
    """Write equal-length columns as CSV with a header row (floats with 6 significant digits)."""
    names = list(columns)
    cols = [np.asarray(columns[n]) for n in names]
    lengths = {len(c) for c in cols}
    if len(lengths) > 1:
        raise ValueError(f"columns differ in length: {dict(zip(names, map(len, cols), strict=True))}")
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(names)
        for row in zip(*cols, strict=True):
            w.writerow([f"{v:.6g}" if isinstance(v, float | np.floating) else v for v in row])
    return Path(path)
