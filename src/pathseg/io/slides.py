"""Whole-slide images opened lazily: pyramid levels, pixel size (µm/px) and region reads, never the whole slide.

OpenSlide formats (svs, ndpi, mrxs, scn, ...) go through openslide-python; OME-TIFF and plain tiled TIFF through
tifffile + zarr (random access to tiles). Coordinates are (x, y) in pixels of the level they refer to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathseg.errors import InputImageError, PathsegError
from pathseg.io.convert import to_rgb_uint8
from pathseg.io.images import OPENSLIDE_SUFFIXES, PIL_SUFFIXES, _check_file
from pathseg.io.metadata import mpp_from_tiff, note_replaced_mpp


@dataclass(frozen=True)
class Level:
    """One pyramid level: size in pixels and downsample factor relative to level 0."""

    width: int
    height: int
    downsample: float


class Slide:
    """A slide opened for region reads. Use :func:`open_slide`; close with :meth:`close` or ``with``."""

    path: Path
    levels: list[Level]
    mpp: float | None  #: µm/px of level 0 (None if the file does not say)

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) of the region at (x, y) in ``level`` pixels (outside: white)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.levels[0].width, self.levels[0].height

    def level_mpp(self, level: int) -> float | None:
        return None if self.mpp is None else self.mpp * self.levels[level].downsample

    def best_level(self, target_mpp: float) -> int:
        """The coarsest level whose pixels are still at least as fine as ``target_mpp`` (µm/px)."""
        if self.mpp is None:
            raise PathsegError(f"{self.path}: the slide has no pixel size; give it with --mpp")
        ok = [i for i in range(len(self.levels)) if self.level_mpp(i) <= target_mpp * 1.01]
        return max(ok, key=lambda i: self.levels[i].downsample) if ok else 0

    def thumbnail(self, max_size: int = 2048) -> tuple[np.ndarray, float]:
        """An overview whose longer side is <= ``max_size`` px, and its downsample factor from level 0.

        Starts from the coarsest level that is still at least ``max_size`` px (or the coarsest level), reads it in
        strips and averages blocks, so memory stays bounded even for a slide without a pyramid.
        """
        candidates = [i for i, lv in enumerate(self.levels) if max(lv.width, lv.height) >= max_size]
        level = max(candidates, key=lambda i: self.levels[i].downsample) if candidates else len(self.levels) - 1
        lv = self.levels[level]
        f = max(1, int(np.ceil(max(lv.width, lv.height) / max_size)))
        out_h, out_w = lv.height // f, lv.width // f
        if f == 1:
            return self.read_region(level, 0, 0, lv.width, lv.height), lv.downsample
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        rows = max(1, 2048 // f)  # output rows per strip
        for r0 in range(0, out_h, rows):
            r1 = min(r0 + rows, out_h)
            try:
                strip = self.read_region(level, 0, r0 * f, out_w * f, (r1 - r0) * f).astype(np.float32)
            except InputImageError:  # a damaged strip shows as background in the overview
                strip = np.full(((r1 - r0) * f, out_w * f, 3), 255.0, dtype=np.float32)
            out[r0:r1] = strip.reshape(r1 - r0, f, out_w, f, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        return out, lv.downsample * f


class _OpenSlide(Slide):
    def __init__(self, path: Path) -> None:
        import openslide

        try:
            self._s = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as exc:
            raise InputImageError(path, f"cannot open slide ({exc})") from exc
        self.path = path
        self.levels = [
            Level(w, h, float(d)) for (w, h), d in zip(self._s.level_dimensions, self._s.level_downsamples, strict=True)
        ]
        value = self._s.properties.get(openslide.PROPERTY_NAME_MPP_X)
        try:
            self.mpp = float(value) if value else None
        except ValueError:
            self.mpp = None

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        import openslide

        d = self.levels[level].downsample
        try:
            region = self._s.read_region((int(round(x * d)), int(round(y * d))), level, (width, height))
        except openslide.OpenSlideError as exc:
            raise InputImageError(
                self.path, f"cannot read region {x},{y},{width},{height} of level {level} ({exc})"
            ) from exc
        return to_rgb_uint8(np.asarray(region))[0]

    def close(self) -> None:
        self._s.close()


class _TiffSlide(Slide):
    def __init__(self, path: Path) -> None:
        import tifffile
        import zarr

        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            levels = series.levels or [series]
        except Exception as exc:  # tifffile raises several types on bad files
            raise InputImageError(path, f"cannot open TIFF slide ({exc})") from exc
        self.path = path
        self._axes = levels[0].axes
        self._arrays = []
        for i in range(len(levels)):
            store = self._tif.aszarr(series=0, level=i)
            self._arrays.append(zarr.open(store, mode="r"))
        w0 = levels[0].shape[self._axes.index("X")]
        self.levels = []
        for lv in levels:
            ax = lv.axes
            w, h = lv.shape[ax.index("X")], lv.shape[ax.index("Y")]
            self.levels.append(Level(int(w), int(h), w0 / w))
        self.mpp = mpp_from_tiff(self._tif)

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        lv = self.levels[level]
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, lv.width), min(y + height, lv.height)
        if x1 <= x0 or y1 <= y0:
            return out
        arr = self._arrays[level]
        index = []
        for ax in self._axes:
            index.append(slice(y0, y1) if ax == "Y" else slice(x0, x1) if ax == "X" else slice(None))
        try:
            data = np.asarray(arr[tuple(index)])
        except Exception as exc:  # a damaged tile: report which region could not be decoded
            raise InputImageError(
                self.path, f"cannot decode region {x},{y},{width},{height} of level {level} ({exc})"
            ) from exc
        axes = "".join(a for a in self._axes if a in "YXCS").replace("S", "C")
        data = np.transpose(data, [axes.index(a) for a in "YXC" if a in axes])
        out[y0 - y : y1 - y, x0 - x : x1 - x] = to_rgb_uint8(data)[0]
        return out

    def close(self) -> None:
        self._tif.close()


def open_slide(path: str | os.PathLike, mpp: float | None = None) -> Slide:
    """Open a whole-slide image lazily. ``mpp`` (µm/px of level 0) overrides the file's metadata."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in PIL_SUFFIXES:
        raise InputImageError(
            path,
            "a PNG/JPEG image is no slide: segment it with `pathseg nuclei` (up to the pixel cap), or convert it to a "
            "tiled pyramidal TIFF first (e.g. vips tiffsave IN OUT.tif --tile --pyramid)",
        )
    if path.suffix.lower() in OPENSLIDE_SUFFIXES:
        slide: Slide = _OpenSlide(path)
    else:
        try:
            slide = _TiffSlide(path)
        except InputImageError:
            slide = _OpenSlide(path)
    if mpp is not None:
        if not mpp > 0:
            raise PathsegError(f"--mpp must be positive, got {mpp}")
        note_replaced_mpp(path.name, float(mpp), slide.mpp, "slide")
        slide.mpp = float(mpp)
    return slide
