"""Shared fixtures: small synthetic H&E-like images and the location of ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    """``tools/<name>.py`` as a module (tools/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SHARED_DATA = Path(os.environ.get("PATHSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (../shared/data is absent on this machine)")
    return path


def synthetic_nuclei(
    shape: tuple[int, int] = (256, 256), n: int = 20, radius: float = 11.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like RGB uint8 image of dark-blue discs on pink, and its label image (1..N, non-touching)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    labels = np.zeros(shape, dtype=np.uint32)
    yy, xx = np.mgrid[:h, :w]
    placed = 0
    for _ in range(n * 20):
        if placed == n:
            break
        cy, cx = rng.uniform(radius + 2, h - radius - 2), rng.uniform(radius + 2, w - radius - 2)
        r = radius * rng.uniform(0.8, 1.2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        grown = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 3) ** 2
        if labels[grown].any():
            continue
        placed += 1
        labels[disc] = placed
    rgb = np.empty((h, w, 3), dtype=np.float32)
    rgb[...] = (235, 180, 210)  # eosin-pink background
    rgb[labels > 0] = (70, 50, 140)  # haematoxylin-blue nuclei
    rgb += rng.normal(0, 4, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), labels


@pytest.fixture
def nuclei_image() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_nuclei()
