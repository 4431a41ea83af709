"""`pathseg train nuclei`: train (or fine-tune) a SAM-family nucleus model's AIS path on image / mask folders.

Resumable: a checkpoint (model, optimiser, schedule, iteration, RNG-free data sampling seed) is written atomically
every ``checkpoint_every`` iterations to ``<out>/checkpoint.pt``; running the same command again continues from it.
The best model by validation mSA (a split carved from the training images) is saved to ``<out>/best``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pathseg.errors import PathsegError
from pathseg.metrics import instance_scores
from pathseg.metrics.semantic import IGNORE
from pathseg.models.nucleus_sam import SamNucleusModel, compact_config
from pathseg.models.precision import resolve_precision
from pathseg.progress import ProgressCallback
from pathseg.train.checkpoint import resume, save_checkpoint, trim_history
from pathseg.train.data import CropSampler, Sample, find_manifest, load_samples
from pathseg.train.losses import ais_loss
from pathseg.train.prompts import check_box_jitter, prompt_loss


@dataclass
class TrainConfig:
    """Training settings. Pixel sizes in µm/px; crop in pixels at the model's pixel size."""

    data: list[str]
    out: str
    mpp_in: float = 0.25
    model_mpp: float = 0.5
    crop: int = 256
    batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    iterations: int = 20000
    warmup: int = 200
    val_fraction: float = 0.15
    val_every: int = 500
    checkpoint_every: int = 100
    seed: int = 0
    init: str | None = None
    name: str = "pathseg_nuclei_cpu"
    prompt_weight: float = 1.0  #: weight of the interactive (prompt) loss; 0 trains the AIS path only
    prompts_per_image: int = 4
    corrections: int = 2  #: corrective rounds per prompt (micro-sam uses 7 on GPUs)
    #: each edge of a simulated box moves by up to this fraction of the box's longer side (0: exact boxes)
    box_jitter: float = 0.05
    device: str = "auto"  #: "auto" (CUDA if available), "cpu" or "cuda"
    check_sync: bool = False  #: at the end, verify that all distributed replicas hold identical weights
    task: str = "nuclei"  #: "nuclei" (AIS + prompts) or "classes" (adds the semantic decoder, class-weighted CE)
    #: "auto" (bf16 where the device computes it natively, else fp32), "bf16" (mixed precision autocast; ~3x faster
    #: on CPUs with AVX512-BF16, ~7x slower where it is emulated) or "fp32"
    precision: str = "auto"
    #: train one decoder alone on ``init``'s frozen encoder. Task "classes": the class decoder (the nuclei outputs
    #: stay exactly as in ``init``, so the class decoder is a small add-on). Task "nuclei": the AIS decoder at
    #: ``model_mpp``, which becomes the model's ``ais_mpp`` (the prompt path and the class decoder keep the pixel size
    #: they were trained at and stay exactly as in ``init``). ``"mask"`` (task "nuclei"): the prompt path's prompt
    #: encoder + mask decoder at ``model_mpp``, which becomes the model's ``prompt_mpp``; prompt loss only, the best
    #: checkpoint by validation box + point mSA; automatic and class outputs stay exactly as in ``init``. Any
    #: "classes" run: ``model_mpp`` becomes ``class_mpp``
    decoder_only: bool | str = False
    #: task "classes" only: a named class set (``pannuke``, ``consep``) fixing the number, names and colours of the
    #: classes (type masks hold its ids); default: as many classes as the data holds, names from a classes.csv
    class_preset: str | None = None
    #: task "classes", whole model only: folders of image + instance-mask pairs without class masks, trained beside
    #: ``data`` by the AIS and prompt losses (the class loss ignores their pixels), so that a class run keeps what
    #: the model does on them. Each dataset keeps the validation split it would have alone; the best checkpoint is
    #: the one with the best class Dice + the mix's validation mSA (``joint``)
    mix: list[str] = field(default_factory=list)
    #: the pixel size (µm/px) ``mix`` is trained and validated at (default ``model_mpp``): e.g. ``init``'s
    #: ``ais_mpp``, so that a class run at a ``class_mpp`` of 0.5 keeps its MoNuSeg crops at the automatic path's 0.38
    mix_mpp: float | None = None
    #: BatchNorm layers stay in eval mode: their running statistics stay as ``init`` has them (weights still train)
    freeze_bn: bool = False
    extra: dict = field(default_factory=dict)


