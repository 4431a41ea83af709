"""Per-nucleus measurements and outlines from a label image."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import find_contours, regionprops_table

from pathseg.models.classical import haematoxylin

#: Columns of the per-nucleus table, in order. Units: px, µm, µm²; haematoxylin is optical density.
COLUMNS = (
    "id",
    "centroid_x_px",
    "centroid_y_px",
    "centroid_x_um",
    "centroid_y_um",
    "area_px",
    "area_um2",
    "perimeter_px",
    "perimeter_um",
    "eccentricity",
    "solidity",
    "mean_haematoxylin",
)


def measure_nuclei(labels: np.ndarray, rgb: np.ndarray, mpp: float) -> dict[str, np.ndarray]:
    """Measure every nucleus of ``labels`` (H, W) on ``rgb`` (H, W, 3) at ``mpp`` µm/px.

    Returns the columns of :data:`COLUMNS`, one row per label in increasing label order.
    """
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {rgb.shape[:2]} differ in shape")
    if not labels.any():
        return {c: np.zeros(0, dtype=np.int64 if c == "id" else np.float64) for c in COLUMNS}
    props = regionprops_table(
        labels.astype(np.int64, copy=False),
        intensity_image=haematoxylin(rgb),
        properties=("label", "centroid", "area", "perimeter", "eccentricity", "solidity", "intensity_mean"),
    )
    cy, cx = props["centroid-0"], props["centroid-1"]
    return {
        "id": props["label"].astype(np.int64),
        "centroid_x_px": cx,
        "centroid_y_px": cy,
        "centroid_x_um": cx * mpp,
        "centroid_y_um": cy * mpp,
        "area_px": props["area"].astype(np.int64),
        "area_um2": props["area"] * mpp * mpp,
        "perimeter_px": props["perimeter"],
        "perimeter_um": props["perimeter"] * mpp,
        "eccentricity": props["eccentricity"],
        "solidity": props["solidity"],
        "mean_haematoxylin": props["intensity_mean"],
    }


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Remove vertices of a closed ring (first == last) that lie on a straight run; the shape is unchanged."""
    pts = ring[:-1]
    if len(pts) < 4:
        return ring
    before = pts - np.roll(pts, 1, axis=0)
    after = np.roll(pts, -1, axis=0) - pts
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    keep = np.abs(cross) > 1e-9
    if keep.sum() < 3:
        return ring
    pts = pts[keep]
    return np.vstack([pts, pts[:1]])


def outlines(labels: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(label, ring)`` per object: its outer outline as a closed (K, 2) array of x, y in pixels.

    Coordinates follow QuPath: pixel (row r, col c) covers [c, c+1] x [r, r+1]. The outline runs half-way between
    inside and outside pixel centres (vertices on straight runs dropped). Holes are not traced.
    """
    for index, sl in enumerate(ndi.find_objects(labels)):
        if sl is None:
            continue
        lab = index + 1
        crop = np.pad(labels[sl] == lab, 1).astype(np.float32)
        contours = find_contours(crop, 0.5)
        if not contours:
            continue
        ring = _drop_collinear(max(contours, key=len))
        xy = np.stack([ring[:, 1] + sl[1].start - 0.5, ring[:, 0] + sl[0].start - 0.5], axis=1)
        if not np.array_equal(xy[0], xy[-1]):
            xy = np.vstack([xy, xy[:1]])
        yield lab, xy


def geojson_features(labels: np.ndarray, table: dict[str, np.ndarray], namespace: str = "pathseg") -> Iterator[dict]:
    """QuPath detection features, one Polygon per nucleus, with the table's measurements.

    ``properties.label`` is the integer id of the nucleus in the label image; the feature ``id`` is a UUID derived
    from ``namespace`` and that label (stable across runs), as QuPath expects.
    """
    index = {int(i): k for k, i in enumerate(table["id"])}
    names = [c for c in COLUMNS if c != "id"]
    ns = uuid.uuid5(uuid.NAMESPACE_URL, namespace)
    for lab, ring in outlines(labels):
        k = index.get(lab)
        measurements = {"label": lab}
        if k is not None:
            measurements.update({n: round(float(table[n][k]), 4) for n in names})
        yield {
            "type": "Feature",
            "id": str(uuid.uuid5(ns, str(lab))),
            "geometry": {"type": "Polygon", "coordinates": [np.round(ring, 2).tolist()]},
            "properties": {
                "objectType": "detection",
                "label": lab,
                "name": f"nucleus {lab}",
                "measurements": measurements,
            },
        }
