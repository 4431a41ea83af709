"""Tissue outputs: class regions as QuPath annotations (GeoJSON polygons with holes) and a per-class area table."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np

from pathseg.nuclei.measure import edge_contours, edge_ring


def _rings(mask: np.ndarray) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(outer ring, holes) per connected region of a boolean mask; rings closed, x/y along pixel edges."""
    import cv2

    contours, hierarchy = edge_contours(mask, cv2.RETR_CCOMP)
    out = []
    for i, c in enumerate(contours):
        if hierarchy[0][i][3] != -1:  # a hole: added to its parent
            continue
        holes, child = [], hierarchy[0][i][2]
        while child != -1:
            r = edge_ring(contours[child])
            if len(r) >= 4:
                holes.append(r)
            child = hierarchy[0][child][0]
        r = edge_ring(c)
        if len(r) >= 4:
            out.append((r, holes))
    return out


def class_region_features(
    classes: np.ndarray,
    names: list[dict],
    mpp: float,
    namespace: str = "pathseg",
    min_area_um2: float = 0.0,
    skip: tuple[int, ...] = (0,),
    scale: float = 1.0,
) -> Iterator[dict]:
    """QuPath annotations, one Polygon per connected region of each class (``skip``: classes left out, by default
    the background); ``names`` = [{"name", "color"}] per class id; ``mpp`` µm per pixel of ``classes``.
    Coordinates are multiplied by ``scale`` (e.g. level-0 pixels per pixel of ``classes``). Measurements: area
    in pixels of ``classes`` and in µm²."""
    ns = uuid.uuid5(uuid.NAMESPACE_URL, namespace)
    n = 0
    for k, named in enumerate(names):
        if k in skip:
            continue
        mask = classes == k
        if not mask.any():
            continue
        for outer, holes in _rings(mask):
            area = _area(outer) - sum(_area(h) for h in holes)
            if area * mpp * mpp < min_area_um2:
                continue
            n += 1
            yield {
                "type": "Feature",
                "id": str(uuid.uuid5(ns, f"{k}/{n}")),
                "geometry": {"type": "Polygon", "coordinates": [(r * scale).tolist() for r in (outer, *holes)]},
                "properties": {
                    "objectType": "annotation",
                    "name": named["name"],
                    "classification": {"name": named["name"], "color": list(named["color"])},
                    "measurements": {"area_px": float(area), "area_um2": round(float(area * mpp * mpp), 3)},
                },
            }


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))) / 2


def class_areas(counts: np.ndarray, names: list[dict], mpp: float) -> dict[str, list]:
    """Per-class pixel count, area (µm², mm²) and fraction of the analysed pixels, from pixel ``counts`` per class
    id (e.g. ``np.bincount(classes.ravel(), minlength=len(names))``) at ``mpp`` µm/px."""
    counts = np.asarray(counts)[: len(names)]
    total = max(int(counts.sum()), 1)
    return {
        "class_id": list(range(len(names))),
        "class": [c["name"] for c in names],
        "pixels": counts.tolist(),
        "area_um2": (counts * mpp * mpp).tolist(),
        "area_mm2": (counts * mpp * mpp / 1e6).tolist(),
        "fraction": (counts / total).tolist(),
    }
