"""Per-nucleus measurements and outlines from a label image."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import find_contours

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


_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2


def _border_and_perimeter(lab: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Border pixels of every object (4-connectivity) and each object's perimeter, computed for all objects at
    once with the weighting of :func:`skimage.measure.perimeter` (identical values)."""
    h, w = lab.shape
    pad = np.pad(lab, 1, constant_values=-1)
    centre = pad[1:-1, 1:-1]
    interior = centre > 0
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        interior &= pad[1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx] == centre
    border = (centre > 0) & ~interior
    bpad = np.pad(border, 1)
    value = border.astype(np.int64)
    for dy, dx, weight in (
        (-1, -1, 10),
        (-1, 0, 2),
        (-1, 1, 10),
        (0, -1, 2),
        (0, 1, 2),
        (1, -1, 10),
        (1, 0, 2),
        (1, 1, 10),
    ):
        same = (pad[1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx] == centre) & bpad[
            1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx
        ]
        value += weight * (same & border)
    perimeter = np.bincount(lab[border], weights=_PERIMETER_WEIGHTS[value[border]], minlength=n + 1)
    return border, perimeter


def _hull_areas(lab: np.ndarray, border: np.ndarray, n: int) -> np.ndarray:
    """Area (px²) of the convex hull of each object's pixel squares (from its border pixels' corners)."""
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = np.nonzero(border)
    ids = lab[ys, xs]
    order = np.argsort(ids, kind="stable")
    ys, xs, ids = ys[order], xs[order], ids[order]
    starts = np.searchsorted(ids, np.arange(n + 2))
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    hull = np.zeros(n + 1)
    for i in range(1, n + 1):
        a, b = starts[i], starts[i + 1]
        if b == a:
            continue
        pts = (np.stack([ys[a:b], xs[a:b]], 1)[:, None, :] + corners[None]).reshape(-1, 2)
        try:
            hull[i] = ConvexHull(pts).volume
        except QhullError:  # degenerate (a line of pixels): its squares are its hull
            hull[i] = b - a
    return hull


def measure_nuclei(labels: np.ndarray, rgb: np.ndarray, mpp: float) -> dict[str, np.ndarray]:
    """Measure every nucleus of ``labels`` (H, W) on ``rgb`` (H, W, 3) at ``mpp`` µm/px.

    Returns the columns of :data:`COLUMNS`, one row per label in increasing label order. All measurements are
    computed for all nuclei at once (``np.bincount``): area, centroid, eccentricity and perimeter equal
    scikit-image's regionprops; solidity is the area over the area of the convex hull of the pixel squares.
    """
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {rgb.shape[:2]} differ in shape")
    if not labels.any():
        return {c: np.zeros(0, dtype=np.int64 if c == "id" else np.float64) for c in COLUMNS}
    lab = np.asarray(labels).astype(np.int64)
    ids = np.unique(lab)
    ids = ids[ids > 0]
    if ids[-1] > 4 * lab.size:  # sparse huge ids: renumber for the bincounts
        lab = np.searchsorted(np.concatenate([[0], ids]), lab)
        keys = np.arange(1, ids.size + 1)
    else:
        keys = ids
    n = int(lab.max())
    lab = lab.astype(np.int32) if n < 2**31 - 1 else lab
    flat = lab.ravel()
    h, w = lab.shape
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    safe = np.maximum(area, 1)
    # raw moments from row/column indices, then central moments: no per-pixel centred arrays
    y = np.repeat(np.arange(h, dtype=np.float64), w)
    x = np.tile(np.arange(w, dtype=np.float64), h)
    sy = np.bincount(flat, y, n + 1)
    sx = np.bincount(flat, x, n + 1)
    cy, cx = sy / safe, sx / safe
    mu_yy = np.bincount(flat, y * y, n + 1) / safe - cy * cy
    mu_xx = np.bincount(flat, x * x, n + 1) / safe - cx * cx
    mu_xy = np.bincount(flat, x * y, n + 1) / safe - cx * cy
    mu_yy, mu_xx = np.maximum(mu_yy, 0), np.maximum(mu_xx, 0)
    half = (mu_yy + mu_xx) / 2
    root = np.sqrt(((mu_yy - mu_xx) / 2) ** 2 + mu_xy**2)
    l1, l2 = half + root, half - root
    ecc = np.where(l1 > 1e-12, np.sqrt(np.clip(1 - l2 / np.where(l1 > 1e-12, l1, 1), 0, 1)), 0.0)
    border, perimeter = _border_and_perimeter(lab, n)
    hull = _hull_areas(lab, border, n)
    solidity = np.where(hull > 0, area / np.maximum(hull, 1e-9), 1.0)
    mean_h = np.bincount(flat, haematoxylin(rgb).ravel().astype(np.float64), n + 1) / safe
    return {
        "id": ids.astype(np.int64),
        "centroid_x_px": cx[keys],
        "centroid_y_px": cy[keys],
        "centroid_x_um": cx[keys] * mpp,
        "centroid_y_um": cy[keys] * mpp,
        "area_px": area[keys].astype(np.int64),
        "area_um2": area[keys] * mpp * mpp,
        "perimeter_px": perimeter[keys],
        "perimeter_um": perimeter[keys] * mpp,
        "eccentricity": ecc[keys],
        "solidity": solidity[keys],
        "mean_haematoxylin": mean_h[keys],
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


def geojson_features(
    labels: np.ndarray,
    table: dict[str, np.ndarray],
    namespace: str = "pathseg",
    classification: dict[int, dict] | None = None,
) -> Iterator[dict]:
    """QuPath detection features, one Polygon per nucleus, with the table's measurements.

    ``properties.label`` is the integer id of the nucleus in the label image; the feature ``id`` is a UUID derived
    from ``namespace`` and that label (stable across runs), as QuPath expects. ``classification`` maps labels to
    QuPath classifications ``{"name": ..., "color": [r, g, b]}``.
    """
    index = {int(i): k for k, i in enumerate(table["id"])}
    names = [c for c in COLUMNS if c != "id"]
    ns = uuid.uuid5(uuid.NAMESPACE_URL, namespace)
    for lab, ring in outlines(labels):
        k = index.get(lab)
        measurements = {"label": lab}
        if k is not None:
            measurements.update({n: round(float(table[n][k]), 4) for n in names})
        feature = {
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
        if classification is not None and lab in classification:
            feature["properties"]["classification"] = classification[lab]
        yield feature
