"""Folders of image / class-mask pairs for tissue training, mapped to target classes by a :class:`ClassMap`.

A folder holds ``images/<id>.png`` and one mask folder, ``masks/``, ``class_masks/`` or ``binary_masks/`` (the
GlaS layout), with integer codes per pixel. Images are kept in memory (GlaS: ~130 MB).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pathseg.augment import stain_jitter
from pathseg.errors import PathsegError
from pathseg.io.images import image_files, read_image, read_labels
from pathseg.resize import resize_labels, resize_rgb, scaled_size
from pathseg.tissue.classes import IGNORE, ClassMap
from pathseg.train.data import IMAGE_SUFFIXES

MASK_DIRS = ("masks", "class_masks", "binary_masks")


@dataclass
class TissueSample:
    name: str
    image: np.ndarray  #: (H, W, 3) uint8
    target: np.ndarray  #: (H, W) uint8 class ids, 255 = ignore


def load_tissue_samples(
    folders: list[str | os.PathLike], class_map: ClassMap, mpp_in: float | None = None, mpp_model: float | None = None
) -> list[TissueSample]:
    """Every image with a mask of the same stem; resampled from ``mpp_in`` to ``mpp_model`` when both are given."""
    out = []
    for folder in folders:
        folder = Path(folder)
        mask_dir = next((folder / d for d in MASK_DIRS if (folder / d).is_dir()), None)
        if not (folder / "images").is_dir() or mask_dir is None:
            raise PathsegError(f"{folder}: expected images/ and one of {', '.join(d + '/' for d in MASK_DIRS)}")
        masks = {p.stem: p for p in image_files(mask_dir, IMAGE_SUFFIXES)}
        for img in image_files(folder / "images", IMAGE_SUFFIXES):
            if img.stem not in masks:
                continue
            image = read_image(img).pixels
            target = class_map.apply(read_labels(masks[img.stem]))
            if target.shape != image.shape[:2]:
                raise PathsegError(f"{masks[img.stem]}: shape {target.shape} differs from its image {image.shape[:2]}")
            if mpp_in and mpp_model and abs(mpp_in / mpp_model - 1) > 1e-3:
                size = scaled_size(target.shape, mpp_in / mpp_model)
                image, target = resize_rgb(image, size), resize_labels(target, size)
            out.append(TissueSample(img.stem, image, target))
    if not out:
        raise PathsegError(f"no image / mask pairs in {', '.join(map(str, folders))}")
    return out


class TissueCrops:
    """Random square crops (flips, 90° rotations; with ``stain`` > 0 a HED jitter of that strength, see
    :func:`~pathseg.augment.stain_jitter`), reflect-padded when an image is smaller than the crop."""

    def __init__(self, samples: list[TissueSample], crop: int, seed: int = 0, stain: float = 0.0) -> None:
        self.samples = samples
        self.crop = crop
        self.stain = stain
        self.rng = np.random.default_rng(seed)

    def _one(self, s: TissueSample) -> tuple[np.ndarray, np.ndarray]:
        c = self.crop
        img, tgt = s.image, s.target
        ph, pw = max(0, c - img.shape[0]), max(0, c - img.shape[1])
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")
            tgt = np.pad(tgt, ((0, ph), (0, pw)), constant_values=IGNORE)
        y = int(self.rng.integers(0, img.shape[0] - c + 1))
        x = int(self.rng.integers(0, img.shape[1] - c + 1))
        img, tgt = img[y : y + c, x : x + c], tgt[y : y + c, x : x + c]
        k = int(self.rng.integers(0, 4))
        img, tgt = np.rot90(img, k), np.rot90(tgt, k)
        if self.rng.random() < 0.5:
            img, tgt = img[:, ::-1], tgt[:, ::-1]
        img = np.ascontiguousarray(img)
        if self.stain > 0:
            img = stain_jitter(img, self.rng, self.stain)
        return img, np.ascontiguousarray(tgt)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, crop, crop) float in [0, 1] and (n, crop, crop) int64 targets."""
        picks = [self._one(self.samples[int(i)]) for i in self.rng.integers(0, len(self.samples), n)]
        x = torch.from_numpy(np.stack([p[0] for p in picks])).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(np.stack([p[1] for p in picks]).astype(np.int64))
        return x, y