#: the class id of pixels the class loss ignores (the ``mix`` data's): the shared ignored target
NO_CLASS = IGNORE


def split_validation(
    samples: list[Sample], fraction: float, seed: int, groups: dict[str, str] | None = None
) -> tuple[list[Sample], list[Sample]]:
    """Carve a validation split (at least one image when ``fraction`` > 0) from the training samples.

    With ``groups`` (sample name -> source image), whole groups go to one side, so tiles cut from the same image
    never sit on both sides of the split.
    """
    if fraction <= 0:
        return samples, []
    keys = [groups.get(s.name, s.name) if groups else s.name for s in samples]
    unique = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val = max(1, int(round(fraction * len(unique))))
    if n_val >= len(unique):
        raise PathsegError(f"validation split of {n_val} leaves no training image ({len(unique)} in total)")
    val_keys = {unique[int(i)] for i in order[:n_val]}
    return (
        [s for s, k in zip(samples, keys, strict=True) if k not in val_keys],
        [s for s, k in zip(samples, keys, strict=True) if k in val_keys],
    )


def source_groups(folders: list[str]) -> dict[str, str]:
    """Sample name -> source image, from a ``manifest.csv`` (columns ``id``, ``source_image``) beside or above
    the data folders (the CoNSeP layout); empty when there is none."""
    import csv

    groups: dict[str, str] = {}
    for folder in folders:
        manifest = find_manifest(folder)
        if manifest is not None:
            with open(manifest, newline="") as fh:
                for row in csv.DictReader(fh):
                    if "source_image" in row and "id" in row:
                        groups[row["id"]] = row["source_image"]
    return groups


def native_validation(folders: list[str], mpp_in: float, val: list[Sample]) -> list[Sample]:
    """The images and masks of ``val`` read again at their own pixel size ``mpp_in`` (µm/px), where the benchmarks
    score them: masks resampled to the model's pixel size lose outline detail (up to ~0.013 mSA)."""
    return load_samples(folders, mpp_in, mpp_in, names={s.name for s in val}) if val else []


def evaluate(model: SamNucleusModel, samples: list[Sample], mpp: float) -> dict[str, float]:
    """Mean instance scores of the model's automatic segmentation on ``samples`` (at the model's pixel size)."""
    model.eval()
    rows = [instance_scores(s.labels, model.segment(s.image, mpp)) for s in samples]
    return {k: float(np.mean([r[k] for r in rows])) for k in ("msa", "sa50", "aji", "pq", "dice")}


def evaluate_prompts(model: SamNucleusModel, samples: list[Sample], mpp: float) -> dict[str, float]:
    """Mean mSA of box and of single-point prompts on every object of ``samples`` (images at ``mpp`` µm/px; the
    predictor runs the prompt path at the model's :attr:`~SamNucleusModel.prompt_mpp`)."""
    from pathseg.nuclei.interactive import Predictor
    from pathseg.nuclei.simulate import simulate_prompts

    rows = []
    for s in samples:
        pred = Predictor(model)
        pred.set_image(s.image, mpp)
        out = simulate_prompts(pred, s.labels.astype(np.int64), kinds=("point", "box"))
        rows.append({f"msa_{k}": instance_scores(s.labels, v)["msa"] for k, v in out.items()})
    scores = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    scores["msa_prompts"] = (scores["msa_point"] + scores["msa_box"]) / 2
    return scores


#: the modules each ``decoder_only`` choice trains (True: the task's own decoder)
_DECODER_PARTS = {"ais": ("ais",), "semantic": ("semantic",), "mask": ("sam.prompt_encoder", "sam.mask_decoder")}


def _trained_decoder(cfg: TrainConfig) -> str | None:
    """Which decoder a run trains alone (``None``: the whole model)."""
    if not cfg.decoder_only:
        return None
    if cfg.decoder_only is True:
        return "semantic" if cfg.task == "classes" else "ais"
    choice = cfg.decoder_only
    if choice not in _DECODER_PARTS or (cfg.task == "classes") != (choice == "semantic"):
        allowed = (
            "--decoder-only alone (the class decoder)"
            if cfg.task == "classes"
            else "--decoder-only alone or 'ais' (the AIS decoder), or 'mask' (the prompt path's decoder)"
        )
        raise PathsegError(f"--decoder-only {choice!r} does not apply to task {cfg.task!r}: use {allowed}")
    return choice


