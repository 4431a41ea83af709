"""Python entry points: everything the CLI does is a call to one of these functions.

>>> from pathseg.api import segment_nuclei
>>> result = segment_nuclei("tile.png")          # best offline model, pixel size from the file or the model's
>>> result.labels, result.table["area_um2"]
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathseg.errors import PathsegError
from pathseg.io.convert import as_rgb_array
from pathseg.io.export import write_csv, write_geojson, write_label_tiff
from pathseg.io.images import check_resampled_size, read_image
from pathseg.io.metadata import note_replaced_mpp
from pathseg.models.base import NucleusModel
from pathseg.models.zoo import get_nucleus_model
from pathseg.nuclei.measure import geojson_features, measure_nuclei
from pathseg.progress import ProgressCallback

log = logging.getLogger("pathseg")


@dataclass
class NucleiResult:
    """Nuclei found in one image.

    ``labels`` (H, W) uint32 with 0 = background; ``table`` one row per nucleus (see
    :data:`pathseg.nuclei.measure.COLUMNS`); ``mpp`` the pixel size used and ``mpp_source`` where it came from
    (``"argument"``, ``"file"`` or ``"model default"``).
    """

    labels: np.ndarray
    table: dict[str, np.ndarray]
    mpp: float
    mpp_source: str
    model: str
    image: np.ndarray = field(repr=False)
    source: Path | None = None
    classes: dict | None = None  #: with ``classes=True``: class ids per row, probabilities, names and colours

    @property
    def count(self) -> int:
        return int(len(self.table["id"]))

    def columns(self) -> dict[str, np.ndarray]:
        """The table as ``<stem>_nuclei.csv`` holds it (``pandas.DataFrame(result.columns())``): the measurements
        and, with ``classes``, ``class_id``, ``class_name`` and one ``p_<class>`` probability per class."""
        table = dict(self.table)
        if self.classes is not None:
            c = self.classes
            table["class_id"] = c["class"]
            table["class_name"] = np.array([c["names"][k] for k in c["class"]], dtype=object)
            for k, name in enumerate(c["names"]):
                if k > 0:  # background has no probability of its own after the vote
                    table[f"p_{name}"] = c["probabilities"][:, k]
        return table


def resolve_mpp(user_mpp: float | None, file_mpp: float | None, model_mpp: float) -> tuple[float, str]:
    """Pick the pixel size: the user's, else the file's, else the model's own (µm/px)."""
    if user_mpp is not None:
        try:
            value = float(user_mpp)
        except (TypeError, ValueError):
            value = float("nan")
        if not 0 < value < float("inf"):
            raise PathsegError(f"--mpp must be a positive number of µm per pixel, got {user_mpp}")
        return value, "argument"
    if file_mpp is not None:
        return float(file_mpp), "file"
    return float(model_mpp), "model default"


def segment_nuclei(
    image: np.ndarray | str | os.PathLike,
    model: str | NucleusModel | None = None,
    *,
    mpp: float | None = None,
    max_pixels: int | None = None,
    progress: ProgressCallback | None = None,
    mode: str = "ais",
    classes: bool = False,
    device: str | None = None,
) -> NucleiResult:
    """Segment nuclei in an image file or array (RGB uint8; grey, RGBA, 16-bit and float are converted as files are).

    ``model``: a name from ``pathseg models list``, a model object, or ``None`` for the best offline model.
    ``mpp``: pixel size in µm/px; overrides the file's. With neither, the model's own resolution is assumed.
    ``max_pixels``: images with more pixels, as read or as resampled to the model's pixel size, are refused
    (default 100e6 or ``PATHSEG_MAX_PIXELS``).
    ``mode``: ``ais`` (default), or for SAM-family models ``apg`` / ``amg`` (prompt-based automatic modes).
    ``device``: where the network runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``; a model object is moved there).
    None: a model object stays where it is, a name is loaded onto ``auto`` (the first CUDA GPU, else the CPU).
    """
    net = _model(model, device)
    rgb, used_mpp, mpp_source, source = _load(image, net, mpp, max_pixels)
    if mode != "ais" and not hasattr(net, "sam"):
        raise PathsegError(f"mode {mode!r} needs a SAM-family model; {net.name!r} only does automatic segmentation")
    labels = (
        net.segment(rgb, used_mpp, progress=progress, mode=mode)
        if mode != "ais"
        else net.segment(rgb, used_mpp, progress=progress)
    )
    table = measure_nuclei(labels, rgb, used_mpp)
    result = NucleiResult(labels, table, used_mpp, mpp_source, net.name, rgb, source)
    if classes:
        result.classes = classify_nuclei(net, result)
    return result


