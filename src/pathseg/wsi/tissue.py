"""Tissue classes on whole slides in bounded memory: chunks on one global patch grid, blended, resumable.

Every chunk computes the window-blended logits of the global patch grid (patch corners at multiples of the
model's stride from the region's corner) over its own box, reading the pixels those patches need; a pixel's
value is therefore the same whichever chunk computes it, and the class map equals one pass over the whole
region: no seams at chunk borders. (When the slide has no level near the model's µm/px, chunks are rescaled one by
one with a one-patch halo instead: seams are then possible but small.)

Outputs: ``classes.zarr`` (multiscale OME-Zarr labels: 0 = not analysed, k + 1 = class k, with names and colours
in the label properties), ``tissue.geojson`` (class regions as QuPath annotations, traced on a low-resolution
level of at most 4096 px a side, in level-0 pixels), ``tissue_areas.csv`` and ``report.json``. The class map is
cleaned as a tile's is (the model's config ``clean``: small holes filled, small specks absorbed), block by block
(:func:`clean_blocks`), unless ``SlideRun.clean`` is False.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pathseg.errors import InputImageError, PathsegError
from pathseg.io.atomic import atomic_path
from pathseg.io.export import write_csv, write_geojson
from pathseg.io.slides import open_slide
from pathseg.models.precision import resolve_precision
from pathseg.progress import ProgressCallback
from pathseg.tissue.model import TissueModel, pad_to_grid, patch_grid
from pathseg.tissue.postprocess import CleanParams, clean_classes
from pathseg.wsi.chunks import (
    Chunk,
    SlideRun,
    cached_slide,
    check_resume,
    failures,
    plan_slide,
    record_settings,
    run_chunks,
    run_settings,
    write_multiscales,
    write_report,
)

#: Largest side of the class-map level traced into GeoJSON polygons (bounded memory).
POLYGON_MAX_SIDE = 4096
#: Largest window (pixels: block + 2 halo a side, clipped to the map) :func:`clean_blocks` cleans at once, a memory
#: bound (~20 bytes a pixel: ~3 GB). Slide runs needing more leave their class map uncleaned, with a warning.
MAX_CLEAN_WINDOW = 160_000_000


def _needed(lo: int, hi: int, n: int, starts: list[int], p: int) -> tuple[list[int], int, int, int]:
    """Patches overlapping [lo, hi) of a region of length ``n``; the real pixels [r0, r1) to read and the length
    up to which they are reflect-padded (as a single pass pads the whole region)."""
    use = [s for s in starts if s < hi and s + p > lo]
    need0, need1 = use[0], use[-1] + p
    r1 = min(need1, n)
    r0 = need0 if need1 <= n else max(0, min(need0, 2 * n - need1 - 1))
    return use, r0, r1, need1


def tissue_chunk(
    chunk: Chunk,
    model: TissueModel,
    slide_path: str,
    slide_mpp: float | None,
    level: int,
    mpp: float,
    region: tuple[int, int, int, int],
    out: str,
) -> dict:
    """Class ids of the chunk's inner box (stored atomically in ``parts/tissue_<i>.npz``); a status record."""
    slide = cached_slide(slide_path, slide_mpp)
    rx0, ry0, rx1, ry1 = region
    x0, y0, x1, y1 = chunk.inner
    try:
        if abs(mpp / model.mpp - 1) < 0.05:
            p, step = model.patch, model.step
            w, h = rx1 - rx0, ry1 - ry0
            ys, ry_0, ry_1, need_y = _needed(y0 - ry0, y1 - ry0, h, patch_grid(h, p, step), p)
            xs, rx_0, rx_1, need_x = _needed(x0 - rx0, x1 - rx0, w, patch_grid(w, p, step), p)
            pixels = slide.read_region(level, rx0 + rx_0, ry0 + ry_0, rx_1 - rx_0, ry_1 - ry_0)
            pixels = pad_to_grid(pixels, need_y - ry_0, need_x - rx_0)
            box = (y0 - ry0, y1 - ry0, x0 - rx0, x1 - rx0)
            probs = torch.softmax(model.blend(pixels, (ry_0, rx_0), ys, xs, box), dim=0).numpy()
        else:  # rescale this chunk (with a one-patch halo of context) to the model's pixel size
            halo = int(np.ceil(model.patch * model.mpp / mpp))
            ox0, oy0 = max(rx0, x0 - halo), max(ry0, y0 - halo)
            ox1, oy1 = min(rx1, x1 + halo), min(ry1, y1 + halo)
            rgb = slide.read_region(level, ox0, oy0, ox1 - ox0, oy1 - oy0)
            probs = model.probabilities(rgb, mpp)[:, y0 - oy0 : y1 - oy0, x0 - ox0 : x1 - ox0]
    except InputImageError as exc:  # a corrupt region: reported, not fatal
        return {"chunk": chunk.index, "box": list(chunk.inner), "error": str(exc)}
    classes = probs.argmax(0).astype(np.uint8)
    counts = np.bincount(classes.ravel(), minlength=len(model.class_names))
    with atomic_path(Path(out) / "parts" / f"tissue_{chunk.index:06d}.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, classes=classes, counts=counts)
    return {"chunk": chunk.index, "pixels": int(classes.size)}


def _part(out: Path, c: Chunk) -> Path:
    return out / "parts" / f"tissue_{c.index:06d}.npz"


def clean_window(shape: tuple[int, int], mpp: float, params: CleanParams, block: int = 4096) -> tuple[int, int]:
    """(halo, window pixels) :func:`clean_blocks` needs on an (H, W) map at ``mpp`` µm/px: the halo is one pixel more
    than the largest area cleaned, the window a block and its halo, clipped to the map."""
    halo = int(np.ceil(max(params.max_hole_um2, params.min_area_um2) / (mpp * mpp))) + 2
    return halo, min(block + 2 * halo, shape[0]) * min(block + 2 * halo, shape[1])


def clean_blocks(
    src, dst, mpp: float, params: CleanParams | dict, block: int = 4096, progress: ProgressCallback | None = None
) -> np.ndarray:
    """Clean a class map too large for memory, block by block, from ``src`` into ``dst`` ((H, W) uint8 array-likes,
    e.g. zarr arrays; 0 = not analysed, k + 1 = class k) at ``mpp`` µm/px with
    :func:`~pathseg.tissue.postprocess.clean_classes`; returns the pixel count per class k (not analysed left out).

    Each ``block``-pixel square is cleaned inside a window grown by a halo of one pixel more than the largest area
    cleaned (in pixels): a region that small lies wholly in the window, and one reaching the window's edge is larger,
    as on the whole map. (A chain of small regions, each changed only after its neighbour, could reach further;
    such chains are rare.) Not-analysed pixels stay so and no pixel becomes one. Memory: ~(block + 2 halo)² pixels;
    a window over ``MAX_CLEAN_WINDOW`` pixels is refused. ``progress(done, total, message)`` is called per block."""
    p = CleanParams(**params) if isinstance(params, dict) else params
    halo, at_once = clean_window(src.shape, mpp, p, block)
    if at_once > MAX_CLEAN_WINDOW:
        raise PathsegError(
            f"cleaning areas up to {max(p.max_hole_um2, p.min_area_um2):g} µm² at {mpp:g} µm/px needs a {halo}-pixel "
            f"halo per block: {at_once / 1e6:.0f} Mpx at once (at most {MAX_CLEAN_WINDOW / 1e6:.0f}, a memory bound)"
        )
    h, w = src.shape
    counts = np.zeros(256, dtype=np.int64)
    corners = [(y, x) for y in range(0, h, block) for x in range(0, w, block)]
    for i, (y, x) in enumerate(corners):
        wy0, wx0 = max(y - halo, 0), max(x - halo, 0)
        window = np.asarray(src[wy0 : min(y + block + halo, h), wx0 : min(x + block + halo, w)])
        inner_slices = (slice(y - wy0, y - wy0 + block), slice(x - wx0, x - wx0 + block))
        before, cleaned = window[inner_slices], clean_classes(window, mpp, p)[inner_slices]
        inner = np.where((before == 0) | (cleaned == 0), before, cleaned)  # only the block is kept: mask it alone
        dst[y : y + inner.shape[0], x : x + inner.shape[1]] = inner
        counts += np.bincount(inner.ravel(), minlength=256)
        if progress:
            progress(i + 1, len(corners), "cleaning the class map")
    return counts[1:]


def assemble_tissue(
    out: Path,
    chunks: list[Chunk],
    size: tuple[int, int],
    mpp: float,
    downsample: float,
    names: list[dict],
    clean: dict | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Path]:
    """classes.zarr (multiscale), tissue.geojson (from a low-resolution level) and tissue_areas.csv from the parts;
    ``clean`` (:class:`~pathseg.tissue.postprocess.CleanParams` fields, µm²): clean the class map first (``progress``
    per block)."""
    import zarr

    from pathseg.tissue.export import class_areas, class_region_features

    w, h = size
    done = [c for c in chunks if _part(out, c).is_file()]
    path = out / "classes.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=(h, w), chunks=(1024, 1024), dtype="uint8", fill_value=0)
    raw_path = out / "parts" / "classes_raw.zarr"  # the uncleaned map, while it is cleaned into arr
    raw = arr
    if clean:
        raw = zarr.open_array(str(raw_path), mode="w", shape=(h, w), chunks=(1024, 1024), dtype="uint8", fill_value=0)
    counts = np.zeros(len(names), dtype=np.int64)
    for c in done:
        with np.load(_part(out, c), allow_pickle=False) as part:
            x0, y0, x1, y1 = c.inner
            raw[y0:y1, x0:x1] = part["classes"] + 1
            if not clean:  # cleaning counts the cleaned map instead
                counts += part["counts"][: len(names)]
    if clean:
        counts = clean_blocks(raw, arr, mpp, clean, progress=progress)[: len(names)]
        shutil.rmtree(raw_path)
    write_multiscales(root, mpp, name="tissue classes")
    root.attrs["image-label"] = {
        "version": "0.4",
        "source": {"image": "../"},
        "colors": [{"label-value": k + 1, "rgba": [*n["color"], 255]} for k, n in enumerate(names)],
        "properties": [{"label-value": k + 1, "class": n["name"]} for k, n in enumerate(names)],
    }
    # polygons from the first level small enough to hold in memory
    level = 0
    while max(root[str(level)].shape) > POLYGON_MAX_SIDE and str(level + 1) in root:
        level += 1
    low = np.asarray(root[str(level)][:])
    shifted = [{"name": "not analysed", "color": [0, 0, 0]}, *names]
    features = class_region_features(
        low, shifted, mpp * 2**level, namespace=str(out), skip=(0, 1), scale=downsample * 2**level
    )
    paths = {"classes": path, "geojson": write_geojson(out / "tissue.geojson", features)}
    paths["areas"] = write_csv(out / "tissue_areas.csv", class_areas(counts, names, mpp))
    return paths


def run_slide_tissue(run: SlideRun, progress: ProgressCallback | None = None, log=print) -> dict:
    """Tissue classes of a slide (or its ``roi``) into ``run.out``; resumes after the last finished chunk."""
    from pathseg.models.device import module_device, place
    from pathseg.models.zoo import get_tissue_model

    if run.classes:
        raise PathsegError("--classes is for nuclei; tissue runs always write class maps")
    if run.ais_precision is not None:
        raise PathsegError("--ais-precision is for nucleus runs; tissue runs take --precision")
    if run.ais_params:
        raise PathsegError("--ais-param is for nucleus runs")
    if run.class_precision is not None:
        raise PathsegError("--class-precision is for nucleus runs with --classes")
    start = time.perf_counter()
    out = Path(run.out)
    model = run.model if isinstance(run.model, TissueModel) else get_tissue_model(run.model)
    model = model.with_settings(run.tta, run.tta_space, run.stride, run.precision)  # the caller's is left alone
    if run.device is not None or not isinstance(run.model, TissueModel):  # a caller's model stays where it is
        model = place(model, run.device or "auto")
    # "auto" is decided once, here, on the machine that plans the run: every chunk (on any Dask worker) computes
    # at the same arithmetic, and the run records which one, so a resume elsewhere cannot silently change it
    model = model.with_settings(precision=resolve_precision(model.precision, module_device(model)))
    parameters = {"features": model.config["features"], "patch": model.patch, "stride": model.step, "tta": model.tta}
    # (absent at their old defaults: runs begun before these settings existed still resume)
    if model.tta_space != "image":
        parameters["tta_space"] = model.tta_space
    if model.precision != "float32":
        parameters["precision"] = model.precision
    settings = run_settings(run, model, parameters)  # cleaning is left out: it runs on the assembled map
    clean = model.config.get("clean") if run.clean else None
    check_resume(out, settings)
    with open_slide(run.slide, mpp=run.mpp) as slide:
        plan = plan_slide(run, slide, model.mpp, out, getattr(model, "network_mpp", None))
        halo, window = clean_window(plan.size[::-1], plan.mpp, CleanParams(**clean)) if clean else (0, 0)
        if window > MAX_CLEAN_WINDOW:
            log(
                f"the class map is left uncleaned: its areas ({clean}) at {plan.mpp:g} µm/px need a {halo}-px halo "
                f"per block, {window / 1e6:.0f} Mpx at once (at most {MAX_CLEAN_WINDOW / 1e6:.0f}, a memory bound); "
                f"a slide level nearer {model.mpp:g} µm/px avoids it"
            )
            clean = None
        record_settings(out, settings)
        todo = [c for c in plan.chunks if c.index in plan.keep and not _part(out, c).is_file()]
        slide_mpp = slide.mpp if run.mpp is None else run.mpp
        args = (run.slide, slide_mpp, plan.level, plan.mpp, plan.region, run.out)
        t_chunks = time.perf_counter()
        statuses = run_chunks(run, slide, slide_mpp, tissue_chunk, todo, model, args, progress)
        failed = failures(statuses, log)
        t_assemble = time.perf_counter()
        names = model.class_names
        paths = assemble_tissue(out, plan.chunks, plan.size, plan.mpp, plan.downsample, names, clean, progress)
    end = time.perf_counter()
    timings = {"plan": t_chunks - start, "chunks": t_assemble - t_chunks, "assemble": end - t_assemble}
    done = sum(_part(out, c).is_file() for c in plan.chunks)
    reported = {**parameters, "clean": clean}
    return write_report(run, plan, model.name, reported, done, failed, end - start, paths, timings)
