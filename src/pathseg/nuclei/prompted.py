"""Prompt-based automatic modes: AMG (SAM's grid of point prompts) and APG (point prompts at AIS seed centres).

Both split an expensive ``initialize`` (embeddings; for AMG also every grid mask) from a cheap ``generate``
(filtering, NMS, painting the label image) so thresholds can be tuned without re-running the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from pathseg.nuclei.automatic import AISParams
from pathseg.nuclei.boxes import box_nms
from pathseg.nuclei.interactive import Predictor, paint_objects
from pathseg.progress import ProgressCallback


def stability_score(logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """IoU of the masks thresholded at ``threshold + offset`` and ``threshold - offset`` (SAM's definition)."""
    inter = (logits > threshold + offset).flatten(-2).sum(-1).float()
    union = (logits > threshold - offset).flatten(-2).sum(-1).float()
    return inter / union.clamp_min(1)


@dataclass
class Candidate:
    """A predicted object: its mask cropped to ``box`` (x0, y0, x1, y1 in image pixels) and scores."""

    box: np.ndarray
    mask: np.ndarray
    iou: float
    stability: float

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @classmethod
    def from_mask(cls, mask: np.ndarray, y0: int, x0: int, iou: float, stability: float) -> Candidate | None:
        """The object of ``mask`` (a window whose top-left pixel is (y0, x0)), cropped to its bounding box; None
        if the mask is empty."""
        if not mask.any():
            return None
        ys, xs = np.nonzero(mask)
        by0, by1, bx0, bx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        box = np.array([bx0 + x0, by0 + y0, bx1 + x0, by1 + y0])
        return cls(box, mask[by0:by1, bx0:bx1], float(iou), float(stability))


def paint(candidates: list[Candidate], shape: tuple[int, int], min_size: int = 0) -> np.ndarray:
    """Label image: larger objects painted first so that smaller ones stay visible on top (as micro-sam)."""
    keep = [c for c in sorted(candidates, key=lambda c: -c.area) if c.area >= min_size]
    labels = paint_objects([(int(c.box[1]), int(c.box[0]), c.mask, i) for i, c in enumerate(keep, 1)], shape)
    ids, sizes = np.unique(labels, return_counts=True)
    small = ids[(sizes < max(min_size, 1)) & (ids > 0)]
    if small.size:
        labels[np.isin(labels, small)] = 0
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.uint32)


