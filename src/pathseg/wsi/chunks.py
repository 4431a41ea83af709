"""What every slide task shares: run settings, the chunk grid, planning (level, region, tissue mask), running
chunks in this process or on Dask, multiscale OME-Zarr levels and the run report's versions."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import pathseg
from pathseg.errors import InputImageError, PathsegError
from pathseg.io.atomic import atomic_path
from pathseg.io.images import check_resampled_size, max_pixels_default
from pathseg.io.slides import Slide, open_slide
from pathseg.progress import ProgressCallback

LOCAL_BITS = 16  #: nucleus ids are chunk index * 2**LOCAL_BITS + local index


@dataclass
class SlideRun:
    """Settings of a slide run. ``roi`` = (x, y, w, h) in level-0 pixels; chunk and halo in working-level pixels."""

    slide: str
    out: str
    model: object = None  #: a zoo name, a path, a model object, or None (the best offline model)
    mpp: float | None = None
    roi: tuple[int, int, int, int] | None = None
    chunk: int = 4096
    halo: int = 64
    use_tissue_mask: bool = True
    classes: bool = False  #: also classify every nucleus (per-nucleus vote; the model needs a class decoder)
    workers: int = 0  #: > 0: run the chunks on a local Dask cluster of this many processes
    scheduler: str | None = None  #: address of an existing dask.distributed scheduler
    task: str = "nuclei"  #: "nuclei" or "tissue"
    #: where the network runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``); None: a model object stays where it is, a
    #: model name is placed as ``auto`` (:func:`pathseg.models.device.place`)
    device: str | None = None
    tta: int | None = None  #: tissue: test-time views per patch (1, 2, 4, 8); None = the model's setting
    tta_space: str | None = None  #: tissue: views of the "image" or of its "latent"; None = the model's setting
    stride: int | None = None  #: tissue: patch stride, px at the model's µm/px; None = the model's setting
    precision: str | None = None  #: tissue: "float32", "bfloat16" or "auto"; None = the model's setting
    ais_precision: str | None = None  #: nuclei: "float32" or "int8" automatic path; None = the model's setting
    class_precision: str | None = None  #: nuclei with classes: "float32" or "int8" class path; None = the model's
    ais_params: dict | None = None  #: nuclei: AIS thresholds over the model's ``ais_params``; None = the model's
    clean: bool = True  #: tissue: clean the class map as the model's config ``clean`` says (False: raw argmax)


@dataclass(frozen=True)
class Chunk:
    index: int
    inner: tuple[int, int, int, int]  # x0, y0, x1, y1 at the working level
    outer: tuple[int, int, int, int]


def chunk_grid(region: tuple[int, int, int, int], size: tuple[int, int], chunk: int, halo: int) -> list[Chunk]:
    """Chunks covering ``region`` (x0, y0, x1, y1), outer boxes grown by ``halo`` and clipped to ``size`` (w, h)."""
    x0, y0, x1, y1 = region
    w, h = size
    out = []
    for cy in range(y0, y1, chunk):
        for cx in range(x0, x1, chunk):
            inner = (cx, cy, min(cx + chunk, x1), min(cy + chunk, y1))
            outer = (max(inner[0] - halo, 0), max(inner[1] - halo, 0), min(inner[2] + halo, w), min(inner[3] + halo, h))
            out.append(Chunk(len(out), inner, outer))
    if len(out) >= 2 ** (32 - LOCAL_BITS):
        raise PathsegError(f"{len(out)} chunks exceed the id space; use a larger --chunk")
    return out


@dataclass
class SlidePlan:
    """Where a run works: pyramid ``level`` at ``mpp`` µm/px (``size`` = its w, h; ``downsample`` from level 0),
    the ``region`` (x0, y0, x1, y1) at that level, its chunks and the indices of those with tissue."""

    level: int
    mpp: float
    size: tuple[int, int]
    downsample: float
    region: tuple[int, int, int, int]
    chunks: list[Chunk]
    keep: set[int]
    tissue_mask_downsample: float | None


def plan_slide(run: SlideRun, slide: Slide, model_mpp: float, out: Path, network_mpp: float | None = None) -> SlidePlan:
    """Pick the level closest to ``model_mpp``, the region (``run.roi``), the chunk grid and (unless disabled) the
    chunks with tissue; the tissue mask is saved as ``out/tissue_mask.png``. With ``network_mpp`` (µm/px the model
    resamples each chunk to), a chunk that would grow over the pixel cap (``PATHSEG_MAX_PIXELS``) is refused first."""
    from pathseg.wsi.tissue_mask import tissue_mask

    if slide.mpp is None:
        raise PathsegError(f"{run.slide}: the slide carries no pixel size; give it with --mpp (µm/px of level 0)")
    level = slide.best_level(model_mpp)
    lv = slide.levels[level]
    if run.roi is not None:
        rx, ry, rw, rh = run.roi
        d = lv.downsample
        region = (int(rx / d), int(ry / d), min(int((rx + rw) / d), lv.width), min(int((ry + rh) / d), lv.height))
        sw, sh = slide.dimensions
        if region[2] <= region[0] or region[3] <= region[1]:
            raise PathsegError(f"--roi {run.roi} lies outside the slide ({sw}x{sh})")
        if rx + rw > sw or ry + rh > sh:
            logging.getLogger("pathseg").warning(
                "note: --roi %s reaches past the slide (%dx%d); only its part inside the slide, %d,%d,%d,%d, is "
                "segmented",
                ",".join(map(str, run.roi)),
                sw,
                sh,
                rx,
                ry,
                min(rw, sw - rx),
                min(rh, sh - ry),
            )
    else:
        region = (0, 0, lv.width, lv.height)
    chunks = chunk_grid(region, (lv.width, lv.height), run.chunk, run.halo)
    if network_mpp is not None:
        _check_chunk_size(run, chunks, slide.level_mpp(level), network_mpp)
    keep, tdown = set(range(len(chunks))), None
    if run.use_tissue_mask:
        from PIL import Image

        thumb, tdown = slide.thumbnail(2048)
        mask = tissue_mask(thumb, slide.mpp * tdown)
        with atomic_path(out / "tissue_mask.png") as tmp:  # for checking what was skipped
            Image.fromarray((mask * 255).astype(np.uint8)).save(tmp, format="PNG")
        f = lv.downsample / tdown
        keep = {
            c.index
            for c in chunks
            if mask[
                int(c.inner[1] * f) : int(np.ceil(c.inner[3] * f)) + 1,
                int(c.inner[0] * f) : int(np.ceil(c.inner[2] * f)) + 1,
            ].any()
        }
    return SlidePlan(level, slide.level_mpp(level), (lv.width, lv.height), lv.downsample, region, chunks, keep, tdown)


def _check_chunk_size(run: SlideRun, chunks: list[Chunk], mpp: float, network_mpp: float) -> None:
    """Refuse chunks that the model, resampling them from ``mpp`` to ``network_mpp`` µm/px, would grow over the
    pixel cap; the message names the largest ``--chunk`` that fits."""
    cap = max_pixels_default()
    largest = max(chunks, key=lambda c: (c.outer[2] - c.outer[0]) * (c.outer[3] - c.outer[1])).outer
    fits = int(np.sqrt(cap) * network_mpp / mpp) - 2 * run.halo
    remedy = "raise PATHSEG_MAX_PIXELS"
    if fits >= 256:
        remedy = f"lower --chunk to {fits} or less, or {remedy}"
    shape = (largest[3] - largest[1], largest[2] - largest[0])
    check_resampled_size(shape, mpp, network_mpp, cap, f"{run.slide} (a chunk)", remedy)


_OPEN_SLIDES: dict[tuple[str, float | None], Slide] = {}


RUN_FILE = "run.json"  #: in ``OUTDIR/parts``: the settings the chunk parts were computed with


def model_digest(model) -> str | None:
    """SHA-256 of a torch model's weights, or None for a model without weights (the classical one): a model
    folder retrained in place is a different model."""
    import torch

    from pathseg.models.diffusion.backbone import weights_digest

    if not isinstance(model, torch.nn.Module):
        return None
    # parameters and buffers by their first name: a tissue model's state_dict holds its backbone twice
    return weights_digest({**dict(model.named_parameters()), **dict(model.named_buffers())})


def run_settings(run: SlideRun, model, model_parameters: dict) -> dict:
    """What shapes a run's chunk parts: task, slide, model (name and weights digest) and its parameters, µm/px,
    region, chunk, halo, class votes (as stored in ``OUTDIR/parts/run.json``)."""
    import json

    settings = {
        "task": run.task,
        "slide": str(Path(run.slide).resolve()),
        "model": model.name,
        "weights": model_digest(model),
        "model_parameters": model_parameters,
        "mpp": run.mpp,
        "roi": run.roi,
        "chunk": run.chunk,
        "halo": run.halo,
        "classes": run.classes,
    }
    return json.loads(json.dumps(settings))  # tuples -> lists, as stored


def check_resume(out: Path, settings: dict) -> None:
    """Stop with a message naming the differences when ``out`` holds chunk parts of a run with other
    :func:`run_settings`, instead of mixing two runs' chunks in one output."""
    import json

    path = out / "parts" / RUN_FILE
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    if all(_records_ais(s) for s in (before, settings)):
        before, settings = _unstated_filled(before), _unstated_filled(settings)
    diff = [k for k in settings if k in before and before[k] != settings[k]]  # older runs lack newer keys
    if diff:
        if "task" in diff:  # everything else follows from the task
            diff = ["task"]
        said = "; ".join(
            f"{key}: {_shown(was)} there, {_shown(now)} now"
            for k in diff
            for key, was, now in _differences(k, before[k], settings[k])
        )
        raise PathsegError(
            f"{out} holds chunks of a run with other settings ({said}). Re-run with that run's settings to resume "
            f"it, or write to a new output folder (or delete {out / 'parts'} to start over)."
        )