def classify_nuclei(net, result: NucleiResult) -> dict:
    """One class per nucleus by a probability-weighted vote over its pixels (see :mod:`pathseg.nuclei.classes`)."""
    from pathseg.nuclei.classes import vote_classes

    if getattr(net, "semantic", None) is None:
        raise PathsegError(
            f"model {net.name!r} has no class decoder; choose a model with nucleus classes (see `pathseg models list`)"
        )
    probs = net.class_probabilities(result.image, result.mpp)
    ids, cls, p = vote_classes(result.labels, probs)
    if not np.array_equal(ids, result.table["id"]):
        raise RuntimeError("class vote and measurement table disagree on the nuclei")
    named = net.class_names
    return {
        "class": cls,
        "probabilities": p,
        "names": [c["name"] for c in named],
        "colors": [list(c["color"]) for c in named],
    }


def segment_nuclei_prompted(
    image: np.ndarray | str | os.PathLike,
    prompts: list,
    model: str | NucleusModel | None = None,
    *,
    mpp: float | None = None,
    max_pixels: int | None = None,
    progress: ProgressCallback | None = None,
    box_margin: float | None = 0.0,
    box_from_ais: float | str | None = "model",
    box_fit: bool | str = "model",
    overlap: str = "smaller",
    classes: bool = False,
    device: str | None = None,
) -> NucleiResult:
    """One nucleus per prompt (:class:`pathseg.io.prompts.Prompt`), with a SAM-family model.

    Prompt ``i`` (from 1) gives nucleus ``i``: its most confident mask. A pixel that several masks claim goes to the
    smallest of them (``overlap="smaller"``, as PathoSAM composes prompt masks) or stays with the earliest prompt
    (``"first"``). A box bounds its mask: pixels more than ``box_margin`` image pixels outside it are dropped
    (``None``: unbounded, as SAM). A box alone takes the automatic segmentation's nucleus whose bounding box
    overlaps it with IoU >= ``box_from_ais`` (``"model"``: the model's setting; ``None``: never, always the mask
    decoder's mask); with ``box_fit`` (``"model"``: the model's setting) it takes the candidate (the decoder's 3,
    that nucleus) whose bounding box best fits the box. ``classes``: also one class per nucleus, as
    :func:`segment_nuclei` gives them. ``device``: as for :func:`segment_nuclei`.
    """
    from pathseg.nuclei.interactive import Predictor, check_overlap, paint_objects, prompt_error

    check_overlap(overlap, PathsegError)  # before the model loads
    net = _model(model, device)
    if not hasattr(net, "sam"):
        raise PathsegError(f"model {net.name!r} cannot take prompts; use a SAM-family model (--model)")
    rgb, used_mpp, mpp_source, source = _load(image, net, mpp, max_pixels)
    for p in prompts:  # every prompt checked before the network runs
        problem = prompt_error(p.points, p.box, rgb.shape[:2])
        if problem:
            raise PathsegError(f"prompt {p.name or '?'}: {problem}")
    predictor = Predictor(net, box_margin=box_margin, box_from_ais=box_from_ais, box_fit=box_fit)
    predictor.set_image(rgb, used_mpp)
    objects = []
    for i, p in enumerate(prompts, start=1):
        r = predictor.predict(points=p.points, labels=p.labels, box=p.box, multimask=p.box is None)
        objects.append(r.object(int(np.argmax(r.iou)), i))
        if progress:
            progress(i, len(prompts), "prompts")
    labels = paint_objects(objects, rgb.shape[:2], overlap)
    table = measure_nuclei(labels, rgb, used_mpp)
    lost = sorted(set(range(1, len(prompts) + 1)) - {int(i) for i in table["id"]})
    if lost:  # an empty mask, or one the overlap rule gave away whole
        shown = ", ".join(prompts[i - 1].name or f"#{i}" for i in lost[:5]) + (" ..." if len(lost) > 5 else "")
        log.warning("%d of %d prompt(s) gave no nucleus (their ids are unused): %s", len(lost), len(prompts), shown)
    result = NucleiResult(labels, table, used_mpp, mpp_source, net.name, rgb, source)
    if classes:
        result.classes = classify_nuclei(net, result)
    return result


