"""The LDM converter on a generated checkpoint in the original (CompVis / Large-Image-Diffusion) key layout at
reduced width: every key family mapped, nothing silently dropped, unknown keys refused."""

from __future__ import annotations

import pytest
import torch
import yaml

from pathseg.errors import PathsegError
from pathseg.models.diffusion.backbone import DiffusionBackbone
from pathseg.models.diffusion.convert import convert_ldm

CH, MULT, LAYERS, ATTN = 32, [1, 2, 3], 1, [2, 4]  # UNet: attention at downsampling 2 and 4 (levels 1, 2)
VQ_CH, VQ_MULT, VQ_LAYERS, Z, N_EMBED = 32, [1, 2], 1, 3, 16
CTX = 512


def _yaml() -> dict:
    return {
        "model": {
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "linear_start": 0.0015,
                "linear_end": 0.0195,
                "timesteps": 1000,
                "unet_config": {
                    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                    "params": {
                        "image_size": 16,
                        "in_channels": Z,
                        "out_channels": Z,
                        "model_channels": CH,
                        "attention_resolutions": ATTN,
                        "num_res_blocks": LAYERS,
                        "channel_mult": MULT,
                        "num_heads": 1,
                        "use_spatial_transformer": True,
                        "transformer_depth": 1,
                        "context_dim": CTX,
                    },
                },
                "first_stage_config": {
                    "target": "ldm.models.autoencoder.VQModelInterface",
                    "params": {
                        "embed_dim": Z,
                        "n_embed": N_EMBED,
                        "ddconfig": {
                            "double_z": False,
                            "z_channels": Z,
                            "resolution": 64,
                            "in_channels": 3,
                            "out_ch": 3,
                            "ch": VQ_CH,
                            "ch_mult": VQ_MULT,
                            "num_res_blocks": VQ_LAYERS,
                            "attn_resolutions": [],
                            "dropout": 0.0,
                        },
                    },
                },
                "cond_stage_config": {
                    "target": "ldm.modules.encoders.modules.SSLEmbedder",
                    "params": {"patch_embed_dim": 12, "region_embed_dim": 20, "normalize_ssl": True},
                },
            },
        }
    }


