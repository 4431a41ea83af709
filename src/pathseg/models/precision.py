"""Inference precision: float32, or bfloat16 autocast where the hardware computes it natively.

``auto`` takes bfloat16 only where it is fast: a CPU with the ``avx512_bf16`` or ``amx_bf16`` instructions (read from
``/proc/cpuinfo``; elsewhere unknown, so float32), or a CUDA device that supports it. On a CPU without them, oneDNN
emulates bfloat16 and it is no faster, so float32 is kept.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("float32", "bfloat16", "auto")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU lists a native bfloat16 instruction set (Linux ``/proc/cpuinfo``; False if unreadable)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError that lists them."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``float32`` or ``bfloat16``: what ``precision`` (see :data:`PRECISIONS`) means on ``device``."""
    if check_precision(precision) != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device.type == "cpu" and cpu_has_native_bf16() else "float32"


def autocast(precision: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """A context that runs the enclosed forward passes at ``precision`` on ``device`` (float32: no change).

    bfloat16 is torch's autocast: convolutions, matrix products and attention in bfloat16, normalisations and
    reductions in float32; outputs may come back as bfloat16.
    """
    device = torch.device(device)
    if resolve_precision(precision, device) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
