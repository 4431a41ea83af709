"""`pathseg pretrain diffusion`: train pathseg's own small latent diffusion backbone on unlabeled H&E.

Same code path as the paper's model (:class:`DiffusionBackbone`: diffusers VQ autoencoder + conditional UNet +
SSL conditioner), at CPU scale. Two stages, resumable from ``<out>/checkpoint.pt``:

1. ``vq``: the autoencoder's encoder and decoder on continuous latents (L1 reconstruction + a small L2 penalty
   that keeps the latents bounded). The quantiser is bypassed: features are always taken from the unquantised
   latents, and at CPU scale a fresh codebook only drifts away from the encoder (the commitment loss grew
   without bound in our trials). Afterwards the latent scaling factor is set to 1 / std of the latents (LDM's
   ``scale_by_std``).
2. ``unet``: the noise-prediction UNet and the conditioner on the frozen autoencoder's (unquantised) latents;
   t uniform in 0..T-1, epsilon MSE, the conditioning embedding dropped (zeros) with probability ``p_uncond``.

Conditioning encoder: pathseg's compact CNN image encoder from the bundled nucleus model (trained here on H&E
nuclei), mean-pooled to a 256-d patch embedding, frozen: an H&E-specific encoder we have, where HIPT's weights
cannot be downloaded. Images only (masks never read); pass training splits only.
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
from pathseg.io.atomic import atomic_path
from pathseg.io.images import image_files
from pathseg.models.diffusion.backbone import BRCA20X, DiffusionBackbone, compact_encoder_weights, scaled_preset
from pathseg.progress import ProgressCallback
from pathseg.resize import resize_rgb, scaled_size
from pathseg.train.data import IMAGE_SUFFIXES

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".tif", ".tiff")


@dataclass
class PretrainConfig:
    """Settings; patch in pixels at ``mpp`` µm/px."""

    data: list[str]  #: folders (their images/ sub-folder when present) or image / small slide files; DIR@MPP sets µm/px
    out: str
    mpp: float = 1.0
    default_mpp: float = 0.25  #: pixel size assumed for images whose file carries none
    patch: int = 128  #: UNet-stage patch
    vq_patch: int = 64  #: autoencoder-stage patch (the autoencoder is local: small patches train it as well, faster)
    batch: int = 16
    vq_iterations: int = 800
    unet_iterations: int = 3000
    lr_vq: float = 5e-4
    latent_l2: float = 1e-3  #: weight of the latent L2 penalty in the autoencoder stage
    lr_unet: float = 5e-4
    p_uncond: float = 0.1
    vq_widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    unet_widths: list[int] = field(default_factory=lambda: [32, 64, 96, 128])
    num_vq_embeddings: int = 1024
    context_dim: int = 256
    encoder_from: str = "pathseg_nuclei_cpu"  #: nucleus model whose image encoder makes the conditioning embedding
    #: continue from this backbone (folder or zoo name, or a tissue model's backbone): the autoencoder stage is
    #: skipped and the UNet + conditioner train ``unet_iterations`` more with a fresh optimiser
    init: str | None = None
    checkpoint_every: int = 100
    seed: int = 0
    name: str = "pathseg_ldm_small"


def small_backbone_config(cfg: PretrainConfig, encoder_cfg: dict) -> dict:
    """The backbone config: the paper's layout at CPU widths, conditioned on the compact encoder."""
    out = scaled_preset(BRCA20X, cfg.vq_widths, cfg.unet_widths, cfg.name, groups=16)
    out["mpp"] = cfg.mpp
    out["patch_size"] = 256
    out["vq"]["num_vq_embeddings"] = cfg.num_vq_embeddings
    out["unet"]["cross_attention_dim"] = cfg.context_dim
    out["conditioner"] = {
        "patch_dim": encoder_cfg["out_chans"],
        "region_dim": 768,
        "context_dim": cfg.context_dim,
        "normalize": True,
    }
    out["encoder"] = {
        "type": "compact_pooled",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "input_size": None,
        "kwargs": {k: encoder_cfg[k] for k in ("widths", "blocks", "out_chans")},
    }
    return out


def _files(spec: str) -> tuple[list[Path], float | None]:
    path, _, mpp = spec.partition("@")
    p = Path(path)
    if p.is_file():
        return [p], float(mpp) if mpp else None
    if not p.is_dir():
        raise PathsegError(f"{path}: not a file or folder")
    folder = p / "images" if (p / "images").is_dir() else p
    files = image_files(folder, IMAGE_SUFFIXES + SLIDE_SUFFIXES)
    if not files:
        raise PathsegError(f"{folder}: no images")
    return files, float(mpp) if mpp else None


