"""Where models run: ``auto`` (the first CUDA GPU when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

Inference takes numpy images in and gives numpy maps out on any device: inputs move to the model's device, results
come back to the CPU. Models are loaded on the CPU and moved with :func:`place`."""

from __future__ import annotations

import logging

import torch

from pathseg.errors import PathsegError

log = logging.getLogger("pathseg")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device ``spec`` names (None = ``auto``); a CUDA device this machine lacks stops with a message."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = "auto" if spec is None else spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise PathsegError(f"unknown device {spec!r}; one of auto, cpu, cuda, cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but sees no GPU (driver, "
                "CUDA_VISIBLE_DEVICES?)"
                if torch.version.cuda
                else f"torch {torch.__version__} is a CPU build; install a CUDA build of PyTorch for GPUs"
            )
            raise PathsegError(f"device {spec!r}: no CUDA GPU here ({why}); use --device cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise PathsegError(f"device {spec!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (the CPU for a module without any)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def place(
    model,
    device: str | torch.device | None = "auto",
    ais_precision: str | None = None,
    class_precision: str | None = None,
):
    """``model`` moved to ``device`` (see :func:`resolve_device`), in place; returned as is when it is no torch
    module (``classical``). The int8 automatic and class paths run on CPUs only, so elsewhere they are set to
    float32 (and so recorded by slide runs), with a note; ``ais_precision`` ``int8`` asked for on another
    device stops with a message instead (``class_precision`` likewise)."""
    if not isinstance(model, torch.nn.Module):
        return model
    target = resolve_device(device)
    for flag, asked in (("--ais-precision", ais_precision), ("--class-precision", class_precision)):
        if target.type != "cpu" and asked == "int8":
            raise PathsegError(f"{flag} int8 runs on CPUs; on {target} leave it out (float32) or use --device cpu")
    if target.type != "cpu" and getattr(model, "ais_precision", None) == "int8":
        log.info("note: model %r runs its automatic path in float32 on %s (int8 runs on CPUs)", model.name, target)
        model.set_ais_precision("float32")
    if target.type != "cpu" and getattr(model, "config", {}).get("class_precision") == "int8":
        model.config["class_precision"] = "float32"  # likewise for its class path
    return model.to(target)  # in place (a module already there: nothing moves)