def _model(model: str | NucleusModel | None, device: str | None) -> NucleusModel:
    """The nucleus model ``model`` names (or is), on ``device`` (see :func:`segment_nuclei`)."""
    from pathseg.models.device import place

    if isinstance(model, NucleusModel):
        return model if device is None else place(model, device)
    return place(get_nucleus_model(model), device or "auto")


def _load(image, net, mpp: float | None, max_pixels: int | None) -> tuple[np.ndarray, float, str, Path | None]:
    """``image`` (a path, or an array or Pillow image converted like files: grey, RGBA, 16-bit, float) as (RGB
    uint8, pixel size used, where it came from, path or None); refused before the model runs if the model would
    resample it to over ``max_pixels`` pixels."""
    if isinstance(image, str | os.PathLike):
        loaded = read_image(image, max_pixels=max_pixels)
        rgb, file_mpp, path = loaded.pixels, loaded.mpp, loaded.path
    else:
        try:
            rgb, notes = as_rgb_array(image)
        except ValueError as exc:
            raise PathsegError(str(exc)) from None
        for note in notes:
            log.info("note: image: %s", note)
        file_mpp, path = None, None
    used, source = resolve_mpp(mpp, file_mpp, net.mpp)
    if source == "argument":
        note_replaced_mpp(path.name if path else "image", used, file_mpp)
    if getattr(net, "network_mpp", None) is not None:  # models that resample the image to their own pixel size
        check_resampled_size(rgb.shape, used, net.network_mpp, max_pixels, path or "image")
    return rgb, used, source, path


def write_nuclei_outputs(result: NucleiResult, outdir: str | os.PathLike, stem: str) -> dict[str, Path]:
    """Write ``<stem>_instances.tif``, ``<stem>.geojson`` and ``<stem>_nuclei.csv`` into ``outdir`` (atomically)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    classification = None
    paths = {"instances": write_label_tiff(outdir / f"{stem}_instances.tif", result.labels, mpp=result.mpp)}
    if result.classes is not None:
        c = result.classes
        lut = np.zeros(int(result.labels.max()) + 1, dtype=np.uint8)
        lut[result.table["id"]] = c["class"]
        paths["classes"] = write_label_tiff(outdir / f"{stem}_classes.tif", lut[result.labels], mpp=result.mpp)
        classification = {
            int(i): {"name": c["names"][k], "color": c["colors"][k]}
            for i, k in zip(result.table["id"], c["class"], strict=True)
        }
    paths["geojson"] = write_geojson(
        outdir / f"{stem}.geojson",
        geojson_features(result.labels, result.table, namespace=stem, classification=classification),
    )
    paths["table"] = write_csv(outdir / f"{stem}_nuclei.csv", result.columns())
    return paths


@dataclass
class TissueResult:
    """Tissue classes of one image: ``classes`` (H, W) uint8 ids into ``names`` ([{"name", "color"}]),
    ``probabilities`` (K, H, W) float32, the pixel size used and where it came from."""

    classes: np.ndarray
    probabilities: np.ndarray = field(repr=False)
    names: list[dict]
    mpp: float
    mpp_source: str
    model: str
    source: Path | None = None


def segment_tissue(
    image,
    model=None,
    mpp: float | None = None,
    max_pixels: int | None = None,
    clean: bool = True,
    progress: ProgressCallback | None = None,
    device: str | None = None,
) -> TissueResult:
    """Tissue / gland classes of ``image`` (a path or an RGB uint8 array) with ``model`` (a tissue model, a zoo
    name or a model folder; default: the bundled tissue model). ``clean``: apply the model's hole / speck
    cleaning (:func:`pathseg.tissue.postprocess.clean_classes`), if its config has one. ``progress(done, total,
    "patches")`` follows the model's patches. ``device``: as for :func:`segment_nuclei`."""
    from pathseg.models.device import place
    from pathseg.models.zoo import get_tissue_model

    if hasattr(model, "probabilities"):
        net = model if device is None else place(model, device)
    else:
        net = place(get_tissue_model(model), device or "auto")
    rgb, used, source, path = _load(image, net, mpp, max_pixels)
    probs = net.probabilities(rgb, used, progress=progress)
    return TissueResult(net.classes(probs, used, clean), probs, net.class_names, used, source, net.name, path)


