"""Loading SAM / PathoSAM checkpoints in every published layout, safely (``weights_only=True``).

Accepted layouts: a plain SAM state dict (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``);
``{"model_state": ..., "decoder_state": ...}`` (micro-sam exports); training checkpoints whose keys carry a
``sam.`` prefix (optionally under ``model_state``/``state_dict``/``model``); a decoder-only state dict (PathoSAM's
``*_decoder`` files); and safetensors files holding any of these flat.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pathseg.errors import PathsegError
from pathseg.models.sam.build import SAM_SIZES, ViTConfig

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


@dataclass
class LoadedCheckpoint:
    """SAM weights (may be empty), AIS/semantic decoder weights (may be ``None``) and the inferred encoder."""

    sam_state: dict[str, torch.Tensor]
    decoder_state: dict[str, torch.Tensor] | None
    vit: ViTConfig | None

    @property
    def size(self) -> str | None:
        return size_name(self.vit)


def read_state(path: str | os.PathLike) -> dict:
    """Read a checkpoint file without executing code (``torch.load(weights_only=True)`` or safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise PathsegError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise PathsegError(f"{path}: checkpoint file is empty")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise PathsegError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # garbage makes the weights-only unpickler raise almost anything (KeyError, ...)
        msg = type(exc).__name__ + (f": {str(exc).splitlines()[0]}" if str(exc) else "")
        raise PathsegError(f"{path}: cannot read checkpoint (truncated, corrupt or not a PyTorch file: {msg})") from exc


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def split_checkpoint(obj: dict) -> tuple[dict, dict | None]:
    """(SAM state, decoder state or None) from any accepted layout."""
    if not isinstance(obj, dict):
        raise PathsegError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    decoder = obj.get("decoder_state")
    for key in ("model_state", "state_dict", "model"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "sam."):
        if any(k.startswith(prefix) for k in state):
            state = (
                _strip(state, prefix)
                if all(k.startswith(prefix) for k in state)
                else {**{k: v for k, v in state.items() if not k.startswith(prefix)}, **_strip(state, prefix)}
            )
    sam = {k: v for k, v in state.items() if k.startswith(SAM_PREFIXES)}
    rest = {k: v for k, v in state.items() if not k.startswith(SAM_PREFIXES)}
    if decoder is None and rest and "out_conv.weight" in rest:
        decoder = rest
    elif decoder is None and any(k.startswith("decoder.") and "out_conv" in k for k in rest):
        decoder = _strip(rest, "decoder.")
    if decoder is not None:
        decoder = {k: v for k, v in decoder.items() if isinstance(v, torch.Tensor) and not k.startswith("encoder.")}
    return sam, decoder


def infer_vit_config(sam_state: dict[str, torch.Tensor]) -> ViTConfig | None:
    """The ViT image-encoder configuration implied by the shapes of a SAM state dict (None if not a ViT)."""
    w = sam_state.get("image_encoder.patch_embed.proj.weight")
    pos = sam_state.get("image_encoder.pos_embed")
    if w is None or pos is None:
        return None
    embed_dim, patch = int(w.shape[0]), int(w.shape[-1])
    grid = int(pos.shape[1])
    depth = len({k.split(".")[2] for k in sam_state if k.startswith("image_encoder.blocks.")})
    rel = [sam_state.get(f"image_encoder.blocks.{i}.attn.rel_pos_h") for i in range(depth)]
    if depth == 0 or any(r is None for r in rel):
        return None
    head_dim = int(rel[0].shape[1])
    global_idx = tuple(i for i, r in enumerate(rel) if r.shape[0] == 2 * grid - 1)
    windowed = [r for r in rel if r.shape[0] != 2 * grid - 1]
    window = (int(windowed[0].shape[0]) + 1) // 2 if windowed else 14
    neck = sam_state.get("image_encoder.neck.0.weight")
    return ViTConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        global_attn_indexes=global_idx,
        img_size=grid * patch,
        patch_size=patch,
        window_size=window,
        out_chans=int(neck.shape[0]) if neck is not None else 256,
    )


def size_name(cfg: ViTConfig | None) -> str | None:
    """``vit_b`` / ``vit_l`` / ``vit_h`` when ``cfg`` is one of the official sizes, else a description."""
    if cfg is None:
        return None
    for name, ref in SAM_SIZES.items():
        if ref == cfg:
            return name
    return f"custom ViT (embed {cfg.embed_dim}, depth {cfg.depth}, {cfg.img_size}px)"


def infer_size(sam_state: dict[str, torch.Tensor]) -> str | None:
    """``vit_b`` / ``vit_l`` / ``vit_h`` (or a custom-ViT description) from the state's shapes, else None."""
    return size_name(infer_vit_config(sam_state))


def load_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Read ``path`` and split it into SAM and decoder weights."""
    sam, decoder = split_checkpoint(read_state(path))
    if not sam and decoder is None:
        raise PathsegError(f"{path}: no SAM (image_encoder./prompt_encoder./mask_decoder.) or decoder weights found")
    return LoadedCheckpoint(sam, decoder, infer_vit_config(sam) if sam else None)


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, source: object) -> None:
    """``module.load_state_dict(state, strict=True)`` with a message naming the first bad key and the shapes."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]!r}")
        raise PathsegError(f"{source}: does not fit {what}: " + "; ".join(parts))
    for k, v in state.items():
        if expected[k].shape != v.shape:
            raise PathsegError(
                f"{source}: does not fit {what}: {k!r} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
            )
    module.load_state_dict(state, strict=True)
