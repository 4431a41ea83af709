"""The ``pathseg`` command. It parses arguments, calls :mod:`pathseg.api` and prints; the logic lives elsewhere."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from pathseg import __version__
from pathseg.errors import PathsegError
from pathseg.progress import Bar

log = logging.getLogger("pathseg")

IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".svs",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".bif",
    ".svslide",
}

EPILOG = """examples:
  pathseg demo                                  fetch a real slide and segment its nuclei
  pathseg nuclei tiles/*.png -o out/            label TIFF + QuPath GeoJSON + CSV per image
  pathseg nuclei slide.svs -o out/ --mpp 0.5    pixel size when the file carries none
  pathseg evaluate nuclei --pred out/ --gt masks/ --json scores.json
  pathseg tissue glas/*.png -o out/ --model run/best   class map + QuPath annotations + areas
  pathseg models list
"""


#: help of ``--box-jitter`` (train nuclei, train nuclei-refiner)
BOX_JITTER_HELP = (
    "each edge of a simulated box moves by up to this fraction of the box's longer side (default 0.05, like a "
    "hand-drawn box; 0: exact bounding boxes, as benchmarks/interactive.py prompts)"
)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _add_inputs_and_output(p: argparse.ArgumentParser) -> None:
    """The INPUT... and -o OUTDIR arguments of the image-segmenting commands."""
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="image files or folders of images (a dataset folder holding images/ gives those)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR", help="folder for the results")


def _add_tissue_inference(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--tta``, ``--tta-space``, ``--precision``, ``--stride`` and ``--no-clean``: a tissue model's test-time
    views, arithmetic, patch stride and cleaning, for ``pathseg tissue`` and ``pathseg wsi``."""
    p.add_argument(
        "--tta",
        type=int,
        choices=[1, 2, 4, 8],
        default=None,
        help=prefix + "test-time views per patch, averaged: 1 = none, 2 = + mirror, 4 = quarter turns, 8 = all "
        "(time grows with the views; default: the model's config 'tta', 1 if absent)",
    )
    p.add_argument(
        "--tta-space",
        choices=["image", "latent"],
        default=None,
        help=prefix + "where the test-time views are taken: 'image' encodes every turned patch; 'latent' encodes "
        "each patch once and turns its latent, about 2x faster at 4 views, a little less accurate (bundled "
        "model, GlaS validation: mIoU 0.799 vs 0.802; 1 view: 0.787); default: the model's config 'tta_space', "
        "else image",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        default=None,
        help=prefix + "arithmetic of the network: 'bfloat16' runs it under bfloat16 autocast, 1.5-1.75x faster "
        "on a CPU with native bfloat16 (avx512_bf16 / AMX), with about 0.25%% of pixels changing class (bundled "
        "model, GlaS); 'auto' takes bfloat16 only where the CPU or GPU has it natively (others emulate it); "
        "default: the model's config 'precision', else float32",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        metavar="PX",
        help=prefix + "step between the model's patches, in pixels at the model's µm/px (1 to the patch size; "
        "smaller blends more overlapping patches per pixel and costs more patches; default: the model's config "
        "'stride', else 3/4 of the patch)",
    )
    p.add_argument(
        "--no-clean",
        action="store_true",
        help=prefix + "keep the raw per-pixel argmax: skip the model's cleaning (small holes filled, small specks "
        "absorbed; areas in its config's 'clean', µm²)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pathseg",
        description="Segmentation for computational pathology (H&E): nuclei, tissue, whole slides.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pathseg {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes (errors still print)")
    common.add_argument("-v", "--verbose", action="store_true", help="print debugging details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "nuclei",
        parents=[common],
        help="segment nuclei in images",
        description="Segment nuclei. Writes per input <stem>_instances.tif (uint32 labels), <stem>.geojson "
        "(QuPath detections) and <stem>_nuclei.csv (one row per nucleus, px and µm).",
    )
    _add_inputs_and_output(p)
    p.add_argument("--model", default=None, help="model name (see `pathseg models list`); default: best offline")
    p.add_argument(
        "--mpp",
        type=_positive_float,
        default=None,
        help="pixel size in µm/px; overrides the file's. Without it and without file metadata the "
        "model's own resolution is assumed",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse images with more pixels than this (default 100e6, or $PATHSEG_MAX_PIXELS)",
    )
    p.add_argument(
        "--prompts",
        type=Path,
        default=None,
        metavar="FILE",
        help="segment one nucleus per prompt instead of all automatically: points.csv (x,y[,label][,object]) or "
        "boxes.geojson (polygons -> boxes, points -> points), in image pixels; needs a SAM-family model and one "
        "input image",
    )
    p.add_argument(
        "--box-margin",
        type=float,
        default=0.0,
        metavar="PX",
        help="with --prompts: a box bounds its nucleus; mask pixels more than PX image pixels outside the box are "
        "dropped (default 0; negative: unbounded masks, as SAM gives them)",
    )
    p.add_argument(
        "--box-from-ais",
        type=float,
        default=None,
        metavar="IOU",
        help="with --prompts: a box takes the automatic segmentation's nucleus whose bounding box overlaps it with at "
        "least this IoU, else the mask decoder's mask (0: always the decoder's; default: the model's config "
        "'box_from_ais')",
    )
    p.add_argument(
        "--box-fit",
        choices=["on", "off"],
        default=None,
        help="with --prompts: on = a box takes the candidate mask (the decoder's 3, the --box-from-ais nucleus) whose "
        "bounding box best fits it; off = the decoder's single mask or that nucleus (default: the model's config "
        "'box_fit'; on for pathseg_nuclei_cpu)",
    )
    p.add_argument(
        "--overlap",
        choices=["smaller", "first"],
        default="smaller",
        help="with --prompts: who keeps a pixel that several nuclei's masks claim: smaller = the smallest of them "
        "(default; as PathoSAM composes prompt masks), first = the earliest prompt in the file",
    )
    p.add_argument(
        "--mode",
        choices=["ais", "apg", "amg"],
        default="ais",
        help="automatic mode: ais = decoder maps + watershed (default, fastest); apg = SAM prompts at "
        "the AIS seeds; amg = SAM's grid of point prompts (SAM-family models only)",
    )
    p.add_argument(
        "--ais-views",
        type=int,
        choices=[1, 2, 4],
        default=None,
        help="mirrored views the automatic maps are averaged over (each view is one more network pass; default: the "
        "model's config 'ais_tta', 1 for pathseg_nuclei_cpu). On stains unlike its MoNuSeg training images more "
        "views scored higher (CoNSeP train, mSA + AJI + PQ: 1 view 0.915, 2 views 0.942, 4 views 0.987); on "
        "MoNuSeg its thresholds suit 1 view (2 views: test mSA 0.381 against 0.395)",
    )
    p.add_argument(
        "--ais-shift",
        type=float,
        nargs=2,
        metavar=("DY", "DX"),
        default=None,
        help="move the automatic maps back by the AIS decoder's own displacement, in network pixels (default: the "
        "model's config 'ais_shift', none for pathseg_nuclei_cpu). pathseg_nuclei_cpu's decoder puts nuclei "
        "0.415 0.455 network px down and right of where an unbiased decoder does; '--ais-shift 0.415 0.455' "
        "undoes it (CoNSeP train mSA 0.178 -> 0.198). MoNuSeg's annotations sit ~0.5 px right of their nuclei, "
        "which is why the bundled model leaves it off (MoNuSeg validation mSA 0.304 -> 0.298)",
    )
    p.add_argument(
        "--no-stain",
        action="store_true",
        help="the automatic path sees the image's colours as they are: a model with 'ais_stain' in its config "
        "(written by benchmarks/tune_ais.py --stain reinhard --write; pathseg_nuclei_cpu has none) otherwise "
        "matches each image's LAB colour statistics to its training images' first",
    )
    p.add_argument(
        "--classes",
        action="store_true",
        help="also give every nucleus one class (probability-weighted vote over its pixels): writes "
        "<stem>_classes.tif and adds classification to the GeoJSON and class columns to the CSV",
    )
    p.set_defaults(func=cmd_nuclei)

    p = sub.add_parser(
        "tissue",
        parents=[common],
        help="segment tissue / gland classes in images",
        description="Segment tissue classes (e.g. glands) with a tissue model (diffusion features + head). Writes "
        "per input <stem>_classes.tif (uint8 class ids), <stem>.geojson (class regions as QuPath annotations, "
        "with classification names and colours) and <stem>_areas.csv (area per class in px, µm², mm²).",
    )
    _add_inputs_and_output(p)
    p.add_argument("--model", default=None, help="tissue model name or folder (default: the bundled one)")
    p.add_argument(
        "--mpp",
        type=_positive_float,
        default=None,
        help="pixel size in µm/px; overrides the file's (default: the file's, else the model's own)",
    )
    p.add_argument("--max-pixels", type=int, default=None, help="refuse images with more pixels than this")
    _add_tissue_inference(p)
    p.set_defaults(func=cmd_tissue)

    p = sub.add_parser("evaluate", help="score predictions against ground truth")
    esub = p.add_subparsers(dest="task", metavar="TASK", required=True)
    e = esub.add_parser(
        "nuclei",
        parents=[common],
        help="instance metrics: mSA, SA50, AJI, PQ/DQ/SQ, Dice",
        description="Match prediction and ground-truth label images by file stem (a trailing _instances is "
        "ignored) and print per-image and mean mSA, SA50, AJI, PQ, DQ, SQ and pixel Dice.",
    )
    e.add_argument("--pred", type=Path, required=True, help="folder of predicted label images")
    e.add_argument(
        "--gt",
        type=Path,
        required=True,
        help="folder of ground-truth label images (or a dataset folder holding instance_masks/)",
    )
    e.add_argument("--json", type=Path, default=None, help="also write the scores to this JSON file")
    e.add_argument(
        "--classes",
        action="store_true",
        help="also score nucleus classes: predictions need <stem>_classes.tif, ground truth type_masks/ "
        "(CoNSeP layout); prints HoVer-Net F_d, F_c per class and per-class Dice",
    )
    e.add_argument(
        "--radius",
        type=float,
        default=12.0,
        help="centroid distance (px) within which nuclei pair for --classes (HoVer-Net: 12 at 40x)",
    )
    e.set_defaults(func=cmd_evaluate_nuclei)
    e = esub.add_parser(
        "tissue",
        parents=[common],
        help="semantic metrics (pixel accuracy, Dice, IoU) and, for binary masks, GlaS object metrics",
        description="Match predicted class images (<stem>_classes.tif) and ground-truth masks by file stem; map "
        "the ground truth's codes with --classes; print pooled accuracy, per-class Dice and IoU and their means. "
        "With two classes also GlaS object F1, object Dice and object Hausdorff (px), approximate when touching "
        "objects merge in a binary mask.",
    )
    e.add_argument("--pred", type=Path, required=True, help="folder of predicted class images")
    e.add_argument(
        "--gt", type=Path, required=True, help="folder of masks (or a dataset folder holding masks/ or binary_masks/)"
    )
    e.add_argument("--classes", default="glas", help="class map of the ground truth: glas, bcss5 or a JSON file")
    e.add_argument("--json", type=Path, default=None, help="also write the scores to this JSON file")
    e.set_defaults(func=cmd_evaluate_tissue)

    p = sub.add_parser("models", help="list available models")
    msub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = msub.add_parser("list", parents=[common], help="show every model, where it comes from, and offline status")
    m.set_defaults(func=cmd_models_list)
    m = msub.add_parser(
        "convert-ldm",
        parents=[common],
        help="convert an original latent-diffusion checkpoint (.ckpt + YAML) into a pathseg backbone",
        description="Convert a Large-Image-Diffusion / CompVis latent-diffusion Lightning checkpoint and its YAML "
        "config into a pathseg diffusion backbone folder (safetensors). Every key is mapped, checked or dropped "
        "by name (training-only loss weights); any other key stops the conversion. The checkpoint is read with "
        "weights_only=True, so no code in it runs. Example (after downloading the BRCA 20x model by hand):\n"
        "  pathseg models convert-ldm brca20x.ckpt --config only_ssl.yaml --name ldm_brca20x\n"
        "then `pathseg train tissue --backbone ldm_brca20x ...`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("checkpoint", type=Path, help="the .ckpt file (a Lightning checkpoint or a plain state dict)")
    m.add_argument("--config", type=Path, required=True, metavar="YAML", help="the model's original YAML config")
    m.add_argument("--name", default=None, help="model name (default: the checkpoint's stem)")
    m.add_argument(
        "-o", "--output", type=Path, default=None, help="output folder (default: the model cache, <cache>/models/NAME)"
    )
    m.add_argument("--mpp", type=_positive_float, default=0.5, help="pixel size it was trained at (µm/px, default 0.5)")
    m.set_defaults(func=cmd_models_convert_ldm)

    p = sub.add_parser(
        "wsi",
        parents=[common],
        help="segment nuclei in a whole-slide image (bounded memory, resumable)",
        description="Segment a whole slide chunk by chunk (each with a halo; every nucleus kept whole, once). Writes "
        "OUTDIR/labels.zarr (uint32 nucleus ids, multiscale OME-Zarr), nuclei.geojson (QuPath detections), "
        "nuclei.csv and report.json. "
        "Re-running the same command resumes after the last finished chunk (a run with other settings into the same "
        "OUTDIR is refused, never mixed).",
    )
    p.add_argument("slide", type=Path, metavar="SLIDE", help="svs, ndpi, mrxs, scn, OME-TIFF, tiled TIFF, ...")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    p.add_argument(
        "--task",
        choices=["nuclei", "tissue"],
        default="nuclei",
        help="nuclei (labels.zarr, nuclei.geojson, nuclei.csv/.parquet) or tissue (classes.zarr, tissue.geojson "
        "annotations, tissue_areas.csv); default nuclei",
    )
    p.add_argument("--model", default=None, help="model name or path; default: best offline")
    p.add_argument(
        "--mpp",
        type=_positive_float,
        default=None,
        help="µm/px of level 0 when the slide's metadata has none (required then)",
    )
    p.add_argument("--roi", default=None, metavar="X,Y,W,H", help="only this region (level-0 pixels)")
    p.add_argument("--chunk", type=int, default=4096, help="chunk size in working-level pixels (default 4096)")
    p.add_argument(
        "--halo",
        type=int,
        default=64,
        help="context around each chunk in pixels (default 64, more than a nucleus diameter)",
    )
    p.add_argument("--no-tissue-mask", action="store_true", help="process every chunk, tissue or not")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run chunks on a local Dask cluster of N processes (default: in this process)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="use an existing dask.distributed scheduler, e.g. tcp://10.0.0.5:8786 (see README)",
    )
    p.add_argument(
        "--classes",
        action="store_true",
        help="also classify every nucleus (a model with a class decoder): classes.zarr, QuPath "
        "classification in the GeoJSON, class columns in the tables",
    )
    _add_tissue_inference(p, "--task tissue: ")
    p.set_defaults(func=cmd_wsi)

    p = sub.add_parser("train", help="train models on your annotated images")
    tsub = p.add_subparsers(dest="task", metavar="TASK", required=True)
    t = tsub.add_parser(
        "nuclei",
        parents=[common],
        help="train a SAM-family nucleus model on image / instance-mask folders",
        epilog="several GPUs or machines: torchrun --nproc_per_node N -m pathseg.cli train nuclei ...",
        description="Train or fine-tune a nucleus model on folders holding images/ and instance_masks/ "
        "(uint16 labels). A validation split is carved from the training images; the best model by validation "
        "mSA is saved to OUT/best (pathseg format: use it with --model OUT/best). Re-running the same command "
        "resumes from OUT/checkpoint.pt.",
    )
    t.add_argument("--data", nargs="+", required=True, metavar="DIR", help="training folders")
    t.add_argument("-o", "--output", required=True, metavar="OUT", help="run folder (checkpoints, best model, log)")
    t.add_argument("--mpp", type=_positive_float, default=0.25, help="pixel size of the training images (µm/px)")
    t.add_argument("--model-mpp", type=_positive_float, default=0.5, help="pixel size the model works at (µm/px)")
    t.add_argument("--iterations", type=int, default=20000)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--crop", type=int, default=256, help="training crop size in model pixels")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--val-fraction", type=float, default=0.15)
    t.add_argument("--val-every", type=int, default=500)
    t.add_argument(
        "--init",
        default=None,
        help="fine-tune this model: a zoo name (e.g. pathosam_vit_b), a checkpoint file or a model folder",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto (default): bf16 mixed precision where the CPU (avx512_bf16 / AMX) or GPU computes it natively, "
        "else fp32; bf16: always (~3x faster than fp32 where native, several times slower where emulated); fp32",
    )
    t.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    t.add_argument(
        "--check-sync",
        action="store_true",
        help="under torchrun: verify at the end that every replica holds identical weights",
    )
    t.add_argument(
        "--prompt-weight",
        type=float,
        default=1.0,
        help="weight of the interactive (prompt) loss; 0 trains the automatic path only",
    )
    t.add_argument("--box-jitter", type=float, default=0.05, help=BOX_JITTER_HELP)
    t.add_argument(
        "--freeze-bn",
        action="store_true",
        help="keep every BatchNorm layer's running statistics as --init has them (eval mode) while the weights "
        "train, so that small batches of mixed crops do not move them when fine-tuning",
    )
    t.add_argument(
        "--decoder-only",
        nargs="?",
        const=True,
        default=False,
        metavar="DECODER",
        help="train one decoder alone on the --init model's frozen encoder. train nuclei: the AIS decoder (alone "
        "or 'ais') at --model-mpp, which becomes the pixel size of the model's automatic path (prompts and classes "
        "unchanged); 'mask': the prompt path's mask decoder + prompt encoder at --model-mpp, which becomes its "
        "prompt_mpp (prompt loss only, best by validation box + point mSA; automatic path and classes unchanged). "
        "train nuclei-classes: the class decoder (class-weighted cross-entropy only), a small add-on; the nuclei "
        "outputs stay exactly as they were",
    )
    t.set_defaults(func=cmd_train_nuclei)
    tc = tsub.add_parser(
        "nuclei-classes",
        parents=[common],
        help="train a nucleus model's class decoder on instance + type masks (CoNSeP layout)",
        description="Add (or continue) a class decoder on a nucleus model: folders hold images/, instance_masks/ and "
        "type_masks/ (class id per pixel, 0 = background; names from a classes.csv). Class-weighted cross-entropy "
        "(inverse frequency) jointly with the AIS loss; --init fine-tunes an existing model (e.g. the AIS model), "
        "otherwise everything starts from scratch. The best model by validation mean per-class Dice (per-nucleus "
        "vote) is saved to OUT/best.",
    )
    for action in t._actions:  # the same options as `train nuclei`
        if action.dest in ("help", "quiet", "verbose"):
            continue
        tc._add_action(action)
    tc.add_argument(
        "--preset",
        choices=["pannuke", "consep"],
        default=None,
        help="a named class set: pannuke (5 classes, PathoSAM's order) or consep (4, HoVer-Net's grouping); "
        "default: the classes the type masks hold, named by a classes.csv",
    )
    tc.add_argument(
        "--mix",
        nargs="+",
        default=[],
        metavar="DIR",
        help="folders of images + instance masks without type masks (e.g. MoNuSeg), trained beside --data by the "
        "automatic and prompt losses only, so that the whole model keeps what it does on them; each dataset keeps "
        "the validation split it would have alone, and the best model is the one with the best class Dice + "
        "validation mSA of these folders (not with --decoder-only)",
    )
    tc.add_argument(
        "--mix-mpp",
        type=float,
        default=None,
        metavar="MPP",
        help="the pixel size (µm/px) --mix data is trained and validated at (default: --model-mpp); e.g. the "
        "automatic path's ais_mpp, so that the class decoder learns at --model-mpp while the --mix nuclei stay at "
        "the pixel size the automatic path runs at",
    )
    tc.set_defaults(func=cmd_train_nuclei, task_kind="classes")
    tr = tsub.add_parser(
        "nuclei-refiner",
        parents=[common],
        help="add a prompt-mask refiner to a compact nucleus model (sharper interactive masks)",
        description="Train the prompt-mask refiner of a compact nucleus model on image / instance-mask folders: "
        "a small network that turns the mask decoder's quarter-resolution logits into full-resolution masks, "
        "guided by the pixels and the AIS maps, and predicts their IoU. Everything else stays frozen, so automatic "
        "segmentation is unchanged. Prompts are simulated (a point or a box, then corrective points). The best "
        "model by validation mSA of box and point prompts (of boxes alone with --prompts box) is saved to OUT/best. "
        "Re-running resumes.",
    )
    tr.add_argument("--data", nargs="+", required=True, metavar="DIR", help="training folders")
    tr.add_argument("-o", "--output", required=True, metavar="OUT", help="run folder (checkpoints, best model, log)")
    tr.add_argument("--init", default="pathseg_nuclei_cpu", help="the compact model to refine (zoo name or folder)")
    tr.add_argument("--mpp", type=_positive_float, default=0.25, help="pixel size of the training images (µm/px)")
    tr.add_argument("--iterations", type=int, default=1500)
    tr.add_argument("--batch", type=int, default=4, help="crops per iteration")
    tr.add_argument("--prompts-per-image", type=int, default=8, help="objects prompted per crop")
    tr.add_argument(
        "--corrections",
        type=int,
        default=2,
        help="corrective rounds after each simulated point or box (0: first prompts only, for a refiner shipped "
        "beside a correction refiner: tools/bundle_nuclei_model.py --keep-for-corrections)",
    )
    tr.add_argument("--box-jitter", type=float, default=0.05, help=BOX_JITTER_HELP)
    tr.add_argument(
        "--prompts",
        choices=["both", "box"],
        default="both",
        help="both = points and boxes in turn (default); box = boxes alone, the best by validation box mSA kept: "
        "--init's box refiner if it has one (as the bundled model does), else its refiner fine-tuned into one "
        "(shipped beside the point refiner by tools/bundle_nuclei_model.py --add-refiner RUN/best --for-boxes); "
        "the main refiner's AIS-feature projection stays frozen. Each of --init's refiners learns the prompts it "
        "answers: a box alone its box refiner, a corrective round its correction refiner",
    )
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument(
        "--width", type=int, default=32, help="channels of a new refiner (a model's own refiner keeps its shape)"
    )
    tr.add_argument(
        "--dilations",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8],
        help="dilations of a new refiner's 3x3 layers; receptive field 1 + 2 x their sum, in model pixels",
    )
    tr.add_argument(
        "--feature-channels",
        type=int,
        default=0,
        help="a new refiner's guide also holds this many channels, a learned 1x1 projection of the AIS decoder's "
        "last features (default 0: pixels and AIS maps only)",
    )
    tr.add_argument("--val-fraction", type=float, default=0.15, help="as for `train nuclei` (same split)")
    tr.add_argument("--val-every", type=int, default=250)
    tr.add_argument("--seed", type=int, default=0)
    tr.set_defaults(func=cmd_train_refiner)
    tt = tsub.add_parser(
        "tissue",
        parents=[common],
        help="train a tissue head on frozen diffusion features (image / class-mask folders)",
        description="Train a small fully convolutional head on frozen diffusion features. Folders hold images/ and "
        "masks/ (or class_masks/, or GlaS's binary_masks/) with integer codes, mapped by --classes. Class-weighted "
        "cross-entropy; a validation split is carved from the training images; the best model by validation mIoU "
        "is saved to OUT/best (use it with --model OUT/best). Re-running the same command resumes.",
    )
    tt.add_argument("--data", nargs="+", required=True, metavar="DIR", help="training folders")
    tt.add_argument(
        "--no-cache",
        action="store_true",
        help="run the backbone on fresh random crops every iteration instead of caching the features of the "
        "training patches once (slower; no memory for the cache)",
    )
    tt.add_argument("--views", type=int, default=2, help="dihedral views per image in the cache (1-8, default 2)")
    tt.add_argument(
        "--stain",
        type=float,
        default=0.0,
        help="stain augmentation: haematoxylin / eosin densities scaled by up to ±STAIN (cached: every view but "
        "the first gets one draw; default 0: none; 0.05 is mild)",
    )
    tt.add_argument("--cache-gb", type=_positive_float, default=4.0, help="largest feature cache (GB, default 4)")
    tt.add_argument("-o", "--output", required=True, metavar="OUT", help="run folder (checkpoint, best model, log)")
    tt.add_argument(
        "--backbone",
        required=True,
        help="diffusion backbone folder; random:FOLDER = the same architecture with random weights (a control)",
    )
    tt.add_argument("--classes", default="glas", help="class map: glas, bcss5 or a JSON file (default glas)")
    tt.add_argument("--timesteps", type=int, nargs="+", default=[50], help="diffusion timestep(s) t (default 50)")
    tt.add_argument("--blocks", type=int, nargs="+", default=[1, 2], help="UNet up blocks to take (default 1 2)")
    tt.add_argument("--mpp", type=_positive_float, default=None, help="pixel size of the images (µm/px)")
    tt.add_argument("--crop", type=int, default=256, help="training crop in pixels (default 256)")
    tt.add_argument(
        "--head-dilations",
        type=int,
        nargs="+",
        default=[1, 1],
        help="dilation of each 3x3 block of the head (default 1 1; 1 2 4 8 gives it 31x31 feature pixels of context)",
    )
    tt.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="WIDTH",
        help="add a pixel refiner of this width to the head: it sharpens the upsampled logits with the image's own "
        "pixels (the features lie on a grid of 4 pixels; default 0: none; 16 is a small one)",
    )
    tt.add_argument("--batch", type=int, default=4)
    tt.add_argument("--iterations", type=int, default=2000)
    tt.add_argument("--lr", type=float, default=1e-3)
    tt.add_argument("--val-fraction", type=float, default=0.15)
    tt.add_argument("--val-every", type=int, default=200)
    tt.add_argument("--label-fraction", type=float, default=1.0, help="share of training images to use (e.g. 0.1)")
    tt.add_argument("--seed", type=int, default=0)
    tt.add_argument("--name", default="pathseg_tissue", help="name stored in the model's config")
    tt.set_defaults(func=cmd_train_tissue)

    p = sub.add_parser("pretrain", help="pretrain backbones on unlabeled images")
    psub = p.add_subparsers(dest="task", metavar="TASK", required=True)
    pd = psub.add_parser(
        "diffusion",
        parents=[common],
        help="train pathseg's own small latent diffusion backbone (for tissue features) on unlabeled H&E",
        description="Two resumable stages on random patches of unlabeled images (masks are never read): a VQ "
        "autoencoder, then a conditional UNet on its latents, conditioned on the nucleus model's image encoder "
        "(mean-pooled). Writes OUT/backbone (use it with `pathseg train tissue --backbone OUT/backbone`). Pass "
        "training splits only. A folder's pixel size comes from its files, else DIR@MPP, else --default-mpp.",
    )
    pd.add_argument("--data", nargs="+", required=True, metavar="DIR[@MPP]", help="image folders or files")
    pd.add_argument("-o", "--output", required=True, metavar="OUT", help="run folder")
    pd.add_argument(
        "--mpp",
        type=_positive_float,
        default=1.0,
        help="working pixel size (µm/px, default 1.0: glands and tissue regions need context more than nuclear detail)",
    )
    pd.add_argument("--default-mpp", type=_positive_float, default=0.25, help="for files without a pixel size")
    pd.add_argument("--patch", type=int, default=128, help="UNet-stage training patch in pixels (default 128)")
    pd.add_argument("--vq-patch", type=int, default=64, help="autoencoder-stage training patch in pixels (default 64)")
    pd.add_argument("--batch", type=int, default=16)
    pd.add_argument("--vq-iterations", type=int, default=800)
    pd.add_argument("--unet-iterations", type=int, default=3000)
    pd.add_argument("--encoder-from", default="pathseg_nuclei_cpu", help="nucleus model whose encoder conditions")
    pd.add_argument(
        "--init",
        default=None,
        metavar="BACKBONE",
        help="continue pretraining this backbone (folder or name; a tissue model such as pathseg_tissue gives its "
        "backbone): the autoencoder stage is skipped and --unet-iterations more UNet iterations run; "
        "--encoder-from is then ignored",
    )
    pd.add_argument("--unet-lr", type=_positive_float, default=5e-4, help="UNet-stage learning rate (default 5e-4)")
    pd.add_argument("--seed", type=int, default=0)
    pd.set_defaults(func=cmd_pretrain_diffusion)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="fetch a real slide and segment its nuclei",
        description="Fetch the CC0 slide CMU-1-Small-Region.svs (sha256-checked, cached), segment its nuclei with "
        "the best model available offline and say how to open the results in QuPath and napari.",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("pathseg-demo"),
        metavar="OUTDIR",
        help="folder for the results (default: ./pathseg-demo)",
    )
    p.add_argument("--slide", type=Path, default=None, help="use this slide instead of downloading the demo slide")
    p.add_argument("--model", default=None, help="model name; default: best offline")
    p.set_defaults(func=cmd_demo)
    return parser


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given; folders expanded to the image files they hold (sorted). A dataset folder without image files
    of its own but with an ``images/`` sub-folder (the MoNuSeg / GlaS / CoNSeP layout) gives that sub-folder's."""

    def images_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    out: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = images_in(path)
            if not found and (path / "images").is_dir():
                found = images_in(path / "images")
            if not found:
                raise PathsegError(f"{path}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out.extend(found)
        else:
            out.append(path)
    return out


def output_stem(path: Path) -> str:
    name = path.name
    for double in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(double):
            return name[: -len(double)]
    return path.stem


def _needs_ais_decoder(model, flag: str) -> None:
    if getattr(model, "ais", None) is None:
        raise PathsegError(f"{flag} needs a SAM-family model with an AIS decoder; {model.name!r} has none")


def cmd_nuclei(args: argparse.Namespace) -> int:
    from pathseg.api import segment_nuclei, segment_nuclei_prompted, write_nuclei_outputs
    from pathseg.models.zoo import get_nucleus_model

    inputs = expand_inputs(args.inputs)
    model = get_nucleus_model(args.model)
    if args.ais_views is not None:
        _needs_ais_decoder(model, "--ais-views")
        model.config["ais_tta"] = args.ais_views
    if args.ais_shift is not None:
        _needs_ais_decoder(model, "--ais-shift")
        model.config["ais_shift"] = list(args.ais_shift)
        model.ais_shift  # noqa: B018 - checks the values now rather than at the first image
    if args.no_stain and getattr(model, "ais_stain", None) is not None:
        model.config["ais_stain"] = None
    prompts = None
    if args.prompts is not None:
        from pathseg.io.prompts import read_prompts

        if len(inputs) != 1:
            raise PathsegError("--prompts goes with exactly one input image (prompt coordinates are per image)")
        prompts = read_prompts(args.prompts)
    failures = 0
    assumed = []
    for path in inputs:
        bar = Bar(f"{path.name}", quiet=args.quiet)
        start = time.perf_counter()
        try:
            if prompts is not None:
                result = segment_nuclei_prompted(
                    path,
                    prompts,
                    model,
                    mpp=args.mpp,
                    max_pixels=args.max_pixels,
                    progress=bar,
                    box_margin=None if args.box_margin < 0 else args.box_margin,
                    box_from_ais="model" if args.box_from_ais is None else args.box_from_ais or None,
                    box_fit="model" if args.box_fit is None else args.box_fit == "on",
                    overlap=args.overlap,
                )
            else:
                result = segment_nuclei(
                    path,
                    model,
                    mpp=args.mpp,
                    max_pixels=args.max_pixels,
                    progress=bar,
                    mode=args.mode,
                    classes=args.classes,
                )
            paths = write_nuclei_outputs(result, args.output, output_stem(path))
        except PathsegError as exc:
            bar.close()
            print(f"pathseg: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        bar.close()
        if result.mpp_source == "model default":
            assumed.append(path.name)
        if not args.quiet:
            print(
                f"{path}: {result.count} nuclei at {result.mpp:g} µm/px ({result.mpp_source}) "
                f"in {time.perf_counter() - start:.1f} s -> {paths['instances'].name}, {paths['geojson'].name}, "
                f"{paths['table'].name}"
            )
    if assumed:
        log.warning(
            "note: %d input(s) carry no pixel size (%s); assumed %g µm/px, the resolution model %r was made for. "
            "Pass --mpp to set it.",
            len(assumed),
            ", ".join(assumed[:3]) + (" ..." if len(assumed) > 3 else ""),
            model.mpp,
            model.name,
        )
    if failures:
        print(f"pathseg: {failures} of {len(inputs)} input(s) failed", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate_nuclei(args: argparse.Namespace) -> int:
    from pathseg.evaluate import evaluate_instance_folders
    from pathseg.table import format_table

    rows, mean = evaluate_instance_folders(args.pred, args.gt, quiet=args.quiet)
    cols = ["image", "n_gt", "n_pred", "msa", "sa50", "aji", "pq", "dq", "sq", "dice"]
    table_rows = [{**r, "n_gt": int(r["n_gt"]), "n_pred": int(r["n_pred"])} for r in rows]
    table_rows.append(
        {**mean, "image": f"mean ({len(rows)})", "n_gt": int(mean["n_gt"]), "n_pred": int(mean["n_pred"])}
    )
    print(format_table(table_rows, cols))
    result = {"images": rows, "mean": mean}
    if args.classes:
        from pathseg.evaluate import evaluate_class_folders

        cls = evaluate_class_folders(args.pred, args.gt, radius=args.radius, quiet=args.quiet)
        result["classes"] = cls
        print(
            f"\nnucleus classes over {cls['images']} image(s): F_d {cls['f_d']:.3f}, "
            f"accuracy of paired nuclei {cls['accuracy']:.3f}"
        )
        print(format_table(cls["classes"], ["class", "name", "f_c", "dice"]))
    if args.json:
        from pathseg.io.atomic import atomic_open

        with atomic_open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from pathseg.models.zoo import default_nucleus_model, list_models
    from pathseg.table import format_table

    default = default_nucleus_model()
    rows = [
        {
            "name": e.name + (" *" if e.name == default else ""),
            "task": e.task,
            "µm/px": f"{e.mpp:g}",
            "offline": "yes" if e.offline() else "no",
            "source": e.source,
            "description": e.description,
        }
        for e in list_models()
    ]
    print(format_table(rows, ["name", "task", "µm/px", "offline", "source", "description"]))
    print("\n* default nucleus model (the best one available offline)")
    return 0


def cmd_models_convert_ldm(args: argparse.Namespace) -> int:
    from pathseg.models.diffusion.convert import convert_ldm
    from pathseg.models.zoo import models_dir

    for path in (args.checkpoint, args.config):
        if not path.is_file():
            raise PathsegError(f"{path}: file not found")
    name = args.name or args.checkpoint.stem
    out = args.output or models_dir() / name
    folder, report = convert_ldm(args.checkpoint, args.config, out, name=name, mpp=args.mpp)
    for family, n in report.items():
        print(f"  {family}: {n} tensors")
    print(f"backbone: {folder}")
    return 0


def cmd_train_nuclei(args: argparse.Namespace) -> int:
    from pathseg.train.nuclei import TrainConfig, train_nuclei

    cfg = TrainConfig(
        data=[str(d) for d in args.data],
        out=str(args.output),
        mpp_in=args.mpp,
        model_mpp=args.model_mpp,
        crop=args.crop,
        batch=args.batch,
        lr=args.lr,
        iterations=args.iterations,
        val_fraction=args.val_fraction,
        val_every=args.val_every,
        seed=args.seed,
        init=args.init,
        precision=args.precision,
        device=args.device,
        check_sync=args.check_sync,
        prompt_weight=args.prompt_weight,
        box_jitter=args.box_jitter,
        freeze_bn=args.freeze_bn,
        task=getattr(args, "task_kind", "nuclei"),
        decoder_only=getattr(args, "decoder_only", False),
        class_preset=getattr(args, "preset", None),
        mix=[str(d) for d in getattr(args, "mix", [])],
        mix_mpp=getattr(args, "mix_mpp", None),
    )
    bar = Bar("training", quiet=args.quiet)
    best = train_nuclei(cfg, progress=bar, log=lambda m: log.info("%s", m))
    bar.close()
    print(f"best validation scores: {json.dumps(best)}\nmodel: {args.output}/best")
    return 0


def cmd_train_refiner(args: argparse.Namespace) -> int:
    from pathseg.train.refine import RefinerConfig, train_refiner

    cfg = RefinerConfig(
        data=[str(d) for d in args.data],
        out=str(args.output),
        init=args.init,
        mpp_in=args.mpp,
        iterations=args.iterations,
        batch=args.batch,
        prompts_per_image=args.prompts_per_image,
        corrections=args.corrections,
        box_jitter=args.box_jitter,
        lr=args.lr,
        width=args.width,
        dilations=tuple(args.dilations),
        feature_channels=args.feature_channels,
        prompts=args.prompts,
        val_fraction=args.val_fraction,
        val_every=args.val_every,
        seed=args.seed,
    )
    bar = Bar("training", quiet=args.quiet)
    best = train_refiner(cfg, progress=bar, log=lambda m: log.info("%s", m))
    bar.close()
    print(f"best validation scores: {json.dumps(best)}\nmodel: {args.output}/best")
    return 0


def cmd_tissue(args: argparse.Namespace) -> int:
    from pathseg.api import segment_tissue, write_tissue_outputs
    from pathseg.models.zoo import get_tissue_model

    inputs = expand_inputs(args.inputs)
    model = get_tissue_model(args.model).with_settings(args.tta, args.tta_space, args.stride, args.precision)
    failures = 0
    from pathseg.progress import track

    for path in track(inputs, total=len(inputs), desc="images", quiet=args.quiet or len(inputs) == 1):
        start = time.perf_counter()
        bar = Bar(path.name, quiet=args.quiet or len(inputs) > 1)  # one image: a bar over its patches
        try:
            result = segment_tissue(
                path, model, mpp=args.mpp, max_pixels=args.max_pixels, clean=not args.no_clean, progress=bar
            )
            paths = write_tissue_outputs(result, args.output, output_stem(path))
        except PathsegError as exc:
            bar.close()
            print(f"pathseg: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        bar.close()
        if not args.quiet:
            shares = ", ".join(
                f"{n['name']} {100 * float((result.classes == k).mean()):.1f}%" for k, n in enumerate(result.names)
            )
            print(
                f"{path}: {shares} at {result.mpp:g} µm/px ({result.mpp_source}) in "
                f"{time.perf_counter() - start:.1f} s -> {paths['classes'].name}, {paths['geojson'].name}, "
                f"{paths['areas'].name}"
            )
    if failures:
        print(f"pathseg: {failures} of {len(inputs)} input(s) failed", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate_tissue(args: argparse.Namespace) -> int:
    from pathseg.evaluate import evaluate_tissue_folders
    from pathseg.table import format_table

    r = evaluate_tissue_folders(args.pred, args.gt, args.classes, quiet=args.quiet)
    rows = [{"class": name, "dice": d, "iou": i} for name, d, i in zip(r["classes"], r["dice"], r["iou"], strict=True)]
    rows.append({"class": "mean", "dice": r["mean_dice"], "iou": r["mean_iou"]})
    print(f"{r['images']} image(s), pixel accuracy {r['accuracy']:.4f}")
    print(format_table(rows, ["class", "dice", "iou"]))
    if "object_f1" in r:
        print(
            f"GlaS objects (connected components; approximate): F1 {r['object_f1']:.4f}, "
            f"Dice {r['object_dice']:.4f}, Hausdorff {r['object_hausdorff']:.1f} px"
        )
    if args.json:
        from pathseg.io.atomic import atomic_open

        with atomic_open(args.json, "w") as f:
            json.dump(r, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def cmd_train_tissue(args: argparse.Namespace) -> int:
    from pathseg.train.tissue import TissueTrainConfig, train_tissue

    cfg = TissueTrainConfig(
        data=[str(d) for d in args.data],
        out=str(args.output),
        backbone=args.backbone,
        classes=args.classes,
        timesteps=args.timesteps,
        blocks=args.blocks,
        mpp_in=args.mpp,
        crop=args.crop,
        head_dilations=args.head_dilations,
        refine=args.refine,
        batch=args.batch,
        iterations=args.iterations,
        lr=args.lr,
        val_fraction=args.val_fraction,
        val_every=args.val_every,
        label_fraction=args.label_fraction,
        seed=args.seed,
        name=args.name,
        cache=not args.no_cache,
        views=args.views,
        stain=args.stain,
        cache_gb=args.cache_gb,
    )
    bar = Bar("training", quiet=args.quiet)
    best = train_tissue(cfg, progress=bar, log=lambda m: log.info("%s", m))
    bar.close()
    print(f"best validation scores: {json.dumps(best)}\nmodel: {args.output}/best")
    return 0


def cmd_pretrain_diffusion(args: argparse.Namespace) -> int:
    from pathseg.train.diffusion import PretrainConfig, pretrain_diffusion

    cfg = PretrainConfig(
        data=[str(d) for d in args.data],
        out=str(args.output),
        mpp=args.mpp,
        default_mpp=args.default_mpp,
        patch=args.patch,
        vq_patch=args.vq_patch,
        batch=args.batch,
        vq_iterations=args.vq_iterations,
        unet_iterations=args.unet_iterations,
        encoder_from=args.encoder_from,
        init=args.init,
        lr_unet=args.unet_lr,
        seed=args.seed,
    )
    bar = Bar("pretraining", quiet=args.quiet)
    folder = pretrain_diffusion(cfg, progress=bar, log=lambda m: log.info("%s", m))
    bar.close()
    print(f"backbone: {folder}")
    return 0


def _roi(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise PathsegError(f"--roi must be X,Y,W,H in level-0 pixels, got {text!r}") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise PathsegError(f"--roi needs x, y >= 0 and w, h > 0, got {text!r}")
    return x, y, w, h


def cmd_wsi(args: argparse.Namespace) -> int:
    from pathseg.wsi.pipeline import SlideRun, run_slide

    run = SlideRun(
        str(args.slide),
        str(args.output),
        model=args.model,
        mpp=args.mpp,
        roi=_roi(args.roi),
        chunk=args.chunk,
        halo=args.halo,
        use_tissue_mask=not args.no_tissue_mask,
        workers=args.workers,
        scheduler=args.scheduler,
        classes=args.classes,
        task=args.task,
        tta=args.tta,
        tta_space=args.tta_space,
        stride=args.stride,
        precision=args.precision,
        clean=not args.no_clean,
    )
    bar = Bar("chunks", quiet=args.quiet)
    report = run_slide(run, progress=bar, log=lambda m: log.warning("%s", m))
    bar.close()
    print(
        f"{args.slide}: {report['chunks_done']} of {report['chunks']} chunks done "
        f"({report['chunks'] - report['chunks_with_tissue']} without tissue, {len(report['chunks_failed'])} failed) "
        f"in {report['seconds']:.1f} s at {report['mpp']:g} µm/px"
    )
    for kind, path in report["outputs"].items():
        print(f"  {kind:8s} {path}")
    return 1 if report["chunks_failed"] else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathseg.api import segment_nuclei, write_nuclei_outputs
    from pathseg.demo import fetch_demo_slide, how_to_open
    from pathseg.models.zoo import get_nucleus_model

    if args.slide is not None:
        slide = args.slide
    else:
        bar = Bar("download", quiet=args.quiet)
        slide = fetch_demo_slide(progress=bar)
        bar.close()
    model = get_nucleus_model(args.model)
    print(f"slide: {slide}\nmodel: {model.name}")
    bar = Bar("nuclei", quiet=args.quiet)
    start = time.perf_counter()
    result = segment_nuclei(slide, model, progress=bar)
    bar.close()
    paths = write_nuclei_outputs(result, args.output, output_stem(slide))
    h, w = result.labels.shape
    print(
        f"{result.count} nuclei in {w}x{h} px at {result.mpp:g} µm/px ({result.mpp_source}) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    for kind, path in paths.items():
        print(f"  {kind:9s} {path}")
    print(how_to_open(slide.resolve(), {k: p.resolve() for k, p in paths.items()}))
    return 0


class _StderrHandler(logging.Handler):
    """Writes records to whatever ``sys.stderr`` is at the time (so redirection and test capture work)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except PathsegError as exc:
        print(f"pathseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pathseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
