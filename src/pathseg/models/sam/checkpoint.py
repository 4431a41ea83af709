"""Loading SAM / PathoSAM checkpoints in every published layout, safely (``weights_only=True``).

Accepted layouts: a plain SAM state dict (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``);
``{"model_state": ..., "decoder_state": ...}`` (micro-sam exports); training checkpoints whose keys carry a
``sam.`` prefix (optionally under ``model_state``/``state_dict``/``model``); a decoder-only state dict (PathoSAM's
``*_decoder`` files); and safetensors files holding any of these flat.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pathseg.errors import PathsegError
from pathseg.models.sam.build import SAM_SIZES

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


@dataclass
class LoadedCheckpoint:
    """SAM weights (may be empty), AIS/semantic decoder weights (may be ``None``) and the inferred size."""

    sam_state: dict[str, torch.Tensor]
    decoder_state: dict[str, torch.Tensor] | None
    size: str | None


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
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
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


def infer_size(sam_state: dict[str, torch.Tensor]) -> str | None:
    """``vit_b`` / ``vit_l`` / ``vit_h`` from the patch embedding width and the number of blocks, else None."""
    w = sam_state.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return None
    depth = len({k.split(".")[2] for k in sam_state if k.startswith("image_encoder.blocks.")})
    for name, cfg in SAM_SIZES.items():
        if cfg.embed_dim == w.shape[0] and cfg.depth == depth:
            return name
    return None


def load_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Read ``path`` and split it into SAM and decoder weights."""
    sam, decoder = split_checkpoint(read_state(path))
    if not sam and decoder is None:
        raise PathsegError(f"{path}: no SAM (image_encoder./prompt_encoder./mask_decoder.) or decoder weights found")
    return LoadedCheckpoint(sam, decoder, infer_size(sam) if sam else None)


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
