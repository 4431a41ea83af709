"""Pretraining the small diffusion backbone: both stages, resume, and a backbone the tissue features can use."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pathseg.errors import PathsegError
from pathseg.models.diffusion.backbone import DiffusionBackbone
from pathseg.models.nucleus_sam import SamNucleusModel, compact_config
from pathseg.tissue.features import DiffusionFeatures
from pathseg.tissue.model import TissueModel
from pathseg.train.diffusion import PretrainConfig, pretrain_diffusion
from tests.test_tissue_training import _tiny_tissue_config


def tiny_config(tmp_path) -> PretrainConfig:
    """A nucleus model (its encoder conditions) and three random images; a CPU-second pretraining config."""
    torch.manual_seed(0)
    SamNucleusModel(compact_config()).save_pretrained(tmp_path / "nuc")
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    return PretrainConfig(
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


def test_pretrain_two_stages_resume_and_use(tmp_path):
    cfg = tiny_config(tmp_path)
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


def test_pretrain_continues_from_a_backbone(tmp_path):
    cfg = tiny_config(tmp_path)
    first = DiffusionBackbone.from_pretrained(pretrain_diffusion(cfg, log=lambda *a: None))
    cfg.out, cfg.init, cfg.unet_iterations = str(tmp_path / "more"), str(tmp_path / "run" / "backbone"), 2
    cfg.encoder_from = "an unknown model: ignored with --init"
    more = DiffusionBackbone.from_pretrained(pretrain_diffusion(cfg, log=lambda *a: None))
    history = [json.loads(x) for x in (tmp_path / "more" / "history.jsonl").read_text().splitlines()]
    assert [(h["stage"], h["iteration"]) for h in history] == [("unet", 1), ("unet", 2)]  # no autoencoder stage
    assert more.config["vq"] == first.config["vq"]
    a, b = first.state_dict(), more.state_dict()
    for k in a:
        if k.startswith(("vq.", "encoder.")):
            assert torch.equal(a[k], b[k]), k  # the autoencoder and the conditioning encoder are kept
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("unet."))
    # a tissue model gives its backbone, which arrives frozen for feature extraction
    tissue = TissueModel(_tiny_tissue_config(), backbone=more)
    assert not any(p.requires_grad for p in tissue.backbone.parameters())
    cfg.out, cfg.init, cfg.unet_iterations = str(tmp_path / "again"), str(tissue.save_pretrained(tmp_path / "t")), 1
    again = DiffusionBackbone.from_pretrained(pretrain_diffusion(cfg, log=lambda *a: None)).state_dict()
    assert any(not torch.equal(b[k], again[k]) for k in b if k.startswith("unet."))
    cfg.out, cfg.mpp = str(tmp_path / "other"), 0.5  # the backbone works at 1 µm/px
    with pytest.raises(PathsegError, match="µm/px"):
        pretrain_diffusion(cfg, log=lambda *a: None)
