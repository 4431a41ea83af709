"""Scoring folders of predictions against folders of ground truth, matched by file stem."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pathseg.errors import PathsegError
from pathseg.io.export import LABEL_TAGS
from pathseg.io.images import image_files, read_instance_labels, read_labels
from pathseg.metrics import instance_scores
from pathseg.progress import track

LABEL_SUFFIXES = {".png", ".tif", ".tiff", ".mat", ".npy"}
OUTLINE_SUFFIXES = {".geojson", ".json"}
#: Suffixes pathseg (and other tools: ``_labels``) add to output stems; stripped when matching a prediction to its
#: ground truth.
OUTPUT_TAGS = (*LABEL_TAGS, "_labels")


def _stem(path: Path) -> str:
    stem = path.name
    for ext in (".ome.tiff", ".ome.tif", path.suffix):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    for tag in OUTPUT_TAGS:
        if stem.endswith(tag):
            return stem[: -len(tag)]
    return stem


def _label_files(folder: Path, subfolder: str, skip: tuple[str, ...] = (), outlines: bool = False) -> dict[str, Path]:
    """Label images of ``folder`` (or its ``subfolder``) by stem, leaving out those whose stem ends in a ``skip``
    suffix; with ``outlines``, also GeoJSON files (``<stem>.geojson``) for stems without a label image."""
    if not folder.is_dir():
        raise PathsegError(f"{folder}: not a folder")
    for sub in (subfolder, "Labels") if subfolder == "instance_masks" else (subfolder,):  # Labels/: HoVer-Net's
        if (folder / sub).is_dir():
            folder = folder / sub
            break
    listed = image_files(folder, LABEL_SUFFIXES | OUTLINE_SUFFIXES if outlines else LABEL_SUFFIXES)
    files: dict[str, Path] = {}
    for p in sorted(listed, key=lambda p: p.suffix.lower() in OUTLINE_SUFFIXES):  # label images first, by name
        if not p.stem.endswith(skip):
            files.setdefault(_stem(p), p)
    return files


def match_folders(
    pred: Path,
    gt: Path,
    subfolder: str = "instance_masks",
    skip: tuple[str, ...] = ("_classes", "_tissue"),
    outlines: bool = False,
    only_predicted: bool = False,
) -> list[tuple[str, Path, Path]]:
    """Pairs (stem, prediction, ground truth) matched by stem. Predictions whose stem ends in a ``skip`` suffix are
    other outputs in the same folder (default: nucleus class maps and tissue maps beside nucleus instances). Errors
    if nothing matches or a prediction is missing, unless ``only_predicted`` (then the ground truths without a
    prediction are left out with a note). ``outlines``: predictions may also be GeoJSON outlines."""
    preds = _label_files(pred, subfolder, skip, outlines)
    gts = _label_files(gt, subfolder)
    common = sorted(set(preds) & set(gts))
    if not common:
        raise PathsegError(
            f"no prediction in {pred} matches a ground truth in {gt} by file stem "
            f"(e.g. prediction {next(iter(preds), 'none')!r}, ground truth {next(iter(gts), 'none')!r})"
        )
    missing = sorted(set(gts) - set(preds))
    if missing:
        names = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        if not only_predicted:
            raise PathsegError(
                f"{len(missing)} ground-truth image(s) have no prediction in {pred}: {names} (to score only the "
                f"{len(common)} predicted, add --only-predicted)"
            )
        noted = (str(pred), str(gt), tuple(missing))
        if noted not in _NOTED:  # once, though nuclei and their classes match alike; again when the set changes
            _NOTED.add(noted)
            logging.getLogger("pathseg").warning(
                "note: scoring the %d of %d ground-truth images with a prediction; left out: %s",
                len(common),
                len(gts),
                names,
            )
    return [(s, preds[s], gts[s]) for s in common]


_NOTED: set[tuple[str, str, tuple[str, ...]]] = set()  # (pred, gt, left-out stems) already noted


def evaluate_instance_folders(
    pred: Path, gt: Path, quiet: bool = False, only_predicted: bool = False
) -> tuple[list[dict], dict]:
    """Instance metrics per matched image and their mean over images. Predictions are label images or, for an
    image without one, GeoJSON outlines (``<stem>.geojson``: QuPath detections or another tool's export), drawn at
    the ground truth's size (:mod:`pathseg.io.annotations`)."""
    from pathseg.io.annotations import rasterise

    rows = []
    pairs = match_folders(pred, gt, outlines=True, only_predicted=only_predicted)
    for stem, p, g in track(pairs, total=len(pairs), desc="scoring", quiet=quiet):
        gl = read_instance_labels(g)
        pl = rasterise(p, gl.shape).labels if p.suffix.lower() in OUTLINE_SUFFIXES else read_instance_labels(p)
        if pl.shape != gl.shape:
            raise PathsegError(f"{p}: shape {pl.shape} differs from ground truth {g} {gl.shape}")
        rows.append({"image": stem, **instance_scores(gl, pl)})
    keys = [k for k in rows[0] if k != "image"]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return rows, mean


def _class_names(gt: Path) -> dict[int, str]:
    """Class names from a classes.csv (id,name) in the ground-truth folder or its parent, if any."""
    import csv

    for folder in (gt, gt.parent):
        f = folder / "classes.csv"
        if f.is_file():
            with open(f, newline="") as fh:
                return {int(r["id"]): r["name"] for r in csv.DictReader(fh)}
    return {}


def evaluate_class_folders(
    pred: Path, gt: Path, radius: float = 12.0, quiet: bool = False, only_predicted: bool = False
) -> dict:
    """Nucleus classification (HoVer-Net F_d and F_c per class, pooled over images) and per-class pixel Dice.

    Predictions: ``<stem>_instances.tif`` with ``<stem>_classes.tif`` (class id per pixel). Ground truth:
    ``instance_masks/<stem>.png`` with ``type_masks/<stem>.png`` (CoNSeP layout), class 0 = background, or
    ``.mat`` files holding both ``inst_map`` and ``type_map`` (HoVer-Net's layout).
    """
    from pathseg.metrics.classes import nuclei_with_classes, pair_centroids, type_scores
    from pathseg.metrics.semantic import confusion_matrix

    pairs = match_folders(pred, gt, only_predicted=only_predicted)
    if (Path(gt) / "type_masks").is_dir():
        gt_types = _label_files(gt, "type_masks")
    elif pairs and all(g.suffix.lower() == ".mat" for _, _, g in pairs):  # HoVer-Net's layout: both maps in one file
        gt_types = {stem: g for stem, _, g in pairs}
    else:
        raise PathsegError(f"{gt}: --classes needs type_masks/ (class id per pixel, CoNSeP layout) beside the masks")
    pred_classes = {}
    if not pred.is_dir():
        raise PathsegError(f"{pred}: not a folder")
    for p in pred.iterdir():
        if p.name.endswith("_classes.tif"):
            pred_classes[p.name[: -len("_classes.tif")]] = p
    pools: dict[str, list] = {"pt": [], "pp": [], "ut": [], "up": []}
    cm = None
    for stem, p, g in track(pairs, total=len(pairs), desc="scoring", quiet=quiet):
        if stem not in gt_types:
            raise PathsegError(f"{gt}: no type mask for {stem} (expected type_masks/{stem}.png)")
        if stem not in pred_classes:
            raise PathsegError(f"{pred}: no class map for {stem} (expected {stem}_classes.tif; run with --classes)")
        p_lab, p_cls = read_instance_labels(p), read_labels(pred_classes[stem], key="type_map")
        g_lab, g_cls = read_instance_labels(g), read_labels(gt_types[stem], key="type_map")
        t_xy, t_c = nuclei_with_classes(g_lab, g_cls)
        q_xy, q_c = nuclei_with_classes(p_lab, p_cls)
        pr, ut, up = pair_centroids(t_xy, q_xy, radius)
        pools["pt"].append(t_c[pr[:, 0]])
        pools["pp"].append(q_c[pr[:, 1]])
        pools["ut"].append(t_c[ut])
        pools["up"].append(q_c[up])
        n = int(max(g_cls.max(), p_cls.max())) + 1
        m = confusion_matrix(g_cls, p_cls, n_classes=n)
        if cm is None:
            cm = m
        else:
            size = max(cm.shape[0], n)
            grown = np.zeros((size, size), dtype=np.int64)
            grown[: cm.shape[0], : cm.shape[1]] += cm
            grown[:n, :n] += m
            cm = grown
    classes = list(range(1, cm.shape[0]))
    scores = type_scores(*(np.concatenate(pools[k]) for k in ("pt", "pp", "ut", "up")), classes)
    tp = np.diag(cm).astype(float)
    dice = 2 * tp / np.maximum(cm.sum(0) + cm.sum(1), 1)
    names = _class_names(gt)
    per_class = [
        {"class": c, "name": names.get(c, str(c)), "f_c": scores[f"f_c{c}"], "dice": float(dice[c])} for c in classes
    ]
    return {"f_d": scores["f_d"], "accuracy": scores["accuracy"], "classes": per_class, "images": len(pairs)}


def evaluate_tissue_folders(
    pred: Path, gt: Path, classes: str = "glas", quiet: bool = False, only_predicted: bool = False
) -> dict:
    """Pooled pixel accuracy, per-class Dice / IoU and their means over matched images (predictions: class-id
    images such as ``<stem>_tissue.tif``; ground truth: code masks mapped by the class map ``classes``). With two
    classes, also GlaS object F1 / Dice / Hausdorff (px) of the foreground's connected components, per image and
    averaged (approximate when touching objects merge in a binary mask)."""
    from scipy import ndimage as ndi

    from pathseg.metrics.glas import glas_scores
    from pathseg.metrics.semantic import confusion_matrix, confusion_scores
    from pathseg.tissue.classes import IGNORE, load_class_map

    cmap = load_class_map(classes)
    k = cmap.n_classes
    subfolder = next((d for d in ("masks", "class_masks", "binary_masks") if (Path(gt) / d).is_dir()), "masks")
    # tissue maps are <stem>_tissue.tif; older runs wrote <stem>_classes.tif, the name nucleus class maps also take
    tissue_maps = any(p.stem.endswith("_tissue") for p in Path(pred).iterdir()) if Path(pred).is_dir() else False
    skip = ("_instances", "_classes") if tissue_maps else ("_instances",)
    pairs = match_folders(pred, gt, subfolder, skip=skip, only_predicted=only_predicted)
    cm = np.zeros((k, k))
    rows = []
    for stem, p, g in track(pairs, total=len(pairs), desc="scoring", quiet=quiet):
        target = cmap.apply(read_labels(g))
        guess = read_labels(p)
        if guess.shape != target.shape:
            raise PathsegError(f"{p}: shape {guess.shape} differs from the ground truth {target.shape}")
        if guess.max(initial=0) >= k:
            raise PathsegError(f"{p}: class id {int(guess.max())} outside the {k} classes of {classes!r}")
        cm += confusion_matrix(target, guess, k, IGNORE)
        row = {"image": stem}
        if k == 2:
            row.update(glas_scores(ndi.label(target == 1)[0], ndi.label(guess == 1)[0]))
        rows.append(row)
    result = {"images": len(pairs), **confusion_scores(cm), "classes": list(cmap.names), "per_image": rows}
    if k == 2:
        for key in ("object_f1", "object_dice", "object_hausdorff"):
            result[key] = float(np.mean([r[key] for r in rows]))
    return result
