"""A bounded in-memory cache of diffusion features for head training: each image is cut into the inference patch
grid (patch ``p``, step ``3p/4``, reflect-padded), optionally in several dihedral views (the image is turned *before*
the backbone sees it), and every patch's features are computed once and kept as float16. Training then samples
patches from the cache, so one backbone pass serves every iteration and every head of an ablation.
"""

from __future__ import annotations

import numpy as np
import torch

from pathseg.augment import stain_jitter
from pathseg.errors import PathsegError
from pathseg.progress import ProgressCallback
from pathseg.tissue.classes import IGNORE
from pathseg.tissue.data import TissueSample
from pathseg.tissue.features import DiffusionFeatures
from pathseg.tissue.model import pad_to_grid, patch_grid, view_dihedral


def _view(a: np.ndarray, k: int) -> np.ndarray:
    """Dihedral view ``k`` (0..7) of an (H, W) or (H, W, C) array, contiguous (see :func:`view_dihedral`)."""
    return np.ascontiguousarray(view_dihedral(a, k, (0, 1)))


class FeatureBank:
    """Features (N, C, p/f, p/f) float16 and targets (N, p, p) uint8 of the patches of ``samples``; with
    ``images`` also the patches themselves (N, p, p, 3) uint8 (for a head with a pixel refiner).

    ``views``: dihedral views per image (1 = as is, up to 8). ``stain``: HED jitter strength (see
    :func:`~pathseg.augment.stain_jitter`) of every view but the first, one draw per view from ``seed`` (0: none).
    ``max_gb``: refuse to build a cache larger than this (it would not fit in memory), with a message saying how to
    shrink it.
    """

    def __init__(
        self,
        features: DiffusionFeatures,
        samples: list[TissueSample],
        patch: int,
        views: int = 1,
        batch: int = 4,
        max_gb: float = 4.0,
        progress: ProgressCallback | None = None,
        images: bool = False,
        stain: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 1 <= views <= 8:
            raise ValueError(f"views must lie in 1..8, got {views}")
        if not 0 <= stain < 1:
            raise ValueError(f"stain must lie in [0, 1), got {stain}")
        rng = np.random.default_rng(seed)
        step = patch * 3 // 4
        jobs = []
        for i, s in enumerate(samples):
            for k in range(views):
                h, w = _view(s.target, k).shape
                jobs += [(i, k, y, x) for y in patch_grid(h, patch, step) for x in patch_grid(w, patch, step)]
        f = 2 ** (len(features.backbone.vq.config.block_out_channels) - 1)
        need = len(jobs) * (features.channels * (patch // f) ** 2 * 2 + images * patch**2 * 3) / 1e9
        if need > max_gb:
            raise PathsegError(
                f"the feature cache would take {need:.1f} GB (> {max_gb:g} GB): use fewer views, fewer timesteps or "
                "blocks, or train without the cache"
            )
        self.feats = torch.empty((len(jobs), features.channels, patch // f, patch // f), dtype=torch.float16)
        self.targets = torch.empty((len(jobs), patch, patch), dtype=torch.uint8)
        self.images = torch.empty((len(jobs), patch, patch, 3), dtype=torch.uint8) if images else None
        views_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for start in range(0, len(jobs), batch):
            part = jobs[start : start + batch]
            imgs = []
            for j, (i, k, y, x) in enumerate(part, start):
                if (i, k) not in views_cache:
                    views_cache.clear()
                    img, tgt = _view(samples[i].image, k), _view(samples[i].target, k)
                    if stain > 0 and k > 0:
                        img = stain_jitter(img, rng, stain)
                    ys, xs = patch_grid(img.shape[0], patch, step), patch_grid(img.shape[1], patch, step)
                    ph, pw = ys[-1] + patch, xs[-1] + patch
                    tgt = np.pad(tgt, ((0, ph - tgt.shape[0]), (0, pw - tgt.shape[1])), constant_values=IGNORE)
                    views_cache[(i, k)] = (pad_to_grid(img, ph, pw), tgt)
                img, tgt = views_cache[(i, k)]
                imgs.append(img[y : y + patch, x : x + patch])
                self.targets[j] = torch.from_numpy(tgt[y : y + patch, x : x + patch])
            batch_u8 = torch.from_numpy(np.stack(imgs))
            if self.images is not None:
                self.images[start : start + len(part)] = batch_u8
            xb = batch_u8.permute(0, 3, 1, 2).float() / 255
            self.feats[start : start + len(part)] = features(xb).half()
            if progress:
                progress(start + len(part), len(jobs), "caching features")

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, n: int, rng: np.random.Generator, channels: torch.Tensor | None = None):
        """(features float32, int64 targets, images) of ``n`` random cached patches; ``channels`` selects feature
        channels. See :meth:`rows`."""
        return self.rows(torch.from_numpy(rng.integers(0, len(self), n)), channels)

    def rows(self, idx: torch.Tensor | slice, channels: torch.Tensor | None = None):
        """(features float32, int64 targets, images (B, 3, p, p) float in [0, 1] or None without ``images``) of
        the cached patches ``idx``."""
        f = self.feats[idx]
        if channels is not None:
            f = f[:, channels]
        x = None if self.images is None else self.images[idx].permute(0, 3, 1, 2).float() / 255
        return f.float(), self.targets[idx].long(), x
