r"""Interactive segmentation with prompts simulated from the ground truth, as PathoSAM evaluates it.

Per test image and ground-truth nucleus: (1) one positive point at the object's innermost pixel, (2) one box
(the object's bounding box), (3) the point followed by ``--corrections`` corrective rounds (a point in the
largest error region, positive in a missed part / negative in a false part, with the previous logits fed back).
The objects' masks are composed into a label image as PathoSAM's evaluation does (micro-sam's
``mask_data_to_segmentation``: largest first, each painted over the previous, so a smaller mask wins the pixels it
shares with a larger one; ``--overlap first`` keeps a shared pixel with the earlier object in ground-truth order,
as this script did before) and scored with mSA against the ground truth. Several ``--overlap`` rules score the same
masks; columns after the first rule's carry the rule's name.
A box bounds its mask (``--box-margin``; negative: unbounded masks, as SAM gives them).

    python benchmarks/interactive.py --data ../shared/data/monuseg/test --model pathseg_nuclei_cpu

The network's pixel size for prompts (``prompt_mpp``) is chosen on the validation split of the training images:

    python benchmarks/interactive.py --data ../shared/data/monuseg/train --validation --kinds box point \
        --corrections 0 --model src/pathseg/weights/pathseg_nuclei_cpu --prompt-mpp 0.5 0.45 0.42 0.38 [--write]

and so is which IoU estimate ranks a prompt's candidate masks (``prompt_iou``: the refiner's or the decoder's):

    python benchmarks/interactive.py --data ../shared/data/monuseg/train --validation \
        --model src/pathseg/weights/pathseg_nuclei_cpu --prompt-iou refiner decoder [--write]

and whether a box prompt takes the automatic segmentation's nucleus whose bounding box matches the box
(``box_from_ais``: the least box IoU, 0 = never):

    python benchmarks/interactive.py --data ../shared/data/monuseg/train --validation --kinds box --corrections 0 \
        --model src/pathseg/weights/pathseg_nuclei_cpu --box-from-ais 0 0.8 0.85 0.9 [--write]

and whether a box takes the candidate (the decoder's 3, the AIS nucleus) whose bounding box fits it best
(``box_fit``): ``--box-fit 0 1``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pathseg.io.atomic import atomic_open
from pathseg.io.images import read_image, read_labels
from pathseg.metrics import instance_scores
from pathseg.models.folder import update_config
from pathseg.models.zoo import get_nucleus_model
from pathseg.nuclei.interactive import OVERLAPS, Predictor, paint_objects
from pathseg.nuclei.simulate import KINDS, prompt_objects
from pathseg.table import format_table
from pathseg.train.data import find_pairs


def _images(args: argparse.Namespace) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, rgb, labels) of the images to score: all of ``--data``, or its validation split."""
    if args.validation:
        from pathseg.train.data import load_samples
        from pathseg.train.nuclei import source_groups, split_validation

        samples = load_samples([str(args.data)], args.mpp, args.mpp)
        _, val = split_validation(samples, args.val_fraction, args.seed, source_groups([str(args.data)]))
        return [(s.name, s.image, s.labels.astype(np.int64)) for s in val][: args.limit]
    pairs = find_pairs(args.data)[: args.limit]  # images/ of any image format with instance_masks/ of the same stem
    return [(img.stem, read_image(img).pixels, read_labels(mask).astype(np.int64)) for img, mask in pairs]


