"""A prompt-mask refiner for compact SAM-family models: sharp masks at the model's full pixel size.

SAM's mask decoder predicts logits at a quarter of the input resolution. For a compact model working at 0.5 µm/px
that is 2 µm per logit, so a 6 µm nucleus spans about 3x3 logits and its upsampled mask cannot follow the
nucleus outline. The refiner takes the upsampled coarse logits of each candidate mask together with a guide image
(the normalised RGB and the AIS maps: foreground, centre and boundary distance, all at full resolution) and
predicts a residual correction plus the IoU of the refined mask (replacing the decoder's IoU estimate). With
``feature_channels`` the guide also holds a learned projection of the AIS decoder's last features (full resolution).
With ``prompt_channels=3`` it also sees the prompts themselves (the box as a filled rectangle, positive and negative
points as small Gaussian blobs). It works on a region of interest around the prompt, so its cost does not grow
with the window size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Channels of the guide image: normalised RGB (3) + AIS maps (3).
GUIDE_CHANNELS = 6


class MaskRefiner(nn.Module):
    """Residual refinement of coarse mask logits (N, 1, H, W) given a guide image (N, 6 + ``feature_channels``, H, W)
    (see :meth:`guide`) and, with ``prompt_channels``, prompt maps (N, 3, H, W) (see :func:`prompt_maps`), all the
    same size.

    Dilated 3x3 convolutions (dilations 1, 2, 4, 8: a receptive field of 31 px, 15 µm at 0.5 µm/px).
    ``feature_in`` > 0: the AIS decoder's last features have this many channels, projected by a 1x1 convolution to
    ``feature_channels`` guide channels. Returns refined logits (N, 1, H, W) and predicted IoU (N,) of the refined
    masks.
    """

    def __init__(
        self,
        width: int = 32,
        dilations: tuple[int, ...] = (1, 2, 4, 8),
        prompt_channels: int = 0,
        feature_in: int = 0,
        feature_channels: int = 0,
    ) -> None:
        super().__init__()
        self.width = width
        self.dilations = tuple(dilations)
        self.prompt_channels = prompt_channels
        if (feature_in > 0) != (feature_channels > 0):
            raise ValueError(f"feature_in and feature_channels go together, got {feature_in} and {feature_channels}")
        self.feature_in, self.feature_channels = feature_in, feature_channels
        self.project = nn.Conv2d(feature_in, feature_channels, 1) if feature_channels else None
        layers: list[nn.Module] = []
        cin = 1 + GUIDE_CHANNELS + feature_channels + prompt_channels
        for d in dilations:
            layers += [nn.Conv2d(cin, width, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
            cin = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, 1, 1)
        nn.init.zeros_(self.out.weight)  # starts as the identity: refined = coarse
        nn.init.zeros_(self.out.bias)
        self.iou_head = nn.Sequential(nn.Linear(2 * width + 1, 64), nn.ReLU(inplace=True), nn.Linear(64, 1))

    def forward(
        self, coarse: torch.Tensor, guide: torch.Tensor, prompts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [torch.tanh(coarse / 8.0), guide]
        if self.prompt_channels:
            parts.append(prompts)
        x = torch.cat(parts, dim=1)
        f = self.body(x)
        logits = coarse + self.out(f)
        p = torch.sigmoid(logits)
        area = p.sum((2, 3))
        inside = (f * p).sum((2, 3)) / (area + 1.0)
        pooled = torch.cat([inside, f.mean((2, 3)), torch.log1p(area)], dim=1)
        return logits, torch.sigmoid(self.iou_head(pooled))[:, 0]

    def guide(self, x_norm: torch.Tensor, maps: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The guide (B, 6 + feature_channels, H, W): normalised RGB (B, 3, H, W), AIS maps (B, 3, H, W) and, for a
        refiner with ``feature_channels``, the projected AIS decoder ``features`` (B, feature_in, H, W)."""
        if x_norm.shape[-2:] != maps.shape[-2:]:
            maps = F.interpolate(maps, x_norm.shape[-2:], mode="bilinear", align_corners=False)
        parts = [x_norm, maps]
        if self.project is not None:
            if features is None or features.shape[1] != self.feature_in:
                got = None if features is None else features.shape[1]
                raise ValueError(f"this refiner reads {self.feature_in} AIS feature channels, got {got}")
            parts.append(self.project(features))
        return torch.cat(parts, dim=1)


