"""A latent diffusion backbone used frozen for features: VQ autoencoder + conditional UNet (diffusers), the SSL
conditioner, the SSL encoder that makes the conditioning embedding, and the noise schedule.

Saved as a pathseg model folder (:mod:`pathseg.models.folder`); weight keys ``vq.*``, ``unet.*``,
``conditioner.*``, ``encoder.*``. Presets: :data:`BRCA20X` (the paper's Large-Image-Diffusion BRCA 20x model);
:func:`scaled_preset` gives the same layout at other widths (pathseg's own small backbone, tests).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from pathseg.errors import PathsegError
from pathseg.models.diffusion.conditioner import SSLConditioner
from pathseg.models.diffusion.hipt import ViTSmall
from pathseg.models.folder import WEIGHTS_NAME, read_folder, save_folder
from pathseg.models.sam.checkpoint import load_into

#: Large-Image-Diffusion "BRCA 20x": VQ-f4 first stage, CompVis UNet (192 channels, mult 1-2-3-5, attention at
#: downsampling 2, 4, 8, one head, context 512), HIPT ViT-S/16 patch embedding, 1000 steps, linear beta
#: 0.0015..0.0195 (CompVis "linear" = diffusers "scaled_linear"); 256² patches at 20x (~0.5 µm/px).
BRCA20X = {
    "task": "diffusion_backbone",
    "name": "ldm_brca20x",
    "mpp": 0.5,
    "patch_size": 256,
    "vq": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [128, 256, 512],
        "layers_per_block": 2,
        "latent_channels": 3,
        "num_vq_embeddings": 8192,
        "vq_embed_dim": 3,
        "norm_num_groups": 32,
        "sample_size": 256,
        "scaling_factor": 1.0,
    },
    "unet": {
        "sample_size": 64,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [192, 384, 576, 960],
        "layers_per_block": 2,
        "cross_attention_dim": 512,
        "attention_head_dim": 1,
        "norm_num_groups": 32,
    },
    "conditioner": {"patch_dim": 384, "region_dim": 768, "context_dim": 512, "normalize": True},
    "encoder": {"type": "hipt_vit_s", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "input_size": 256},
    "scheduler": {
        "num_train_timesteps": 1000,
        "beta_start": 0.0015,
        "beta_end": 0.0195,
        "beta_schedule": "scaled_linear",
    },
}


def scaled_preset(preset: dict, vq_widths: list[int], unet_widths: list[int], name: str, groups: int = 8) -> dict:
    """``preset`` with other widths (same block layout): for pathseg's own small backbone and for tests."""
    cfg = copy.deepcopy(preset)
    cfg["name"] = name
    cfg["vq"].update(block_out_channels=list(vq_widths), norm_num_groups=groups)
    cfg["unet"].update(block_out_channels=list(unet_widths), norm_num_groups=groups)
    return cfg