#: model parameters a nucleus run records only when set (so runs recorded before them still resume), and what their
#: absence means
_UNSTATED = {"ais_precision": "float32", "ais_shift": None, "class_precision": "float32"}


def _records_ais(settings: dict) -> bool:
    """Whether ``settings`` are a SAM-family nucleus run's (the runs that record the parameters in ``_UNSTATED``)."""
    params = settings.get("model_parameters")
    return settings.get("task") == "nuclei" and isinstance(params, dict) and "ais_mpp" in params


def _unstated_filled(settings: dict) -> dict:
    """``settings`` with the model parameters left unstated shown as what they mean, so a resume check says
    ``"int8" there, "float32" now`` instead of ``null now`` (an absence is equal to its meaning)."""
    return {**settings, "model_parameters": {**_UNSTATED, **settings["model_parameters"]}}


def _differences(key: str, was, now):
    """(dotted key, value there, value now) for each differing leaf of two settings values."""
    if isinstance(was, dict) and isinstance(now, dict):
        for k in [*now, *(k for k in was if k not in now)]:
            if was.get(k) != now.get(k):
                yield from _differences(f"{key}.{k}", was.get(k), now.get(k))
    else:
        yield key, was, now


def _shown(value) -> str:
    """A settings value as JSON, a weights digest cut to 12 hex digits."""
    import json

    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return json.dumps(value[:12] + "...")
    return json.dumps(value)


