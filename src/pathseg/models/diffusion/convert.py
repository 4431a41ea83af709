"""Convert an original Large-Image-Diffusion / CompVis latent-diffusion Lightning checkpoint (``.ckpt`` + its
YAML config) into a pathseg :class:`~pathseg.models.diffusion.backbone.DiffusionBackbone` folder.

Every key of the checkpoint is accounted for: mapped onto the diffusers modules (``first_stage_model.*`` -> ``vq.*``,
``model.diffusion_model.*`` -> ``unet.*``, ``cond_stage_model.*`` -> ``conditioner.*``), checked (the noise
schedule buffers must equal the YAML's schedule), or dropped by name because it is training-only (the
autoencoder's discriminator / perceptual loss, EMA bookkeeping). Any other key stops the conversion.
The file is read with ``torch.load(weights_only=True)``: no code in the checkpoint ever runs.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import torch

from pathseg.errors import PathsegError
from pathseg.models.diffusion.backbone import BRCA20X, DiffusionBackbone
from pathseg.models.sam.checkpoint import load_into

#: LatentDiffusion buffers derived from the noise schedule (checked against the YAML, not stored)
SCHEDULE_KEYS = {
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "scale_factor",
}


def _params(node: dict, what: str) -> dict:
    if not isinstance(node, dict) or "params" not in node:
        raise PathsegError(f"LDM config: {what} has no params")
    return node["params"]


def config_from_yaml(yaml_cfg: dict, name: str = "ldm_converted") -> dict:
    """A backbone config (see :data:`BRCA20X`) from an original LDM YAML (already parsed)."""
    try:
        ldm = _params(yaml_cfg["model"], "model")
        unet = _params(ldm["unet_config"], "unet_config")
        first = _params(ldm["first_stage_config"], "first_stage_config")
        cond = ldm["cond_stage_config"]
    except KeyError as exc:
        raise PathsegError(f"LDM config: missing {exc.args[0]!r}") from None
    dd = first["ddconfig"]
    if dd.get("attn_resolutions"):
        raise PathsegError("LDM config: autoencoders with attention inside the levels are not supported")
    if not unet.get("use_spatial_transformer", False) or int(unet.get("transformer_depth", 1)) != 1:
        raise PathsegError("LDM config: only UNets with one spatial transformer per level are supported")
    ch, mult = int(unet["model_channels"]), [int(m) for m in unet["channel_mult"]]
    attn = {int(r) for r in unet.get("attention_resolutions", [])}
    n = len(mult)
    with_attn = [2**i in attn for i in range(n)]
    heads_cfg = int(unet.get("num_heads", -1))
    head_ch = int(unet.get("num_head_channels", -1))
    heads = [ch * m // head_ch for m in mult] if head_ch > 0 else [heads_cfg] * n
    cfg = copy.deepcopy(BRCA20X)
    cfg["name"] = name
    cfg["vq"].update(
        block_out_channels=[int(dd["ch"]) * int(m) for m in dd["ch_mult"]],
        down_block_types=["DownEncoderBlock2D"] * len(dd["ch_mult"]),
        up_block_types=["UpDecoderBlock2D"] * len(dd["ch_mult"]),
        layers_per_block=int(dd["num_res_blocks"]),
        latent_channels=int(dd["z_channels"]),
        num_vq_embeddings=int(first["n_embed"]),
        vq_embed_dim=int(first["embed_dim"]),
        in_channels=int(dd["in_channels"]),
        out_channels=int(dd["out_ch"]),
        sample_size=int(dd["resolution"]),
        scaling_factor=float(ldm.get("scale_factor", 1.0)),
    )
    cfg["unet"].update(
        sample_size=int(unet["image_size"]),
        in_channels=int(unet["in_channels"]),
        out_channels=int(unet["out_channels"]),
        block_out_channels=[ch * m for m in mult],
        layers_per_block=int(unet["num_res_blocks"]),
        cross_attention_dim=int(unet["context_dim"]),
        attention_head_dim=heads[0] if len(set(heads)) == 1 else heads,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in with_attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(with_attn)],
    )
    cp = cond.get("params", {})
    target = cond.get("target", "")
    if target.endswith("SSLEmbedder"):
        cfg["conditioner"] = {
            "patch_dim": int(cp.get("patch_embed_dim", 384)),
            "region_dim": int(cp.get("region_embed_dim", 768)),
            "context_dim": 512,
            "normalize": bool(cp.get("normalize_ssl", False)),
        }
    else:
        raise PathsegError(f"LDM config: conditioning {target!r} is not supported (SSLEmbedder is)")
    cfg["scheduler"].update(
        num_train_timesteps=int(ldm.get("timesteps", 1000)),
        beta_start=float(ldm.get("linear_start", 0.0015)),
        beta_end=float(ldm.get("linear_end", 0.0195)),
        beta_schedule="scaled_linear" if ldm.get("beta_schedule", "linear") == "linear" else "unsupported",
    )
    cfg["encoder"] = {"type": "none"}
    return cfg


# --- key mapping -------------------------------------------------------------------------------------------
_RES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_VQ_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _res(rest: str) -> str:
    for old, new in _RES.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise KeyError(rest)


def _unet_key(key: str, layers: int, n_levels: int, up_attn: list[bool]) -> str:
    """diffusers UNet2DConditionModel key of a CompVis ``openaimodel.UNetModel`` key (without its prefix)."""
    fixed = {
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
        "out.0": "conv_norm_out",
        "out.2": "conv_out",
    }
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key)
    if m:
        i, part, rest = int(m[1]) - 1, int(m[2]), m[3]
        level, j = divmod(i, layers + 1)
        if j == layers:  # the level's downsampling conv
            if part != 0 or not rest.startswith("op."):
                raise KeyError(key)
            return f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
        if part == 0:
            return f"down_blocks.{level}.resnets.{j}.{_res(rest)}"
        return f"down_blocks.{level}.attentions.{j}.{rest}"
    m = re.match(r"middle_block\.(\d)\.(.*)", key)
    if m:
        part, rest = int(m[1]), m[2]
        if part == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{part // 2}.{_res(rest)}"
    m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key)
    if m:
        level, j = divmod(int(m[1]), layers + 1)
        part, rest = int(m[2]), m[3]
        if part == 0:
            return f"up_blocks.{level}.resnets.{j}.{_res(rest)}"
        if part == 1 and up_attn[level]:
            return f"up_blocks.{level}.attentions.{j}.{rest}"
        if rest.startswith("conv.") and j == layers and level < n_levels - 1:
            return f"up_blocks.{level}.upsamplers.0.{rest}"
    raise KeyError(key)


def _vq_key(key: str, n_levels: int) -> str:
    """diffusers VQModel key of a CompVis ``VQModel`` key (without ``first_stage_model.``)."""
    for side in ("encoder", "decoder"):
        if not key.startswith(side + "."):
            continue
        rest = key[len(side) + 1 :]
        for old, new in (("conv_in.", "conv_in."), ("conv_out.", "conv_out."), ("norm_out.", "conv_norm_out.")):
            if rest.startswith(old):
                return f"{side}.{new}{rest[len(old) :]}"
        m = re.match(r"mid\.(block_1|block_2|attn_1)\.(\w+)\.(.*)", rest)
        if m:
            if m[1] == "attn_1":
                return f"{side}.mid_block.attentions.0.{_VQ_ATTN[m[2]]}.{m[3]}"
            name = "conv_shortcut" if m[2] == "nin_shortcut" else m[2]
            return f"{side}.mid_block.resnets.{int(m[1][-1]) - 1}.{name}.{m[3]}"
        m = re.match(r"(down|up)\.(\d+)\.(block\.(\d+)\.(\w+)|downsample\.conv|upsample\.conv)\.(.*)", rest)
        if m:
            level = int(m[2]) if m[1] == "down" else n_levels - 1 - int(m[2])  # the decoder's levels run upward
            blocks = "down_blocks" if m[1] == "down" else "up_blocks"
            if m[4] is not None:
                name = "conv_shortcut" if m[5] == "nin_shortcut" else m[5]
                return f"{side}.{blocks}.{level}.resnets.{m[4]}.{name}.{m[6]}"
            sampler = "downsamplers" if m[1] == "down" else "upsamplers"
            return f"{side}.{blocks}.{level}.{sampler}.0.conv.{m[6]}"
    if key.split(".")[0] in ("quant_conv", "post_quant_conv") or key == "quantize.embedding.weight":
        return key
    raise KeyError(key)


def convert_state_dict(sd: dict[str, torch.Tensor], config: dict) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """(backbone state dict, {key family: count}) from an LDM state dict; raises on any unaccounted key."""
    layers = int(config["unet"]["layers_per_block"])
    n_levels = len(config["unet"]["block_out_channels"])
    up_attn = [t.startswith("CrossAttn") for t in config["unet"]["up_block_types"]]
    vq_levels = len(config["vq"]["block_out_channels"])
    out: dict[str, torch.Tensor] = {}
    report: dict[str, int] = {}
    unknown = []

    def count(family: str) -> None:
        report[family] = report.get(family, 0) + 1

    for key, value in sd.items():
        try:
            if key.startswith("model.diffusion_model."):
                new = "unet." + _unet_key(key[len("model.diffusion_model.") :], layers, n_levels, up_attn)
                family = "unet"
            elif key.startswith("first_stage_model.loss."):
                count("dropped: autoencoder training loss")
                continue
            elif key.startswith("first_stage_model."):
                new = "vq." + _vq_key(key[len("first_stage_model.") :], vq_levels)
                family = "vq"
                if "mid_block.attentions" in new and value.ndim == 4:  # 1x1 convs -> linear layers
                    value = value[:, :, 0, 0]
            elif key.startswith("cond_stage_model."):
                new = "conditioner." + key[len("cond_stage_model.") :]
                family = "conditioner"
            elif key.startswith("model_ema."):
                count("dropped: EMA bookkeeping" if key in ("model_ema.decay", "model_ema.num_updates") else "ema")
                continue
            elif key in SCHEDULE_KEYS:
                count("checked: noise schedule")
                continue
            else:
                raise KeyError(key)
        except KeyError:
            unknown.append(key)
            continue
        if new in out:
            raise PathsegError(f"LDM checkpoint: {key!r} maps onto {new!r} twice")
        out[new] = value
        count(family)
    if unknown:
        raise PathsegError(f"LDM checkpoint: {len(unknown)} keys have no place in the backbone, first {unknown[0]!r}")
    if report.get("ema"):
        raise PathsegError("LDM checkpoint: EMA weights are present; converting them is not supported")
    return out, report


def _check_schedule(sd: dict[str, torch.Tensor], bb: DiffusionBackbone) -> None:
    if "alphas_cumprod" in sd:
        theirs = sd["alphas_cumprod"].float()
        if theirs.shape != bb.alphas_cumprod.shape or float((theirs - bb.alphas_cumprod).abs().max()) > 1e-5:
            raise PathsegError("LDM checkpoint: its noise schedule differs from the one its YAML describes")


def convert_ldm(
    ckpt: str | os.PathLike,
    yaml_path: str | os.PathLike,
    out: str | os.PathLike,
    name: str | None = None,
    mpp: float = 0.5,
) -> tuple[Path, dict[str, int]]:
    """Write the backbone folder ``out`` from an LDM ``.ckpt`` (Lightning or plain state dict) and its YAML.

    The result has no conditioning encoder: features then need embeddings (HIPT's, for the BRCA 20x model),
    or the encoder is attached later. Returns (folder, report of key families)."""
    import yaml

    with open(yaml_path) as f:
        cfg = config_from_yaml(yaml.safe_load(f), name or Path(ckpt).stem)
    cfg["mpp"] = mpp
    try:
        raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal
        raise PathsegError(
            f"{ckpt}: cannot be read safely ({str(exc).splitlines()[0]}). Save its 'state_dict' alone with "
            "torch.save in an environment you trust, then convert that file."
        ) from None
    sd = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(sd, dict):
        raise PathsegError(f"{ckpt}: not a checkpoint (expected a dict with a 'state_dict')")
    if "scale_factor" in sd:
        cfg["vq"]["scaling_factor"] = float(sd["scale_factor"])
    state, report = convert_state_dict(sd, cfg)
    try:
        bb = DiffusionBackbone(cfg)
    except ValueError as exc:
        raise PathsegError(f"{yaml_path}: describes a model pathseg cannot build: {exc}") from None
    _check_schedule(sd, bb)
    load_into(bb, state, f"the backbone {Path(yaml_path).name} describes", ckpt)
    return bb.save_pretrained(out), report
