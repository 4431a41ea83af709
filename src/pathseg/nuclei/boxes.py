"""Box utilities: IoU and non-maximum suppression, a mask's bounding box, boxes jittered as drawn by hand, and the
labelled nucleus whose bounding box best matches a prompt box (box prompts answered from an automatic segmentation)."""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes (N, 4) and (M, 4) given as x0, y0, x1, y1 (exclusive ends; y0, x0, y1, x1 gives the same
    IoU when both use it)."""
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def jitter_box(box: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """``box`` (x0, y0, x1, y1, px) with each edge moved by up to ``jitter`` x the box's longer side (uniform from
    ``rng``, which always advances by 4 draws; 0: the box as it is), as a hand-drawn box. Edges that would cross
    (a thin object's box moved by more than its width) are swapped, so the box stays a box."""
    box = np.asarray(box, dtype=np.float64)
    d = jitter * max(box[2] - box[0], box[3] - box[1])
    x0, y0, x1, y1 = box + rng.uniform(-d, d, 4)
    return np.array([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)])


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(boxes), dtype=bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= box_iou(boxes[i : i + 1], boxes)[0] > iou_threshold
    return np.array(keep, dtype=np.int64)


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
    found = [int(lab) for lab in np.unique(labels[b[0] : b[2], b[1] : b[3]]) if lab > 0 and objects[lab - 1]]
    if not found:
        return 0, 0.0, b
    boxes = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in (objects[lab - 1] for lab in found)])
    ious = box_iou(np.array([b]), boxes)[0]
    best = int(np.argmax(ious))
    return found[best], float(ious[best]), b
