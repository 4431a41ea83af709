"""Interactive segmentation: point (+/-), box, box + points and mask prompts on precomputed embeddings.

:class:`Predictor` embeds an image once (in tiles of the model's prompt window with a halo, for images larger
than one window) and answers prompts from those embeddings. A prompt goes to the tile whose inner box holds its
centre; if the predicted mask touches that tile's outer edge (the object is cut off), the object is predicted
again in a window centred on it, so objects crossing tile borders come out whole. Embeddings can be cached on
disk with a signature (input hash, model, tile, halo, version) that is checked on reuse.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import pathseg
from pathseg.errors import PathsegError
from pathseg.io.convert import as_rgb_array
from pathseg.io.images import check_resampled_size
from pathseg.models.nucleus_sam import SamNucleusModel
from pathseg.nuclei.boxes import box_iou, box_pixels, mask_box, matching_nucleus
from pathseg.resize import resize_rgb, scaled_size
from pathseg.tiling import Tile, tile_grid

log = logging.getLogger("pathseg")


@dataclass
class MaskPrompt:
    """Logits of an earlier prediction (1, 1, h, w) and the window (work pixels) whose embedding produced them."""

    logits: torch.Tensor
    window: tuple[int, int, int, int]


@dataclass
class Prediction:
    """Candidate masks of one prompt, held in the window where they were predicted.

    ``window_masks`` (K, h, w) bool cover ``window`` = (y0, x0, y1, x1) in image pixels; ``iou`` (K,) is the
    predicted IoU; ``mask_prompt(k)`` passes candidate ``k`` back as ``mask_input`` for iterative correction.
    """

    window_masks: np.ndarray
    window: tuple[int, int, int, int]
    iou: np.ndarray
    low_res_logits: torch.Tensor
    shape: tuple[int, int]
    embed_window: tuple[int, int, int, int] = (0, 0, 0, 0)

    def mask_prompt(self, k: int = 0) -> MaskPrompt:
        """Candidate ``k`` as a mask prompt for the next, corrective prediction."""
        return MaskPrompt(self.low_res_logits[k][None, None], self.embed_window)

    @property
    def masks(self) -> np.ndarray:
        """(K, H, W) bool masks over the whole image."""
        y0, x0, y1, x1 = self.window
        full = np.zeros((self.window_masks.shape[0], *self.shape), dtype=bool)
        full[:, y0:y1, x0:x1] = self.window_masks
        return full

    def bound(self, box: np.ndarray, margin: float = 0.0) -> None:
        """Drop mask pixels whose centres lie more than ``margin`` px outside ``box`` (x0, y0, x1, y1: pixel
        edges, image pixels)."""
        y0, x0, y1, x1 = self.window
        yc = np.arange(y0, y1) + 0.5
        xc = np.arange(x0, x1) + 0.5
        inside_y = (yc > box[1] - margin) & (yc < box[3] + margin)
        inside_x = (xc > box[0] - margin) & (xc < box[2] + margin)
        self.window_masks = self.window_masks & (inside_y[:, None] & inside_x[None, :])[None]

    def object(self, k: int, value: int) -> tuple[int, int, np.ndarray, int]:
        """Mask ``k`` as an object (y0, x0, mask, value) for :func:`paint_objects`, cropped to its bounding box so
        that thousands of prompts hold little memory (an empty mask: shape (0, 0))."""
        m = self.window_masks[k]
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size == 0:
            return self.window[0], self.window[1], np.zeros((0, 0), bool), value
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return self.window[0] + int(r0), self.window[1] + int(c0), m[r0:r1, c0:c1].copy(), value


OVERLAPS = ("smaller", "first")


def prompt_error(points: np.ndarray | None, box: np.ndarray | None, shape: tuple[int, int]) -> str | None:
    """Why a prompt cannot be answered on an image of ``shape`` (H, W), or None: a coordinate that is no finite
    number, a point off the image, a box without area or wholly off it. ``points`` (N, 2) x, y and ``box`` x0, y0,
    x1, y1 in image pixels, from 0 to W and H (pixel edges); a box partly off the image is fine (it is clipped)."""
    h, w = shape
    if points is not None:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        for x, y in pts:
            if not (np.isfinite(x) and np.isfinite(y)):
                return f"point ({x:g}, {y:g}) is not a pair of finite numbers"
            if not (0 <= x <= w and 0 <= y <= h):
                return f"point ({x:g}, {y:g}) lies outside the {w}x{h} px image"
    if box is not None:
        x0, y0, x1, y1 = np.asarray(box, dtype=np.float64).reshape(4)
        text = f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g})"
        if not np.isfinite([x0, y0, x1, y1]).all():
            return f"{text} holds a coordinate that is no finite number"
        if x1 <= x0 or y1 <= y0:
            return f"{text} has no area (x0, y0, x1, y1 with x1 > x0 and y1 > y0)"
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            return f"{text} lies outside the {w}x{h} px image"
    return None


def check_overlap(overlap: str, error: type[Exception] = ValueError) -> None:
    """Stop with ``error`` naming the rules unless ``overlap`` is one of :data:`OVERLAPS`."""
    if overlap not in OVERLAPS:
        raise error(f"unknown overlap rule {overlap!r}; use {' or '.join(OVERLAPS)}")


def paint_objects(
    objects: Sequence[tuple[int, int, np.ndarray, int]], shape: tuple[int, int], overlap: str = "smaller"
) -> np.ndarray:
    """Label image (uint32, ``shape``) from objects (y0, x0, mask, value): ``mask`` (h, w) bool has its top-left
    pixel at image pixel (y0, x0) and is written as ``value``.

    ``overlap`` settles a pixel that several masks claim. ``"smaller"`` (default) gives it to the smallest of them:
    masks are painted largest first, each over the previous, as micro-sam's evaluation code (PathoSAM's) composes
    prompt masks in its ``mask_data_to_segmentation`` before the ``v1`` restructure (since then it paints only into
    background, so there the largest wins); objects of equal area keep their order. ``"first"`` leaves it with
    the earliest object in ``objects``.
    """
    check_overlap(overlap)
    labels = np.zeros(shape, dtype=np.uint32)
    order = range(len(objects))
    if overlap == "smaller":
        areas = [int(np.count_nonzero(m)) for _, _, m, _ in objects]
        order = sorted(order, key=lambda i: -areas[i])
    for i in order:
        y0, x0, mask, value = objects[i]
        region = labels[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
        region[mask if overlap == "smaller" else mask & (region == 0)] = value
    return labels


class _Recent(OrderedDict):
    """A cache that keeps its ``keep`` most recently used entries, so prompting all over a large image holds a
    bounded number of extra embeddings and automatic segmentations (default 16)."""

    def __init__(self, keep: int = 16) -> None:
        super().__init__()
        self.keep = keep

    def get(self, key, default=None):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def put(self, key, value):
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.keep:
            self.popitem(last=False)
        return value


class Predictor:
    """Prompts on one image with a SAM-family model (``SamNucleusModel``).

    The network runs at the model's :attr:`~SamNucleusModel.prompt_mpp`. A box is a bound: mask pixels whose
    centres lie more than ``box_margin`` image pixels outside it are dropped (default 0: the box holds the object;
    ``None`` keeps SAM's unbounded masks). With ``box_from_ais`` (default ``"model"``: the model's
    :attr:`~SamNucleusModel.box_from_ais`; ``None``: never), a single-mask box prompt takes the automatic
    segmentation's nucleus, clipped to the box, when that nucleus's bounding box overlaps the box with at least this
    IoU. The automatic segmentation runs lazily, once per region of at most ``ais_region`` image pixels a side
    (the outer ``ais_halo`` px on each side are context only; defaults 2048 and 128), at the first box in that
    region: an image that fits in one region is segmented whole, a large one only where boxes are. With ``box_fit``
    (default ``"model"``: the model's :attr:`~SamNucleusModel.box_fit`), a single-mask box prompt takes, among the
    decoder's 3 candidates and that nucleus, the mask whose bounding box best fits the box.
    """

    def __init__(
        self,
        model: SamNucleusModel,
        halo: int | None = None,
        box_margin: float | None = 0.0,
        box_from_ais: float | str | None = "model",
        box_fit: bool | str = "model",
        ais_region: int = 2048,
        ais_halo: int = 128,
    ) -> None:
        self.model = model.eval()
        self.box_margin = box_margin
        self.window = int(model.sam.img_size) if model.is_compact else int(model.config.get("tile", 512))
        self.halo = int(model.config.get("halo", 64) if halo is None else halo)
        self.image: np.ndarray | None = None
        self.factor = 1.0
        self.tiles: list[Tile] = []
        self.embeddings: list[torch.Tensor] = []
        #: per tile, the mask refiner's guide image (C, h, w) float16, or None (models without a refiner)
        self.guides: list[torch.Tensor | None] = []
        #: embeddings (and guides) of windows that are no tile, most recently used last (a bounded number)
        self._extra: _Recent = _Recent()
        self._weights: str | None = None
        if box_from_ais not in (None, "model") and (isinstance(box_from_ais, str) or not 0 < box_from_ais <= 1):
            raise PathsegError(f"box_from_ais must be in (0, 1], 'model' or None, got {box_from_ais!r}")
        self.box_from_ais = model.box_from_ais if box_from_ais == "model" else box_from_ais
        self.box_fit = model.box_fit if box_fit == "model" else bool(box_fit)
        if not 0 <= ais_halo < ais_region / 2:
            raise PathsegError(f"ais_halo must be >= 0 and under half of ais_region, got {ais_halo} and {ais_region}")
        self.ais_region, self.ais_halo = int(ais_region), int(ais_halo)
        self.mpp: float | None = None
        #: automatic segmentations (labels, objects) by region (y0, x0, y1, x1), most recently used last
        self._automatic: _Recent = _Recent()
        self._stain: tuple[np.ndarray, np.ndarray] | None = None  # the image's colour statistics (``ais_stain``)
        self._regions: list[Tile] = []

    # -- embeddings ----------------------------------------------------------------------------------------
    def _weights_digest(self) -> str:
        if self._weights is None:
            h = hashlib.sha256()
            parts = self.model.sam.image_encoder.state_dict()
            if self.model.refiner is not None and self.model.ais is not None:  # the guides hold AIS maps
                parts = {**parts, **{f"ais.{k}": v for k, v in self.model.ais.state_dict().items()}}
                if self.model.refiner.project is not None:  # and the refiner's projection of AIS features
                    parts.update({f"project.{k}": v for k, v in self.model.refiner.project.state_dict().items()})
            for k, v in sorted(parts.items()):
                h.update(k.encode())
                h.update(v.detach().float().contiguous().cpu().numpy().tobytes())
            self._weights = h.hexdigest()
        return self._weights

    def signature(self, rgb: np.ndarray, mpp: float) -> dict[str, str]:
        """What the cached embeddings depend on: the pixels, the encoder weights, tiling, pixel size, version."""
        digest = hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()
        return {
            "input": digest,
            "shape": str(rgb.shape),
            "model": self.model.name,
            "weights": self._weights_digest(),
            "tile": str(self.window),
            "halo": str(self.halo),
            "mpp": f"{mpp:g}",
            "network_mpp": f"{self.model.prompt_mpp:g}",
            "version": pathseg.__version__,
        }

    def set_image(self, rgb: np.ndarray, mpp: float | None = None, cache: str | os.PathLike | None = None) -> None:
        """Embed ``rgb`` (H, W, 3 uint8; grey, RGBA, 16-bit and float arrays are converted as image files are) at
        ``mpp`` µm/px (default: the model's). ``cache``: a file to reuse."""
        rgb, notes = as_rgb_array(rgb)  # ValueError for what is no image
        for note in notes:
            log.info("note: image: %s", note)
        mpp = self.model.mpp if mpp is None else mpp
        if not mpp > 0:
            raise ValueError(f"mpp must be a positive pixel size in µm/px, got {mpp}")
        check_resampled_size(rgb.shape, mpp, self.model.prompt_mpp)  # the pixel cap ($PATHSEG_MAX_PIXELS)
        self.image, self.mpp = rgb, mpp
        self._automatic.clear()
        self._stain = None
        self._regions = tile_grid(rgb.shape[:2], self.ais_region, self.ais_halo)
        self.factor = mpp / self.model.prompt_mpp  # network pixels per image pixel
        h, w = rgb.shape[:2]
        work = rgb if abs(self.factor - 1) < 1e-3 else resize_rgb(rgb, scaled_size((h, w), self.factor))
        self.tiles = (
            tile_grid(work.shape[:2], self.window, self.halo)
            if max(work.shape[:2]) > self.window
            else [Tile((0, 0, *work.shape[:2]), (0, 0, *work.shape[:2]))]
        )
        self._work = work
        self._extra.clear()
        if cache is not None:
            sig = self.signature(rgb, mpp)
            if self._load(Path(cache), sig):
                return
        self.embeddings, self.guides = [], []
        for t in self.tiles:
            emb, guide = self._embed(work[t.outer_slices])
            self.embeddings.append(emb)
            self.guides.append(guide)
        if cache is not None:  # no cache: no need to hash the pixels and the weights
            self._save(Path(cache), sig)

    def _embed(self, crop: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        emb, guide = self.model.prompt_context(crop)
        return emb, None if guide is None else guide.half()

    def _save(self, path: Path, sig: dict[str, str]) -> None:
        from safetensors.torch import save_file

        from pathseg.io.atomic import atomic_path

        tensors = {f"tile_{i}": e.contiguous().cpu() for i, e in enumerate(self.embeddings)}
        tensors.update({f"guide_{i}": g.contiguous().cpu() for i, g in enumerate(self.guides) if g is not None})
        try:
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata=sig)
        except OSError as exc:  # the embeddings are computed: go on without the cache
            log.warning("cannot write the embedding cache %s (%s); continuing without it", path, exc)

    def _load(self, path: Path, sig: dict[str, str]) -> bool:
        if not path.is_file():
            return False
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                if meta != sig:
                    changed = sorted(k for k in sig if meta.get(k) != sig[k])
                    log.warning("embedding cache %s does not match (%s differ); recomputing", path, ", ".join(changed))
                    return False
                keys = set(f.keys())
                embeddings = [f.get_tensor(f"tile_{i}") for i in range(len(self.tiles))]
                guides = [f.get_tensor(f"guide_{i}") if f"guide_{i}" in keys else None for i in range(len(self.tiles))]
        except Exception as exc:  # truncated, corrupt or not a cache at all (safetensors raises its own types)
            log.warning("embedding cache %s is unreadable (%s); recomputing", path, exc)
            return False
        device = self.model.device  # stored on the CPU, used where the model runs
        self.embeddings = [e.to(device) for e in embeddings]
        self.guides = [None if g is None else g.to(device) for g in guides]
        return True

    # -- prompts -------------------------------------------------------------------------------------------
    def predict(
        self,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: MaskPrompt | None = None,
        multimask: bool = True,
    ) -> Prediction:
        """Segment one object. ``points`` (N, 2) as x, y in image pixels with ``labels`` (N,) 1 = positive,
        0 = negative; ``box`` (4,) as x0, y0, x1, y1; ``mask_input``: an earlier prediction's ``mask_prompt(k)``.
        Returns 3 candidate masks (``multimask``) or 1. A prompt off the image (see :func:`prompt_error`) raises
        ``ValueError``."""
        if self.image is None:
            raise RuntimeError("call set_image(image) first")
        if points is None and box is None and mask_input is None:
            raise ValueError("give at least one of points, box or mask_input")
        problem = prompt_error(points, box, self.image.shape[:2])
        if problem:
            raise ValueError(problem)
        pts = None if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 2) * self.factor
        lbl = None if points is None else np.asarray(labels if labels is not None else np.ones(len(pts)), int)
        bx = None if box is None else np.asarray(box, dtype=np.float64).reshape(4) * self.factor
        box_alone = box is not None and points is None and mask_input is None and not multimask
        multimask = multimask or (box_alone and self.box_fit)  # candidates to fit to the box
        if isinstance(mask_input, MaskPrompt):  # stay in the window the earlier logits belong to
            window, logits = mask_input.window, mask_input.logits
            pred = self._predict_in(window, *self._embedding_for(window), pts, lbl, bx, logits, multimask)
        else:
            tile = self._tile_for(self._centre(pts, lbl, bx))
            i = self.tiles.index(tile)
            pred = self._predict_in(tile.outer, self.embeddings[i], self.guides[i], pts, lbl, bx, mask_input, multimask)
            best = int(np.argmax(pred[1]))
            if mask_input is None and self._touches_edge(pred[0][best] > 0, tile.outer):
                window = self._window_around(pred[0][best] > 0, tile.outer)
                pred = self._predict_in(window, *self._embedding_for(window), pts, lbl, bx, None, multimask)
        out = self._to_image(*pred)
        if box is not None and self.box_margin is not None:
            out.bound(np.asarray(box, dtype=np.float64).reshape(4), self.box_margin)
        if box_alone:
            self._choose_for_box(out, np.asarray(box, dtype=np.float64).reshape(4))
        return out

    def _choose_for_box(self, out: Prediction, box: np.ndarray) -> None:
        """Leave one mask in ``out`` for a box alone: with ``box_fit`` the candidate (decoder's or AIS nucleus)
        whose bounding box best fits the box, else the AIS nucleus if it matches, else the decoder's. The IoU
        estimate and mask prompt stay the decoder's (of the chosen candidate, or its most confident one)."""
        auto = self._automatic_match(box) if self.box_from_ais else None
        if not self.box_fit:
            if auto is not None:
                out.window_masks, out.window = auto[0][None], auto[1]
            return
        b = box_pixels(box, out.shape)
        cands = ([auto] if auto is not None else []) + [(m, out.window) for m in out.window_masks]
        fits = box_iou(np.array([b]), np.array([mask_box(m, w) for m, w in cands]))[0]
        best = int(np.argmax(fits))  # ties: the AIS nucleus, then the decoder's order
        k = best - (auto is not None) if best >= (auto is not None) else int(np.argmax(out.iou))
        out.window_masks, out.window = cands[best][0][None], cands[best][1]
        out.iou, out.low_res_logits = out.iou[k : k + 1], out.low_res_logits[k : k + 1]

    def _automatic_match(self, box: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
        """The automatic segmentation's nucleus matching ``box`` with bounding-box IoU >= ``box_from_ais``, clipped
        to the box, as (mask, window); None if none matches. Each region is segmented once while it stays recent."""
        from scipy import ndimage as ndi

        b = box_pixels(box, self.image.shape[:2])
        if b[2] <= b[0] or b[3] <= b[1]:  # the box holds no pixel of the image
            return None
        region = self._ais_region_for(b)
        got = self._automatic.get(region)
        if got is None:
            y0, x0, y1, x1 = region
            if self._stain is None:  # a region is normalised as its whole image is (models with ais_stain)
                self._stain = self.model.stain_stats(self.image)
            labels = self.model.segment(self.image[y0:y1, x0:x1], self.mpp, stain=self._stain)
            got = self._automatic.put(region, (labels, ndi.find_objects(labels)))
        labels, objects = got
        oy, ox = region[:2]
        lab, iou, (y0, x0, y1, x1) = matching_nucleus(labels, objects, box - np.array([ox, oy, ox, oy]))
        if lab and iou >= self.box_from_ais:
            return labels[y0:y1, x0:x1] == lab, (y0 + oy, x0 + ox, y1 + oy, x1 + ox)
        return None

    def _ais_region_for(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """The region (y0, x0, y1, x1, image pixels) whose automatic segmentation answers ``box`` (whole pixels
        y0, x0, y1, x1 in the image): the region whose inner part holds the box centre, if the box and half the halo
        around it lie inside the region; else the box grown by the halo (a box larger than the halo near a region
        border)."""
        h, w = self.image.shape[:2]
        y0, x0, y1, x1 = box
        m, g = self.ais_halo // 2, self.ais_halo
        need = (max(y0 - m, 0), max(x0 - m, 0), min(y1 + m, h), min(x1 + m, w))
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        for t in self._regions:
            (iy0, ix0, iy1, ix1), (oy0, ox0, oy1, ox1) = t.inner, t.outer
            holds_centre = iy0 <= cy < iy1 and ix0 <= cx < ix1
            if holds_centre and oy0 <= need[0] and ox0 <= need[1] and need[2] <= oy1 and need[3] <= ox1:
                return t.outer
        return (max(y0 - g, 0), max(x0 - g, 0), min(y1 + g, h), min(x1 + g, w))

    @staticmethod
    def _centre(pts, lbl, bx) -> np.ndarray:
        """Where a prompt is: the box centre, else the mean of the positive points (else of all points)."""
        if bx is not None:
            return (bx[:2] + bx[2:]) / 2
        return pts[lbl == 1].mean(0) if (lbl == 1).any() else pts.mean(0)

    def _embedding_for(self, window: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        y0, x0, y1, x1 = window
        for t, emb, guide in zip(self.tiles, self.embeddings, self.guides, strict=True):
            if tuple(t.outer) == tuple(window):
                return emb, guide
            ty0, tx0, ty1, tx1 = t.outer
            inside = ty0 <= y0 and tx0 <= x0 and y1 <= ty1 and x1 <= tx1
            if self.model.is_compact and inside and (y0 - ty0) % 16 == 0 and (x0 - tx0) % 16 == 0:
                # a token-aligned part of a tile (the window of an earlier compact-model prediction)
                sy, sx = (y0 - ty0) // 16, (x0 - tx0) // 16
                part = emb[:, sy : sy + -(-(y1 - y0) // 16), sx : sx + -(-(x1 - x0) // 16)]
                g = None if guide is None else guide[:, y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0]
                return part, g
        ctx = self._extra.get(window)
        if ctx is None:
            ctx = self._extra.put(window, self._embed(self._work[window[0] : window[2], window[1] : window[3]]))
        return ctx

    def _tile_for(self, centre: np.ndarray) -> Tile:
        x, y = centre
        for t in self.tiles:
            y0, x0, y1, x1 = t.inner
            if y0 <= y < y1 and x0 <= x < x1:
                return t
        return min(
            self.tiles, key=lambda t: abs((t.inner[0] + t.inner[2]) / 2 - y) + abs((t.inner[1] + t.inner[3]) / 2 - x)
        )

    def _predict_in(self, box_yx, emb, guide, pts, lbl, bx, mask_input, multimask):
        """Mask logits (K, h, w) float32 in ``box_yx`` (work pixels, > 0 inside), IoU, low-res logits. With a mask
        refiner (and the window's ``guide``), the masks are refined at full resolution around the prompt (by the
        model's correction refiner, if any, when ``mask_input`` feeds back an earlier mask) and the IoU is the
        refiner's or the decoder's (the model's ``prompt_iou``)."""
        y0, x0, y1, x1 = box_yx
        if mask_input is None and self.model.is_compact:  # decode on the part of the window the prompt sits in
            centre = self._centre(pts, lbl, bx) - [x0, y0]
            sy0, sx0, sy1, sx1 = self.model.prompt_window(tuple(centre), y1 - y0, x1 - x0)
            emb = emb[:, sy0 // 16 : -(-sy1 // 16), sx0 // 16 : -(-sx1 // 16)]
            guide = None if guide is None else guide[:, sy0:sy1, sx0:sx1]
            y0, x0, y1, x1 = box_yx = (y0 + sy0, x0 + sx0, y0 + sy1, x0 + sx1)
        h, w = y1 - y0, x1 - x0
        scale = self.model.prompt_scale(h, w)
        offset = np.array([x0, y0], dtype=np.float64)
        local_pts = None if pts is None else pts - offset  # window pixels
        local_box = None if bx is None else np.concatenate([bx[:2] - offset, bx[2:] - offset])
        t_pts = None
        device = emb.device
        if local_pts is not None:
            t_pts = (
                torch.tensor(local_pts * scale, dtype=torch.float32, device=device)[None],
                torch.tensor(lbl, dtype=torch.float32, device=device)[None],
            )
        t_box = None
        if local_box is not None:
            t_box = torch.tensor(local_box * scale, dtype=torch.float32, device=device)[None]
        with torch.inference_mode():
            low, iou = self.model.sam.decode(emb[None], t_pts, t_box, mask_input, multimask_output=multimask)
            full = self.model.window_logits(low, h, w)[0]
            box_alone = local_box is not None and local_pts is None
            refiner = self.model.refiner_for(feedback=mask_input is not None, box_alone=box_alone)
            if guide is not None and refiner is not None:
                from pathseg.models.refine import paste_roi, prompt_roi, refine_roi

                roi = prompt_roi((full > 0).cpu().numpy(), (h, w), local_pts, local_box)
                logits, r_iou = refine_roi(refiner, full, guide, roi, local_pts, lbl, local_box)
                full = paste_roi(full, roi, logits)
                if self.model.prompt_iou == "refiner":
                    iou = r_iou[None]
        return (full - self.model.sam.mask_threshold).cpu().numpy(), iou[0].cpu().numpy(), low[0], box_yx

    def _touches_edge(self, mask: np.ndarray, box_yx) -> bool:
        """True if the mask reaches an edge of its window that is not an edge of the image (object cut off)."""
        if not mask.any():
            return False
        y0, x0, y1, x1 = box_yx
        h, w = self._work.shape[:2]
        return bool(
            (y0 > 0 and mask[0].any())
            or (y1 < h and mask[-1].any())
            or (x0 > 0 and mask[:, 0].any())
            or (x1 < w and mask[:, -1].any())
        )

    def _window_around(self, mask: np.ndarray, box_yx) -> tuple[int, int, int, int]:
        ys, xs = np.nonzero(mask)
        cy, cx = ys.mean() + box_yx[0], xs.mean() + box_yx[1]
        H, W = self._work.shape[:2]
        size = self.window
        y0 = int(np.clip(round(cy - size / 2), 0, max(H - size, 0)))
        x0 = int(np.clip(round(cx - size / 2), 0, max(W - size, 0)))
        return (y0, x0, min(y0 + size, H), min(x0 + size, W))

    def _to_image(self, logits, iou, low, box_yx) -> Prediction:
        """Masks from ``logits`` (K, h, w; > 0 inside, or bool masks) in work pixels to image pixels."""
        embed_window = tuple(int(v) for v in box_yx)
        h, w = self.image.shape[:2]
        if logits.dtype == bool:
            logits = np.where(logits, 1.0, -1.0).astype(np.float32)
        masks = logits > 0
        # shrink the window to the masks' bounding box (plus a pixel), so later work stays local
        any_mask = masks.any(axis=0)
        if any_mask.any():
            ys, xs = np.nonzero(any_mask.any(axis=1))[0], np.nonzero(any_mask.any(axis=0))[0]
            cy0, cy1 = max(ys[0] - 1, 0), min(ys[-1] + 2, masks.shape[1])
            cx0, cx1 = max(xs[0] - 1, 0), min(xs[-1] + 2, masks.shape[2])
        else:
            cy0 = cx0 = 0
            cy1 = cx1 = 1
        masks, logits = masks[:, cy0:cy1, cx0:cx1], logits[:, cy0:cy1, cx0:cx1]
        box_yx = (box_yx[0] + cy0, box_yx[1] + cx0, box_yx[0] + cy1, box_yx[1] + cx1)
        y0, x0, y1, x1 = box_yx
        if abs(self.factor - 1) >= 1e-3:
            f = self.factor
            iy0, ix0 = int(np.floor(y0 / f)), int(np.floor(x0 / f))
            iy1, ix1 = min(int(np.ceil(y1 / f)), h), min(int(np.ceil(x1 / f)), w)
            t = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)[None])
            # sample the work-pixel logits at the image pixels' centres (smooth outlines, not blocks)
            grid_y = ((torch.arange(iy0, iy1) + 0.5) * f - y0) / (y1 - y0) * 2 - 1
            grid_x = ((torch.arange(ix0, ix1) + 0.5) * f - x0) / (x1 - x0) * 2 - 1
            gy, gx = torch.meshgrid(grid_y, grid_x, indexing="ij")
            grid = torch.stack([gx, gy], -1)[None].float()
            masks = F.grid_sample(t, grid, mode="bilinear", align_corners=False, padding_mode="border")[0].numpy() > 0
            box_yx = (iy0, ix0, iy1, ix1)
        return Prediction(masks, tuple(int(v) for v in box_yx), iou, low, (h, w), embed_window)
