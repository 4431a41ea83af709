"""`pathseg train tissue`: train a tissue head on frozen diffusion features from image / class-mask folders.

Resumable (``<out>/checkpoint.pt`` every ``checkpoint_every`` iterations); the best head by validation mean IoU
(a split carved from the training images) is saved with its backbone to ``<out>/best`` as a :class:`TissueModel`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pathseg.errors import PathsegError
from pathseg.io.atomic import atomic_path
from pathseg.models.diffusion.backbone import DiffusionBackbone
from pathseg.models.folder import read_config
from pathseg.progress import ProgressCallback
from pathseg.tissue.classes import IGNORE, load_class_map
from pathseg.tissue.data import TissueCrops, TissueSample, load_tissue_samples
from pathseg.tissue.head import SegHead
from pathseg.tissue.model import TissueModel
from pathseg.train.checkpoint import trim_history


@dataclass
class TissueTrainConfig:
    """Training settings; crop in pixels at the backbone's µm/px."""

    data: list[str]
    out: str
    backbone: str  #: a backbone folder or zoo name; ``random:<folder>`` = the same architecture, randomly initialised
    classes: str = "glas"  #: class map preset (glas, bcss5) or JSON file
    timesteps: list[int] = field(default_factory=lambda: [50])
    blocks: list[int] = field(default_factory=lambda: [1, 2])
    mpp_in: float | None = None  #: pixel size of the images (None: already at the backbone's)
    crop: int = 256
    batch: int = 4
    iterations: int = 2000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden: int = 128
    head_dilations: list[int] = field(default_factory=lambda: [1, 1])  #: the head's 3x3 blocks (see SegHead)
    refine: int = 0  #: width of the head's pixel refiner (0: none; see SegHead)
    val_fraction: float = 0.15
    val_every: int = 200
    checkpoint_every: int = 50
    cache: bool = True  #: compute features of the training patches once (bounded in-memory cache)
    views: int = 2  #: dihedral views per image in the cache (the image is turned before the backbone sees it)
    stain: float = 0.0  #: HED jitter strength of the training images (cache: every view but the first; 0: none)
    cache_gb: float = 4.0  #: the largest cache allowed
    label_fraction: float = 1.0  #: share of the training images (after the validation split) used for training
    seed: int = 0
    name: str = "pathseg_tissue"


def _split(samples: list[TissueSample], cfg: TissueTrainConfig) -> tuple[list[TissueSample], list[TissueSample]]:
    order = np.random.default_rng(cfg.seed).permutation(len(samples))
    n_val = max(1, int(round(cfg.val_fraction * len(samples)))) if cfg.val_fraction > 0 else 0
    if n_val >= len(samples):
        raise PathsegError(f"a validation split of {n_val} leaves no training image")
    val = [samples[i] for i in order[:n_val]]
    train = [samples[i] for i in order[n_val:]]
    if cfg.label_fraction < 1:
        keep = max(1, int(round(cfg.label_fraction * len(train))))
        train = [train[i] for i in np.random.default_rng(cfg.seed + 1).permutation(len(train))[:keep]]
    return train, val


def class_weights(samples: list[TissueSample], n_classes: int) -> torch.Tensor:
    """Inverse class frequency over the training targets, normalised to mean 1 over present classes."""
    counts = np.zeros(n_classes)
    for s in samples:
        counts += np.bincount(s.target[s.target != IGNORE].ravel(), minlength=n_classes)[:n_classes]
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
    return torch.tensor(w / w[counts > 0].mean(), dtype=torch.float32)


def head_loss(
    head: SegHead, feats: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, image: torch.Tensor | None = None
) -> torch.Tensor:
    """Class-weighted cross-entropy of the head's logits, upsampled from the feature grid to the targets (and
    refined with ``image`` (B, 3, H, W) in [0, 1] when the head has a pixel refiner)."""
    logits = head.to_pixels(head(feats), y.shape[-2:], image)
    return F.cross_entropy(logits, y, weight=weights, ignore_index=IGNORE)


@torch.no_grad()
def evaluate_bank(head: torch.nn.Module, bank, channels: torch.Tensor | None = None) -> dict[str, float]:
    """Pooled accuracy, mean Dice and mean IoU of ``head`` over the cached patches of ``bank`` (a fast proxy
    for :func:`evaluate_tissue`: patches scored one by one, without blending)."""
    from pathseg.metrics.semantic import confusion_matrix, confusion_scores

    head.eval()
    k = head.classify.out_channels
    cm = np.zeros((k, k))
    for i in range(0, len(bank), 16):
        f, y, x = bank.rows(slice(i, i + 16), channels)
        pred = head.to_pixels(head(f), y.shape[-2:], x).argmax(1)
        cm += confusion_matrix(y.numpy(), pred.numpy(), k, IGNORE)
    scores = confusion_scores(cm)
    return {key: scores[key] for key in ("accuracy", "mean_dice", "mean_iou")}


