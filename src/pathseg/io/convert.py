"""Conversion of decoded pixels (Pillow images or numpy arrays) to RGB uint8, with notes on what was done."""

from __future__ import annotations

import numpy as np


def to_rgb_uint8(data) -> tuple[np.ndarray, list[str]]:
    """Convert a Pillow image or an array (H, W[, C]) to (H, W, 3) uint8 RGB.

    Returns the pixels and a list of human-readable notes for every conversion made (empty if none).
    Grey is replicated to 3 channels; alpha is composited on white; >8-bit integers are scaled by their bit depth
    (the smallest of 8/10/12/14/16/32 bits that holds the maximum); floats in [0, 1] are scaled by 255.
    """
    notes: list[str] = []
    if not isinstance(data, np.ndarray):
        data, pil_notes = _from_pil(data)
        notes.extend(pil_notes)
    arr = np.asarray(data)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (2, 3, 4)):
        raise ValueError(f"unsupported image shape {arr.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    arr = _to_uint8(arr, notes)
    if arr.ndim == 2:
        notes.append("greyscale converted to RGB")
        return np.repeat(arr[..., None], 3, axis=2), notes
    channels = arr.shape[-1]
    if channels == 2:  # grey + alpha
        arr = np.concatenate([np.repeat(arr[..., :1], 3, axis=2), arr[..., 1:]], axis=2)
        channels = 4
        notes.append("greyscale converted to RGB")
    if channels == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        if alpha.min() < 1.0:
            notes.append("alpha channel composited on white")
        rgb = arr[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        arr = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        if "alpha channel composited on white" not in notes:
            notes.append("alpha channel dropped (fully opaque)")
    return np.ascontiguousarray(arr), notes


def as_rgb_array(image) -> tuple[np.ndarray, list[str]]:
    """An in-memory image (numpy array (H, W[, C]) or Pillow image) as (H, W, 3) uint8 RGB, converted as image
    files are (:func:`to_rgb_uint8`), with the notes on what was done.

    Raises ``ValueError`` saying what was given when it is not an image: another type, no pixels, a channels-first
    array or an unsupported shape or pixel type.
    """
    if not isinstance(image, np.ndarray):
        if hasattr(image, "mode") and hasattr(image, "getbands"):  # a Pillow image
            return to_rgb_uint8(image)
        raise ValueError(f"expected an image array (H, W[, C]) or an image file path, got {type(image).__name__}")
    if image.size == 0:
        raise ValueError(f"the image array holds no pixels (shape {image.shape})")
    if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[2] not in (1, 2, 3, 4):
        raise ValueError(
            f"image array of shape {image.shape} looks channels-first; pass (H, W, C), e.g. image.transpose(1, 2, 0)"
        )
    return to_rgb_uint8(image)


def _from_pil(im) -> tuple[np.ndarray, list[str]]:
    notes: list[str] = []
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        notes.append("palette image converted to RGB")
    elif mode == "1":
        im = im.convert("L")
        notes.append("1-bit image converted to 8-bit")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
        notes.append(f"{mode} image converted to RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
        notes.append("palette image converted to RGB")
    return np.asarray(im), notes


def _to_uint8(arr: np.ndarray, notes: list[str]) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        notes.append("binary image scaled to 0/255")
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind in "iu":
        hi = int(arr.max()) if arr.size else 0
        if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
            arr = np.clip(arr, 0, None)
        if hi <= 255:
            notes.append(f"{arr.dtype} image with values <= 255 cast to uint8")
            return arr.astype(np.uint8)
        bits = next(b for b in (10, 12, 14, 16, 32, 64) if hi < 2**b)
        notes.append(f"{bits}-bit image scaled to 8 bits")
        return np.clip(np.rint(arr.astype(np.float64) * (255.0 / (2**bits - 1))), 0, 255).astype(np.uint8)
    if arr.dtype.kind == "f":
        finite = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        hi = float(finite.max()) if finite.size else 0.0
        if hi <= 1.0:
            notes.append("float image in [0, 1] scaled to 8 bits")
            finite = finite * 255.0
        else:
            notes.append("float image clipped to [0, 255]")
        return np.clip(np.rint(finite), 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {arr.dtype}")


#: brightest channel (0-255) at or below which a pixel is taken for black fill (padding, a blacked-out region)
BLACK_FILL = 16


def black_fill_as_glass(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` (RGB uint8) with black fill (every channel <= :data:`BLACK_FILL`) shown as white glass, which the
    tissue head and the classical model's threshold know as background; a copy only when there is any. Per pixel,
    so chunks agree with one pass. No GlaS, MoNuSeg or CoNSeP test pixel is that dark (59 CoNSeP training pixels
    are, none inside an annotated nucleus). The SAM-family nucleus path leaves its network's input as it is and drops
    objects of flat fill instead (:func:`pathseg.nuclei.automatic.drop_flat_fill`)."""
    fill = pixels.max(axis=-1) <= BLACK_FILL
    if not fill.any():
        return pixels
    out = np.array(pixels)
    out[fill] = 255
    return out