def score(model, images, args: argparse.Namespace, kinds: tuple[str, ...]) -> list[dict]:
    rows = []
    for stem, rgb, gt in images:
        t = time.perf_counter()
        pred = Predictor(model, box_margin=None if args.box_margin < 0 else args.box_margin)
        pred.set_image(rgb, args.mpp)
        objects = prompt_objects(pred, gt, args.corrections, kinds=kinds, box_jitter=args.box_jitter)
        row = {"image": stem, "n_gt": int(gt.max()), "seconds": time.perf_counter() - t}
        for i, overlap in enumerate(args.overlap):
            for k, objs in objects.items():
                lab = paint_objects(objs, gt.shape, overlap)
                row[f"msa_{k}" + (f"_{overlap}" if i else "")] = instance_scores(gt, lab)["msa"]
        rows.append(row)
        print(
            f"{stem}: " + " ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("msa")),
            file=sys.stderr,
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/monuseg/test"))
    ap.add_argument("--model", required=True, help="a SAM-family model (zoo name, checkpoint or model folder)")
    ap.add_argument("--mpp", type=float, default=0.25, help="pixel size of the images (µm/px)")
    ap.add_argument("--corrections", type=int, default=8)
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="prompt kinds to score")
    ap.add_argument(
        "--box-jitter",
        type=float,
        default=0.0,
        help="move each box edge by up to this fraction of the box's longer side, as a hand-drawn box (default 0: "
        "exact bounding boxes, as PathoSAM evaluates; the same boxes for every model)",
    )
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-refiner", action="store_true", help="drop the mask refiners (to measure their effect)")
    ap.add_argument(
        "--box-margin",
        type=float,
        default=0.0,
        help="box prompts bound their masks to the box grown by this many image pixels (negative: unbounded, "
        "as SAM); default 0",
    )
    ap.add_argument(
        "--validation",
        action="store_true",
        help="score only the validation split `pathseg train nuclei` carves from --data (--val-fraction, --seed)",
    )
    ap.add_argument("--val-fraction", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--prompt-mpp",
        type=float,
        nargs="+",
        default=None,
        help="network pixel sizes (µm/px) for prompts to compare (default: the model's prompt_mpp)",
    )
    ap.add_argument(
        "--prompt-iou",
        nargs="+",
        choices=["refiner", "decoder"],
        default=None,
        help="which IoU estimate ranks a prompt's candidates, to compare (default: the model's prompt_iou)",
    )
    ap.add_argument(
        "--box-from-ais",
        type=float,
        nargs="+",
        default=None,
        help="least box IoU at which a box prompt takes the automatic segmentation's nucleus, to compare (0: never; "
        "default: the model's box_from_ais)",
    )
    ap.add_argument(
        "--box-fit",
        type=int,
        nargs="+",
        choices=[0, 1],
        default=None,
        help="1: a box takes the candidate whose bounding box fits it best; values to compare (default: the model's "
        "box_fit)",
    )
    ap.add_argument(
        "--write",
        action="store_true",
        help="with --validation and several --prompt-mpp / --prompt-iou / --box-from-ais / --box-fit: store the best "
        "(mean mSA over --kinds) as the model folder's prompt_mpp, prompt_iou, box_from_ais and box_fit",
    )
    ap.add_argument(
        "--overlap",
        nargs="+",
        choices=OVERLAPS,
        default=["smaller"],
        help="who keeps a pixel two objects' masks claim: smaller = the smaller mask (default; as PathoSAM), first = "
        "the earlier object; several: each scores the same masks",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.write and not (args.validation and Path(args.model).is_dir()):
        ap.error("--write needs --validation and a model folder as --model")
    model = get_nucleus_model(args.model)
    name = model.name
    if args.no_refiner and getattr(model, "refiner", None) is not None:
        model.refiner = model.correction_refiner = model.box_refiner = None
        name += "_no_refiner"
    if args.box_margin < 0:
        name += "_unbounded_box"
    if args.box_jitter:
        name += f"_box_jitter{args.box_jitter:g}"
    images = _images(args)
    kinds = tuple(args.kinds)
    extra = [f"msa_{k}_{o}" for o in args.overlap[1:] for k in kinds]
    cols = ["image", "n_gt", *(f"msa_{k}" for k in kinds), *extra, "seconds"]
    split = "validation split" if args.validation else str(args.data)
    runs = {}
    settings = itertools.product(
        args.prompt_mpp or [model.prompt_mpp],
        args.prompt_iou or [model.prompt_iou],
        args.box_from_ais or [model.box_from_ais],
        args.box_fit or [model.box_fit],
    )
    for prompt_mpp, prompt_iou, box_from_ais, box_fit in settings:
        box_from_ais, box_fit = box_from_ais or None, bool(box_fit)  # box_from_ais 0: never
        model.config.update(prompt_mpp=prompt_mpp, prompt_iou=prompt_iou, box_from_ais=box_from_ais, box_fit=box_fit)
        rows = score(model, images, args, kinds)
        mean = {c: float(np.mean([r[c] for r in rows])) for c in cols[1:]}
        setting = f"{prompt_mpp:g} µm/px, {prompt_iou} IoU, box from AIS at {box_from_ais or 'never'}" + (
            ", best-fitting box candidate" if box_fit else ""
        )
        threads = torch.get_num_threads()
        boxes = f", boxes jittered by {args.box_jitter:g}" if args.box_jitter else ""
        print(f"\ninteractive, model {name} at {setting}{boxes}, {len(rows)} images of {split}, {threads} threads")
        print(format_table(rows + [{**mean, "image": "mean", "n_gt": f"{mean['n_gt']:.0f}"}], cols))
        runs[setting] = {
            "prompt_mpp": prompt_mpp,
            "prompt_iou": prompt_iou,
            "box_from_ais": box_from_ais,
            "box_fit": box_fit,
            "images": rows,
            "mean": mean,
        }
    best = max(runs, key=lambda m: np.mean([runs[m]["mean"][f"msa_{k}"] for k in kinds]))
    if len(runs) > 1:
        print("mean mSA over " + ", ".join(kinds) + ":")
        for m, r in runs.items():
            mean_msa = np.mean([r["mean"][f"msa_{k}"] for k in kinds])
            print(f"  {m}: {mean_msa:.4f}" + (" (best)" if m == best else ""))
    tag = "_validation" if args.validation else ""
    out = args.json or Path("benchmarks/results") / f"interactive_{name}{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as f:
        record = {
            "model": name,
            "corrections": args.corrections,
            "box_margin": args.box_margin,
            "box_jitter": args.box_jitter,
            "kinds": kinds,
            "overlap": args.overlap,
        }
        if len(runs) == 1:
            record.update(runs[best])
        else:
            record.update(best=best, runs=runs)
        json.dump(record, f, indent=2)
    print(f"wrote {out}")
    if args.write:
        chosen = {k: runs[best][k] for k in ("prompt_mpp", "prompt_iou", "box_from_ais", "box_fit")}
        print(f"wrote {chosen} into {update_config(Path(args.model), chosen)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
