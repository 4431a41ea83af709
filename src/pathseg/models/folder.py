"""pathseg's own model format: a folder holding ``config.json`` and ``model.safetensors`` (written atomically).

``config["extra_weights"]`` may list further ``.safetensors`` files in the folder whose tensors are added to the
state (an add-on part, e.g. a mask refiner, shipped without rewriting the main file); ``config["replace_weights"]``
files replace tensors the main file already has, with the same shapes (a retrained part, e.g. the AIS decoder,
shipped without a second copy of the whole model in git history).

A floating tensor may be stored as int8 rows: the tensor under its own key as int8 and, under ``<key>.int8_scale``,
one float32 scale per row (first dimension); reading gives back ``int8 * scale`` in float32
(:func:`quantize_rows`). The bundled nucleus model stores its largest prompt-path matrices so.

Every saveable pathseg model (nucleus, diffusion backbone, tissue) reads and writes it through these helpers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from pathseg.errors import PathsegError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: key suffix of the per-row scales of a tensor stored as int8
INT8_SCALE = ".int8_scale"


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row (first dimension) of a floating tensor: ``(q, scale)`` with ``q * scale`` within half
    a step (``max |row| / 254``) of each value; an all-zero row gets scale 1."""
    flat = t.detach().float().reshape(t.shape[0], -1)
    scale = flat.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(t.shape), scale


def dequantize(state: dict[str, torch.Tensor], where: str = "") -> dict[str, torch.Tensor]:
    """``state`` with each int8 tensor that has a ``<key>.int8_scale`` replaced by float32 ``q * scale``."""
    out = {k: v for k, v in state.items() if not k.endswith(INT8_SCALE)}
    for key in (k[: -len(INT8_SCALE)] for k in state if k.endswith(INT8_SCALE)):
        q, scale = out.get(key), state[key + INT8_SCALE]
        if q is None or q.dtype != torch.int8 or scale.shape != (q.shape[0],):
            raise PathsegError(f"{where}: {key + INT8_SCALE!r} is no per-row scale of an int8 tensor {key!r}")
        out[key] = q.float() * scale.float().reshape(-1, *([1] * (q.ndim - 1)))
    return out


def write_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``tensors`` as a safetensors file at ``path`` atomically (a main, add-on or replacement file)."""
    from safetensors.torch import save_file

    from pathseg.io.atomic import atomic_path

    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp))
    return Path(path)


def save_folder(
    folder: str | os.PathLike, config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype | None = None
) -> Path:
    """Write ``state`` (floating tensors cast to ``dtype`` when given) and ``config`` into ``folder``."""
    from pathseg.io.atomic import atomic_open

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous() for k, v in state.items()
    }
    write_weights(folder / WEIGHTS_NAME, tensors)
    # every tensor is in the one file now
    config = {k: v for k, v in config.items() if k not in ("extra_weights", "replace_weights")}
    with atomic_open(folder / CONFIG_NAME, "w") as f:
        json.dump(config, f, indent=2)
    return folder


def read_config(folder: str | os.PathLike, what: str = "model") -> dict:
    """The ``config.json`` of a model folder."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise PathsegError(f"{folder}: no {CONFIG_NAME} (not a pathseg {what} folder)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PathsegError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise PathsegError(f"{path}: expected a JSON object of settings")
    return config


def folder_task(folder: str | os.PathLike) -> str | None:
    """What a model folder does (``nuclei``, ``tissue``, ``diffusion_backbone``, ...): its config's ``task``, else
    inferred from its parts; None when neither says."""
    config = read_config(folder)
    if "task" in config:
        return str(config["task"])
    return "nuclei" if "encoder" in config else "tissue" if "backbone" in config else None


def update_config(folder: str | os.PathLike, entries: dict, what: str = "model") -> Path:
    """Set top-level ``entries`` in a model folder's ``config.json`` (rewritten atomically); returns its path."""
    from pathseg.io.atomic import atomic_open

    config = {**read_config(folder, what), **entries}
    path = Path(folder) / CONFIG_NAME
    with atomic_open(path, "w") as f:
        json.dump(config, f, indent=2)
    return path


def read_folder(folder: str | os.PathLike, what: str = "model") -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state) of a model folder; floating tensors come back as float32 (weights may be stored in fp16 or as
    int8 rows)."""
    from pathseg.models.sam.checkpoint import read_state

    config = read_config(folder, what)
    state = dequantize(read_state(Path(folder) / WEIGHTS_NAME), f"{folder}/{WEIGHTS_NAME}")
    for entry in ("extra_weights", "replace_weights"):
        for name in config.get(entry, []):
            if Path(name).name != name or not name.endswith(".safetensors"):
                raise PathsegError(f"{folder}: {entry} entry {name!r} must be a .safetensors file in the folder")
            part = dequantize(read_state(Path(folder) / name), f"{folder}/{name}")
            if entry == "extra_weights":  # add-on parts shipped beside the main file: new keys only
                clash = sorted(set(part) & set(state))
                if clash:
                    raise PathsegError(f"{folder}/{name}: holds {clash[0]!r}, which {WEIGHTS_NAME} already has")
            else:  # replacements of tensors the main file has, shape for shape
                bad = [k for k, v in part.items() if k not in state or state[k].shape != v.shape]
                if bad:
                    raise PathsegError(
                        f"{folder}/{name}: replaces {bad[0]!r}, which {WEIGHTS_NAME} does not hold with that shape"
                    )
            state.update(part)
    return config, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
