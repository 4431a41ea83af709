"""Pixel size (µm/px) from file metadata. Values outside a plausible microscopy range are ignored."""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET

#: Plausible pixel sizes for brightfield microscopy images and their pyramid levels, in µm/px.
MPP_RANGE = (0.05, 20.0)

_UNIT_TO_UM = {
    "pm": 1e-6,
    "nm": 1e-3,
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "\\u00B5m": 1.0,
}


def note_replaced_mpp(name: str, given: float, own: float | None, what: str = "file") -> None:
    """Log a note when a pixel size the user gave (``--mpp``) replaces the ``what``'s (file's, slide's) ``own`` one
    by more than 10%; once per pair of sizes in a process, not once per tile of a folder."""
    if own is None or abs(given / own - 1) <= 0.1 or (round(own, 4), given) in _NOTED:
        return
    _NOTED.add((round(own, 4), given))
    logging.getLogger("pathseg").warning("note: %s: --mpp %g replaces the %s's own %.4g µm/px", name, given, what, own)


_NOTED: set[tuple[float, float]] = set()  # (own µm/px, --mpp) pairs already noted


def plausible(mpp: float | None) -> float | None:
    """Return ``mpp`` if it lies in :data:`MPP_RANGE`, else ``None`` (e.g. a 72-dpi screen default)."""
    if mpp is None or not (MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
        return None
    return float(mpp)


def mpp_from_dpi(dpi: float) -> float | None:
    """µm/px from dots per inch (PNG pHYs, JPEG JFIF); ``None`` for screen-like values."""
    if dpi <= 0:
        return None
    return plausible(25400.0 / dpi)


def mpp_from_tiff(tif) -> float | None:
    """µm/px from an open ``tifffile.TiffFile``: OME-XML, Aperio description, ImageJ or resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        mpp = _mpp_from_ome(tif.ome_metadata)
        if mpp is not None:
            return mpp
    page = tif.pages.first
    desc = page.description or ""
    match = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
    if match:
        return plausible(float(match.group(1)))
    tags = page.tags
    if "XResolution" not in tags:
        return None
    num, den = tags["XResolution"].value
    if not num or not den:
        return None
    px_per_unit = num / den
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    if tif.is_imagej and (tif.imagej_metadata or {}).get("unit") in ("micron", "um", "µm", "\\u00B5m"):
        return plausible(1.0 / px_per_unit)
    if unit == 2:  # inch
        return plausible(25400.0 / px_per_unit)
    if unit == 3:  # centimetre
        return plausible(10000.0 / px_per_unit)
    return None


def _mpp_from_ome(xml: str) -> float | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("}Pixels") or el.tag == "Pixels":
            size = el.get("PhysicalSizeX")
            if size is None:
                return None
            unit = el.get("PhysicalSizeXUnit", "µm")
            factor = _UNIT_TO_UM.get(unit)
            if factor is None:
                return None
            return plausible(float(size) * factor)
    return None