def evaluate_tissue(model: TissueModel, samples: list[TissueSample]) -> dict[str, float]:
    """Pooled pixel accuracy, mean Dice and mean IoU of ``model`` on ``samples``."""
    from pathseg.metrics.semantic import confusion_matrix, confusion_scores

    k = len(model.class_names)
    cm = sum(confusion_matrix(s.target, model.segment(s.image), k, IGNORE) for s in samples)
    scores = confusion_scores(cm)
    return {key: scores[key] for key in ("accuracy", "mean_dice", "mean_iou")}


def _backbone(spec: str) -> DiffusionBackbone:
    if spec.startswith("random:"):
        folder = Path(spec[len("random:") :])
        cfg = read_config(folder, "diffusion backbone")
        torch.manual_seed(0)
        bb = DiffusionBackbone(cfg)
        bb.config["name"] = f"random:{cfg.get('name', folder.name)}"
        return bb.eval()
    from pathseg.models.zoo import get_backbone

    return get_backbone(spec)


def train_tissue(cfg: TissueTrainConfig, progress: ProgressCallback | None = None, log=print) -> dict:
    """Run (or resume) training; returns the best validation scores."""
    if cfg.refine < 0:
        raise PathsegError(f"refine is the pixel refiner's width (0: none), got {cfg.refine}")
    if not 0 <= cfg.stain < 1:
        raise PathsegError(f"stain is a jitter strength in [0, 1) (0: none), got {cfg.stain}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    class_map = load_class_map(cfg.classes)
    backbone = _backbone(cfg.backbone)
    samples = load_tissue_samples(cfg.data, class_map, cfg.mpp_in, backbone.mpp if cfg.mpp_in else None)
    train, val = _split(samples, cfg)
    log(f"{len(train)} training and {len(val)} validation images")
    model = TissueModel(
        {
            "name": cfg.name,
            "mpp": backbone.mpp,
            "classes": [{"name": n, "color": list(c)} for n, c in zip(class_map.names, class_map.colors, strict=True)],
            "features": {"timesteps": list(cfg.timesteps), "blocks": list(cfg.blocks), "seed": cfg.seed},
            "head": {"hidden": cfg.hidden, "dilations": list(cfg.head_dilations), "refine": cfg.refine},
            "patch_size": cfg.crop,
        },
        backbone=backbone,
    )
    weights = class_weights(train, class_map.n_classes)
    opt = torch.optim.AdamW(model.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.iterations), eta_min=cfg.lr * 0.02)
    start, best = 0, {"mean_iou": -1.0}
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, best = int(state["iteration"]), json.loads(state["best"])
        trim_history(out / "history.jsonl", start)
        log(f"resumed from {ckpt} at iteration {start} (best validation mIoU {best['mean_iou']:.4f})")
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    bank = val_bank = None
    if cfg.cache:
        from pathseg.tissue.cache import FeatureBank

        t0 = time.perf_counter()
        keep = cfg.refine > 0
        bank = FeatureBank(
            model.features, train, cfg.crop, cfg.views, max_gb=cfg.cache_gb, images=keep, stain=cfg.stain, seed=cfg.seed
        )
        val_bank = FeatureBank(model.features, val, cfg.crop, 1, max_gb=cfg.cache_gb, images=keep) if val else None
        log(f"cached features of {len(bank)} training patches in {time.perf_counter() - t0:.0f} s")
    crops = TissueCrops(train, cfg.crop, seed=cfg.seed + start, stain=cfg.stain)
    rng = np.random.default_rng(cfg.seed + start)
    t0 = time.perf_counter()
    for it in range(start, cfg.iterations):
        model.head.train()
        if bank is not None:
            feats, y, x = bank.batch(cfg.batch, rng)
        else:
            x, y = crops.batch(cfg.batch)
            with torch.no_grad():
                feats = model.features(x)
        loss = head_loss(model.head, feats, y, weights, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step = it + 1
        record = {"iteration": step, "loss": float(loss.detach()), "lr": sched.get_last_lr()[0]}
        if val and (step % cfg.val_every == 0 or step == cfg.iterations):
            scores = evaluate_bank(model.head, val_bank) if val_bank is not None else evaluate_tissue(model, val)
            record["val"] = scores
            if scores["mean_iou"] > best["mean_iou"]:
                best = {**scores, "iteration": step}
                model.save_pretrained(out / "best")
            log(
                f"iteration {step}: loss {record['loss']:.4f}, validation accuracy {scores['accuracy']:.4f} "
                f"mDice {scores['mean_dice']:.4f} mIoU {scores['mean_iou']:.4f} (best {best['mean_iou']:.4f} at "
                f"{best['iteration']}), {(time.perf_counter() - t0) / (step - start):.2f} s/it"
            )
        with open(out / "history.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
            with atomic_path(ckpt) as tmp:
                payload = {
                    "head": model.head.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "iteration": step,
                    "best": json.dumps(best),
                }
                torch.save(payload, tmp)
        if progress:
            progress(step, cfg.iterations, f"loss {record['loss']:.3f} best mIoU {best['mean_iou']:.3f}")
    if not val:
        model.save_pretrained(out / "best")
    return best
