"""`pathseg train nuclei-maps`: train the map refiner of a compact nucleus model, everything else frozen.

The frozen model computes its AIS maps of every training image once, in each of the 8 flips / 90° turns (a
compact CNN's maps of a turned image are not the turned maps), exactly as :meth:`SamNucleusModel.segment` does:
at the model's pixel size, then resampled to the image's own. The small
:class:`~pathseg.models.map_refine.MapRefiner` then learns, on random crops at the image's pixel size, to turn
those maps into the AIS targets of the full-resolution labels (the AIS decoder's own loss). At every validation
(the same split as `train nuclei`) the watershed parameters are searched over a small grid; the best refiner by
validation mSA + AJI + PQ is saved with its model and those parameters to ``<out>/best``. Resumable
(``<out>/checkpoint.pt``).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pathseg.errors import PathsegError
from pathseg.metrics import instance_scores
from pathseg.models.nucleus_sam import SamNucleusModel, _build_map_refiner
from pathseg.nuclei.targets import distance_targets
from pathseg.progress import ProgressCallback
from pathseg.train.checkpoint import resume, save_checkpoint
from pathseg.train.data import Sample, load_samples
from pathseg.train.losses import ais_loss
from pathseg.train.nuclei import _lr_lambda, source_groups, split_validation


@dataclass
class MapRefinerConfig:
    """Settings. ``init``: the model to add a map refiner to (zoo name or folder); ``mpp_in``: the training
    images' pixel size (µm/px, finer than the model's); crop in image pixels."""

    data: list[str]
    out: str
    init: str = "pathseg_nuclei_cpu"
    mpp_in: float = 0.25
    crop: int = 256
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    iterations: int = 1500
    warmup: int = 50
    val_fraction: float = 0.15  #: the same split (fraction, seed) as `train nuclei`, so validation stays unseen
    val_every: int = 250
    checkpoint_every: int = 50
    seed: int = 0
    width: int = 24


def _turn(a: np.ndarray, view: int) -> np.ndarray:
    """View 0..7 of the last two axes of ``a``: ``view % 4`` quarter turns, then a left-right flip if ``view >= 4``."""
    a = np.rot90(a, view % 4, axes=(-2, -1))
    return np.ascontiguousarray(a[..., ::-1] if view >= 4 else a)


class MapCrops:
    """Random crops of (image, frozen model maps, AIS targets) over the 8 views of every training image."""

    def __init__(self, model: SamNucleusModel, samples: list[Sample], mpp: float, crop: int, seed: int, log=print):
        self.crop = crop
        self.rng = np.random.default_rng(seed)
        self.items: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        t0 = time.perf_counter()
        for s in samples:
            targets = distance_targets(s.labels)
            for view in range(8):
                rgb = np.ascontiguousarray(_turn(s.image.transpose(2, 0, 1), view).transpose(1, 2, 0))
                maps = model.initialized_segmenter(rgb, mpp).maps.astype(np.float16)
                self.items.append((rgb, maps, _turn(targets, view)))
        log(f"maps of {len(samples)} images x 8 views in {time.perf_counter() - t0:.0f} s")

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images (n, 3, S, S) float 0-255, maps (n, 3, S, S), targets (n, 3, S, S))."""
        xs, ms, ts = [], [], []
        for _ in range(n):
            rgb, maps, targets = self.items[int(self.rng.integers(len(self.items)))]
            h, w = rgb.shape[:2]
            c = min(self.crop, h, w)
            y0, x0 = int(self.rng.integers(0, h - c + 1)), int(self.rng.integers(0, w - c + 1))
            x = torch.from_numpy(rgb[y0 : y0 + c, x0 : x0 + c]).permute(2, 0, 1).float()
            xs.append((x * float(self.rng.uniform(0.9, 1.1)) + float(self.rng.uniform(-10, 10))).clamp(0, 255))
            ms.append(torch.from_numpy(maps[:, y0 : y0 + c, x0 : x0 + c].astype(np.float32)))
            ts.append(torch.from_numpy(targets[:, y0 : y0 + c, x0 : x0 + c]))
        return torch.stack(xs), torch.stack(ms), torch.stack(ts)


#: Watershed parameters searched at every validation (the refined maps need their own thresholds).
AIS_GRID = {
    "center_distance_threshold": [0.5, 0.7],
    "boundary_distance_threshold": [0.3, 0.4, 0.5],
    "foreground_threshold": [0.4, 0.5, 0.6],
    "foreground_smoothing": [0.0],
    "distance_smoothing": [0.0, 0.5],
    "min_size": [10, 20],
}


