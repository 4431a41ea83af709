"""Tissue head training recipes on one cached feature bank: GlaS train, validation split only (never test).

Caches the backbone's features of the training patches once (``--views`` dihedral views) and of the validation
patches, then trains one head per recipe as ``pathseg train tissue`` does (AdamW, cosine schedule, class-weighted
cross-entropy, batch 8) and reports validation mIoU / mean Dice every 400 iterations and at the end. Use it to
compare backbones (same recipe) or head recipes (same backbone) before a test run with ``benchmarks/glas.py``.

    python benchmarks/glas_heads.py --backbone BACKBONE --recipes '[{"iterations": 800}, {"iterations": 2000}]'

Recipe keys: ``iterations`` (800), ``hidden`` (128), ``dilations`` ([1, 2, 4]), ``lr`` (1e-3), ``batch`` (8),
``seed`` (0: initial weights and batch order), ``refine`` (0: the width of a pixel refiner, none by default),
``stain`` (0: the HED jitter strength of the cached training views but the first, as ``--stain``; one cache per
value).
``--fraction`` trains on that share of the training images (as ``--label-fraction``). ``--ensemble`` also
scores the mean of all the recipes' heads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pathseg.io.atomic import atomic_open
from pathseg.models.zoo import get_backbone
from pathseg.tissue.cache import FeatureBank
from pathseg.tissue.classes import GLAS
from pathseg.tissue.data import load_tissue_samples
from pathseg.tissue.features import DiffusionFeatures
from pathseg.tissue.head import SegHead
from pathseg.train.tissue import TissueTrainConfig, _split, class_weights, evaluate_bank, head_loss


class MeanHead(torch.nn.Module):
    """Logits averaged over several heads (an ensemble), scored like one head."""

    def __init__(self, heads: list[SegHead]) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleList(heads)
        self.classify = heads[0].classify
        self.to_pixels = heads[0].to_pixels  # upsampling; an ensemble of heads without pixel refiners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([h(x) for h in self.heads]).mean(0)


def train_head(bank: FeatureBank, vbank: FeatureBank, weights: torch.Tensor, recipe: dict, log=print):
    """Train one head on ``bank``; validation scores every 400 iterations and at the end. Returns the record and
    the head."""
    torch.manual_seed(recipe.get("seed", 0))
    head = SegHead(
        bank.feats.shape[1], 2, recipe.get("hidden", 128), recipe.get("dilations", [1, 2, 4]), recipe.get("refine", 0)
    )
    its, lr = recipe.get("iterations", 800), recipe.get("lr", 1e-3)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, its, eta_min=lr * 0.02)
    rng = np.random.default_rng(recipe.get("seed", 0))
    curve = []
    for it in range(its):
        head.train()
        f, y, x = bank.batch(recipe.get("batch", 8), rng)
        loss = head_loss(head, f, y, weights, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (it + 1) % 400 == 0 or it + 1 == its:
            s = evaluate_bank(head, vbank)
            curve.append({"iteration": it + 1, "val_miou": s["mean_iou"], "val_dice": s["mean_dice"]})
            log(f"{json.dumps(recipe)} {json.dumps(curve[-1])}")
    return {"recipe": recipe, "final": curve[-1], "curve": curve}, head


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", required=True, help="diffusion backbone folder or name")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/glas"))
    ap.add_argument("--mpp", type=float, default=0.62, help="GlaS pixel size (µm/px)")
    ap.add_argument("--timesteps", type=int, nargs="+", default=[25])
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--views", type=int, default=2, help="dihedral views per training image in the cache")
    ap.add_argument("--fraction", type=float, default=1.0, help="share of the training images used (e.g. 0.1)")
    ap.add_argument("--recipes", default='[{"iterations": 800}]', help="JSON list of recipes (see above)")
    ap.add_argument(
        "--ensemble", action="store_true", help="also score the mean of all recipes' heads' logits (one row more)"
    )
    ap.add_argument("--tag", default="", help="suffix of benchmarks/results/glas_heads<_TAG>.json")
    args = ap.parse_args(argv)
    if not (args.data / "train").is_dir():
        print(f"skipped: {args.data} is absent")
        return 0
    recipes = json.loads(args.recipes)
    bb = get_backbone(args.backbone)
    samples = load_tissue_samples([args.data / "train"], GLAS, args.mpp, bb.mpp)
    train, val = _split(samples, TissueTrainConfig(data=[], out="", backbone="", label_fraction=args.fraction))
    keep = any(r.get("refine", 0) > 0 for r in recipes)
    feats = DiffusionFeatures(bb, args.timesteps, args.blocks)
    start = time.perf_counter()
    banks = {
        stain: FeatureBank(feats, train, 256, args.views, max_gb=12, images=keep, stain=stain)
        for stain in sorted({r.get("stain", 0.0) for r in recipes})
    }
    vbank = FeatureBank(feats, val, 256, max_gb=12, images=keep)
    sizes = " + ".join(str(len(b)) for b in banks.values())
    print(f"cached {sizes} + {len(vbank)} patches in {time.perf_counter() - start:.0f} s", flush=True)
    weights = class_weights(train, 2)
    trained = [train_head(banks[r.get("stain", 0.0)], vbank, weights, r) for r in recipes]
    rows = [row for row, _ in trained]
    if args.ensemble and len(trained) > 1:
        s = evaluate_bank(MeanHead([head for _, head in trained]), vbank)
        final = {"iteration": None, "val_miou": s["mean_iou"], "val_dice": s["mean_dice"]}
        rows.append({"recipe": {"ensemble": recipes}, "final": final, "curve": [final]})
    out = Path("benchmarks/results") / f"glas_heads{'_' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as f:
        json.dump(
            {
                "backbone": str(args.backbone),
                "timesteps": args.timesteps,
                "blocks": args.blocks,
                "views": args.views,
                "fraction": args.fraction,
                "training_images": len(train),
                "validation_images": len(val),
                "rows": rows,
            },
            f,
            indent=2,
        )
    for r in rows:
        print(
            f"{json.dumps(r['recipe'])}: validation mIoU {r['final']['val_miou']:.4f} Dice {r['final']['val_dice']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