def load_unlabeled(specs: list[str], mpp: float, default_mpp: float, max_side: int = 8192) -> list[np.ndarray]:
    """Every image (or small slide, read at the level closest to ``mpp``), resampled to ``mpp`` µm/px."""
    from pathseg.io.images import read_image
    from pathseg.io.slides import open_slide

    images = []
    for spec in specs:
        files, spec_mpp = _files(spec)
        for f in files:
            if f.suffix.lower() in (".svs", ".ndpi", ".mrxs", ".scn"):
                with open_slide(f, mpp=spec_mpp) as s:
                    level = s.best_level(mpp)
                    lv = s.levels[level]
                    w, h = min(lv.width, max_side), min(lv.height, max_side)
                    rgb, file_mpp = s.read_region(level, 0, 0, w, h), s.level_mpp(level)
            else:
                loaded = read_image(f)
                rgb, file_mpp = loaded.pixels, loaded.mpp
            src = spec_mpp or file_mpp or default_mpp
            if abs(src / mpp - 1) > 1e-3:
                rgb = resize_rgb(rgb, scaled_size(rgb.shape, src / mpp))
            images.append(rgb)
    return images


class PatchSampler:
    """Random patches (flips, 90° rotations) as (B, 3, p, p) floats in [0, 1]; small images are reflect-padded."""

    def __init__(self, images: list[np.ndarray], patch: int, seed: int) -> None:
        self.images = [
            np.pad(im, ((0, max(0, patch - im.shape[0])), (0, max(0, patch - im.shape[1])), (0, 0)), mode="reflect")
            for im in images
        ]
        # sample images in proportion to their area, so every region is equally likely
        area = np.array([im.shape[0] * im.shape[1] for im in self.images], dtype=np.float64)
        self.p = area / area.sum()
        self.patch = patch
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> torch.Tensor:
        out = []
        for i in self.rng.choice(len(self.images), size=n, p=self.p):
            im = self.images[int(i)]
            y = int(self.rng.integers(0, im.shape[0] - self.patch + 1))
            x = int(self.rng.integers(0, im.shape[1] - self.patch + 1))
            crop = np.rot90(im[y : y + self.patch, x : x + self.patch], int(self.rng.integers(0, 4)))
            out.append(crop[:, ::-1] if self.rng.random() < 0.5 else crop)
        return torch.from_numpy(np.ascontiguousarray(np.stack(out))).permute(0, 3, 1, 2).float() / 255


def init_backbone(spec: str) -> DiffusionBackbone:
    """The backbone ``spec`` names: a backbone folder or zoo name, or a tissue model (folder or zoo name), whose
    backbone is taken."""
    from pathseg.models import zoo
    from pathseg.models.folder import read_config

    path = Path(spec)
    if path.is_dir():
        task = read_config(path, "model").get("task")
    else:
        task = zoo.get_entry(spec).task  # an unknown name stops here with the list of known ones
    if task == "tissue":
        return zoo.get_tissue_model(spec).backbone
    return zoo.get_backbone(spec)


