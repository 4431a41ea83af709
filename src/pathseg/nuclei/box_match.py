"""Box prompts answered from an automatic segmentation: the nucleus whose bounding box best matches the box."""

from __future__ import annotations

import numpy as np


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two boxes (y0, x0, y1, x1), pixel edges."""
    ih = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_pixels(box: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box`` (x0, y0, x1, y1, image pixels) as whole pixels (y0, x0, y1, x1), grown to whole pixels and clipped
    to an image of ``shape`` (H, W)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = shape
    return (max(int(np.floor(y0)), 0), max(int(np.floor(x0)), 0), min(int(np.ceil(y1)), h), min(int(np.ceil(x1)), w))


def mask_box(mask: np.ndarray, window: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Bounding box (y0, x0, y1, x1, image pixels) of ``mask`` (h, w) held at ``window``'s corner; empty: (0,)*4."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if len(ys) == 0:
        return (0, 0, 0, 0)
    return (window[0] + ys[0], window[1] + xs[0], window[0] + ys[-1] + 1, window[1] + xs[-1] + 1)


def matching_nucleus(
    labels: np.ndarray, objects: list[tuple[slice, slice] | None], box: np.ndarray
) -> tuple[int, float, tuple[int, int, int, int]]:
    """The label in ``labels`` (H, W) whose bounding box (``objects``, from ``scipy.ndimage.find_objects``) has
    the highest IoU with ``box`` (x0, y0, x1, y1, image pixels), among the labels inside the box; with that IoU and
    the box as integer (y0, x0, y1, x1) clipped to the image. (0, 0.0, box) when no nucleus lies in the box."""
    b = box_pixels(box, labels.shape)
    if b[2] <= b[0] or b[3] <= b[1]:
        return 0, 0.0, b
    best, best_iou = 0, 0.0
    for lab in np.unique(labels[b[0] : b[2], b[1] : b[3]]):
        sl = objects[lab - 1] if lab > 0 else None
        if sl is None:
            continue
        v = box_iou(b, (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop))
        if v > best_iou:
            best, best_iou = int(lab), v
    return best, best_iou, b
