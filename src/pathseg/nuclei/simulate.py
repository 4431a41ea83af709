"""Prompts simulated from ground-truth nuclei, as PathoSAM evaluates interactive segmentation.

Per object: (1) one positive point at its innermost pixel, (2) one box (its bounding box), (3) the point followed
by corrective rounds (a point in the largest error region, positive in a missed part / negative in a false part,
with the previous logits fed back). The objects' masks are composed into one label image per prompt kind as
PathoSAM's evaluation does (largest first, a smaller mask winning the pixels it shares with a larger one), to be
scored with instance metrics (mSA) against the ground truth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from pathseg.nuclei.boxes import jitter_box
from pathseg.nuclei.interactive import Prediction, Predictor, check_overlap, paint_objects

KINDS = ("point", "box", "corrected")


def innermost(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the pixel farthest from the mask's border (computed on the mask's bounding box)."""
    ys, xs = np.nonzero(mask)
    y0, x0 = ys.min(), xs.min()
    crop = mask[y0 : ys.max() + 1, x0 : xs.max() + 1]
    d = ndi.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(d), d.shape)
    return float(x + x0), float(y + y0)


def corrective_point(
    obj_box: tuple[int, int, int, int], obj: np.ndarray, pred: Prediction
) -> tuple[float, float, int] | None:
    """A point (x, y, label) in the largest error region between ``obj`` and mask 0 of ``pred``, computed on the
    union of their bounding boxes; label 1 in a missed part, 0 in a false part; None when there is no error."""
    py0, px0, py1, px1 = pred.window
    oy0, ox0, oy1, ox1 = obj_box
    y0, x0, y1, x1 = min(py0, oy0), min(px0, ox0), max(py1, oy1), max(px1, ox1)
    gt = obj[y0:y1, x0:x1]
    pm = np.zeros_like(gt)
    pm[py0 - y0 : py1 - y0, px0 - x0 : px1 - x0] = pred.window_masks[0]
    fn, fp = gt & ~pm, ~gt & pm
    err, label = (fn, 1) if fn.sum() >= fp.sum() else (fp, 0)
    if not err.any():
        return None
    comp, n = ndi.label(err)
    biggest = 1 + int(np.argmax(ndi.sum(err, comp, range(1, n + 1))))
    x, y = innermost(comp == biggest)
    return x + x0, y + y0, label


def simulate_prompts(
    pred: Predictor,
    gt: np.ndarray,
    corrections: int = 8,
    kinds: tuple[str, ...] = KINDS,
    margin: int = 64,
    overlap: str = "smaller",
) -> dict[str, np.ndarray]:
    """Label images (one per prompt kind in ``kinds``) from prompts simulated for every object of ``gt``
    (:func:`prompt_objects`), composed by :func:`~pathseg.nuclei.interactive.paint_objects` with ``overlap``
    ("smaller": as PathoSAM; "first": in object order, the earlier object keeps a shared pixel)."""
    check_overlap(overlap)  # before any prompt runs
    objects = prompt_objects(pred, gt, corrections, kinds, margin)
    return {k: paint_objects(objs, gt.shape, overlap) for k, objs in objects.items()}


def prompt_objects(
    pred: Predictor,
    gt: np.ndarray,
    corrections: int = 8,
    kinds: tuple[str, ...] = KINDS,
    margin: int = 64,
    box_jitter: float = 0.0,
    seed: int = 0,
) -> dict[str, list[tuple[int, int, np.ndarray, int]]]:
    """Per prompt kind in ``kinds``, the mask each object of ``gt`` gets from its simulated prompts, as objects
    (y0, x0, mask, label) for :func:`~pathseg.nuclei.interactive.paint_objects`.

    ``pred`` holds the embedded image (same pixels as ``gt``); errors further than ``margin`` px from an object's
    box are not looked at by the corrective rounds. With one point the candidate of highest predicted IoU is used.
    A box is the object's bounding box, or with ``box_jitter`` > 0 (a hand-drawn box) each edge moved by up to that
    fraction of the box's longer side (uniform, drawn from ``seed``: every model gets the same boxes).
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown prompt kinds {sorted(unknown)}; use {', '.join(KINDS)}")
    if not 0 <= box_jitter < 0.5:
        raise ValueError(f"box_jitter must be in [0, 0.5) (of the box's longer side), got {box_jitter}")
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {k: [] for k in kinds}
    for lab, sl in enumerate(ndi.find_objects(gt), start=1):
        if sl is None:
            continue
        y0, x0 = max(sl[0].start - margin, 0), max(sl[1].start - margin, 0)
        y1, x1 = min(sl[0].stop + margin, gt.shape[0]), min(sl[1].stop + margin, gt.shape[1])
        obj = np.zeros(gt.shape, bool)
        obj[y0:y1, x0:x1] = gt[y0:y1, x0:x1] == lab
        x, y = innermost(obj[y0:y1, x0:x1])
        x, y = x + x0, y + y0
        if "box" in out:
            box = jitter_box(np.array([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop]), box_jitter, rng)
            out["box"].append(pred.predict(box=box, multimask=False).object(0, lab))
        if "point" not in out and "corrected" not in out:
            continue
        r = pred.predict(points=np.array([[x, y]]), labels=np.array([1]))
        best = int(np.argmax(r.iou))
        if "point" in out:
            out["point"].append(r.object(best, lab))
        if "corrected" not in out:
            continue
        pts, lbl = [[x, y]], [1]
        current = r
        current.window_masks = r.window_masks[best : best + 1]
        prompt = r.mask_prompt(best)
        for _ in range(corrections):
            c = corrective_point((y0, x0, y1, x1), obj, current)
            if c is None:
                break
            pts.append([c[0], c[1]])
            lbl.append(c[2])
            current = pred.predict(points=np.array(pts), labels=np.array(lbl), mask_input=prompt, multimask=False)
            prompt = current.mask_prompt(0)
        out["corrected"].append(current.object(0, lab))
    return out
