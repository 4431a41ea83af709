"""Reading prompt files for batch interactive segmentation: points (CSV) and boxes or points (GeoJSON).

CSV: columns ``x, y`` in image pixels (or ``centroid_x_px, centroid_y_px``, as pathseg's own tables and QuPath's
pixel exports name them), optional ``label`` (1 positive, 0 negative; default 1) and ``object``
(rows with the same object id prompt one object together; default: one object per row).
GeoJSON: a FeatureCollection (e.g. QuPath annotations); every Polygon/MultiPolygon becomes a box prompt (its
bounding box), every Point a positive point prompt, and every point of a MultiPoint (QuPath's points tool) one too.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathseg.errors import PathsegError

log = logging.getLogger("pathseg")


@dataclass
class Prompt:
    """Prompts for one object: points (N, 2) x, y with labels (N,), and/or a box (x0, y0, x1, y1), in pixels."""

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    name: str = field(default="")  #: where it came from: "pts.csv line 3", "pts.csv object a", "b.geojson feature 0"


def read_prompts(path: str | os.PathLike) -> list[Prompt]:
    """Prompts from a ``.csv`` or ``.geojson``/``.json`` file (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise PathsegError(f"{path}: prompt file not found")
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    if path.suffix.lower() in (".geojson", ".json"):
        return _read_geojson(path)
    raise PathsegError(f"{path}: prompts must be a .csv of points or a .geojson of boxes/points")


def _read_csv(path: Path) -> list[Prompt]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Excel) is not a column
        text = f.read()
    try:  # commas, or the semicolons / tabs of spreadsheets set up for decimal commas
        dialect = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t")
    except csv.Error:  # one column: let the header check below say what is missing
        dialect = csv.excel
    rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    if not rows:
        raise PathsegError(f"{path}: no prompts (expected a header such as x,y and one row per point)")
    cols = {c.strip().lower(): c for c in rows[0]}
    for axis in ("x", "y"):  # pathseg's own <stem>_nuclei.csv and QuPath's pixel exports name them so
        alias = next((a for a in (f"centroid_{axis}_px", f"centroid {axis} px") if a in cols), None)
        if axis not in cols and alias:
            cols[axis] = cols[alias]
    if "x" not in cols or "y" not in cols:
        in_um = [c for c in rows[0] if "µm" in c or "_um" in c.lower()]
        hint = f"; {', '.join(in_um)} are in µm: prompts are image pixels" if in_um else ""
        raise PathsegError(f"{path}: needs columns x and y in image pixels (found {', '.join(rows[0])}){hint}")
    groups: dict[str, list[tuple[float, float, int]]] = {}
    for i, row in enumerate(rows, start=2):
        try:
            x, y = float(row[cols["x"]]), float(row[cols["y"]])
            label = int(row[cols["label"]]) if "label" in cols and row[cols["label"]] != "" else 1
        except ValueError as exc:
            raise PathsegError(f"{path}:{i}: not a number ({exc})") from None
        if label not in (0, 1):
            raise PathsegError(f"{path}:{i}: label must be 1 (positive) or 0 (negative), got {label}")
        key = f"{path.name} object {row[cols['object']]}" if "object" in cols else f"{path.name} line {i}"
        groups.setdefault(key, []).append((x, y, label))
    prompts = []
    for key, pts in groups.items():
        arr = np.array(pts, dtype=np.float64)
        if not (arr[:, 2] == 1).any():
            raise PathsegError(f"{key}: no positive point")
        prompts.append(Prompt(points=arr[:, :2], labels=arr[:, 2].astype(int), name=key))
    return prompts


def _read_geojson(path: Path) -> list[Prompt]:
    from pathseg.io.annotations import POLYGONAL, load_features, polygons

    prompts, skipped = [], {}
    for i, feat in enumerate(load_features(path)):
        geom = (feat if isinstance(feat, dict) else {}).get("geometry") or {}
        kind, coords, name = geom.get("type"), geom.get("coordinates"), f"{path.name} feature {i}"
        if kind in POLYGONAL:
            flat = np.concatenate([ring for part in polygons(geom, name) for ring in part])
            prompts.append(Prompt(box=np.array([*flat.min(0), *flat.max(0)]), name=name))
            continue
        if kind not in ("Point", "MultiPoint"):
            skipped[str(kind)] = skipped.get(str(kind), 0) + 1
            continue
        try:
            if kind == "Point":
                prompts.append(
                    Prompt(points=np.array(coords[:2], float).reshape(1, 2), labels=np.array([1]), name=name)
                )
            else:  # QuPath's points tool: one annotation, one nucleus per point
                points = np.array([c[:2] for c in coords], float).reshape(-1, 2)
                prompts += [
                    Prompt(points=pt[None], labels=np.array([1]), name=f"{name} point {k}")
                    for k, pt in enumerate(points)
                ]
        except (TypeError, ValueError, IndexError):
            raise PathsegError(f"{name}: {kind} coordinates are not numbers as GeoJSON has them") from None
    if skipped:
        log.warning(
            "%s: %s left out (prompts are Points, MultiPoints, Polygons and MultiPolygons)",
            path.name,
            ", ".join(f"{n} {kind}" for kind, n in skipped.items()),
        )
    if not prompts:
        raise PathsegError(f"{path}: no Point or Polygon features to use as prompts")
    return prompts