def _prepare_classes(model: SamNucleusModel, train: list[Sample], cfg: TrainConfig) -> torch.Tensor:
    """Give the model a semantic decoder sized to the data's classes (if it has none) and return inverse-frequency
    class weights (normalised to mean 1) from the training type masks."""
    n_classes = int(max(int(s.types[s.types != NO_CLASS].max(initial=0)) for s in train)) + 1
    preset = None
    if cfg.class_preset:
        from pathseg.models.nucleus_sam import CLASS_PRESETS

        if cfg.class_preset not in CLASS_PRESETS:
            raise PathsegError(f"unknown class preset {cfg.class_preset!r}; one of {', '.join(CLASS_PRESETS)}")
        preset = CLASS_PRESETS[cfg.class_preset]
        if n_classes > len(preset):
            raise PathsegError(
                f"the type masks hold class ids up to {n_classes - 1}; preset {cfg.class_preset!r} has "
                f"{len(preset) - 1} classes"
            )
        n_classes = len(preset)
    if model.semantic is None:
        sem_cfg = {**model.config["ais_decoder"], "out_channels": n_classes}
        model.config["semantic_decoder"] = sem_cfg
        from pathseg.models.nucleus_sam import _build_decoder

        model.semantic = _build_decoder(sem_cfg, final_activation=None)
    elif model.semantic.out_channels < n_classes:
        raise PathsegError(
            f"the model's class decoder has {model.semantic.out_channels} outputs; the data has {n_classes} classes"
        )
    names = _class_names(cfg.data)
    model.config["semantic_classes"] = (
        [dict(c) for c in preset]
        if preset is not None
        else [
            {"name": names.get(i, f"class {i}"), "color": _COLORS[i % len(_COLORS)]}
            for i in range(model.semantic.out_channels)
        ]
    )
    counts = np.zeros(model.semantic.out_channels)
    for s in train:
        counts += np.bincount(s.types[s.types != NO_CLASS], minlength=counts.size)[: counts.size]
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
    weights = weights / weights[counts > 0].mean()
    return torch.tensor(weights, dtype=torch.float32)


_COLORS = [[0, 0, 0], [255, 0, 0], [0, 200, 0], [0, 0, 255], [255, 200, 0], [200, 0, 255], [0, 200, 200]]


def _class_names(folders: list[str]) -> dict[int, str]:
    import csv

    for folder in folders:
        for f in (Path(folder) / "classes.csv", Path(folder).parent / "classes.csv"):
            if f.is_file():
                with open(f, newline="") as fh:
                    return {int(r["id"]): r["name"] for r in csv.DictReader(fh)}
    return {}