def record_settings(out: Path, settings: dict) -> None:
    """Store ``settings`` as ``out/parts/run.json`` (once the run's plan stands; kept when already there). This
    makes ``out/parts``: a run refused before it leaves no folder behind."""
    import json

    from pathseg.io.atomic import atomic_open

    path = out / "parts" / RUN_FILE
    if not path.is_file():
        with atomic_open(path, "w") as f:
            json.dump(settings, f, indent=2)


def cached_slide(path: str, mpp: float | None) -> Slide:
    """The slide ``path`` opened once per process (Dask workers keep it open between chunks)."""
    slide = _OPEN_SLIDES.get((path, mpp))
    if slide is None:
        slide = _OPEN_SLIDES[(path, mpp)] = open_slide(path, mpp=mpp)
    return slide


def run_chunks(
    run: SlideRun,
    slide: Slide,
    slide_mpp: float | None,
    fn: Callable[..., dict],
    todo: list[Chunk],
    model,
    args: tuple,
    progress: ProgressCallback | None = None,
    prefetch: Callable[[Slide, Chunk], object] | None = None,
) -> list[dict]:
    """Call ``fn(chunk, model, *args)`` for every chunk of ``todo`` in this process, on a local Dask cluster
    (``run.workers``) or an existing one (``run.scheduler``); returns the status records.

    In this process, with ``prefetch``, the chunks flow through three overlapping stages (one chunk in each at
    most, so memory stays bounded): ``prefetch(slide, chunk)`` (e.g. reading the pixels) runs for the next chunk in
    a background thread; ``fn(chunk, model, *args, prefetched=..., deferred=True)`` runs the model here and returns
    the rest of its work (measuring, writing) as a callable, which runs in a second background thread while the
    next chunk's model runs.
    """
    if not todo:
        return []
    if run.workers <= 0 and run.scheduler is None:
        from concurrent.futures import Future, ThreadPoolExecutor

        statuses: list[dict] = []
        _OPEN_SLIDES[(run.slide, slide_mpp)] = slide  # this process: reuse the slide already open
        pending: Future | None = None

        def collect(fut: Future, label: str) -> None:
            statuses.append(fut.result())
            if progress:
                progress(len(statuses), len(todo), label)

        try:
            with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as finisher:
                ahead = reader.submit(prefetch, slide, todo[0]) if prefetch else None
                for i, c in enumerate(todo):
                    if prefetch is None:
                        statuses.append(fn(c, model, *args))
                        if progress:
                            progress(i + 1, len(todo), f"chunk {c.index}")
                        continue
                    data = ahead.result()
                    if i + 1 < len(todo):  # decode the next chunk while this one runs
                        ahead = reader.submit(prefetch, slide, todo[i + 1])
                    finish = fn(c, model, *args, prefetched=data, deferred=True)
                    if pending is not None:
                        collect(pending, f"chunk {todo[i - 1].index}")
                    pending = finisher.submit(finish)
                if pending is not None:
                    collect(pending, f"chunk {todo[-1].index}")
        finally:
            _OPEN_SLIDES.pop((run.slide, slide_mpp), None)
        return statuses
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if run.scheduler is None:
        cluster = LocalCluster(
            n_workers=run.workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        )
    try:
        client = Client(run.scheduler or cluster)
    except (OSError, TimeoutError) as exc:  # nothing listens there (dask waits its connect timeout, 30 s by default)
        if cluster is not None:
            cluster.close()
            raise
        raise PathsegError(
            f"--scheduler {run.scheduler}: cannot connect ({exc}); start one there (`dask scheduler`, then "
            "`dask worker ADDRESS` on each machine), or leave --scheduler out to run here"
        ) from None
    try:
        from pathseg.allocator import tune_allocator

        client.run(tune_allocator)  # as in this process; each worker reads its own PATHSEG_MALLOC
        remote_model = client.scatter(model, broadcast=True)
        futures = [
            client.submit(fn, c, remote_model, *args, key=f"pathseg-chunk-{c.index}-{time.time_ns()}", pure=False)
            for c in todo
        ]
        statuses = []
        for i, fut in enumerate(as_completed(futures)):
            statuses.append(fut.result())
            if progress:
                progress(i + 1, len(todo), "chunks")
        return statuses
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def failures(statuses: list[dict], log) -> list[dict]:
    """The status records of chunks that failed (a corrupt region), each logged."""
    failed = [st for st in statuses if "error" in st]
    for st in failed:
        log(f"chunk {st['chunk']} skipped: {st['error']}")
    return failed


