"""``pathseg evaluate nuclei|tissue``: scores of predictions against ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pathseg.cli._common import positive_float


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``pathseg evaluate`` and its tasks."""
    p = sub.add_parser("evaluate", help="score predictions against ground truth")
    esub = p.add_subparsers(dest="task", metavar="TASK", required=True)
    e = esub.add_parser(
        "nuclei",
        parents=[common],
        help="instance metrics: mSA, SA50, AJI, PQ/DQ/SQ, Dice",
        description="Match prediction and ground-truth label images by file stem (a trailing _instances is "
        "ignored) and print per-image and mean mSA, SA50, AJI, PQ, DQ, SQ and pixel Dice. A prediction may also be "
        "GeoJSON outlines (<stem>.geojson), e.g. another tool's nuclei exported from QuPath, drawn at the ground "
        "truth's size, so that tools can be compared on your annotations.",
    )
    e.add_argument(
        "--pred",
        type=Path,
        required=True,
        help="folder of predicted label images, or of <stem>.geojson outlines for images without one",
    )
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
        type=positive_float,
        default=12.0,
        help="centroid distance (px) within which nuclei pair for --classes (HoVer-Net: 12 at 40x)",
    )
    _add_only_predicted(e)
    e.set_defaults(func=cmd_evaluate_nuclei)
    e = esub.add_parser(
        "tissue",
        parents=[common],
        help="semantic metrics (pixel accuracy, Dice, IoU) and, for binary masks, GlaS object metrics",
        description="Match predicted class images (<stem>_tissue.tif) and ground-truth masks by file stem; map "
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
    _add_only_predicted(e)
    e.set_defaults(func=cmd_evaluate_tissue)


def _add_only_predicted(e: argparse.ArgumentParser) -> None:
    e.add_argument(
        "--only-predicted",
        action="store_true",
        help="score only the ground-truth images that have a prediction, e.g. a first look at a few images "
        "(default: a ground truth without a prediction stops the run, so a partial run is never scored as the "
        "whole set)",
    )


def cmd_evaluate_nuclei(args: argparse.Namespace) -> int:
    from pathseg.evaluate import evaluate_instance_folders
    from pathseg.table import format_table

    rows, mean = evaluate_instance_folders(args.pred, args.gt, quiet=args.quiet, only_predicted=args.only_predicted)
    cols = ["image", "n_gt", "n_pred", "msa", "sa50", "aji", "pq", "dq", "sq", "dice"]
    table_rows = [{**r, "n_gt": int(r["n_gt"]), "n_pred": int(r["n_pred"])} for r in rows]
    table_rows.append(
        {**mean, "image": f"mean ({len(rows)})", "n_gt": int(mean["n_gt"]), "n_pred": int(mean["n_pred"])}
    )
    print(format_table(table_rows, cols))
    result = {"images": rows, "mean": mean}
    if args.classes:
        from pathseg.evaluate import evaluate_class_folders

        cls = evaluate_class_folders(
            args.pred, args.gt, radius=args.radius, quiet=args.quiet, only_predicted=args.only_predicted
        )
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


def cmd_evaluate_tissue(args: argparse.Namespace) -> int:
    from pathseg.evaluate import evaluate_tissue_folders
    from pathseg.table import format_table

    r = evaluate_tissue_folders(args.pred, args.gt, args.classes, quiet=args.quiet, only_predicted=args.only_predicted)
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
