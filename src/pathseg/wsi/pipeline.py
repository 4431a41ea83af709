"""Nuclei on whole slides in bounded memory: chunks with a halo, ownership by centroid, resumable, streamed outputs.

Pass 1 (per chunk, independent): read the chunk plus a halo at the working level, segment it, keep the nuclei
whose centroid lies in the chunk's inner box (so a nucleus crossing a border is kept whole, by exactly one
chunk), and store them (bounding box, mask, measurements) in ``parts/chunk_<i>.npz`` — written atomically, so a
killed run resumes at the first missing part. Nucleus ids are ``chunk index * 65536 + local index``: fixed by the
grid, not by the order chunks finish in.
Pass 2 (assembly): paint the label image region by region into a zarr array, and stream the GeoJSON and the
per-nucleus table from the parts. Nothing slide-sized is held in memory.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pathseg.errors import InputImageError, PathsegError
from pathseg.io.atomic import atomic_open, atomic_path
from pathseg.io.slides import Slide, open_slide
from pathseg.models.base import set_ais_options
from pathseg.nuclei.measure import COLUMNS, hole_rings, mask_outline, measure_nuclei
from pathseg.progress import ProgressCallback
from pathseg.wsi.chunks import (  # noqa: F401  (SlideRun, chunk_grid, write_multiscales: part of this module's API)
    LOCAL_BITS,
    Chunk,
    SlideRun,
    cached_slide,
    check_resume,
    chunk_grid,
    failures,
    plan_slide,
    record_settings,
    run_chunks,
    run_settings,
    sample_regions,
    write_multiscales,
    write_report,
)


def read_chunk(slide: Slide, level: int, chunk: Chunk) -> np.ndarray | InputImageError:
    """The pixels of ``chunk`` with its halo (RGB uint8 at ``level``), or the error a corrupt region raised."""
    ox0, oy0, ox1, oy1 = chunk.outer
    try:
        return slide.read_region(level, ox0, oy0, ox1 - ox0, oy1 - oy0)
    except InputImageError as exc:
        return exc


def run_model(
    slide: Slide, level: int, mpp: float, chunk: Chunk, model, classes: bool = False, rgb: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The model's part of a chunk: (pixels, instance labels, class probabilities or None)."""
    ox0, oy0, ox1, oy1 = chunk.outer
    if rgb is None:
        rgb = slide.read_region(level, ox0, oy0, ox1 - ox0, oy1 - oy0)
    labels = model.segment(rgb, mpp)
    return rgb, labels, model.class_probabilities(rgb, mpp) if classes else None