def write_report(
    run: SlideRun,
    plan: SlidePlan,
    model_name: str,
    model_parameters: dict,
    chunks_done: int,
    failed: list[dict],
    seconds: float,
    outputs: dict[str, Path],
    timings: dict[str, float] | None = None,
) -> dict:
    """Write ``report.json`` (model, parameters, versions, chunks done / without tissue / failed, timings,
    outputs) into ``run.out`` atomically and return it."""
    import json
    from dataclasses import asdict

    from pathseg.io.atomic import atomic_open

    report = {
        "pathseg": pathseg.__version__,
        "slide": str(run.slide),
        "task": run.task,
        "model": model_name,
        "settings": {**asdict(run), "model": model_name},
        "model_parameters": model_parameters,
        "versions": versions(),
        "tissue_mask_downsample": plan.tissue_mask_downsample,
        "level": plan.level,
        "mpp": plan.mpp,
        "chunks": len(plan.chunks),
        "chunks_with_tissue": len(plan.keep),
        "chunks_done": chunks_done,
        "chunks_failed": failed,
        "seconds": seconds,
        "timings_s": timings or {},
        "outputs": {k: str(v) for k, v in outputs.items()},
    }
    with atomic_open(Path(run.out) / "report.json", "w") as f:
        json.dump(report, f, indent=2)
    return report