def _candidates(
    predictor: Predictor, tile_index: int, points: np.ndarray, multimask: bool, batch: int = 64
) -> list[Candidate]:
    """Decode one positive point per prompt (work pixels) on one tile's embedding (compact models: on the part of
    it around each point that their prompt path was trained on, see ``prompt_window``)."""
    tile = predictor.tiles[tile_index]
    ty0, tx0, ty1, tx1 = tile.outer
    model = predictor.model
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for i, (px, py) in enumerate(points):
        groups.setdefault(model.prompt_window((px - tx0, py - ty0), ty1 - ty0, tx1 - tx0), []).append(i)
    out: list[Candidate] = []
    for (sy0, sx0, sy1, sx1), members in groups.items():
        y0, x0, h, w = ty0 + sy0, tx0 + sx0, sy1 - sy0, sx1 - sx0
        emb = predictor.embeddings[tile_index][None, :, sy0 // 16 : -(-sy1 // 16), sx0 // 16 : -(-sx1 // 16)]
        scale = model.prompt_scale(h, w)
        for start in range(0, len(members), batch):
            pts = points[members[start : start + batch]]
            out += _decode_points(model, emb, pts, (y0, x0, h, w), scale, multimask)
    return out


def _decode_points(model, emb, pts, window, scale, multimask) -> list[Candidate]:
    y0, x0, h, w = window
    coords = torch.tensor((pts - [x0, y0]) * scale, dtype=torch.float32, device=emb.device)[:, None, :]
    labels = torch.ones(len(pts), 1, device=emb.device)
    with torch.inference_mode():
        low, iou = model.sam.decode(emb, (coords, labels), None, None, multimask_output=multimask)
        logits = model.window_logits(low, h, w)
        stab = stability_score(logits, model.sam.mask_threshold)
    masks = (logits > model.sam.mask_threshold).cpu().numpy()
    iou, stab = iou.float().cpu().numpy(), stab.cpu().numpy()
    found = (
        Candidate.from_mask(masks[i, k], y0, x0, iou[i, k], stab[i, k])
        for i in range(masks.shape[0])
        for k in range(masks.shape[1])
    )
    return [c for c in found if c is not None]


def _to_image_scale(c: Candidate, factor: float, shape: tuple[int, int]) -> Candidate:
    """Candidate in work pixels -> image pixels (nearest resampling of its mask)."""
    if abs(factor - 1) < 1e-3:
        return c
    x0, y0, x1, y1 = c.box
    ix0, iy0 = int(np.floor(x0 / factor)), int(np.floor(y0 / factor))
    ix1, iy1 = min(int(np.ceil(x1 / factor)), shape[1]), min(int(np.ceil(y1 / factor)), shape[0])
    yy = np.clip(((np.arange(iy0, iy1) + 0.5) * factor - y0).astype(int), 0, c.mask.shape[0] - 1)
    xx = np.clip(((np.arange(ix0, ix1) + 0.5) * factor - x0).astype(int), 0, c.mask.shape[1] - 1)
    return Candidate(np.array([ix0, iy0, ix1, iy1]), c.mask[np.ix_(yy, xx)], c.iou, c.stability)


class AutomaticMaskGenerator:
    """SAM's AMG: a grid of ``points_per_side``² positive points per tile, multimask output, then filtering."""

    def __init__(self, predictor: Predictor, points_per_side: int = 32) -> None:
        self.predictor = predictor
        self.points_per_side = points_per_side
        self.candidates: list[Candidate] = []

    def initialize(self, rgb: np.ndarray, mpp: float | None = None, progress: ProgressCallback | None = None) -> None:
        p = self.predictor
        p.set_image(rgb, mpp)
        self.candidates = []
        n = self.points_per_side
        for i, tile in enumerate(p.tiles):
            y0, x0, y1, x1 = tile.inner
            gy = y0 + (np.arange(n) + 0.5) * (y1 - y0) / n
            gx = x0 + (np.arange(n) + 0.5) * (x1 - x0) / n
            pts = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
            found = _candidates(p, i, pts, multimask=True)
            self.candidates += [_to_image_scale(c, p.factor, rgb.shape[:2]) for c in found]
            if progress:
                progress(i + 1, len(p.tiles), "tiles")
        self.shape = rgb.shape[:2]

    def generate(
        self,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        box_nms_thresh: float = 0.7,
        min_size: int = 0,
    ) -> np.ndarray:
        keep = [c for c in self.candidates if c.iou > pred_iou_thresh and c.stability >= stability_score_thresh]
        if not keep:
            return np.zeros(self.shape, dtype=np.uint32)
        boxes = np.stack([c.box for c in keep]).astype(np.float64)
        idx = box_nms(boxes, np.array([c.iou for c in keep]), box_nms_thresh)
        return paint([keep[i] for i in idx], self.shape, min_size)


class AutomaticPromptGenerator:
    """APG: one positive point at the centre of every AIS seed component, each answered by the predictor's whole
    prompt path (the mask refiner included, objects across tile borders re-embedded), then NMS and a size filter.

    Needs a model with an AIS decoder. ``initialize`` computes the AIS maps once (network at the model's
    ``ais_mpp``, maps in image pixels) and embeds the image for prompts; ``generate`` derives the seeds with the
    given thresholds (σ in model pixels, as the automatic mode) and prompts at them.
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.maps: np.ndarray | None = None
        self.scale = 1.0

    def initialize(self, rgb: np.ndarray, mpp: float | None = None, progress: ProgressCallback | None = None) -> None:
        p = self.predictor
        p.set_image(rgb, mpp)
        seg = p.model.initialized_segmenter(rgb, p.mpp, progress)
        self.maps, self.scale = seg.maps, seg.scale
        self.shape = rgb.shape[:2]

    def seed_points(self, params: AISParams) -> np.ndarray:
        """Centres (x, y) in image pixels of the seed components (inside their component)."""
        fg, center, boundary = self.maps
        if params.distance_smoothing > 0:
            center = ndi.gaussian_filter(center, params.distance_smoothing * self.scale)
            boundary = ndi.gaussian_filter(boundary, params.distance_smoothing * self.scale)
        if params.foreground_smoothing > 0:
            fg = ndi.gaussian_filter(fg, params.foreground_smoothing * self.scale)
        seeds = (center < params.center_distance_threshold) & (boundary < params.boundary_distance_threshold)
        seeds &= fg > params.foreground_threshold
        comp, n = ndi.label(seeds)
        if n == 0:
            return np.zeros((0, 2))
        # the component pixel closest to its centre of mass, so the point lies inside the component
        com = np.array(ndi.center_of_mass(seeds, comp, range(1, n + 1)))
        dist = ndi.distance_transform_edt(comp > 0)
        best = ndi.maximum_position(dist, comp, range(1, n + 1))
        pts = np.array(
            [
                b if comp[int(round(c[0])), int(round(c[1]))] != i + 1 else (round(c[0]), round(c[1]))
                for i, (c, b) in enumerate(zip(com, best, strict=True))
            ],
            dtype=np.float64,
        )
        return pts[:, ::-1]

    def generate(self, nms_thresh: float = 0.9, min_size: int = 25, **ais: float) -> np.ndarray:
        """Labels (H, W) uint32: one mask per seed, overlapping ones removed by box NMS at ``nms_thresh``, objects
        under ``min_size`` image pixels dropped. Seeds use the model's tuned AIS thresholds (config ``ais_params``;
        the library defaults where it has none), each overridden by ``ais``."""
        if self.maps is None:
            raise RuntimeError("call initialize(image) first")
        tuned = {k: v for k, v in self.predictor.model.ais_params.items() if k != "min_size"}
        params = AISParams.of({**tuned, **ais})
        cands = []
        for pt in self.seed_points(params):
            pred = self.predictor.predict(points=pt[None], labels=np.ones(1, int), multimask=False)
            # APG filters by NMS on the predicted IoU only; no stability score is computed
            c = Candidate.from_mask(pred.window_masks[0], *pred.window[:2], pred.iou[0], float("nan"))
            if c is not None:
                cands.append(c)
        if not cands:
            return np.zeros(self.shape, dtype=np.uint32)
        boxes = np.stack([c.box for c in cands]).astype(np.float64)
        idx = box_nms(boxes, np.array([c.iou for c in cands]), nms_thresh)
        return paint([cands[i] for i in idx], self.shape, min_size)
