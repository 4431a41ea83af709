"""Class maps for tissue segmentation: source mask codes -> training classes, with names, colours and an ignore
code (pixels that carry no label and get no weight).

Presets: ``glas`` (background, gland) and ``bcss5`` (BCSS's 22 codes grouped into tumour, stroma, inflammatory,
necrosis and other; code 0 = outside the region of interest and 7 = exclude are ignored, as the BCSS authors ask).
A class map file (JSON) gives ``{"classes": [{"name", "color", "codes": [...]}, ...], "ignore": [...]}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathseg.errors import PathsegError
from pathseg.metrics.semantic import IGNORE  # noqa: F401  (the target value of ignored pixels, re-exported)


@dataclass(frozen=True)
class ClassMap:
    """Target classes 0..K-1 (names, RGB colours) and which source codes map to each; ``ignore`` codes -> 255."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    codes: tuple[tuple[int, ...], ...]
    ignore: tuple[int, ...] = ()

    def lookup(self, max_code: int = 255) -> np.ndarray:
        """uint8 table from source code to target class (unknown codes -> IGNORE)."""
        table = np.full(max(max_code, max(max(c, default=0) for c in self.codes)) + 1, IGNORE, dtype=np.uint8)
        for target, codes in enumerate(self.codes):
            table[list(codes)] = target
        return table

    def apply(self, mask: np.ndarray) -> np.ndarray:
        """Map a source mask (integer codes) to target classes (uint8; ignored / unknown codes = 255)."""
        mask = np.asarray(mask)
        if mask.dtype.kind not in "iu":
            raise PathsegError(f"class masks must hold integer codes, got {mask.dtype}")
        table = self.lookup(int(mask.max()) if mask.size else 0)
        return table[mask]

    @property
    def n_classes(self) -> int:
        return len(self.names)


GLAS = ClassMap(("background", "gland"), ((0, 0, 0), (46, 204, 113)), ((0,), (1,)))
BCSS5 = ClassMap(
    ("tumor", "stroma", "inflammatory", "necrosis", "other"),
    ((200, 0, 0), (255, 170, 200), (0, 90, 255), (60, 60, 60), (160, 160, 40)),
    ((1, 19, 20), (2,), (3, 10, 11), (4,), (5, 6, 8, 9, 12, 13, 14, 15, 16, 17, 18, 21)),
    ignore=(0, 7),
)
PRESETS = {"glas": GLAS, "bcss5": BCSS5}


def load_class_map(spec: str | os.PathLike) -> ClassMap:
    """A preset name (``glas``, ``bcss5``) or a JSON class map file."""
    if str(spec) in PRESETS:
        return PRESETS[str(spec)]
    path = Path(spec)
    if not path.is_file():
        raise PathsegError(f"{spec}: neither a class map preset ({', '.join(PRESETS)}) nor a file")
    try:
        data = json.loads(path.read_text())
        classes = data["classes"]
        names = tuple(str(c["name"]) for c in classes)
        colors = tuple(tuple(int(v) for v in c.get("color", (128, 128, 128))) for c in classes)
        codes = tuple(tuple(int(v) for v in c["codes"]) for c in classes)
        ignore = tuple(int(v) for v in data.get("ignore", ()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PathsegError(f"{path}: not a class map ({exc}); see pathseg.tissue.classes for the format") from None
    used = [c for cs in codes for c in cs] + list(ignore)
    if len(used) != len(set(used)):
        raise PathsegError(f"{path}: a code is assigned twice")
    if any(not 0 <= c < IGNORE for c in used):
        raise PathsegError(f"{path}: codes must lie in 0..254")
    return ClassMap(names, colors, codes, ignore)
