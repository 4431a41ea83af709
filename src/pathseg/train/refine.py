"""`pathseg train nuclei-refiner`: train the prompt-mask refiner of a compact nucleus model, everything else frozen.

The image encoder, AIS decoder, prompt encoder and mask decoder stay exactly as in ``init`` (so automatic
segmentation is unchanged); only the small :class:`~pathseg.models.refine.MaskRefiner` learns, from prompts
simulated as in :mod:`pathseg.train.prompts` (a point or a box, then corrective points from the refined mask's
errors). A model with several refiners (for corrections, for boxes alone) trains each on the prompts it answers in
the predictor, so fine-tuning the bundled model on new data moves every refiner its users' prompts reach.
Loss per round: Dice + binary cross-entropy (in the refined region) of the best candidate, + MSE of the
predicted IoU. For a model that fits a box's candidates to the box (``box_fit``), a first box prompt is answered
with 3 candidates as in the predictor, and all of them learn. Resumable (``<out>/checkpoint.pt``); the best refiner
by validation mSA of box and point prompts (of boxes alone with ``prompts="box"``, a box refiner) is saved with
its model to ``<out>/best``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pathseg.errors import PathsegError
from pathseg.models.nucleus_sam import SamNucleusModel, _build_refiner
from pathseg.models.refine import prompt_roi, refine_roi
from pathseg.progress import ProgressCallback
from pathseg.train.checkpoint import resume, save_checkpoint, trim_history
from pathseg.train.data import CropSampler, load_samples
from pathseg.train.nuclei import _lr_lambda, evaluate_prompts, native_validation, source_groups, split_validation
from pathseg.train.prompts import (
    add_corrective_points,
    check_box_jitter,
    first_outputs,
    first_prompts,
    sample_objects,
)


@dataclass
class RefinerConfig:
    """Settings. ``init``: the model to add a refiner to (zoo name or folder); crop in model pixels."""

    data: list[str]
    out: str
    init: str = "pathseg_nuclei_cpu"
    mpp_in: float = 0.25
    crop: int = 256
    batch: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    iterations: int = 1500
    warmup: int = 50
    val_fraction: float = 0.15  #: the same split (fraction, seed) as `train nuclei`, so validation stays unseen
    val_every: int = 250
    checkpoint_every: int = 50
    seed: int = 0
    prompts_per_image: int = 8
    corrections: int = 2
    #: each simulated box edge moves by up to this fraction of the box's longer side (0: exact boxes)
    box_jitter: float = 0.05
    width: int = 32  #: channels of a new refiner's convolutions (a fine-tuned refiner keeps its own)
    dilations: tuple[int, ...] = (1, 2, 4, 8)  #: a new refiner's 3x3 layers (receptive field 1 + 2 * sum, model px)
    prompt_channels: int = 3  #: the refiner also sees the prompts (box, positive and negative points)
    #: a new refiner's guide also holds this many channels projected from the AIS decoder's last features (0: none)
    feature_channels: int = 0
    #: "both": points and boxes in turn; "box": boxes alone, the best by validation box mSA kept: init's box_refiner
    #: if it has one, else init's refiner fine-tuned into one (shipped by tools/bundle_nuclei_model.py --for-boxes);
    #: the main refiner's feature projection stays frozen
    prompts: str = "both"


def refiner_loss(
    model: SamNucleusModel,
    embeddings: torch.Tensor,
    guide: torch.Tensor,
    labels: torch.Tensor,
    rng: np.random.Generator,
    per_image: int,
    n_corrections: int,
    use_box: bool,
    box_jitter: float = 0.05,
) -> torch.Tensor:
    """Mean refiner loss over simulated prompts for objects of ``labels`` (B, H, W); ``embeddings`` and ``guide``
    (B, C, H, W) come from the frozen model on the same crops; boxes are jittered by ``box_jitter`` (see
    :func:`~pathseg.train.prompts.first_prompts`)."""
    picks = sample_objects(labels, per_image, rng)
    if not picks:
        return sum(p.sum() for p in model.refiner.parameters()) * 0.0
    h, w = labels.shape[-2:]
    masks = [(labels[b] == lab).numpy() for b, lab in picks]
    emb = embeddings[[b for b, _ in picks]]
    points, point_labels, boxes = first_prompts(masks, rng, use_box, box_jitter)
    total = torch.zeros(())
    mask_input = None
    # a box alone gets the decoder's 3 candidates when the model fits them to the box (box_fit): any of them may be
    # chosen, so each learns to be the object; otherwise only the best candidate learns, as in the mask decoder's loss
    multimask, every = first_outputs(use_box, model.box_fit)
    for round_ in range(n_corrections + 1):
        pts = None
        if points[0]:
            pts = (torch.tensor(points, dtype=torch.float32), torch.tensor(point_labels, dtype=torch.float32))
        with torch.no_grad():
            low, _ = model.sam.decode(emb, pts, boxes, mask_input, multimask_output=multimask)
            coarse = F.interpolate(low, scale_factor=4, mode="bilinear", align_corners=False)[..., :h, :w]
        # the refiner that answers this round in the predictor (a box alone, a correction with mask feedback)
        refiner = model.refiner_for(feedback=mask_input is not None, box_alone=boxes is not None and pts is None)
        chosen_low, refined = [], []
        for i, (b, _) in enumerate(picks):
            gt = torch.from_numpy(masks[i]).float()
            pts_i = np.array(points[i]) if points[i] else None
            box_i = None if boxes is None else boxes[i].numpy()
            roi = prompt_roi((coarse[i] > 0).numpy(), (h, w), pts_i, box_i)
            y0, x0, y1, x1 = roi
            logits, iou = refine_roi(refiner, coarse[i], guide[b], roi, pts_i, point_labels[i] or None, box_i)
            gt_roi = gt[y0:y1, x0:x1]
            outside = float(gt.sum() - gt_roi.sum())  # object pixels the region misses count as misses
            p = torch.sigmoid(logits)
            inter = (p * gt_roi).sum((1, 2))
            dice = 1 - (2 * inter + 1.0) / (p.sum((1, 2)) + gt_roi.sum() + outside + 1.0)
            best = int(dice.argmin())
            if every:
                seg = dice.mean() + F.binary_cross_entropy_with_logits(logits, gt_roi.expand_as(logits))
            else:
                seg = dice[best] + F.binary_cross_entropy_with_logits(logits[best], gt_roi)
            with torch.no_grad():
                hard = (logits > 0).float()
                union = ((hard + gt_roi) > 0).float().sum((1, 2)) + outside
                true_iou = (hard * gt_roi).sum((1, 2)) / union.clamp_min(1)
            total = total + seg + F.mse_loss(iou, true_iou)
            chosen_low.append(low[i, best])
            full = np.zeros((h, w), bool)
            full[y0:y1, x0:x1] = (logits[best] > 0).detach().numpy()
            refined.append(full)
        if round_ == n_corrections:
            break
        add_corrective_points(masks, refined, points, point_labels, rng)
        mask_input = torch.stack(chosen_low)[:, None] if rng.random() < 0.5 else None
        multimask = every = False
    return total / (len(picks) * (n_corrections + 1))


def _load_model(cfg: RefinerConfig) -> tuple[SamNucleusModel, bool]:
    """The frozen ``init`` model with a trainable refiner, and whether that refiner is ``init``'s own (fine-tuning)."""
    from pathseg.models.zoo import get_nucleus_model

    if cfg.corrections < 0:  # settings that need no model are checked before loading one
        raise PathsegError(f"corrections must be >= 0, got {cfg.corrections}")
    check_box_jitter(cfg.box_jitter)
    if cfg.width < 1 or not cfg.dilations or min(cfg.dilations) < 1:
        raise PathsegError(f"a refiner needs width >= 1 and dilations >= 1, got {cfg.width} and {list(cfg.dilations)}")
    if cfg.prompts not in ("both", "box"):
        raise PathsegError(f"prompts must be 'both' or 'box', got {cfg.prompts!r}")
    model = get_nucleus_model(cfg.init)
    if not isinstance(model, SamNucleusModel) or not model.is_compact or model.ais is None:
        raise PathsegError(f"--init {cfg.init!r}: the refiner needs a compact SAM-family model with an AIS decoder")
    if cfg.crop > model.sam.img_size:  # the prompt encoder's positional grid covers one window, no more
        raise PathsegError(
            f"--init {cfg.init!r}: its prompt window is {model.sam.img_size} px, smaller than the {cfg.crop} px "
            "training crops (models made by `pathseg train nuclei` have a 512 px window)"
        )
    own = model.refiner is not None
    if cfg.prompts == "box" and not own:
        raise PathsegError(
            f"--init {cfg.init!r}: --prompts box fine-tunes a model's refiner (into a box refiner, or its box "
            "refiner), so it needs a model with a refiner"
        )
    if cfg.feature_channels < 0 or (cfg.feature_channels and not hasattr(model.ais, "features")):
        raise PathsegError(f"feature channels need >= 0 and a U-Net AIS decoder, got {cfg.feature_channels}")
    asked = (cfg.width, tuple(cfg.dilations), cfg.feature_channels)
    if own:
        have = (model.refiner.width, model.refiner.dilations, model.refiner.feature_channels)
        default = (RefinerConfig.width, RefinerConfig.dilations, RefinerConfig.feature_channels)
        if asked not in (have, default):
            raise PathsegError(
                f"--init {cfg.init!r} has a refiner (width {have[0]}, dilations {list(have[1])}, feature channels "
                f"{have[2]}) that is fine-tuned as it is; --width, --dilations and --feature-channels shape a new "
                "refiner only, for a model without one"
            )
    if not own:
        model.config["mask_refiner"] = {
            "width": cfg.width,
            "dilations": [int(d) for d in cfg.dilations],
            "prompt_channels": cfg.prompt_channels,
        }
        if cfg.feature_channels:
            model.config["mask_refiner"].update(
                feature_in=int(model.ais.out_conv.in_channels), feature_channels=cfg.feature_channels
            )
        model.refiner = _build_refiner(model.config["mask_refiner"])
    for p in model.parameters():
        p.requires_grad_(False)
    for refiner in _refiners(model).values():  # each learns the prompts it answers in the predictor
        refiner.requires_grad_(True)
    if cfg.prompts == "box" and model.refiner.project is not None:  # a box refiner reads the main refiner's guide
        model.refiner.project.requires_grad_(False)
    return model.eval(), own


