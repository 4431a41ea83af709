"""pathseg's own model format: a folder holding ``config.json`` and ``model.safetensors`` (written atomically).

``config["extra_weights"]`` may list further ``.safetensors`` files in the folder whose tensors are added to the
state (an add-on part, e.g. a mask refiner, shipped without rewriting the main file); ``config["replace_weights"]``
files replace tensors the main file already has, with the same shapes (a retrained part, e.g. the AIS decoder,
shipped without a second copy of the whole model in git history).

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
    return json.loads(path.read_text())


def update_config(folder: str | os.PathLike, entries: dict, what: str = "model") -> Path:
    """Set top-level ``entries`` in a model folder's ``config.json`` (rewritten atomically); returns its path."""
    from pathseg.io.atomic import atomic_open

    config = {**read_config(folder, what), **entries}
    path = Path(folder) / CONFIG_NAME
    with atomic_open(path, "w") as f:
        json.dump(config, f, indent=2)
    return path


def read_folder(folder: str | os.PathLike, what: str = "model") -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state) of a model folder; floating tensors come back as float32 (weights may be stored in fp16)."""
    from pathseg.models.sam.checkpoint import read_state

    config = read_config(folder, what)
    state = read_state(Path(folder) / WEIGHTS_NAME)
    for entry in ("extra_weights", "replace_weights"):
        for name in config.get(entry, []):
            if Path(name).name != name or not name.endswith(".safetensors"):
                raise PathsegError(f"{folder}: {entry} entry {name!r} must be a .safetensors file in the folder")
            part = read_state(Path(folder) / name)
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