def evaluate_maps(model: SamNucleusModel, samples: list[Sample], mpp: float) -> dict:
    """Best mean mSA + AJI + PQ of automatic segmentation over ``samples`` across :data:`AIS_GRID`; the scores
    and the watershed parameters (``params``) that reach it."""
    segmenters = [(model.initialized_segmenter(s.image, mpp), s.labels) for s in samples]
    best: dict = {"score": -1.0}
    keys = list(AIS_GRID)
    for values in itertools.product(*(AIS_GRID[k] for k in keys)):
        params = dict(zip(keys, values, strict=True))
        rows = [instance_scores(gt, seg.generate(**params)) for seg, gt in segmenters]
        scores = {k: float(np.mean([r[k] for r in rows])) for k in ("msa", "aji", "pq")}
        scores["score"] = scores["msa"] + scores["aji"] + scores["pq"]
        if scores["score"] > best["score"]:
            best = {**scores, "params": params}
    return best


def _load_model(cfg: MapRefinerConfig) -> SamNucleusModel:
    from pathseg.models.zoo import get_nucleus_model

    model = get_nucleus_model(cfg.init)
    if not isinstance(model, SamNucleusModel) or not model.is_compact or model.ais is None:
        raise PathsegError(f"--init {cfg.init!r}: the map refiner needs a compact SAM-family model with an AIS decoder")
    if not cfg.mpp_in < model.mpp:
        raise PathsegError(
            f"--mpp {cfg.mpp_in:g}: the map refiner sharpens maps on images finer than the model's "
            f"{model.mpp:g} µm/px; give training images at a smaller pixel size"
        )
    model.map_refiner = None  # the maps to learn from are the unrefined ones
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def train_map_refiner(cfg: MapRefinerConfig, progress: ProgressCallback | None = None, log=print) -> dict:
    """Run (or resume) map-refiner training; returns the best validation scores."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = _load_model(cfg)
    samples = load_samples(cfg.data, cfg.mpp_in, cfg.mpp_in)
    train, val = split_validation(samples, cfg.val_fraction, cfg.seed, source_groups(cfg.data))
    log(f"{len(train)} training and {len(val)} validation images ({', '.join(s.name for s in val)})")
    crops = MapCrops(model, train, cfg.mpp_in, cfg.crop, cfg.seed, log)
    model.config["map_refiner"] = {"width": cfg.width, "dilations": [1, 2, 4, 8]}
    refiner = model.map_refiner = _build_map_refiner(model.config["map_refiner"])
    params = list(refiner.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    key = "score"
    start, best = 0, {key: -1.0}
    ckpt_path = out / "checkpoint.pt"
    resumed = resume(ckpt_path, refiner, "map_refiner", opt, sched)
    if resumed:
        start, best = resumed
        log(f"resumed from {ckpt_path} at iteration {start} (best validation {key} {best.get(key, -1.0):.4f})")
    crops.rng = np.random.default_rng(cfg.seed + start)
    if start == 0 and val:  # the refiner starts as the identity: this is the unrefined model's score
        best = {**evaluate_maps(model, val, cfg.mpp_in), "iteration": 0}
        log(f"validation without refinement: mSA {best['msa']:.4f} AJI {best['aji']:.4f} PQ {best['pq']:.4f}")
        model.config["ais_params"] = {**model.config.get("ais_params", {}), **best["params"]}
        model.save_pretrained(out / "best")
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    mean, std = model.sam.pixel_mean, model.sam.pixel_std
    t0 = time.perf_counter()
    for it in range(start, cfg.iterations):
        refiner.train()
        x, maps, targets = crops.batch(cfg.batch)
        loss, parts = ais_loss(refiner((x - mean) / std, maps), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        step = it + 1
        record = {"iteration": step, "loss": float(loss.detach()), **parts, "lr": sched.get_last_lr()[0]}
        if val and (step % cfg.val_every == 0 or step == cfg.iterations):
            refiner.eval()
            scores = evaluate_maps(model, val, cfg.mpp_in)
            record["val"] = scores
            if scores[key] > best.get(key, -1.0):
                best = {**scores, "iteration": step}
                model.config["ais_params"] = {**model.config.get("ais_params", {}), **scores["params"]}
                model.save_pretrained(out / "best")
            log(
                f"iteration {step}: loss {record['loss']:.4f}, validation mSA {scores['msa']:.4f} AJI "
                f"{scores['aji']:.4f} PQ {scores['pq']:.4f} (best {key} {best[key]:.4f} at {best.get('iteration')}), "
                f"{(time.perf_counter() - t0) / (step - start):.2f} s/it"
            )
        with open(out / "history.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
            save_checkpoint(ckpt_path, refiner, "map_refiner", opt, sched, step, best)
        if progress:
            progress(step, cfg.iterations, f"loss {record['loss']:.3f} best {key} {best.get(key, -1.0):.3f}")
    if not val:
        model.save_pretrained(out / "best")
    return best