def prompt_roi(
    coarse: np.ndarray,
    shape: tuple[int, int],
    points: np.ndarray | None = None,
    box: np.ndarray | None = None,
    margin: int = 8,
    max_size: int = 64,
) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) region to refine: the bounding box of the coarse masks ``coarse`` (K, H, W bool) and of the
    prompts (``points`` (N, 2) and ``box`` (4,) as x, y in the same pixels), grown by ``margin`` px and at most
    ``max_size`` px per side (then centred on the prompts)."""
    h, w = shape
    ys: list[float] = []
    xs: list[float] = []
    anchor_y: list[float] = []
    anchor_x: list[float] = []
    if box is not None:
        anchor_x += [float(box[0]), float(box[2])]
        anchor_y += [float(box[1]), float(box[3])]
    if points is not None and len(points):
        anchor_x += [float(v) for v in points[:, 0]]
        anchor_y += [float(v) for v in points[:, 1]]
    any_mask = coarse.any(axis=0) if coarse.ndim == 3 else coarse
    if any_mask.any():
        rows, cols = np.nonzero(any_mask.any(axis=1))[0], np.nonzero(any_mask.any(axis=0))[0]
        ys += [float(rows[0]), float(rows[-1] + 1)]
        xs += [float(cols[0]), float(cols[-1] + 1)]
    ys += anchor_y
    xs += anchor_x
    if not ys:
        return (0, 0, h, w)
    y0, y1 = int(np.floor(min(ys))) - margin, int(np.ceil(max(ys))) + margin
    x0, x1 = int(np.floor(min(xs))) - margin, int(np.ceil(max(xs))) + margin
    if (y1 - y0 > max_size or x1 - x0 > max_size) and anchor_y:
        cy, cx = (min(anchor_y) + max(anchor_y)) / 2, (min(anchor_x) + max(anchor_x)) / 2
        half_y = max(min(y1 - y0, max_size), max(anchor_y) - min(anchor_y) + 2 * margin) / 2
        half_x = max(min(x1 - x0, max_size), max(anchor_x) - min(anchor_x) + 2 * margin) / 2
        y0, y1 = int(cy - half_y), int(np.ceil(cy + half_y))
        x0, x1 = int(cx - half_x), int(np.ceil(cx + half_x))
    return (max(y0, 0), max(x0, 0), min(y1, h), min(x1, w))


def prompt_maps(
    roi: tuple[int, int, int, int],
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    sigma: float = 2.0,
) -> torch.Tensor:
    """(3, h, w) maps of the prompts over ``roi`` (y0, x0, y1, x1): the box (x0, y0, x1, y1) as a filled rectangle,
    positive and negative points (N, 2 as x, y; ``labels`` 1 / 0) as Gaussian blobs of ``sigma`` px."""
    y0, x0, y1, x1 = roi
    out = torch.zeros(3, y1 - y0, x1 - x0)
    if box is not None:
        bx0, by0, bx1, by1 = (int(round(float(v))) for v in box)
        out[0, max(by0 - y0, 0) : max(by1 - y0, 0), max(bx0 - x0, 0) : max(bx1 - x0, 0)] = 1.0
    if points is not None and len(points):
        yy = torch.arange(y0, y1, dtype=torch.float32)[:, None] + 0.5
        xx = torch.arange(x0, x1, dtype=torch.float32)[None, :] + 0.5
        lbl = np.ones(len(points), int) if labels is None else np.asarray(labels)
        for (px, py), lab in zip(points, lbl, strict=True):
            blob = torch.exp(-((xx - float(px)) ** 2 + (yy - float(py)) ** 2) / (2 * sigma**2))
            c = 1 if lab == 1 else 2
            out[c] = torch.maximum(out[c], blob)
    return out


def refine_roi(
    refiner: MaskRefiner,
    coarse: torch.Tensor,
    guide: torch.Tensor,
    roi: tuple[int, int, int, int],
    points: np.ndarray | None = None,
    labels: np.ndarray | list[int] | None = None,
    box: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine candidate logits ``coarse`` (K, H, W) with ``guide`` (C, H, W) inside ``roi`` (y0, x0, y1, x1).
    The refiner reads the guide's first ``GUIDE_CHANNELS + refiner.feature_channels`` channels (a refiner without a
    feature projection, e.g. a correction refiner, reads pixels and AIS maps of a main refiner's guide), as float32.
    The prompts (``points`` (N, 2) x, y with ``labels``; ``box`` x0, y0, x1, y1; same pixels) are drawn with
    :func:`prompt_maps` when the refiner takes them. Returns the region's logits (K, h, w) and IoU (K,)."""
    y0, x0, y1, x1 = roi
    k = coarse.shape[0]
    crop = coarse[:, y0:y1, x0:x1][:, None]
    g = guide[: GUIDE_CHANNELS + refiner.feature_channels, y0:y1, x0:x1].float()[None].expand(k, -1, -1, -1)
    pm = None
    if refiner.prompt_channels:
        pm = prompt_maps(roi, points, labels, box).to(coarse.device)[None].expand(k, -1, -1, -1)
    logits, iou = refiner(crop, g, pm)
    return logits[:, 0], iou


def paste_roi(coarse: torch.Tensor, roi: tuple[int, int, int, int], logits: torch.Tensor) -> torch.Tensor:
    """The region's refined ``logits`` (K, h, w) (from :func:`refine_roi`) pasted into the full candidates ``coarse``
    (K, H, W) at ``roi``; outside it the coarse logits are kept, pushed below zero so no mask leaks out of the
    region."""
    y0, x0, y1, x1 = roi
    out = torch.minimum(coarse, torch.full_like(coarse, -1.0))
    out[:, y0:y1, x0:x1] = logits
    return out