def _refiners(model: SamNucleusModel) -> torch.nn.ModuleDict:
    """The model's refiners by attribute name: the main one, and its correction and box refiners if it has them."""
    names = ("refiner", "correction_refiner", "box_refiner")
    return torch.nn.ModuleDict({n: getattr(model, n) for n in names if getattr(model, n) is not None})


def train_refiner(cfg: RefinerConfig, progress: ProgressCallback | None = None, log=print) -> dict:
    """Run (or resume) refiner training; returns the best validation scores."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model, fine_tune = _load_model(cfg)
    samples = load_samples(cfg.data, cfg.mpp_in, model.prompt_mpp)  # the refiner learns where it will work
    train, val = split_validation(samples, cfg.val_fraction, cfg.seed, source_groups(cfg.data))
    log(f"{len(train)} training and {len(val)} validation images ({', '.join(s.name for s in val)})")
    val = native_validation(cfg.data, cfg.mpp_in, val)  # scored where the benchmarks score them
    refiners = _refiners(model)
    log(f"training {', '.join(refiners)}")
    params = [p for p in refiners.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    key = "msa_box" if cfg.prompts == "box" else "msa_prompts"
    start, best = 0, {key: -1.0}
    ckpt_path = out / "checkpoint.pt"
    resumed = resume(ckpt_path, refiners, "refiners", opt, sched)
    if resumed:
        start, best = resumed
        trim_history(out / "history.jsonl", start)
        log(f"resumed from {ckpt_path} at iteration {start} (best validation {key} {best.get(key, -1.0):.4f})")
    elif fine_tune and val:  # the refiner to beat is init's own: best starts as it, so a worse run ships nothing new
        best = {**evaluate_prompts(model, val, cfg.mpp_in), "iteration": 0}
        model.save_pretrained(out / "best")
        log(f"init's refiner: validation mSA box {best['msa_box']:.4f} point {best['msa_point']:.4f}")
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    sampler = CropSampler(train, cfg.crop, seed=cfg.seed + start)
    rng = np.random.default_rng(cfg.seed + 7919 + start)
    mean, std = model.sam.pixel_mean, model.sam.pixel_std
    t0 = time.perf_counter()
    for it in range(start, cfg.iterations):
        x, _, labels, _ = sampler.batch(cfg.batch)
        x = (x - mean) / std
        with torch.no_grad():
            emb, maps, features = model.guide_inputs(x)
        guide = model.refiner.guide(x, maps, features)  # a feature projection learns with the refiner
        loss = refiner_loss(
            model,
            emb,
            guide,
            labels,
            rng,
            cfg.prompts_per_image,
            cfg.corrections,
            cfg.prompts == "box" or it % 2 == 1,
            cfg.box_jitter,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        step = it + 1
        record = {"iteration": step, "loss": float(loss.detach()), "lr": sched.get_last_lr()[0]}
        if val and (step % cfg.val_every == 0 or step == cfg.iterations):
            scores = evaluate_prompts(model, val, cfg.mpp_in)
            record["val"] = scores
            if scores[key] > best.get(key, -1.0):
                best = {**scores, "iteration": step}
                model.save_pretrained(out / "best")
            log(
                f"iteration {step}: loss {record['loss']:.4f}, validation mSA box {scores['msa_box']:.4f} "
                f"point {scores['msa_point']:.4f} (best {key} {best[key]:.4f} at {best.get('iteration')}), "
                f"{(time.perf_counter() - t0) / (step - start):.2f} s/it"
            )
        with open(out / "history.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
            save_checkpoint(ckpt_path, refiners, "refiners", opt, sched, step, best)
        if progress:
            progress(step, cfg.iterations, f"loss {record['loss']:.3f} best {key} {best.get(key, -1.0):.3f}")
    if not val:
        model.save_pretrained(out / "best")
    return best