def write_tissue_outputs(result: TissueResult, outdir: str | os.PathLike, stem: str) -> dict[str, Path]:
    """Write ``<stem>_tissue.tif`` (uint8 class ids), ``<stem>_tissue.geojson`` (class regions as QuPath
    annotations) and ``<stem>_tissue_areas.csv`` (area per class) into ``outdir`` (atomically); named apart from
    the nucleus outputs, so both can share a folder."""
    from pathseg.tissue.export import class_areas, class_region_features

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    return {
        "classes": write_label_tiff(outdir / f"{stem}_tissue.tif", result.classes, mpp=result.mpp),
        "geojson": write_geojson(
            outdir / f"{stem}_tissue.geojson", class_region_features(result.classes, result.names, result.mpp, stem)
        ),
        "areas": write_csv(
            outdir / f"{stem}_tissue_areas.csv",
            class_areas(np.bincount(result.classes.ravel(), minlength=len(result.names)), result.names, result.mpp),
        ),
    }


def write_masks(
    image: str | os.PathLike,
    geojson: str | os.PathLike,
    outdir: str | os.PathLike,
    class_ids: dict[str, int] | None = None,
    overlap: str = "smaller",
    max_pixels: int | None = None,
    tissue: bool = False,
):
    """One dataset entry from an image and its GeoJSON outlines (see :mod:`pathseg.io.annotations`): a copy of the
    image in ``outdir/images``, ``outdir/instance_masks/<stem>.tif`` and, with ``class_ids`` (name -> id),
    ``outdir/type_masks/<stem>.tif``, all written atomically. ``tissue``: the outlines are class regions, and
    ``outdir/masks/<stem>.tif`` holds their class ids (0 where no region is drawn), as ``pathseg train tissue``
    reads them. Returns the :class:`~pathseg.io.annotations.Rasterised` labels."""
    import shutil

    from pathseg.io.annotations import rasterise
    from pathseg.io.atomic import atomic_path

    image, outdir = Path(image), Path(outdir)
    loaded = read_image(image, max_pixels=max_pixels)
    made = rasterise(geojson, loaded.pixels.shape[:2], overlap, class_ids)
    stem = Path(image.name).stem  # what training pairs images and masks by
    with atomic_path(outdir / "images" / image.name) as tmp:
        shutil.copyfile(image, tmp)
    if tissue:
        write_label_tiff(outdir / "masks" / f"{stem}.tif", made.types, mpp=loaded.mpp)
        return made
    write_label_tiff(outdir / "instance_masks" / f"{stem}.tif", made.labels, mpp=loaded.mpp)
    if made.types is not None:
        write_label_tiff(outdir / "type_masks" / f"{stem}.tif", made.types, mpp=loaded.mpp)
    return made
