"""Folders of image / instance-mask pairs, resampled to the model's pixel size, as random augmented crops.

A data folder holds ``images/<id>.png`` and ``instance_masks/<id>.png`` (uint16 labels, 0 = background), the
layout of ``../shared/data/monuseg``. Images are held in memory at the model's resolution (a few hundred MB at
most for datasets of this size); crops are drawn on the fly.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pathseg.augment import stain_jitter
from pathseg.errors import PathsegError
from pathseg.io.images import ARRAY_LABEL_SUFFIXES, image_files, read_image, read_instance_labels, read_labels
from pathseg.nuclei.targets import distance_targets
from pathseg.resize import resize_labels, resize_rgb, scaled_size

log = logging.getLogger("pathseg")

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass
class Sample:
    """One image (H, W, 3 uint8) with its instance labels (H, W) and, for class training, its per-pixel class ids
    (H, W; 0 = background), all at the model's pixel size."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    types: np.ndarray | None = None


def find_pairs(folder: str | os.PathLike, warn: bool = True) -> list[tuple[Path, Path]]:
    """(image, mask) paths matched by stem in ``folder/images`` and ``folder/instance_masks`` (or HoVer-Net's
    ``Images/`` and ``Labels/``, as CoNSeP ships); ``warn``: log the images and masks left without a partner."""
    folder = Path(folder)
    img_dir = next((folder / d for d in ("images", "Images") if (folder / d).is_dir()), folder / "images")
    mask_dir = next(
        (folder / d for d in ("instance_masks", "Labels", "labels") if (folder / d).is_dir()), folder / "instance_masks"
    )
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise PathsegError(f"{folder}: expected sub-folders images/ and instance_masks/ (or Images/ and Labels/)")
    masks = {p.stem: p for p in image_files(mask_dir, IMAGE_SUFFIXES + ARRAY_LABEL_SUFFIXES)}
    images = image_files(img_dir, IMAGE_SUFFIXES)
    pairs = [(p, masks[p.stem]) for p in images if p.stem in masks]
    if not pairs:
        raise PathsegError(f"{folder}: no image in images/ has a mask of the same name in instance_masks/")
    for what, alone in (
        ("image(s) without a mask", sorted({p.stem for p in images} - set(masks))),
        ("mask(s) without an image", sorted(set(masks) - {p.stem for p in images})),
    ):
        if alone and warn:
            more = " ..." if len(alone) > 5 else ""
            log.warning("%s: %d %s, skipped: %s%s", folder, len(alone), what, ", ".join(alone[:5]), more)
    return pairs


def find_manifest(folder: str | os.PathLike) -> Path | None:
    """The ``manifest.csv`` describing a data folder's images: beside its ``images/`` or one folder up (the
    ``../shared/data`` layout); None when there is none."""
    folder = Path(folder)
    return next((m for m in (folder / "manifest.csv", folder.parent / "manifest.csv") if m.is_file()), None)