def owned_nuclei(
    chunk: Chunk, mpp: float, rgb: np.ndarray, labels: np.ndarray, class_probs: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The nuclei of a segmented chunk whose centroid lies in its inner box: measurements, masks, outlines and
    (with ``class_probs``) a class vote, in working-level coordinates."""
    ox0, oy0 = chunk.outer[:2]
    table = measure_nuclei(labels, rgb, mpp)
    vote = None
    if class_probs is not None:
        from pathseg.nuclei.classes import vote_classes

        _, cls, probs = vote_classes(labels, class_probs)
        vote = (cls, probs)
    ix0, iy0, ix1, iy1 = chunk.inner
    cx = table["centroid_x_px"] + ox0
    cy = table["centroid_y_px"] + oy0
    own = (cx >= ix0) & (cx < ix1) & (cy >= iy0) & (cy < iy1)
    slices = ndi.find_objects(labels)
    boxes, masks, offsets = [], [], [0]
    for lab in table["id"][own]:
        sl = slices[int(lab) - 1]
        boxes.append((sl[1].start + ox0, sl[0].start + oy0, sl[1].stop + ox0, sl[0].stop + oy0))
        m = labels[sl] == lab
        masks.append(m.ravel())
        offsets.append(offsets[-1] + m.size)
    n = int(own.sum())
    result = {c: np.asarray(table[c])[own] for c in COLUMNS}
    result["centroid_x_px"] = cx[own]
    result["centroid_y_px"] = cy[own]
    result["centroid_x_um"] = result["centroid_x_px"] * mpp
    result["centroid_y_um"] = result["centroid_y_px"] * mpp
    result["id"] = (chunk.index << LOCAL_BITS) + np.arange(1, n + 1, dtype=np.int64)
    result["boxes"] = np.array(boxes, dtype=np.int64).reshape(n, 4)
    result["masks"] = np.concatenate(masks) if masks else np.zeros(0, bool)
    result["mask_offsets"] = np.array(offsets, dtype=np.int64)
    if vote is not None:
        result["class_id"] = vote[0][own]
        result["class_probabilities"] = vote[1][own]
    # outlines here, in pass 1 (parallel on Dask workers), not in the sequential assembly: each nucleus's outer
    # ring, and its holes' rings with the index of the nucleus they belong to (as a tile's GeoJSON traces them)
    rings, ring_offsets, holes, hole_offsets, hole_owner = [], [0], [], [0], []
    for i, (bx0, by0, bx1, by1) in enumerate(boxes):
        mask = masks[i].reshape(by1 - by0, bx1 - bx0)
        ring = mask_outline(mask, bx0, by0)
        rings.append(ring)
        ring_offsets.append(ring_offsets[-1] + len(ring))
        for hole in hole_rings(mask, bx0, by0):
            holes.append(hole)
            hole_offsets.append(hole_offsets[-1] + len(hole))
            hole_owner.append(i)
    result["rings"] = np.concatenate(rings) if rings else np.zeros((0, 2))
    result["ring_offsets"] = np.array(ring_offsets, dtype=np.int64)
    result["hole_rings"] = np.concatenate(holes) if holes else np.zeros((0, 2))
    result["hole_offsets"] = np.array(hole_offsets, dtype=np.int64)
    result["hole_owner"] = np.array(hole_owner, dtype=np.int64)
    return result


def process_chunk(
    chunk: Chunk,
    model,
    slide_path: str,
    slide_mpp: float | None,
    level: int,
    mpp: float,
    out: str,
    classes: bool = False,
    prefetched: np.ndarray | InputImageError | None = None,
    deferred: bool = False,
) -> dict | Callable[[], dict]:
    """Segment one chunk and store its part file (atomically). Runs in-process or on a Dask worker; returns a
    small status record. ``prefetched``: the chunk's pixels as :func:`read_chunk` returned them. ``deferred``:
    run only the model now and return the rest (measuring, outlining, writing) as a callable that returns the
    status, so it can overlap the next chunk's model run."""
    slide = cached_slide(slide_path, slide_mpp)
    try:
        if isinstance(prefetched, InputImageError):
            raise prefetched
        rgb, labels, probs = run_model(slide, level, mpp, chunk, model, classes, prefetched)
    except InputImageError as exc:  # a corrupt region: reported, not fatal
        status = {"chunk": chunk.index, "box": list(chunk.inner), "error": str(exc)}
        return (lambda: status) if deferred else status

    def finish() -> dict:
        result = owned_nuclei(chunk, mpp, rgb, labels, probs)
        with atomic_path(_part_path(Path(out), chunk)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **result)
        return {"chunk": chunk.index, "nuclei": int(len(result["id"]))}

    return finish if deferred else finish()


def _read_at(level: int, slide: Slide, chunk: Chunk) -> np.ndarray | InputImageError:
    return read_chunk(slide, level, chunk)


def _part_path(out: Path, chunk: Chunk) -> Path:
    return out / "parts" / f"chunk_{chunk.index:06d}.npz"


@functools.lru_cache(maxsize=16)  # a part is needed by up to 9 neighbouring chunks during assembly
def _load_part_cached(path: str, mtime_ns: int) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _load_part(path: Path) -> dict[str, np.ndarray]:
    return _load_part_cached(str(path), path.stat().st_mtime_ns)


def paint_objects(
    region: np.ndarray, origin: tuple[int, int], part: dict[str, np.ndarray], indices: np.ndarray, batch: int = 20000
) -> None:
    """Paint the part's objects at ``indices`` into ``region`` (its top-left pixel at ``origin`` = (x, y)) where
    it still holds 0; vectorised over objects (the objects of one part never overlap: they come from one label
    image), in batches of ``batch`` objects so memory stays bounded."""
    x0, y0 = origin
    h, w = region.shape
    offsets = part["mask_offsets"].astype(np.int64)
    for b0 in range(0, len(indices), batch):
        idx = indices[b0 : b0 + batch]
        boxes = part["boxes"][idx].astype(np.int64)
        starts, sizes = offsets[idx], offsets[idx + 1] - offsets[idx]
        obj = np.repeat(np.arange(len(idx)), sizes)
        local = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        on = part["masks"][np.repeat(starts, sizes) + local]
        obj, local = obj[on], local[on]
        bw = (boxes[:, 2] - boxes[:, 0])[obj]
        ys = boxes[obj, 1] + local // bw - y0
        xs = boxes[obj, 0] + local % bw - x0
        inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        ys, xs, obj = ys[inside], xs[inside], obj[inside]
        free = region[ys, xs] == 0
        region[ys[free], xs[free]] = part["id"][idx][obj[free]]


def _class_columns(class_names: list[dict] | None) -> list[str]:
    if class_names is None:
        return []
    return ["class_id"] + [f"p_{c['name']}" for c in class_names[1:]]


def _classification(part: dict, k: int, class_names: list[dict] | None) -> dict:
    if class_names is None:
        return {}
    c = class_names[int(part["class_id"][k])]
    return {"classification": {"name": c["name"], "color": list(c["color"])}}


def _class_region(region: np.ndarray, done: list[Chunk], c: Chunk, out: Path) -> np.ndarray:
    """Class ids painted where ``region`` holds nucleus ids (from the parts of ``c`` and its neighbours)."""
    lut: dict[int, int] = {}
    for d in _neighbours(done, c):
        part = _load_part(_part_path(out, d))
        lut.update(zip(part["id"].tolist(), part["class_id"].tolist(), strict=True))
    ids = np.unique(region)
    ids = ids[ids > 0]
    out_region = np.zeros(region.shape, dtype=np.uint8)
    if ids.size:
        values = np.array([lut.get(int(i), 0) for i in ids], dtype=np.uint8)
        mask = region > 0
        out_region[mask] = values[np.searchsorted(ids, region[mask])]
    return out_region


def _neighbours(chunks: list[Chunk], c: Chunk) -> list[Chunk]:
    x0, y0, x1, y1 = c.outer
    return [d for d in chunks if d.outer[0] < x1 and d.outer[2] > x0 and d.outer[1] < y1 and d.outer[3] > y0]


def assemble(
    out: Path,
    chunks: list[Chunk],
    size: tuple[int, int],
    mpp: float,
    downsample: float = 1.0,
    class_names: list[dict] | None = None,
) -> dict[str, Path]:
    """Pass 2: label image (OME-Zarr at the working level), GeoJSON, CSV and Parquet from the chunk parts (streamed,
    region by region). GeoJSON and table coordinates in px are level-0 pixels (``downsample`` x working level).
    The label images and the tables are written by two threads at once (compression and Arrow release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    done = [c for c in chunks if _part_path(out, c).is_file()]
    with ThreadPoolExecutor(2) as pool:
        labels = pool.submit(_write_labels, out, done, size, mpp, class_names)
        tables = pool.submit(_write_tables, out, done, downsample, class_names)
        return {**labels.result(), **tables.result()}


def _write_labels(
    out: Path, done: list[Chunk], size: tuple[int, int], mpp: float, class_names: list[dict] | None
) -> dict[str, Path]:
    import zarr

    w, h = size
    labels_path = out / "labels.zarr"
    root = zarr.open_group(str(labels_path), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=(h, w), chunks=(1024, 1024), dtype="uint32", fill_value=0)
    class_arr = None
    if class_names is not None:
        croot = zarr.open_group(str(out / "classes.zarr"), mode="w", zarr_format=2)
        class_arr = croot.create_array("0", shape=(h, w), chunks=(1024, 1024), dtype="uint8", fill_value=0)
    for c in done:
        x0, y0, x1, y1 = c.inner
        region = np.zeros((y1 - y0, x1 - x0), dtype=np.uint32)
        for d in _neighbours(done, c):
            part = _load_part(_part_path(out, d))
            b = part["boxes"]
            hits = np.flatnonzero((b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0))
            paint_objects(region, (x0, y0), part, hits)
        arr[y0:y1, x0:x1] = region
        if class_arr is not None:
            class_arr[y0:y1, x0:x1] = _class_region(region, done, c, out)

    write_multiscales(root, mpp)
    if class_arr is not None:
        write_multiscales(croot, mpp, name="nucleus classes")
    return {"labels": labels_path}


def _write_tables(out: Path, done: list[Chunk], downsample: float, class_names: list[dict] | None) -> dict[str, Path]:
    columns = list(COLUMNS) + _class_columns(class_names)
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    schema = pa.schema([(n, pa.int64() if n in ("id", "area_px", "class_id") else pa.float64()) for n in columns])
    with (
        atomic_open(out / "nuclei.geojson", "w", encoding="utf-8") as gj,
        atomic_path(out / "nuclei.csv") as csv_tmp,
        atomic_path(out / "nuclei.parquet") as pq_tmp,
        pacsv.CSVWriter(str(csv_tmp), schema) as csv_writer,
        pq.ParquetWriter(str(pq_tmp), schema) as pq_writer,
    ):
        gj.write('{"type": "FeatureCollection", "features": [\n')
        first = True
        for c in done:  # streamed part by part: one GeoJSON run, one CSV block and one Parquet row group per chunk
            part = _load_part(_part_path(out, c))
            features = _feature_strings(part, downsample, class_names)
            if features:
                gj.write(("" if first else ",\n") + ",\n".join(features))
                first = False
            table = _part_table(part, downsample, class_names)
            batch = pa.table({n: np.asarray(table[n]) for n in columns}, schema=schema)
            csv_writer.write_table(batch)
            pq_writer.write_table(batch)
        gj.write("\n]}\n")
    return {"geojson": out / "nuclei.geojson", "table": out / "nuclei.csv", "parquet": out / "nuclei.parquet"}


def _part_table(part: dict, downsample: float, class_names: list[dict] | None) -> dict[str, np.ndarray]:
    """The per-nucleus table of one part; centroids in px are level-0 pixels."""
    table = {n: part[n] for n in COLUMNS}
    if class_names is not None:
        table["class_id"] = part["class_id"]
        for j, named in enumerate(class_names[1:], start=1):
            table[f"p_{named['name']}"] = part["class_probabilities"][:, j]
    for n in ("centroid_x_px", "centroid_y_px"):
        table[n] = table[n] * downsample
    return table


def _json_numbers(values: np.ndarray, decimals: int = 4):
    """JSON text of each value as an Arrow string array (rounded; null where not finite), formatted in C++."""
    import pyarrow as pa
    import pyarrow.compute as pc

    v = np.asarray(values)
    if v.dtype.kind in "iu":
        return pc.cast(pa.array(v.astype(np.int64)), pa.string())
    rounded = pa.array(np.round(v.astype(np.float64), decimals))
    return pc.if_else(pc.is_finite(rounded), pc.cast(rounded, pa.string()), "null")


def _ring_texts(points: np.ndarray, offsets: np.ndarray, downsample: float):
    """JSON text ``[x,y],[x,y],...`` of each ring (its points from ``offsets[k]`` to ``offsets[k + 1]``), scaled
    by ``downsample`` to level-0 pixels, as an Arrow string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    xy = np.round(points.astype(np.float64) * downsample, 2)
    text = pc.binary_join_element_wise("[", _json_numbers(xy[:, 0], 2), ",", _json_numbers(xy[:, 1], 2), "]", "")
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), text), ",")