class _Gen:
    """Tensors named and shaped as the original modules name and shape them."""

    def __init__(self) -> None:
        self.sd: dict[str, torch.Tensor] = {}

    def t(self, key: str, *shape: int) -> None:
        self.sd[key] = torch.randn(*shape)

    def conv(self, p: str, cin: int, cout: int, k: int = 3) -> None:
        self.t(p + ".weight", cout, cin, k, k)
        self.t(p + ".bias", cout)

    def lin(self, p: str, cin: int, cout: int, bias: bool = True) -> None:
        self.t(p + ".weight", cout, cin)
        if bias:
            self.t(p + ".bias", cout)

    def norm(self, p: str, c: int) -> None:
        self.t(p + ".weight", c)
        self.t(p + ".bias", c)

    # CompVis openaimodel
    def resblock(self, p: str, cin: int, cout: int, temb: int) -> None:
        self.norm(p + ".in_layers.0", cin)
        self.conv(p + ".in_layers.2", cin, cout)
        self.lin(p + ".emb_layers.1", temb, cout)
        self.norm(p + ".out_layers.0", cout)
        self.conv(p + ".out_layers.3", cout, cout)
        if cin != cout:
            self.conv(p + ".skip_connection", cin, cout, 1)

    def transformer(self, p: str, c: int) -> None:
        self.norm(p + ".norm", c)
        self.conv(p + ".proj_in", c, c, 1)
        b = p + ".transformer_blocks.0"
        for a, kv in (("attn1", c), ("attn2", CTX)):
            self.lin(f"{b}.{a}.to_q", c, c, bias=False)
            self.lin(f"{b}.{a}.to_k", kv, c, bias=False)
            self.lin(f"{b}.{a}.to_v", kv, c, bias=False)
            self.lin(f"{b}.{a}.to_out.0", c, c)
        self.lin(b + ".ff.net.0.proj", c, 8 * c)
        self.lin(b + ".ff.net.2", 4 * c, c)
        for n in ("norm1", "norm2", "norm3"):
            self.norm(f"{b}.{n}", c)
        self.conv(p + ".proj_out", c, c, 1)

    def unet(self, p: str) -> None:
        temb = 4 * CH
        self.lin(p + "time_embed.0", CH, temb)
        self.lin(p + "time_embed.2", temb, temb)
        self.conv(p + "input_blocks.0.0", Z, CH)
        chans, cur, idx = [CH], CH, 1
        for level, m in enumerate(MULT):
            for _ in range(LAYERS):
                self.resblock(f"{p}input_blocks.{idx}.0", cur, m * CH, temb)
                cur = m * CH
                if 2**level in ATTN:
                    self.transformer(f"{p}input_blocks.{idx}.1", cur)
                chans.append(cur)
                idx += 1
            if level != len(MULT) - 1:
                self.conv(f"{p}input_blocks.{idx}.0.op", cur, cur)
                chans.append(cur)
                idx += 1
        self.resblock(p + "middle_block.0", cur, cur, temb)
        self.transformer(p + "middle_block.1", cur)
        self.resblock(p + "middle_block.2", cur, cur, temb)
        idx = 0
        for level in reversed(range(len(MULT))):
            for i in range(LAYERS + 1):
                self.resblock(f"{p}output_blocks.{idx}.0", cur + chans.pop(), MULT[level] * CH, temb)
                cur = MULT[level] * CH
                part = 1
                if 2**level in ATTN:
                    self.transformer(f"{p}output_blocks.{idx}.1", cur)
                    part = 2
                if level and i == LAYERS:
                    self.conv(f"{p}output_blocks.{idx}.{part}.conv", cur, cur)
                idx += 1
        self.norm(p + "out.0", CH)
        self.conv(p + "out.2", CH, Z)

    # CompVis autoencoder
    def ae_res(self, p: str, cin: int, cout: int) -> None:
        self.norm(p + ".norm1", cin)
        self.conv(p + ".conv1", cin, cout)
        self.norm(p + ".norm2", cout)
        self.conv(p + ".conv2", cout, cout)
        if cin != cout:
            self.conv(p + ".nin_shortcut", cin, cout, 1)

    def ae_mid(self, p: str, c: int) -> None:
        self.ae_res(p + ".block_1", c, c)
        self.norm(p + ".attn_1.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            self.conv(f"{p}.attn_1.{n}", c, c, 1)
        self.ae_res(p + ".block_2", c, c)

    def vq(self, p: str) -> None:
        self.conv(p + "encoder.conv_in", 3, VQ_CH)
        ins = [1, *VQ_MULT]
        for i, m in enumerate(VQ_MULT):
            cin = VQ_CH * ins[i]
            for j in range(VQ_LAYERS):
                self.ae_res(f"{p}encoder.down.{i}.block.{j}", cin, VQ_CH * m)
                cin = VQ_CH * m
            if i != len(VQ_MULT) - 1:
                self.conv(f"{p}encoder.down.{i}.downsample.conv", cin, cin)
        top = VQ_CH * VQ_MULT[-1]
        self.ae_mid(p + "encoder.mid", top)
        self.norm(p + "encoder.norm_out", top)
        self.conv(p + "encoder.conv_out", top, Z)
        self.conv(p + "quant_conv", Z, Z, 1)
        self.t(p + "quantize.embedding.weight", N_EMBED, Z)
        self.conv(p + "post_quant_conv", Z, Z, 1)
        self.conv(p + "decoder.conv_in", Z, top)
        self.ae_mid(p + "decoder.mid", top)
        cin = top
        for i in reversed(range(len(VQ_MULT))):
            for j in range(VQ_LAYERS + 1):
                self.ae_res(f"{p}decoder.up.{i}.block.{j}", cin, VQ_CH * VQ_MULT[i])
                cin = VQ_CH * VQ_MULT[i]
            if i != 0:
                self.conv(f"{p}decoder.up.{i}.upsample.conv", cin, cin)
        self.norm(p + "decoder.norm_out", cin)
        self.conv(p + "decoder.conv_out", cin, 3)


def _schedule() -> dict[str, torch.Tensor]:
    betas = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    return {"betas": betas.float(), "alphas_cumprod": ac.float(), "sqrt_alphas_cumprod": ac.sqrt().float()}


def _checkpoint(tmp_path, extra: dict | None = None, drop_schedule: bool = False):
    g = _Gen()
    g.unet("model.diffusion_model.")
    g.vq("first_stage_model.")
    g.lin("cond_stage_model.patch_fc", 12, 512)
    g.lin("cond_stage_model.region_fc", 20, 512)
    g.conv("first_stage_model.loss.discriminator.main.0", 3, 4)  # training-only
    sd = {**g.sd, **({} if drop_schedule else _schedule()), **(extra or {})}
    ckpt, cfg = tmp_path / "model.ckpt", tmp_path / "config.yaml"
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 1200}, ckpt)
    cfg.write_text(yaml.safe_dump(_yaml()))
    return ckpt, cfg, g.sd


