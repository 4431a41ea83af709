"""Interactive segmentation with prompts simulated from the ground truth, as PathoSAM evaluates it.

Per test image and ground-truth nucleus: (1) one positive point at the object's innermost pixel, (2) one box
(the object's bounding box), (3) the point followed by ``--corrections`` corrective rounds (a point in the
largest error region, positive in a missed part / negative in a false part, with the previous logits fed back).
Each object's best mask is painted into a label image (in object order), scored with mSA against the ground truth.

    python benchmarks/interactive.py --data ../shared/data/monuseg/test --model pathseg_nuclei_cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pathseg.io.atomic import atomic_open
from pathseg.io.images import read_image, read_labels
from pathseg.metrics import instance_scores
from pathseg.models.zoo import get_nucleus_model
from pathseg.nuclei.interactive import Predictor
from pathseg.table import format_table


def innermost(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the pixel farthest from the mask's border (computed on the mask's bounding box)."""
    ys, xs = np.nonzero(mask)
    y0, x0 = ys.min(), xs.min()
    crop = mask[y0 : ys.max() + 1, x0 : xs.max() + 1]
    d = ndi.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(d), d.shape)
    return float(x + x0), float(y + y0)


def corrective_point(obj_box, obj: np.ndarray, pred) -> tuple[float, float, int] | None:
    """A point in the largest error region between the object and mask 0 of ``pred`` (a Prediction), computed on
    the union of their bounding boxes; positive in a missed part, negative in a false part."""
    py0, px0, py1, px1 = pred.window
    oy0, ox0, oy1, ox1 = obj_box
    y0, x0, y1, x1 = min(py0, oy0), min(px0, ox0), max(py1, oy1), max(px1, ox1)
    gt = obj[y0:y1, x0:x1]
    pm = np.zeros_like(gt)
    pm[py0 - y0 : py1 - y0, px0 - x0 : px1 - x0] = pred.window_masks[0]
    fn, fp = gt & ~pm, ~gt & pm
    err, label = (fn, 1) if fn.sum() >= fp.sum() else (fp, 0)
    if not err.any():
        return None
    comp, n = ndi.label(err)
    biggest = 1 + int(np.argmax(ndi.sum(err, comp, range(1, n + 1))))
    x, y = innermost(comp == biggest)
    return x + x0, y + y0, label


def run_image(pred: Predictor, gt: np.ndarray, corrections: int) -> dict[str, np.ndarray]:
    out = {k: np.zeros(gt.shape, np.uint32) for k in ("point", "box", "corrected")}
    for lab, sl in enumerate(ndi.find_objects(gt), start=1):
        if sl is None:
            continue
        # work on the object's neighbourhood: its box grown by 64 px (errors further away are not looked at)
        y0, x0 = max(sl[0].start - 64, 0), max(sl[1].start - 64, 0)
        y1, x1 = min(sl[0].stop + 64, gt.shape[0]), min(sl[1].stop + 64, gt.shape[1])
        obj = np.zeros(gt.shape, bool)
        obj[y0:y1, x0:x1] = gt[y0:y1, x0:x1] == lab
        x, y = innermost(obj[y0:y1, x0:x1])
        x, y = x + x0, y + y0
        r = pred.predict(points=np.array([[x, y]]), labels=np.array([1]))
        best = int(np.argmax(r.iou))
        r.paste(out["point"], best, lab)
        box = np.array([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
        pred.predict(box=box, multimask=False).paste(out["box"], 0, lab)
        pts, lbl = [[x, y]], [1]
        current = r
        current.window_masks = r.window_masks[best : best + 1]
        prompt = r.mask_prompt(best)
        for _ in range(corrections):
            c = corrective_point((y0, x0, y1, x1), obj, current)
            if c is None:
                break
            pts.append([c[0], c[1]])
            lbl.append(c[2])
            current = pred.predict(points=np.array(pts), labels=np.array(lbl), mask_input=prompt, multimask=False)
            prompt = current.mask_prompt(0)
        current.paste(out["corrected"], 0, lab)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/monuseg/test"))
    ap.add_argument("--model", required=True, help="a SAM-family model (zoo name, checkpoint or model folder)")
    ap.add_argument("--mpp", type=float, default=0.25, help="pixel size of the images (µm/px)")
    ap.add_argument("--corrections", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    model = get_nucleus_model(args.model)
    images = sorted((args.data / "images").glob("*.png"))[: args.limit]
    rows = []
    for path in images:
        rgb = read_image(path).pixels
        gt = read_labels(args.data / "instance_masks" / path.name).astype(np.int64)
        t = time.perf_counter()
        pred = Predictor(model)
        pred.set_image(rgb, args.mpp)
        res = run_image(pred, gt, args.corrections)
        row = {"image": path.stem, "n_gt": int(gt.max()), "seconds": time.perf_counter() - t}
        for k, lab in res.items():
            row[f"msa_{k}"] = instance_scores(gt, lab)["msa"]
        rows.append(row)
        print(
            f"{path.stem}: " + " ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("msa")),
            file=sys.stderr,
            flush=True,
        )
    cols = ["image", "n_gt", "msa_point", "msa_box", "msa_corrected", "seconds"]
    mean = {c: float(np.mean([r[c] for r in rows])) for c in cols[1:]}
    print(f"\ninteractive, model {model.name}, {len(rows)} images, {args.corrections} corrections")
    print(format_table(rows + [{**mean, "image": "mean", "n_gt": f"{mean['n_gt']:.0f}"}], cols))
    out = args.json or Path("benchmarks/results") / f"interactive_{model.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as f:
        json.dump({"model": model.name, "corrections": args.corrections, "images": rows, "mean": mean}, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