def _feature_strings(part: dict, downsample: float, class_names: list[dict] | None) -> list[str]:
    """QuPath detection features of one part, serialised column-wise by Arrow compute (rings with < 4 points,
    which are not polygons, are left out)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(part["id"])
    if n == 0:
        return []
    join = pc.binary_join_element_wise
    pieces: list = ["{"]
    for i, name in enumerate(COLUMNS):
        pieces += [("," if i else "") + f'"{name}":', _json_numbers(part[name])]
    measurements = join(*pieces, "}", "")
    classification = pa.array([""] * n)
    if class_names is not None:
        names = [
            ',"classification":' + json.dumps({"name": c["name"], "color": [int(v) for v in c["color"]]})
            for c in class_names
        ]
        classification = pc.take(pa.array(names), pa.array(part["class_id"].astype(np.int64)))
    offsets = part["ring_offsets"].astype(np.int64)
    ring_text = _ring_texts(part["rings"], offsets, downsample)
    holes = [""] * n  # ',[hole ring]' per hole of each nucleus (parts written before holes were traced have none)
    if "hole_owner" in part and len(part["hole_owner"]):
        hole_text = _ring_texts(part["hole_rings"], part["hole_offsets"].astype(np.int64), downsample).to_pylist()
        for owner, text in zip(part["hole_owner"].tolist(), hole_text, strict=True):
            holes[owner] += ",[" + text + "]"
    ids = _json_numbers(part["id"])
    features = join(
        '{"type":"Feature","geometry":{"type":"Polygon","coordinates":[[',
        ring_text,
        "]",
        pa.array(holes),
        ']},"properties":{"objectType":"detection","label":',
        ids,
        ',"name":"nucleus ',
        ids,
        '","measurements":',
        measurements,
        classification,
        "}}",
        "",
    )
    keep = pa.array(np.diff(offsets) >= 4)
    return pc.filter(features, keep).to_pylist()


def _model_parameters(model) -> dict:
    """What shapes a nucleus model's automatic output besides its weights: thresholds, and for SAM-family models the
    network's pixel size, views, stain reference, map shift and precision (a resumed run with other values stops
    instead of mixing)."""
    if hasattr(model, "params"):
        return model.params.as_dict()
    params = dict(getattr(model, "ais_params", {}))
    if hasattr(model, "ais_stain"):
        params.update(ais_mpp=model.ais_mpp, ais_tta=model.ais_tta, ais_stain=model.ais_stain)
    shift = getattr(model, "ais_shift", None)
    if shift is not None:  # only when set: runs recorded before it still resume
        params["ais_shift"] = list(shift)
    if getattr(model, "ais_precision", "float32") != "float32":  # likewise
        params["ais_precision"] = model.ais_precision
    return params


def _run_parameters(run: SlideRun, model) -> dict:
    """:func:`_model_parameters`, and for a run with classes the class path's arithmetic when it is not float32."""
    parameters = _model_parameters(model)
    if run.classes and getattr(model, "config", {}).get("class_precision", "float32") != "float32":
        parameters["class_precision"] = model.config["class_precision"]
    return parameters