def test_every_key_is_mapped_and_lands_in_its_place(tmp_path):
    ckpt, cfg, sd = _checkpoint(tmp_path)
    folder, report = convert_ldm(ckpt, cfg, tmp_path / "out")
    bb = DiffusionBackbone.from_pretrained(folder)
    mine = bb.state_dict()
    n_unet = sum(k.startswith("model.diffusion_model.") for k in sd)
    n_vq = sum(k.startswith("first_stage_model.") and ".loss." not in k for k in sd)
    assert report == {
        "unet": n_unet,
        "vq": n_vq,
        "conditioner": 4,
        "dropped: autoencoder training loss": 2,
        "checked: noise schedule": 3,
    }
    # every backbone tensor came from the checkpoint (strict load) and carries exactly one source tensor's values
    assert len(mine) == n_unet + n_vq + 4
    pairs = {
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight": "unet.down_blocks.0.resnets.0.norm1.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight": "unet.down_blocks.0.downsamplers.0.conv.weight",
        "model.diffusion_model.input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight": (
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
        ),
        "model.diffusion_model.middle_block.2.skip_connection.weight": None,  # absent: same channels
        "model.diffusion_model.middle_block.2.out_layers.3.weight": "unet.mid_block.resnets.1.conv2.weight",
        "model.diffusion_model.output_blocks.1.2.conv.weight": "unet.up_blocks.0.upsamplers.0.conv.weight",
        "model.diffusion_model.output_blocks.5.0.skip_connection.weight": (
            "unet.up_blocks.2.resnets.1.conv_shortcut.weight"
        ),
        "first_stage_model.decoder.up.0.block.1.conv1.weight": "vq.decoder.up_blocks.1.resnets.1.conv1.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight": "vq.decoder.up_blocks.0.upsamplers.0.conv.weight",
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.bias": (
            "vq.encoder.down_blocks.1.resnets.0.conv_shortcut.bias"
        ),
        "cond_stage_model.region_fc.weight": "conditioner.region_fc.weight",
        "first_stage_model.quantize.embedding.weight": "vq.quantize.embedding.weight",
    }
    for src, dst in pairs.items():
        if dst is None:
            assert src not in sd
            continue
        assert torch.equal(mine[dst], sd[src]), (src, dst)
    q = sd["first_stage_model.encoder.mid.attn_1.q.weight"]
    assert torch.equal(mine["vq.encoder.mid_block.attentions.0.to_q.weight"], q[:, :, 0, 0])
    # the features run on the converted model
    z = bb.unet(torch.randn(1, Z, 16, 16), torch.tensor([10]), encoder_hidden_states=bb.conditioner(torch.randn(1, 12)))
    assert z.sample.shape == (1, Z, 16, 16)


def test_unknown_key_stops_the_conversion(tmp_path):
    ckpt, cfg, _ = _checkpoint(tmp_path, extra={"model.diffusion_model.extra_head.weight": torch.zeros(2)})
    with pytest.raises(PathsegError, match="extra_head"):
        convert_ldm(ckpt, cfg, tmp_path / "out")


def test_width_mismatch_names_the_key(tmp_path):
    ckpt, cfg, _ = _checkpoint(tmp_path)
    c = _yaml()
    c["model"]["params"]["unet_config"]["params"]["model_channels"] = 64
    cfg.write_text(yaml.safe_dump(c))
    with pytest.raises(PathsegError, match="shape"):
        convert_ldm(ckpt, cfg, tmp_path / "out")


def test_schedule_mismatch_is_refused(tmp_path):
    ckpt, cfg, _ = _checkpoint(tmp_path)
    c = _yaml()
    c["model"]["params"]["linear_end"] = 0.012
    cfg.write_text(yaml.safe_dump(c))
    with pytest.raises(PathsegError, match="noise schedule"):
        convert_ldm(ckpt, cfg, tmp_path / "out")


def test_cli_converts_into_the_model_cache_and_the_zoo_entry_finds_it(tmp_path, monkeypatch, capsys):
    from pathseg.cli import main
    from pathseg.models.zoo import get_backbone, get_entry

    monkeypatch.setenv("PATHSEG_CACHE", str(tmp_path / "cache"))
    entry = get_entry("ldm_brca20x")
    assert not entry.offline() and entry.source == "manual: drive.google.com"
    with pytest.raises(PathsegError, match="convert-ldm"):
        get_backbone("ldm_brca20x")
    ckpt, cfg, _ = _checkpoint(tmp_path)
    assert main(["models", "convert-ldm", str(ckpt), "--config", str(cfg), "--name", "ldm_brca20x", "-q"]) == 0
    assert "dropped: autoencoder training loss: 2 tensors" in capsys.readouterr().out
    assert entry.offline()
    assert get_backbone("ldm_brca20x").config["unet"]["block_out_channels"] == [32, 64, 96]