class PooledCompactEncoder(nn.Module):
    """pathseg's compact CNN image encoder (from the nucleus model), its stride-16 embedding averaged over space:
    a (B, out_chans) patch embedding for conditioning."""

    def __init__(self, widths=(24, 48, 96, 160, 256), blocks=(1, 1, 2, 2, 2), out_chans: int = 256) -> None:
        super().__init__()
        from pathseg.models.compact import CompactEncoder

        self.body = CompactEncoder(tuple(widths), tuple(blocks), out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


def compact_encoder_weights(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(encoder config, state dict) of the compact image encoder of nucleus model ``name``."""
    from pathseg.models.zoo import get_nucleus_model

    model = get_nucleus_model(name)
    enc_cfg = getattr(model, "config", {}).get("encoder", {})
    if enc_cfg.get("type") != "compact":
        raise PathsegError(f"model {name!r} has no compact image encoder to condition on")
    prefix = "sam.image_encoder."
    return enc_cfg, {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names and float32 values of ``state`` (to pin weights shared between models)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def shared_encoder_state(spec: dict) -> dict[str, torch.Tensor]:
    """The conditioning encoder weights named by ``spec`` = {"model", "sha256"} (keys ``body.*``), checked."""
    _, state = compact_encoder_weights(spec["model"])
    if weights_digest(state) != spec["sha256"]:
        raise PathsegError(
            f"the conditioning encoder comes from {spec['model']!r}, whose image encoder has changed since this "
            "model was trained (weights digest differs); use the pathseg version it was trained with or retrain it"
        )
    return {"body." + k: v for k, v in state.items()}


class DiffusionBackbone(nn.Module):
    """The frozen parts of a latent diffusion model, as one module with a serialisable config."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel, VQModel

        self.config = copy.deepcopy(config)
        self.vq = VQModel(**config["vq"])
        if not config.get("vq_decoder", True):
            self.drop_decoder()
        self.unet = UNet2DConditionModel(**config["unet"])
        self.conditioner = SSLConditioner(**config["conditioner"])
        enc = config.get("encoder") or {"type": "none"}
        if enc["type"] == "hipt_vit_s":
            self.encoder: nn.Module | None = ViTSmall(**enc.get("kwargs", {}))
        elif enc["type"] == "compact_pooled":
            self.encoder = PooledCompactEncoder(**enc.get("kwargs", {}))
        elif enc["type"] == "none":
            self.encoder = None
        else:
            raise PathsegError(f"unknown conditioning encoder {enc['type']!r}")
        sch = config["scheduler"]
        n, b0, b1 = sch["num_train_timesteps"], sch["beta_start"], sch["beta_end"]
        if sch["beta_schedule"] == "scaled_linear":  # CompVis "linear": linear in sqrt(beta)
            betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float64) ** 2
        elif sch["beta_schedule"] == "linear":
            betas = torch.linspace(b0, b1, n, dtype=torch.float64)
        else:
            raise PathsegError(f"unknown beta schedule {sch['beta_schedule']!r}")
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0).float(), persistent=False)

    @property
    def name(self) -> str:
        return self.config.get("name", "diffusion_backbone")

    @property
    def mpp(self) -> float:
        return float(self.config.get("mpp", 0.5))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Conditioning embedding of (B, 3, H, W) images in [0, 1]."""
        if self.encoder is None:
            raise PathsegError(f"backbone {self.name!r} has no conditioning encoder; pass embeddings")
        enc = self.config["encoder"]
        mean = torch.tensor(enc["mean"], device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(enc["std"], device=x.device).view(1, 3, 1, 1)
        size = enc.get("input_size")
        if size and x.shape[-2:] != (size, size):
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return self.encoder((x - mean) / std)

    def context(self, x: torch.Tensor | None = None, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2, context_dim) cross-attention context from images in [0, 1] or from given embeddings."""
        if embedding is None:
            embedding = self.embed(x)
        return self.conditioner(embedding)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent z0 (before quantisation, times the scaling factor) of (B, 3, H, W) images in [0, 1]."""
        h = self.vq.encode(x * 2 - 1).latents
        return h * self.config["vq"].get("scaling_factor", 1.0)

    def drop_decoder(self) -> DiffusionBackbone:
        """Leave out the autoencoder's decoder (in place): features only encode, so a shipped backbone need not
        carry it. Saved folders then omit its weights; pretraining can still continue the UNet (``--init``)."""
        self.vq.decoder = self.vq.post_quant_conv = None
        self.config["vq_decoder"] = False
        return self

    def add_noise(self, z0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) noise."""
        a = self.alphas_cumprod[t]
        return a.sqrt() * z0 + (1 - a).sqrt() * noise

    # --- serialisation -------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        return save_folder(folder, self.config, self.state_dict(), dtype)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> DiffusionBackbone:
        config, state = read_folder(folder, "diffusion backbone")
        model = cls(config)
        load_into(model, state, f"diffusion backbone {model.name!r}", Path(folder) / WEIGHTS_NAME)
        return model.eval()
