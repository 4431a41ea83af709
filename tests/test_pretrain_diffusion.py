"""Pretraining the small diffusion backbone: both stages, resume, and a backbone the tissue features can use."""

import json

import numpy as np
import torch
from PIL import Image

from pathseg.models.diffusion.backbone import DiffusionBackbone
from pathseg.models.nucleus_sam import SamNucleusModel, compact_config
from pathseg.tissue.features import DiffusionFeatures
from pathseg.train.diffusion import PretrainConfig, pretrain_diffusion


def test_pretrain_two_stages_resume_and_use(tmp_path):
    torch.manual_seed(0)
    SamNucleusModel(compact_config()).save_pretrained(tmp_path / "nuc")
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    cfg = PretrainConfig(
        data=[f"{tmp_path / 'imgs'}@0.5"],
        out=str(tmp_path / "run"),
        patch=32,
        batch=2,
        vq_iterations=2,
        unet_iterations=1,
        vq_widths=[16, 16, 16],
        unet_widths=[16, 16, 16, 16],
        num_vq_embeddings=32,
        context_dim=16,
        encoder_from=str(tmp_path / "nuc"),
        checkpoint_every=1,
    )
    folder = pretrain_diffusion(cfg, log=lambda *a: None)
    cfg.unet_iterations = 2  # resume: only the one missing UNet iteration runs
    pretrain_diffusion(cfg, log=lambda *a: None)
    history = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [(h["stage"], h["iteration"]) for h in history] == [("vq", 1), ("vq", 2), ("unet", 1), ("unet", 2)]
    bb = DiffusionBackbone.from_pretrained(folder)
    assert bb.config["vq"]["scaling_factor"] != 1.0  # set from the latents' std after the autoencoder stage
    nuc = SamNucleusModel.from_pretrained(tmp_path / "nuc")
    # the conditioning encoder is the nucleus model's image encoder, unchanged
    for k, v in bb.encoder.body.state_dict().items():
        assert torch.equal(v, nuc.sam.image_encoder.state_dict()[k]), k
    feats = DiffusionFeatures(bb, timesteps=[20], blocks=[3])(torch.rand(1, 3, 64, 64))
    assert feats.shape[-2:] == (16, 16) and torch.isfinite(feats).all()