def sample_regions(slide: Slide, level: int, chunks: list[Chunk], n: int = 16, size: int = 512) -> list[np.ndarray]:
    """Up to ``n`` tissue samples (``size`` px squares) for slide statistics, from evenly spread chunks at
    reproducible random positions inside them (chunk centres alone can all fall on glass, e.g. on a periodic
    pattern)."""
    rng = np.random.default_rng(0)
    picks = chunks[:: max(1, len(chunks) // n)][:n]
    out = []
    for c in picks:
        x0, y0, x1, y1 = c.inner
        x = int(rng.integers(x0, max(x0 + 1, x1 - size)))
        y = int(rng.integers(y0, max(y0 + 1, y1 - size)))
        try:
            out.append(slide.read_region(level, x, y, min(size, x1 - x), min(size, y1 - y)))
        except InputImageError:  # a corrupt region is reported by its chunk; it just gives no sample
            continue
    return out


def write_multiscales(root, mpp: float, min_size: int = 1024, name: str = "nuclei") -> None:
    """Add 2x-downsampled levels (nearest: every other pixel) to the label group ``root`` (level "0" written) and
    the OME-NGFF 0.4 ``multiscales`` metadata, so napari and other OME-Zarr readers open it at every zoom.
    Built block by block from the level above: memory stays bounded."""
    level, datasets = 0, []
    while True:
        src = root[str(level)]
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [{"type": "scale", "scale": [mpp * 2**level, mpp * 2**level]}],
            }
        )
        h, w = src.shape
        if max(h, w) <= min_size:
            break
        dst = root.create_array(
            str(level + 1), shape=((h + 1) // 2, (w + 1) // 2), chunks=(1024, 1024), dtype=src.dtype, fill_value=0
        )
        step = 2048
        for y in range(0, h, step):
            for x in range(0, w, step):
                block = np.asarray(src[y : y + step : 2, x : x + step : 2])
                dst[y // 2 : y // 2 + block.shape[0], x // 2 : x // 2 + block.shape[1]] = block
        level += 1
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": name,
            "axes": [
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": datasets,
        }
    ]
    root.attrs["image-label"] = {"version": "0.4", "source": {"image": "../"}}


def versions() -> dict[str, str]:
    """Versions of pathseg and the libraries a run's results depend on."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"pathseg": pathseg.__version__, "python": platform.python_version()}
    for name in ("torch", "numpy", "scikit-image", "openslide-python", "tifffile", "zarr", "diffusers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out