def run_slide(run: SlideRun, progress: ProgressCallback | None = None, log=print) -> dict:
    """Segment the nuclei of a slide (or its ``roi``) and write labels.zarr, nuclei.geojson, nuclei.csv and
    report.json into ``run.out``. Re-running the same command resumes after the last finished chunk.
    ``run.task == "tissue"`` runs :func:`pathseg.wsi.tissue.run_slide_tissue` instead."""
    if run.task == "tissue":
        from pathseg.wsi.tissue import run_slide_tissue

        return run_slide_tissue(run, progress, log)
    if run.task != "nuclei":
        raise PathsegError(f"unknown slide task {run.task!r}; one of nuclei, tissue")
    if run.tta is not None or run.tta_space is not None:
        msg = "--tta / --tta-space are for tissue runs (--task tissue); nucleus models have no test-time views"
        raise PathsegError(msg)
    if run.stride is not None:
        raise PathsegError("--stride is for tissue runs (--task tissue); nucleus runs tile by --chunk and --halo")
    if run.precision is not None:
        raise PathsegError("--precision is for tissue runs (--task tissue); nucleus runs take --ais-precision")
    if not run.clean:
        raise PathsegError("--no-clean is for tissue runs (--task tissue); nucleus runs have no class-map cleaning")
    from pathseg.models.class_int8 import set_class_precision
    from pathseg.models.device import place
    from pathseg.models.zoo import get_nucleus_model

    start = time.perf_counter()
    out = Path(run.out)
    model = run.model if hasattr(run.model, "segment") else get_nucleus_model(run.model)
    if run.class_precision is not None and not run.classes:
        raise PathsegError("--class-precision goes with --classes")
    if run.classes and getattr(model, "semantic", None) is None:
        raise PathsegError(f"model {model.name!r} has no class decoder; --classes needs one")
    if run.ais_precision is not None or run.ais_params or run.class_precision is not None:
        if model is run.model:  # the caller's model is left alone
            model = copy.copy(model)
            model.config = dict(model.config)
        set_ais_options(model, run.ais_precision, run.ais_params)  # each checks for an AIS decoder
        if run.class_precision is not None:
            set_class_precision(model, run.class_precision)
    if run.device is not None or not hasattr(run.model, "segment"):  # a caller's model stays where it is
        model = place(model, run.device or "auto", run.ais_precision, run.class_precision)  # before the settings
    settings = run_settings(run, model, _run_parameters(run, model))
    check_resume(out, settings)
    with open_slide(run.slide, mpp=run.mpp) as slide:
        plan = plan_slide(run, slide, model.mpp, out, getattr(model, "network_mpp", None))
        record_settings(out, settings)
        chunks, keep = plan.chunks, plan.keep
        if hasattr(model, "fit_slide"):  # slide-level statistics (e.g. the classical model's threshold)
            model.fit_slide(sample_regions(slide, plan.level, [c for c in chunks if c.index in keep]), plan.mpp)
        todo = [c for c in chunks if c.index in keep and not _part_path(out, c).is_file()]
        slide_mpp = slide.mpp if run.mpp is None else run.mpp
        args = (run.slide, slide_mpp, plan.level, plan.mpp, run.out, run.classes)
        t_chunks = time.perf_counter()
        statuses = run_chunks(
            run,
            slide,
            slide_mpp,
            process_chunk,
            todo,
            model,
            args,
            progress,
            prefetch=functools.partial(_read_at, plan.level),
        )
        failed = failures(statuses, log)
        t_assemble = time.perf_counter()
        paths = assemble(out, chunks, plan.size, plan.mpp, plan.downsample, model.class_names if run.classes else None)
    end = time.perf_counter()
    timings = {"plan": t_chunks - start, "chunks": t_assemble - t_chunks, "assemble": end - t_assemble}
    done = sum(_part_path(out, c).is_file() for c in chunks)
    # (again: a model fitted to the slide, e.g. the classical threshold, reports what it used)
    return write_report(run, plan, model.name, _run_parameters(run, model), done, failed, end - start, paths, timings)