def evaluate_classes(model: SamNucleusModel, samples: list[Sample], mpp: float) -> dict[str, float]:
    """Mean per-class Dice (classes > 0) of the per-nucleus vote on the ground-truth nuclei of ``samples``."""
    from pathseg.nuclei.classes import vote_classes

    model.eval()
    n = model.semantic.out_channels
    inter, total = np.zeros(n), np.zeros(n)
    for s in samples:
        probs = model.class_probabilities(s.image, mpp)
        ids, cls, _ = vote_classes(s.labels, probs)
        lut = np.zeros(int(s.labels.max()) + 1, dtype=np.int64)
        lut[ids] = cls
        pred = lut[s.labels]
        for c in range(1, n):
            a, b = pred == c, s.types == c
            inter[c] += (a & b).sum()
            total[c] += a.sum() + b.sum()
    dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), np.nan)[1:]
    return {"class_dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else 0.0}


def _lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising torch.distributed when launched by torchrun (WORLD_SIZE > 1)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the parameters (BatchNorm statistics are re-broadcast from rank 0 at every DDP forward)."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.named_parameters()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


class _TrainStep(torch.nn.Module):
    """Every loss of one step inside one forward, so DistributedDataParallel sees all parameters it syncs."""

    def __init__(self, model: SamNucleusModel, cfg: TrainConfig, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.decoder = _trained_decoder(cfg)  # None: the whole model learns
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, x, y, labels, rng, step: int, amp: bool, types=None):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            pred, embedding, sem = self.model.forward_train(x, with_semantic=self.cfg.task == "classes")
        if self.decoder in ("semantic", "mask"):
            loss, parts = pred.new_zeros((), dtype=torch.float32), {}
        else:
            loss, parts = ais_loss(pred.float(), y)
        if sem is not None:
            if (types != NO_CLASS).any():
                l_cls = F.cross_entropy(sem.float(), types, weight=self.class_weights, ignore_index=NO_CLASS)
            else:  # a batch of --mix crops only: no class pixels (kept in the graph for DistributedDataParallel)
                l_cls = sem.float().sum() * 0.0
            loss = loss + l_cls
            parts["classes"] = float(l_cls.detach())
        if self.cfg.prompt_weight > 0 and self.decoder in (None, "mask"):
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                l_prompt = prompt_loss(
                    self.model.sam,
                    embedding.float(),
                    labels,
                    rng,
                    self.cfg.prompts_per_image,
                    self.cfg.corrections,
                    step=step,
                    box_candidates=self.model.box_fit,
                    box_jitter=self.cfg.box_jitter,
                )
            loss = loss + self.cfg.prompt_weight * l_prompt.float()
            parts["prompt"] = float(l_prompt.detach())
        return loss, parts


def _path_mpps(model: SamNucleusModel) -> dict[str, float]:
    """The pixel sizes (µm/px) each path of ``model`` runs at: the model's, automatic, prompts, classes."""
    out = {"model": model.mpp, "automatic": model.ais_mpp, "prompts": model.prompt_mpp}
    if model.semantic is not None or "class_mpp" in model.config:
        out["classes"] = model.class_mpp
    return out


#: a run's ``precision`` as the inference precision it resolves like (:mod:`pathseg.models.precision`)
_TRAINING_PRECISIONS = {"auto": "auto", "bf16": "bfloat16", "fp32": "float32"}


def training_amp(precision: str, device: torch.device) -> bool:
    """Whether a run trains under bf16 autocast: ``bf16`` always, ``fp32`` never, ``auto`` where ``device`` computes
    bfloat16 natively (:func:`pathseg.models.precision.resolve_precision`; emulated bfloat16 is several times
    slower)."""
    if precision not in _TRAINING_PRECISIONS:
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return resolve_precision(_TRAINING_PRECISIONS[precision], device) == "bfloat16"


def train_nuclei(cfg: TrainConfig, progress: ProgressCallback | None = None, log=print) -> dict:
    """Run (or resume) training; returns the best validation scores.

    Under ``torchrun`` (several processes, GPUs or machines) each process trains a DistributedDataParallel replica
    on its own random crops; rank 0 validates and writes checkpoints.
    """
    trained = _trained_decoder(cfg)  # a --decoder-only that does not fit the task stops before any data is read
    if cfg.mix and (cfg.task != "classes" or cfg.decoder_only):  # likewise a --mix that does not fit
        raise PathsegError("--mix joins data without classes to a class run of the whole model (no --decoder-only)")
    check_box_jitter(cfg.box_jitter)
    if cfg.mix_mpp is not None and not cfg.mix:
        raise PathsegError("--mix-mpp sets the pixel size of --mix data: give --mix too")
    if cfg.mix_mpp is not None and cfg.mix_mpp <= 0:
        raise PathsegError(f"--mix-mpp must be a positive pixel size in µm/px, got {cfg.mix_mpp}")
    mix_mpp = cfg.model_mpp if cfg.mix_mpp is None else cfg.mix_mpp
    rank, world = _distributed()
    if rank != 0:
        progress, log = None, (lambda *a, **k: None)
    device = torch.device(
        "cuda"
        if (cfg.device == "auto" and torch.cuda.is_available())
        else (cfg.device if cfg.device != "auto" else "cpu")
    )
    if device.type == "cuda" and world > 1:
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = torch.device("cuda", rank % torch.cuda.device_count())
    amp = training_amp(cfg.precision, device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    samples = load_samples(cfg.data, cfg.mpp_in, cfg.model_mpp, with_types=cfg.task == "classes")
    train, val = split_validation(samples, cfg.val_fraction, cfg.seed, source_groups(cfg.data))
    log(f"{len(train)} training and {len(val)} validation images ({', '.join(s.name for s in val)})")
    val_native = native_validation(cfg.data, cfg.mpp_in, val) if rank == 0 else []
    mix_val: list[Sample] = []
    mix_native: list[Sample] = []
    if cfg.mix:
        mixed = load_samples(cfg.mix, cfg.mpp_in, mix_mpp)
        for s in mixed:
            s.types = np.full(s.labels.shape, NO_CLASS, dtype=np.int32)
        mix_train, mix_val = split_validation(mixed, cfg.val_fraction, cfg.seed, source_groups(cfg.mix))
        names = ", ".join(s.name for s in mix_val)
        log(f"--mix: {len(mix_train)} training and {len(mix_val)} validation images without classes ({names})")
        log(f"--mix data at {mix_mpp:g} µm/px, --data at {cfg.model_mpp:g} µm/px")
        train = train + mix_train
        mix_native = native_validation(cfg.mix, cfg.mpp_in, mix_val) if rank == 0 else []
    if cfg.init:  # fine-tune: a pathseg model folder, a checkpoint file, or a zoo name (e.g. pathosam_vit_b)
        from pathseg.models.zoo import get_nucleus_model

        model = get_nucleus_model(cfg.init)
        if not isinstance(model, SamNucleusModel):
            raise PathsegError(f"--init {cfg.init!r} is not a SAM-family model")
        before = _path_mpps(model)
        if cfg.task == "classes":  # the class path works at model_mpp; otherwise it keeps its trained pixel size
            model.config["class_mpp"] = cfg.model_mpp
        elif model.semantic is not None:
            model.config["class_mpp"] = model.class_mpp
        if trained == "ais":
            model.config["ais_mpp"] = cfg.model_mpp  # only the automatic path moves to the new pixel size
        elif trained == "mask":
            model.config["prompt_mpp"] = cfg.model_mpp  # only the prompt path moves
        elif not cfg.decoder_only:
            model.config["mpp"] = cfg.model_mpp
        if trained in (None, "ais") and model.ais_precision == "int8":  # the network its ranges belong to trains
            model.config.pop("ais_int8", None)
            model.config["ais_precision"], model.int8_qparams = "float32", None
            log(
                "--init's int8 ranges are left out (they fit its own encoder and AIS decoder, which train here); "
                "validation runs in float32; recalibrate the result with `pathseg models int8`"
            )
        if trained in (None, "semantic") and model.config.get("class_precision") == "int8":  # likewise for classes
            model.config.pop("class_int8", None)
            model.config["class_precision"], model.class_int8_qparams = "float32", None
            log("--init's class int8 ranges are left out (their network trains here); recalibrate: pathseg models int8")
        after = _path_mpps(model)
        log(
            "pixel sizes (µm/px) of --init's paths: "
            + ", ".join(
                f"{k} {after[k]:g} (new)"
                if k not in before
                else f"{k} {before[k]:g} -> {after[k]:g}"
                if before[k] != after[k]
                else f"{k} {after[k]:g} (kept)"
                for k in after
            )
        )
    else:
        model = SamNucleusModel(compact_config(mpp=cfg.model_mpp, name=cfg.name))
    class_weights = None
    if cfg.task == "classes":
        class_weights = _prepare_classes(model, train, cfg)
    if trained is not None:  # with decoder_only: the one decoder that learns
        if not cfg.init:
            raise PathsegError(f"--decoder-only needs --init: the model whose encoder the {trained} decoder reads")
        if trained != "mask" and getattr(model, trained) is None:  # every SAM-family model has a mask decoder
            raise PathsegError(f"--init {cfg.init!r} has no {trained} decoder to train")
        if trained == "mask" and cfg.prompt_weight <= 0:
            raise PathsegError("--decoder-only mask trains by the prompt loss: --prompt-weight must be > 0")
        if trained == "ais" and (model.refiner is not None or model.box_from_ais is not None):
            log(
                "note: this model's prompt answers read the AIS decoder (its refiners' guide; box prompts may take "
                "an automatic nucleus), so they move with it: check them with benchmarks/interactive.py, or retrain "
                "the refiners with `pathseg train nuclei-refiner --init RUN/best`"
            )
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(tuple(f"{m}." for m in _DECODER_PARTS[trained])))
        params = [p for p in model.parameters() if p.requires_grad]
    elif cfg.task == "classes":
        params = list(model.parameters())
    else:
        params = [p for n, p in model.named_parameters() if not n.startswith("semantic.")]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    # the validation score that selects the best checkpoint
    if cfg.mix:
        key = "joint"
    else:
        key = "class_dice" if cfg.task == "classes" else "msa_prompts" if trained == "mask" else "msa"
    start, best = 0, {key: -1.0}
    ckpt_path = out / "checkpoint.pt"
    resumed = resume(ckpt_path, model, "model", opt, sched)
    if resumed:
        start, best = resumed
        if rank == 0:  # the one process that writes the history
            trim_history(out / "history.jsonl", start)
        log(f"resumed from {ckpt_path} at iteration {start} (best validation {key} {best.get(key, -1.0):.4f})")
    # fresh crops for a resumed run and for every replica
    sampler = CropSampler(train, cfg.crop, seed=cfg.seed + start + 100_003 * rank)
    prompt_rng = np.random.default_rng(cfg.seed + 7919 + start + 100_003 * rank)
    if rank == 0:
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    model = model.to(device, memory_format=torch.channels_last)
    mean = model.sam.pixel_mean
    std = model.sam.pixel_std
    log(f"precision: {'bf16 mixed' if amp else 'fp32'} ({cfg.precision})")
    net = _TrainStep(model, cfg, class_weights)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # some prompt-encoder parameters are unused in a given step (box vs point prompts, mask feedback)
        net = DistributedDataParallel(net, find_unused_parameters=True)
    history = out / "history.jsonl"
    t0 = time.perf_counter()
    # with freeze_bn: the BatchNorm layers put back into eval mode after every model.train()
    bn = torch.nn.modules.batchnorm._BatchNorm
    frozen_bn = [m for m in model.modules() if isinstance(m, bn)] if cfg.freeze_bn else []
    for it in range(start, cfg.iterations):
        model.train(trained is None)  # frozen parts stay in eval mode: their BatchNorm statistics must not move
        for part in _DECODER_PARTS.get(trained, ()):
            model.get_submodule(part).train()
        for m in frozen_bn:
            m.eval()
        x, y, labels, types = sampler.batch(cfg.batch)
        x, y = x.to(device), y.to(device)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        loss, parts = net(x, y, labels.to(device), prompt_rng, it, amp, types.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        step = it + 1
        record = {"iteration": step, "loss": float(loss.detach()), **parts, "lr": sched.get_last_lr()[0]}
        if rank == 0 and val and (step % cfg.val_every == 0 or step == cfg.iterations):
            if trained == "mask":  # the automatic path does not change
                model.eval()
                scores = evaluate_prompts(model, val_native, cfg.mpp_in)
            else:
                scores = evaluate(model, val_native, cfg.mpp_in)
            if cfg.task == "classes":
                scores.update(evaluate_classes(model, val, cfg.model_mpp))
            if mix_val:
                scores["msa_mix"] = evaluate(model, mix_native, cfg.mpp_in)["msa"]
                scores["joint"] = scores["class_dice"] + scores["msa_mix"]
            record["val"] = scores
            if scores[key] > best.get(key, -1.0):
                best = {**scores, "iteration": step}
                model.save_pretrained(out / "best")
            shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if k != "dice")
            log(
                f"iteration {step}: loss {record['loss']:.4f}, validation {shown} "
                f"(best {key} {best[key]:.4f} at {best.get('iteration')}), "
                f"{(time.perf_counter() - t0) / (step - start):.2f} s/it"
            )
        if rank == 0:
            with open(history, "a") as f:
                f.write(json.dumps(record) + "\n")
        if rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.iterations):
            save_checkpoint(ckpt_path, model, "model", opt, sched, step, best)
        if progress:
            progress(step, cfg.iterations, f"loss {record['loss']:.3f} best {key} {best.get(key, -1.0):.3f}")
    if rank == 0 and not val:
        model.save_pretrained(out / "best")
    if world > 1:
        import torch.distributed as dist

        if cfg.check_sync:
            digests = [None] * world
            dist.all_gather_object(digests, _weights_digest(model))
            if len(set(digests)) != 1:
                raise RuntimeError(f"distributed replicas diverged: {digests}")
            log(f"all {world} replicas in sync (weights sha256 {digests[0][:16]})")
        dist.barrier()
        dist.destroy_process_group()
    return best