def resample(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale by ``factor`` (output px per input px): bilinear/antialiased image, nearest-neighbour labels."""
    if abs(factor - 1) < 1e-3:
        return image, labels
    size = scaled_size(labels.shape, factor)
    return resize_rgb(image, size), resize_labels(labels, size)


def load_samples(
    folders: list[str | os.PathLike],
    mpp_in: float,
    mpp_model: float,
    with_types: bool = False,
    names: set[str] | None = None,
) -> list[Sample]:
    """Every pair in ``folders`` (only those whose image stem is in ``names``, if given), resampled from ``mpp_in``
    to ``mpp_model`` µm/px. ``with_types`` also reads ``type_masks/<stem>.png`` (per-pixel class ids, the CoNSeP
    layout)."""
    samples = []
    for folder in folders:
        other_mpp: dict[str, float] = {}  # images whose own pixel size is not mpp_in
        for img_path, mask_path in find_pairs(folder, warn=names is None):
            if names is not None and img_path.stem not in names:
                continue
            loaded = read_image(img_path)
            image = loaded.pixels
            if loaded.mpp is not None and abs(loaded.mpp / mpp_in - 1) > 0.1:
                other_mpp[img_path.name] = loaded.mpp
            labels = read_instance_labels(mask_path).astype(np.int32)
            if labels.shape != image.shape[:2]:
                raise PathsegError(f"{mask_path}: shape {labels.shape} differs from its image {image.shape[:2]}")
            types = None
            if with_types:
                type_path = Path(folder) / "type_masks" / mask_path.name
                if not type_path.is_file() and mask_path.suffix.lower() == ".mat":
                    type_path = mask_path  # HoVer-Net's layout: the type_map beside the inst_map
                if not type_path.is_file():
                    raise PathsegError(f"{type_path}: missing (class training needs type_masks/ beside the images)")
                types = read_labels(type_path, key="type_map").astype(np.int32)
            factor = mpp_in / mpp_model
            image, labels = resample(image, labels, factor)
            if types is not None:
                types = resize_labels(types, labels.shape) if types.shape != labels.shape else types
            samples.append(Sample(img_path.stem, image, labels, types))
        if other_mpp and names is None:
            shown = ", ".join(f"{n} {v:.3g}" for n, v in list(other_mpp.items())[:3])
            log.warning(
                "%s: %d image(s) carry another pixel size than --mpp %g µm/px (%s%s); they are taken as %g. "
                "Give --mpp the images' own if they are right",
                folder,
                len(other_mpp),
                mpp_in,
                shown,
                " ..." if len(other_mpp) > 3 else "",
                mpp_in,
            )
    return samples


class CropSampler:
    """Random augmented crops: flips, 90° rotations, scale jitter, stain and brightness jitter.

    ``__call__`` returns (image (3, S, S) float 0-255, AIS targets (3, S, S) float, labels (S, S) int) tensors.
    """

    def __init__(
        self,
        samples: list[Sample],
        size: int = 256,
        scale_range: tuple[float, float] = (0.8, 1.25),
        stain: float = 0.05,
        seed: int = 0,
    ) -> None:
        if not samples:
            raise PathsegError("no training samples")
        self.samples = samples
        self.size = size
        self.scale_range = scale_range
        self.stain = stain
        self.rng = np.random.default_rng(seed)
        weights = np.array([s.labels.size for s in samples], dtype=float)
        self.p = weights / weights.sum()

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = self.rng
        s = self.samples[rng.choice(len(self.samples), p=self.p)]
        scale = float(np.exp(rng.uniform(np.log(self.scale_range[0]), np.log(self.scale_range[1]))))
        src = max(8, int(round(self.size / scale)))
        h, w = s.labels.shape
        src_h, src_w = min(src, h), min(src, w)
        y0 = int(rng.integers(0, h - src_h + 1))
        x0 = int(rng.integers(0, w - src_w + 1))
        img = s.image[y0 : y0 + src_h, x0 : x0 + src_w]
        # instance labels and class ids travel together through every geometric transform
        lab = s.labels[y0 : y0 + src_h, x0 : x0 + src_w].astype(np.int64)
        if s.types is not None:
            lab = lab * 256 + s.types[y0 : y0 + src_h, x0 : x0 + src_w]
        k = int(rng.integers(4))
        img, lab = np.rot90(img, k), np.rot90(lab, k)
        if rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        img, lab = np.ascontiguousarray(img), np.ascontiguousarray(lab)
        if self.stain > 0:
            img = stain_jitter(img, rng, self.stain)
        img, lab = resample(img, lab, self.size / max(src_h, src_w))
        img, lab = _pad_to(img, lab, self.size)
        types = np.zeros_like(lab)
        if s.types is not None:
            lab, types = lab // 256, lab % 256
        x = torch.from_numpy(img).permute(2, 0, 1).float()
        x = x * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-10, 10))
        return (
            x.clamp(0, 255),
            torch.from_numpy(distance_targets(lab)),
            torch.from_numpy(lab.astype(np.int64)),
            torch.from_numpy(types.astype(np.int64)),
        )

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stacked (images, AIS targets, instance labels, class ids); class ids are 0 without type masks."""
        items = [self() for _ in range(n)]
        return tuple(torch.stack([item[i] for item in items]) for i in range(4))  # type: ignore[return-value]


def _pad_to(img: np.ndarray, lab: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = lab.shape
    if h >= size and w >= size:
        return img[:size, :size], lab[:size, :size]
    ph, pw = max(size - h, 0), max(size - w, 0)
    img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    lab = np.pad(lab, ((0, ph), (0, pw)))
    return img[:size, :size], lab[:size, :size]
