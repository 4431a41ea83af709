"""A map refiner for compact nucleus models: AIS maps at the image's own, finer pixel size.

A compact model works at 0.5 µm/px; on 0.25 µm/px images its foreground and distance maps are upsampled 2x
bilinearly before the watershed, so nucleus outlines are only as sharp as the model's pixels. The map refiner
looks at the upsampled maps together with the image at its own pixel size and predicts a residual correction of
the maps (in logit space), so outlines follow the pixels. It is a few dilated 3x3 convolutions (receptive field
31 px), run in blocks, so its memory stays bounded on images of any size.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: Pixels each block borrows from its neighbours: the receptive field's radius (1 + 2 + 4 + 8) plus one.
HALO = 16


class MapRefiner(nn.Module):
    """Refine AIS maps (B, 3, H, W; foreground, centre and boundary distance, all in [0, 1]) given the normalised
    RGB (B, 3, H, W) at the same pixel size. Starts as the identity (zero-initialised output layer)."""

    def __init__(self, width: int = 24, dilations: tuple[int, ...] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.width = width
        self.dilations = tuple(dilations)
        layers: list[nn.Module] = []
        cin = 6
        for d in dilations:
            layers += [nn.Conv2d(cin, width, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
            cin = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, 3, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def halo(self) -> int:
        """Pixels of context each output pixel depends on, per side."""
        return sum(self.dilations) + 1

    def forward(self, x_norm: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        z = torch.logit(maps.clamp(1e-4, 1 - 1e-4))
        return torch.sigmoid(z + self.out(self.body(torch.cat([x_norm, maps], dim=1))))


@torch.inference_mode()
def refine_maps(
    refiner: MapRefiner,
    rgb: np.ndarray,
    maps: np.ndarray,
    mean: torch.Tensor,
    std: torch.Tensor,
    block: int = 1024,
) -> np.ndarray:
    """Refined (3, H, W) float32 maps of ``rgb`` (H, W, 3 uint8) from ``maps`` (3, H, W) at the same pixel size,
    computed in ``block``-px blocks with a halo (the result does not depend on ``block``). ``mean`` / ``std``:
    the model's pixel normalisation (3, 1, 1)."""
    h, w = rgb.shape[:2]
    if maps.shape[1:] != (h, w):
        raise ValueError(f"maps {maps.shape[1:]} and image {(h, w)} differ in size")
    halo = refiner.halo
    out = np.empty_like(maps, dtype=np.float32)
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            y1, x1 = min(y0 + block, h), min(x0 + block, w)
            oy0, ox0, oy1, ox1 = max(y0 - halo, 0), max(x0 - halo, 0), min(y1 + halo, h), min(x1 + halo, w)
            x = torch.from_numpy(np.array(rgb[oy0:oy1, ox0:ox1])).permute(2, 0, 1)[None].float()
            m = torch.from_numpy(np.ascontiguousarray(maps[:, oy0:oy1, ox0:ox1], dtype=np.float32))[None]
            r = refiner((x - mean) / std, m)[0].numpy()
            out[:, y0:y1, x0:x1] = r[:, y0 - oy0 : y1 - oy0, x0 - ox0 : x1 - ox0]
    return out
