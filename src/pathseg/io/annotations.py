"""Label images from GeoJSON outlines: nuclei drawn or corrected in QuPath become training or evaluation masks.

Coordinates follow QuPath (and pathseg's own GeoJSON): x, y in image pixels, pixel (row r, col c) covering
[c, c+1] x [r, r+1]. A pixel belongs to a polygon when its centre lies inside it, so an outline that runs along
pixel edges (pathseg's) gives back exactly its pixels. Holes (inner rings) are left out of their object.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathseg.errors import PathsegError

#: Geometry kinds that outline an object.
POLYGONAL = ("Polygon", "MultiPolygon")


def load_features(path: str | os.PathLike) -> list:
    """The features of a GeoJSON file: a FeatureCollection, one Feature, or a bare list of features (QuPath's
    default export)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PathsegError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict):
        data = data.get("features", [data] if data.get("type") == "Feature" else None)
    if not isinstance(data, list):
        raise PathsegError(f"{path}: not a GeoJSON FeatureCollection, Feature or list of features")
    return data


def polygons(geometry: dict, name: str) -> list[list[np.ndarray]]:
    """The polygons of a Polygon / MultiPolygon geometry, each as its rings ((K, 2) x, y arrays; the first is the
    outline, the rest holes)."""
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    parts = [coords] if kind == "Polygon" else coords
    try:
        out = [[np.array([p[:2] for p in ring], dtype=np.float64).reshape(-1, 2) for ring in part] for part in parts]
    except (TypeError, ValueError, IndexError):
        raise PathsegError(f"{name}: {kind} coordinates are not numbers as GeoJSON has them") from None
    if not any(len(part) and len(part[0]) for part in out):
        raise PathsegError(f"{name}: {kind} has no coordinates")
    return out


def class_name(feature: dict) -> str | None:
    """A feature's class: QuPath's ``properties.classification.name`` (or a plain string there), else None."""
    cls = (feature.get("properties") or {}).get("classification")
    if isinstance(cls, dict):
        cls = cls.get("name")
    return str(cls) if cls not in (None, "") else None


def fill(parts: list[list[np.ndarray]], shape: tuple[int, int]) -> tuple[int, int, np.ndarray] | None:
    """(y0, x0, mask) of the pixels whose centres lie inside ``parts`` (outlines minus holes), cut to an image of
    ``shape`` (H, W); None when no pixel is inside."""
    from skimage.draw import polygon as draw_polygon

    points = np.concatenate([ring for part in parts for ring in part if len(ring)])
    x0, y0 = max(0, int(np.floor(points[:, 0].min()))), max(0, int(np.floor(points[:, 1].min())))
    x1, y1 = min(shape[1], int(np.ceil(points[:, 0].max()))), min(shape[0], int(np.ceil(points[:, 1].max())))
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for part in parts:
        for k, ring in enumerate(part):
            if len(ring) < 3:
                continue
            # pixel centres at integer coordinates in the window: (x - 0.5 - x0, y - 0.5 - y0)
            rr, cc = draw_polygon(ring[:, 1] - 0.5 - y0, ring[:, 0] - 0.5 - x0, mask.shape)
            mask[rr, cc] = k == 0  # the outline sets, a hole clears
    return (y0, x0, mask) if mask.any() else None


@dataclass
class Rasterised:
    """Label images made from one GeoJSON file."""

    labels: np.ndarray  #: (H, W) uint32, 0 = background, 1..N in the file's order
    types: np.ndarray | None  #: (H, W) uint8 class ids (0 = background or no class), with ``class_ids``
    outside: int = 0  #: polygons holding no pixel centre of the image (off the image, or without area)
    skipped: dict[str, int] = field(default_factory=dict)  #: other features left out, by what they are


def rasterise(
    path: str | os.PathLike,
    shape: tuple[int, int],
    overlap: str = "smaller",
    class_ids: dict[str, int] | None = None,
) -> Rasterised:
    """Instance labels (and, with ``class_ids``, class ids) of an image of ``shape`` (H, W) from the Polygon /
    MultiPolygon features of a GeoJSON file, one object per feature.

    ``overlap``: who keeps a pixel two outlines claim: ``"smaller"`` (the smaller object) or ``"first"`` (the
    earlier feature). ``class_ids``: class name -> id (1..255); a feature of a class not in it is an error, a
    feature without a class gets 0.
    """
    from pathseg.nuclei.interactive import paint_objects

    path = Path(path)
    objects, classes, outside, skipped = [], [], 0, {}
    for i, feature in enumerate(load_features(path)):
        geometry = (feature if isinstance(feature, dict) else {}).get("geometry") or {}
        kind = geometry.get("type")
        if kind not in POLYGONAL or not geometry.get("coordinates"):
            what = "without geometry" if kind is None else kind if kind not in POLYGONAL else f"empty {kind}"
            skipped[what] = skipped.get(what, 0) + 1
            continue
        name = f"{path.name} feature {i}"
        filled = fill(polygons(geometry, name), shape)
        if filled is None:
            outside += 1
            continue
        objects.append((*filled, len(objects) + 1))
        if class_ids is not None:
            cls = class_name(feature)
            if cls is not None and cls not in class_ids:
                raise PathsegError(f"{name}: class {cls!r} is not among {sorted(class_ids)}")
            classes.append(0 if cls is None else class_ids[cls])
    labels = paint_objects(objects, shape, overlap)
    types = None
    if class_ids is not None:
        lut = np.array([0, *classes], dtype=np.uint8)
        types = lut[labels]
    return Rasterised(labels, types, outside, skipped)


def classes_in(paths: list[Path]) -> dict[str, list[int] | None]:
    """The classes the polygon features of ``paths`` carry, sorted by name: name -> QuPath's colour ([r, g, b], the
    first one given) or None."""
    found: dict[str, list[int] | None] = {}
    for path in paths:
        for feature in load_features(path):
            geometry = (feature if isinstance(feature, dict) else {}).get("geometry") or {}
            name = class_name(feature) if geometry.get("type") in POLYGONAL else None
            if name is None:
                continue
            color = (feature.get("properties") or {}).get("classification") or {}
            color = color.get("color") if isinstance(color, dict) else None
            if found.get(name) is None:
                found[name] = [int(v) for v in color[:3]] if isinstance(color, list) else None
    return dict(sorted(found.items()))
