"""Prompt simulation for training the prompt encoder and mask decoder (the micro-sam recipe, CPU-sized).

Per object: a first prompt (one positive point with multimask output, or a box with a single output,
alternating), then ``n_corrections`` corrective rounds: a point sampled from the error region (positive in a
missed part, negative in a false part) added to the prompts, and the previous logits fed back as a mask prompt
with probability 0.5. Loss per round: Dice of the best of the candidate masks + MSE of the predicted IoU. With
``box_candidates`` (models whose predictor fits a box's 3 candidates to the box, ``box_fit``) a first box is answered
with 3 candidates too, and all of them learn.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pathseg.errors import PathsegError
from pathseg.models.sam.sam import Sam
from pathseg.nuclei.boxes import jitter_box, mask_box


def sample_objects(labels: torch.Tensor, per_image: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(batch index, label) of up to ``per_image`` random objects of each image of (B, H, W) labels."""
    picks = []
    for b in range(labels.shape[0]):
        ids = torch.unique(labels[b])
        ids = ids[ids > 0].numpy()
        if ids.size:
            for lab in rng.choice(ids, size=min(per_image, ids.size), replace=False):
                picks.append((b, int(lab)))
    return picks


def _random_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float] | None:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    i = rng.integers(ys.size)
    return float(xs[i]), float(ys[i])


def _box(mask: np.ndarray, rng: np.random.Generator, jitter: float = 0.05) -> list[float]:
    """The mask's bounding box (x0, y0, x1, y1; x1, y1 exclusive), each edge moved by up to ``jitter`` x its longer
    side (uniform; 0: the exact box, as the interactive benchmark prompts)."""
    y0, x0, y1, x1 = mask_box(mask, (0, 0, 0, 0))
    return jitter_box(np.array([x0, y0, x1, y1]), jitter, rng).tolist()


def check_box_jitter(jitter: float) -> None:
    """Stop a training run whose box jitter (a fraction of the box's longer side) is outside [0, 0.5)."""
    if not 0 <= jitter < 0.5:
        raise PathsegError(f"box jitter must be in [0, 0.5) (of the box's longer side), got {jitter}")


def first_prompts(
    masks: list[np.ndarray] | np.ndarray, rng: np.random.Generator, use_box: bool, box_jitter: float = 0.05
) -> tuple[list[list[tuple[float, float]]], list[list[int]], torch.Tensor | None]:
    """The first prompt of each object mask: a box ((N, 4) x0, y0, x1, y1, jittered by ``box_jitter``, see
    :func:`_box`) or one random positive point. Returns (points per object, their labels, boxes or None); corrective
    points are appended to the lists."""
    points: list[list[tuple[float, float]]] = [[] for _ in masks]
    point_labels: list[list[int]] = [[] for _ in masks]
    if use_box:
        return points, point_labels, torch.tensor([_box(m, rng, box_jitter) for m in masks], dtype=torch.float32)
    for i, m in enumerate(masks):
        points[i].append(_random_point(m, rng))
        point_labels[i].append(1)
    return points, point_labels, None


def add_corrective_points(
    masks: list[np.ndarray] | np.ndarray,
    predicted: list[np.ndarray] | np.ndarray,
    points: list[list],
    point_labels: list[list],
    rng: np.random.Generator,
) -> None:
    """Append one corrective point per object to ``points`` / ``point_labels``: in the larger error of its
    ``predicted`` mask against its true one (positive in missed pixels, negative in false ones), or anywhere on the
    object when the prediction is exact."""
    for i, m in enumerate(masks):
        fn, fp = m & ~predicted[i], ~m & predicted[i]
        take_fn = fn.sum() >= fp.sum()
        points[i].append(_random_point(fn if take_fn else fp, rng) or _random_point(m, rng))
        point_labels[i].append(1 if take_fn else 0)


def first_outputs(use_box: bool, box_candidates: bool) -> tuple[bool, bool]:
    """(multimask, every) for a first prompt: a point gets 3 candidates (the best learns); a box gets the single mask,
    or with ``box_candidates`` 3 candidates that all learn (``every``). Later rounds: (False, False)."""
    every = use_box and box_candidates
    return not use_box or every, every


def prompt_loss(
    sam: Sam,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    rng: np.random.Generator,
    per_image: int = 4,
    n_corrections: int = 2,
    step: int = 0,
    box_candidates: bool = False,
    box_jitter: float = 0.05,
) -> torch.Tensor:
    """Interactive-segmentation loss over simulated prompts for objects of ``labels`` (B, H, W).

    ``embeddings`` (B, C, h, w) are the encoder outputs of the same (normalised, unpadded) crops; boxes are jittered
    by ``box_jitter`` (see :func:`first_prompts`).
    """
    picks = sample_objects(labels, per_image, rng)
    if not picks:
        return embeddings.sum() * 0.0
    h, w = labels.shape[-2:]
    low_h, low_w = embeddings.shape[-2] * 4, embeddings.shape[-1] * 4
    gt = torch.stack([(labels[b] == lab).float() for b, lab in picks])[:, None]  # (N, 1, H, W)
    gt_low = F.interpolate(gt, (low_h, low_w), mode="area")
    emb = embeddings[[b for b, _ in picks]]
    masks_np = gt[:, 0].numpy().astype(bool)
    use_box = step % 2 == 1
    points, point_labels, boxes = first_prompts(masks_np, rng, use_box, box_jitter)
    total = embeddings.sum() * 0.0
    mask_input = None
    multimask, every = first_outputs(use_box, box_candidates)
    for round_ in range(n_corrections + 1):
        pts = None
        if points[0]:
            pts = (torch.tensor(points, dtype=torch.float32), torch.tensor(point_labels, dtype=torch.float32))
        low, iou_pred = sam.decode(emb, pts, boxes, mask_input, multimask_output=multimask)
        prob = torch.sigmoid(low)
        # Dice per candidate; the best candidate of each object counts (as micro-sam)
        dims = (2, 3)
        inter = (prob * gt_low).sum(dims)
        dice = 1 - (2 * inter + 1e-6) / ((prob * prob).sum(dims) + (gt_low * gt_low).sum(dims) + 1e-6)
        best = dice.argmin(dim=1)
        total = total + (dice.mean() if every else dice.gather(1, best[:, None]).mean())
        with torch.no_grad():
            hard = (low > 0).float()
            true_iou = (hard * gt_low).sum(dims) / ((hard + gt_low) > 0).float().sum(dims).clamp_min(1)
        total = total + F.mse_loss(iou_pred, true_iou)
        if round_ == n_corrections:
            break
        # corrective point from the error of the best candidate, at full crop resolution
        chosen = low[torch.arange(low.shape[0]), best][:, None]
        pred_full = (F.interpolate(chosen.detach(), (h, w), mode="bilinear", align_corners=False) > 0)[:, 0].numpy()
        add_corrective_points(masks_np, pred_full, points, point_labels, rng)
        mask_input = chosen.detach() if rng.random() < 0.5 else None
        multimask = every = False
    return total / (n_corrections + 1)
