"""A tile grid with halo over a 2-D image, and stitching of dense per-tile maps (halo cropped).

Each tile's *inner* box partitions the image; the *outer* box adds up to ``halo`` pixels of context on each side
(clipped at the image border). A model runs on the outer box; only the inner box of its output is kept, so every
pixel of the stitched map comes from the tile that sees it with the most context.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Tile:
    """Inner and outer boxes of one tile as (y0, x0, y1, x1) in image pixels."""

    inner: tuple[int, int, int, int]
    outer: tuple[int, int, int, int]

    @property
    def outer_slices(self) -> tuple[slice, slice]:
        y0, x0, y1, x1 = self.outer
        return slice(y0, y1), slice(x0, x1)

    @property
    def inner_slices(self) -> tuple[slice, slice]:
        y0, x0, y1, x1 = self.inner
        return slice(y0, y1), slice(x0, x1)

    @property
    def inner_in_outer(self) -> tuple[slice, slice]:
        """Where the inner box lies within the outer box's array."""
        y0, x0, y1, x1 = self.inner
        oy, ox = self.outer[0], self.outer[1]
        return slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox)


def tile_grid(shape: tuple[int, int], tile: int, halo: int) -> list[Tile]:
    """Tiles covering an image of ``shape`` (H, W): inner boxes of at most ``tile - 2*halo`` px, outer <= ``tile``.

    ``tile`` is the size the model sees (pixels); ``halo`` the context kept on each side.
    """
    h, w = shape
    if h <= tile and w <= tile:  # fits in one tile: no halo needed
        return [Tile((0, 0, h, w), (0, 0, h, w))]
    if tile <= 2 * halo:
        raise ValueError(f"tile ({tile}) must be larger than twice the halo ({halo})")
    step = tile - 2 * halo
    tiles = []
    for y0 in range(0, h, step):
        for x0 in range(0, w, step):
            y1, x1 = min(y0 + step, h), min(x0 + step, w)
            tiles.append(
                Tile((y0, x0, y1, x1), (max(y0 - halo, 0), max(x0 - halo, 0), min(y1 + halo, h), min(x1 + halo, w)))
            )
    return tiles


def iter_tiles(shape: tuple[int, int], tile: int, halo: int) -> Iterator[Tile]:
    yield from tile_grid(shape, tile, halo)
