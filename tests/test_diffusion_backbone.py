"""The PathSegDiff backbone parts: HIPT ViT-S, the SSL conditioner, the diffusers VQ + UNet container, features."""

import pytest
import torch

from pathseg.models.diffusion.backbone import BRCA20X, DiffusionBackbone, scaled_preset
from pathseg.models.diffusion.conditioner import SSLConditioner
from pathseg.models.diffusion.hipt import ViTSmall, hipt_state_dict
from pathseg.tissue.features import DiffusionFeatures


def tiny_config():
    cfg = scaled_preset(BRCA20X, [8, 16, 16], [16, 16, 16, 16], name="tiny", groups=4)
    cfg["encoder"] = {
        "type": "hipt_vit_s",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "input_size": 64,
        "kwargs": {"embed_dim": 24, "depth": 1, "num_heads": 2, "img_size": 32},
    }
    cfg["conditioner"] = {"patch_dim": 24, "region_dim": 12, "context_dim": 16, "normalize": True}
    cfg["unet"]["cross_attention_dim"] = 16
    return cfg


def test_vit_small_keys_match_hipt_and_interpolate_positions():
    vit = ViTSmall()
    keys = set(vit.state_dict())
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.11.attn.qkv.weight", "norm.bias"} <= keys
    assert vit.pos_embed.shape == (1, 197, 384)  # HIPT's ViT-S/16 is built at 224² and run on 256² patches
    small = ViTSmall(embed_dim=24, depth=1, num_heads=2, img_size=32)
    assert small(torch.rand(2, 3, 64, 48)).shape == (2, 24)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        small(torch.rand(1, 3, 40, 40))
    ckpt = {"teacher": {f"backbone.{k}": v for k, v in small.state_dict().items()} | {"head.mlp.0.weight": 0}}
    assert set(hipt_state_dict(ckpt)) == set(small.state_dict())


def test_conditioner_normalises_and_zero_fills_the_region_token():
    torch.manual_seed(0)
    c = SSLConditioner(patch_dim=8, region_dim=6, context_dim=4)
    p = torch.randn(3, 8)
    out = c(p)
    assert out.shape == (3, 2, 4)
    assert torch.allclose(out, c(5 * p), atol=1e-6)  # L2-normalised first
    assert torch.allclose(out[:, 1], c.region_fc.bias.expand(3, -1))  # absent region embedding = zeros


def test_schedule_equals_diffusers_scaled_linear():
    from diffusers import DDPMScheduler

    bb = DiffusionBackbone(tiny_config())
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear")
    assert torch.allclose(bb.alphas_cumprod, ref.alphas_cumprod.float(), atol=1e-6)


def test_backbone_round_trip_and_features(tmp_path):
    torch.manual_seed(0)
    bb = DiffusionBackbone(tiny_config())
    bb.save_pretrained(tmp_path / "bb")
    again = DiffusionBackbone.from_pretrained(tmp_path / "bb")
    x = torch.rand(2, 3, 64, 64)
    fx = DiffusionFeatures(bb, timesteps=(10, 200), blocks=(1, 3), seed=3)
    fy = DiffusionFeatures(again, timesteps=(10, 200), blocks=(1, 3), seed=3)
    a, b = fx(x), fy(x)
    assert a.shape == (2, fx.channels, 16, 16)  # latent resolution of VQ-f4
    assert torch.allclose(a, b, atol=1e-5)
    # the same patch gets the same features whatever batch it comes in
    assert torch.allclose(fx(x[1:]), a[1:], atol=1e-5)
    with pytest.raises(ValueError, match="up blocks"):
        DiffusionFeatures(bb, blocks=(7,))
    with pytest.raises(ValueError, match="timesteps"):
        DiffusionFeatures(bb, timesteps=(1000,))


def test_brca20x_preset_builds_the_papers_shapes():
    with torch.device("meta"):  # shapes only, no memory
        bb = DiffusionBackbone(BRCA20X)
    sd = bb.state_dict()
    assert sd["unet.conv_in.weight"].shape == (192, 3, 3, 3)
    assert sd["unet.down_blocks.3.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape == (960, 512)
    assert sd["vq.quantize.embedding.weight"].shape == (8192, 3)
    assert sd["conditioner.patch_fc.weight"].shape == (512, 384)
    assert sd["encoder.pos_embed"].shape == (1, 197, 384)
    assert "unet.down_blocks.0.attentions.0.proj_in.weight" not in sd  # no attention at full resolution
    assert len(bb.unet.up_blocks[0].resnets) == 3  # CompVis: num_res_blocks + 1 per decoder level


def test_hipt_loads_from_a_dino_checkpoint_with_arguments(tmp_path):
    import argparse

    from pathseg.errors import PathsegError
    from pathseg.models.diffusion.hipt import load_hipt
    from pathseg.models.zoo import get_entry

    vit = ViTSmall()
    ckpt = {
        "teacher": {f"backbone.{k}": v for k, v in vit.state_dict().items()}
        | {"head.last_layer.weight": torch.zeros(1)},
        "args": argparse.Namespace(arch="vit_small", patch_size=16),  # DINO stores its arguments beside the weights
        "epoch": 100,
    }
    torch.save(ckpt, tmp_path / "vit256_small_dino.pth")
    loaded = load_hipt(tmp_path / "vit256_small_dino.pth")
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(loaded(x), vit.eval()(x))
    torch.save({"teacher": {"backbone.other": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(PathsegError, match="not a HIPT"):
        load_hipt(tmp_path / "bad.pth")
    entry = get_entry("hipt_vit256_small")
    assert entry.files[0].known_hash.startswith("sha256:6960cd5a") and not entry.offline()
