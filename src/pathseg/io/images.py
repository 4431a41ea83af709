"""Read microscopy images safely into RGB uint8, with their pixel size (µm/px) when the file carries one.

Formats: PNG, JPEG, BMP (Pillow); TIFF and OME-TIFF (tifffile); the OpenSlide formats (svs, ndpi, mrxs, scn, ...).
Every failure a user can cause (missing, empty, truncated, not an image, too large) raises
:class:`~pathseg.errors.InputImageError` naming the file and the reason.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathseg.errors import InputImageError
from pathseg.io.convert import to_rgb_uint8
from pathseg.io.metadata import mpp_from_dpi, mpp_from_tiff

log = logging.getLogger("pathseg")

#: Default cap on the pixels of one image read whole (H*W). 100 Mpx is 300 MB as RGB uint8.
DEFAULT_MAX_PIXELS = 100_000_000

OPENSLIDE_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide"}
TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8"}
PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass
class LoadedImage:
    """An image read from disk.

    ``pixels`` is (H, W, 3) uint8 RGB; ``mpp`` is the pixel size in µm/px found in the file, or ``None``.
    """

    pixels: np.ndarray
    path: Path
    mpp: float | None = None
    notes: list[str] = field(default_factory=list)


def image_files(folder: str | os.PathLike, suffixes) -> list[Path]:
    """The files of ``folder`` whose suffix (any case) is one of ``suffixes``, sorted; hidden files (such as the
    ``._x.png`` metadata macOS leaves beside ``x.png`` on other disks) are left out."""
    return sorted(
        p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def max_pixels_default() -> int:
    """The pixel cap: ``PATHSEG_MAX_PIXELS`` from the environment, else :data:`DEFAULT_MAX_PIXELS`."""
    value = os.environ.get("PATHSEG_MAX_PIXELS")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return int(float(value))
    except ValueError as exc:
        raise InputImageError("PATHSEG_MAX_PIXELS", f"not a number: {value!r}") from exc


def check_resampled_size(
    shape: tuple[int, ...],
    mpp: float,
    network_mpp: float,
    max_pixels: int | None = None,
    name: object = "image",
    remedy: str = "raise the cap with --max-pixels or PATHSEG_MAX_PIXELS, or use `pathseg wsi` for large images",
) -> None:
    """Refuse an (H, W, ...) image at ``mpp`` µm/px that a model working at ``network_mpp`` µm/px would resample to
    more than ``max_pixels`` pixels (default :func:`max_pixels_default`), before any memory is spent on it.

    Raises :class:`~pathseg.errors.InputImageError` naming ``name``, both sizes and ``remedy``; when the image would
    be enlarged more than 4x a side, the message also asks whether ``mpp`` is a pixel size at all (a magnification
    such as 40 given as ``--mpp`` would otherwise ask for thousands of times the memory of the image).
    """
    cap = max_pixels_default() if max_pixels is None else int(max_pixels)
    factor = mpp / network_mpp
    h, w = max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))
    if h * w <= cap:
        return
    reason = (
        f"at {mpp:g} µm/px, a model working at {network_mpp:g} µm/px would resample this {shape[1]}x{shape[0]} px "
        f"image to {w}x{h} px = {h * w / 1e6:.1f} Mpx, over the cap of {cap / 1e6:.1f} Mpx"
    )
    if factor > 4:
        reason += (
            f". Is {mpp:g} µm/px right? The pixel size is µm per pixel (about 0.25 at 40x, 0.5 at 20x), not the "
            "magnification; if it is right, " + remedy
        )
    else:
        reason += f"; {remedy}"
    raise InputImageError(name, reason)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputImageError(path, "file not found")
    if path.is_dir():
        raise InputImageError(path, "is a directory, not an image file")
    if path.stat().st_size == 0:
        raise InputImageError(path, "file is empty (0 bytes)")


def _check_size(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InputImageError(path, f"image has no pixels ({width}x{height})")
    n = width * height
    if n > max_pixels:
        raise InputImageError(
            path,
            f"image is {width}x{height} = {n / 1e6:.1f} Mpx, over the cap of {max_pixels / 1e6:.1f} Mpx "
            "(raise it with --max-pixels or PATHSEG_MAX_PIXELS; for whole slides use `pathseg wsi`)",
        )


def read_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> LoadedImage:
    """Read ``path`` as RGB uint8 (H, W, 3) with its pixel size.

    Grey, RGBA (composited on white), palette, 16-bit and float images are converted, each with a note that is
    logged and kept in ``LoadedImage.notes``. Images over ``max_pixels`` (H*W; default
    :func:`max_pixels_default`) are refused before their pixels are decoded.
    """
    path = Path(path)
    max_pixels = max_pixels_default() if max_pixels is None else int(max_pixels)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix in OPENSLIDE_SUFFIXES:
        readers = [_read_openslide]
    elif suffix in TIFF_SUFFIXES:
        readers = [_read_tiff, _read_openslide]
    elif suffix in PIL_SUFFIXES:
        readers = [_read_pil]
    else:
        readers = [_read_pil, _read_tiff, _read_openslide]
    first_error: InputImageError | None = None
    for reader in readers:
        try:
            image = reader(path, max_pixels)
        except _NotThisFormat as exc:
            first_error = first_error or InputImageError(path, str(exc))
            continue
        for note in image.notes:
            log.info("note: %s: %s", path.name, note)
        return image
    if len(readers) > 1:
        raise InputImageError(path, "not a recognised image format (tried PNG/JPEG, TIFF and OpenSlide readers)")
    assert first_error is not None
    raise first_error


class _NotThisFormat(Exception):
    """Raised by a reader when the file is not of its format (the next reader is tried)."""


def _read_pil(path: Path, max_pixels: int) -> LoadedImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # we enforce our own cap below, before decoding
            try:
                im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except UnidentifiedImageError as exc:
        raise _NotThisFormat("not a recognised image format") from exc
    except OSError as exc:
        raise InputImageError(path, f"cannot open ({exc})") from exc
    with im:
        _check_size(path, im.width, im.height, max_pixels)
        try:
            im.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InputImageError(path, f"truncated or corrupt image data ({exc})") from exc
        mpp = None
        dpi = im.info.get("dpi")
        if dpi:
            mpp = mpp_from_dpi(float(dpi[0]))
        pixels, notes = to_rgb_uint8(im)
    return LoadedImage(pixels=pixels, path=path, mpp=mpp, notes=notes)


def _read_tiff(path: Path, max_pixels: int) -> LoadedImage:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError, IndexError) as exc:
        raise _NotThisFormat(f"not a readable TIFF ({exc})") from exc
    with tif:
        try:
            series = tif.series[0]
            shape = series.levels[0].shape if series.levels else series.shape
            axes = series.levels[0].axes if series.levels else series.axes
        except (IndexError, ValueError, KeyError) as exc:
            raise InputImageError(path, f"TIFF has no readable image ({exc})") from exc
        height, width = _yx_from_axes(path, shape, axes)
        _check_size(path, width, height, max_pixels)
        try:
            data = series.levels[0].asarray() if series.levels else series.asarray()
        except Exception as exc:  # tifffile/imagecodecs raise many types on damaged files
            raise InputImageError(path, f"truncated or corrupt image data ({exc})") from exc
        mpp = mpp_from_tiff(tif)
    data = _to_yxc(path, np.asarray(data), axes)
    pixels, notes = to_rgb_uint8(data)
    return LoadedImage(pixels=pixels, path=path, mpp=mpp, notes=notes)


def _yx_from_axes(path: Path, shape: tuple[int, ...], axes: str) -> tuple[int, int]:
    if "Y" not in axes or "X" not in axes:
        raise InputImageError(path, f"TIFF has no Y/X axes (axes {axes!r}, shape {shape})")
    return int(shape[axes.index("Y")]), int(shape[axes.index("X")])


def _to_yxc(path: Path, data: np.ndarray, axes: str) -> np.ndarray:
    """Reorder a tifffile array to (Y, X) or (Y, X, C); singleton extra axes are dropped."""
    keep = []
    for i, ax in enumerate(axes):
        if ax in "YXCS":
            keep.append(i)
        elif data.shape[i] != 1:
            raise InputImageError(
                path, f"multi-dimensional image (axes {axes!r}, shape {data.shape}); give one 2-D RGB image"
            )
    index = tuple(slice(None) if i in keep else 0 for i in range(data.ndim))
    data = data[index]
    kept_axes = "".join(axes[i] for i in keep).replace("S", "C")
    order = [kept_axes.index(a) for a in "YXC" if a in kept_axes]
    return np.transpose(data, order)


def _read_openslide(path: Path, max_pixels: int) -> LoadedImage:
    import openslide

    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise _NotThisFormat("not a format OpenSlide reads") from exc
    except openslide.OpenSlideError as exc:
        raise InputImageError(path, f"cannot open slide ({exc})") from exc
    with slide:
        width, height = slide.level_dimensions[0]
        _check_size(path, width, height, max_pixels)
        try:
            region = slide.read_region((0, 0), 0, (width, height))
        except openslide.OpenSlideError as exc:
            raise InputImageError(path, f"truncated or corrupt slide data ({exc})") from exc
        mpp = None
        value = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        if value:
            try:
                mpp = float(value)
            except ValueError:
                mpp = None
    pixels, notes = to_rgb_uint8(np.asarray(region))
    # OpenSlide returns RGBA where alpha only marks regions outside the scanned area; that is not worth a note.
    notes = [n for n in notes if "alpha" not in n]
    return LoadedImage(pixels=pixels, path=path, mpp=mpp, notes=notes)


#: Label arrays kept outside images: MATLAB files (HoVer-Net's ``inst_map`` / ``type_map``) and numpy arrays.
ARRAY_LABEL_SUFFIXES = (".mat", ".npy")


def read_labels(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Read a label image (PNG/TIFF of integer ids, 0 = background) as a 2-D integer array.

    Also ``.npy`` (read without pickles) and ``.mat`` (HoVer-Net's layout: the array ``key``, else ``inst_map``, else
    the file's only 2-D array), so CoNSeP-style labels and HoVer-Net's predictions need no conversion.
    """
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            arr = tifffile.imread(path)
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".mat":
            arr = _mat_array(path, key)
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
    except InputImageError:
        raise
    except Exception as exc:  # any decoder failure is a user-facing file problem here
        raise InputImageError(path, f"cannot read label image ({exc})") from exc
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise InputImageError(path, f"expected a 2-D label image (one integer id per pixel), got shape {arr.shape}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f" and arr.size and np.array_equal(arr, np.round(arr)) and arr.min() >= 0:
        arr = arr.astype(np.int64)  # MATLAB stores whole numbers as doubles
    if arr.dtype.kind not in "iu":
        raise InputImageError(path, f"expected integer labels, got dtype {arr.dtype}")
    return arr


def _mat_array(path: Path, key: str | None) -> np.ndarray:
    from scipy.io import loadmat  # reads MATLAB data only: no code runs

    data = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    for name in (key, "inst_map"):
        if name is not None and name in data:
            return np.asarray(data[name])
    planes = [k for k, v in data.items() if isinstance(v, np.ndarray) and np.squeeze(v).ndim == 2 and v.size > 1]
    if len(planes) == 1:
        return np.asarray(data[planes[0]])
    wanted = f"{key!r} or 'inst_map'" if key else "'inst_map'"
    raise InputImageError(path, f"holds no {wanted} (arrays: {', '.join(sorted(data)) or 'none'})")


def read_instance_labels(path: str | os.PathLike) -> np.ndarray:
    """Read an instance label image (one integer id per object, 0 = background), refusing a binary or semantic mask
    given in its place: one id shared by three or more separate regions."""
    from scipy import ndimage as ndi

    labels = read_labels(path)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if len(ids) == 1:
        _, regions = ndi.label(labels == ids[0])
        if regions >= 3:
            raise InputImageError(
                Path(path),
                f"one label ({ids[0]}) covers {regions} separate regions: this looks like a binary mask, not an "
                "instance mask with one id per nucleus. Label it first, e.g. skimage.measure.label(mask > 0) "
                "(touching nuclei then share an id)",
            )
    return labels