def _warmup_cosine(step: int, total: int, warmup: int = 200) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def pretrain_diffusion(cfg: PretrainConfig, progress: ProgressCallback | None = None, log=print) -> Path:
    """Run (or resume) both stages; returns the backbone folder ``<out>/backbone``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True) if ckpt_path.exists() else None
    torch.manual_seed(cfg.seed)
    if state is not None:
        bb = DiffusionBackbone(json.loads(state["config"]))
        bb.load_state_dict(state["model"])
        log(f"resumed from {ckpt_path}: stage {state['stage']}, iteration {state['iteration']}")
    elif cfg.init:
        bb = init_backbone(cfg.init)
        if abs(bb.mpp / cfg.mpp - 1) > 1e-3:
            raise PathsegError(f"--init {cfg.init} works at {bb.mpp:g} µm/px, not --mpp {cfg.mpp:g}")
        if bb.encoder is None:
            raise PathsegError(f"--init {cfg.init}: the backbone has no conditioning encoder to train with")
        bb.config["name"] = cfg.name
        log(f"continuing from {cfg.init}: its autoencoder and conditioning encoder are kept, the UNet trains on")
    else:
        enc_cfg, enc_state = compact_encoder_weights(cfg.encoder_from)
        bb = DiffusionBackbone(small_backbone_config(cfg, enc_cfg))
        bb.encoder.body.load_state_dict(enc_state)
    bb.encoder.eval().requires_grad_(False)
    (out / "pretrain_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    images = load_unlabeled(cfg.data, cfg.mpp, cfg.default_mpp)
    mpx = sum(i.shape[0] * i.shape[1] for i in images) / 1e6
    log(f"{len(images)} unlabeled images, {mpx:.1f} Mpx at {cfg.mpp} µm/px")
    stage = state["stage"] if state else ("unet" if cfg.init else "vq")
    start = int(state["iteration"]) if state else 0
    vq_done = 0 if cfg.init else cfg.vq_iterations  # iterations before the UNet stage, for progress
    total = vq_done + cfg.unet_iterations
    for name, iterations in (("vq", cfg.vq_iterations), ("unet", cfg.unet_iterations)):
        if stage == "unet" and name == "vq":
            continue
        params = list(bb.vq.parameters()) if name == "vq" else [*bb.unet.parameters(), *bb.conditioner.parameters()]
        for p in params:  # a backbone taken from a tissue model arrives frozen
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=cfg.lr_vq if name == "vq" else cfg.lr_unet, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s, n=iterations: _warmup_cosine(s, n))
        if state is not None and state["stage"] == name and "optimizer" in state:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        else:
            start = 0
        patch = cfg.vq_patch if name == "vq" else cfg.patch
        sampler = PatchSampler(images, patch, cfg.seed + 7 * start + (0 if name == "vq" else 1_000_003))
        t0 = time.perf_counter()
        for it in range(start, iterations):
            x = sampler.batch(cfg.batch)
            if name == "vq":
                bb.vq.train()
                h = bb.vq.encode(x * 2 - 1).latents
                rec = F.l1_loss(bb.vq.decode(h, force_not_quantize=True).sample, x * 2 - 1)
                loss = rec + cfg.latent_l2 * h.pow(2).mean()
                parts = {"l1": float(rec.detach())}
            else:
                bb.unet.train()
                with torch.no_grad():
                    z0 = bb.encode(x)
                    emb = bb.embed(x)
                drop = torch.rand(emb.shape[0]) < cfg.p_uncond
                emb = torch.where(drop[:, None], torch.zeros_like(emb), emb)
                t = torch.randint(0, len(bb.alphas_cumprod), (x.shape[0],))
                noise = torch.randn_like(z0)
                a = bb.alphas_cumprod[t].view(-1, 1, 1, 1)
                zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
                pred = bb.unet(zt, t, encoder_hidden_states=bb.conditioner(emb)).sample
                loss = F.mse_loss(pred, noise)
                parts = {}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step = it + 1
            with open(out / "history.jsonl", "a") as f:
                f.write(json.dumps({"stage": name, "iteration": step, "loss": float(loss.detach()), **parts}) + "\n")
            if step % cfg.checkpoint_every == 0 or step == iterations:
                if name == "vq" and step == iterations:
                    _scale_by_std(bb, sampler, cfg.batch)
                    log(f"autoencoder done; latent scaling factor {bb.config['vq']['scaling_factor']:.4f}")
                done = step == iterations and name == "vq"
                _save(ckpt_path, bb, "unet" if done else name, 0 if done else step, None if done else (opt, sched))
                bb.save_pretrained(out / "backbone")
            if progress:
                done_total = step + (vq_done if name == "unet" else 0)
                progress(done_total, total, f"{name} loss {float(loss.detach()):.4f}")
        log(f"stage {name}: {iterations - start} iterations in {time.perf_counter() - t0:.0f} s")
        state = None
    return out / "backbone"


@torch.no_grad()
def _scale_by_std(bb: DiffusionBackbone, sampler: PatchSampler, batch: int, n: int = 8) -> None:
    bb.vq.eval()
    bb.config["vq"]["scaling_factor"] = 1.0
    z = torch.cat([bb.encode(sampler.batch(batch)) for _ in range(n)])
    bb.config["vq"]["scaling_factor"] = float(1.0 / z.flatten().std().clamp_min(1e-6))


def _save(path: Path, bb: DiffusionBackbone, stage: str, iteration: int, optim) -> None:
    payload = {"model": bb.state_dict(), "config": json.dumps(bb.config), "stage": stage, "iteration": iteration}
    if optim is not None:
        payload["optimizer"] = optim[0].state_dict()
        payload["scheduler"] = optim[1].state_dict()
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
