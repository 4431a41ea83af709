"""GlaS evidence for diffusion features (issue: tissue segmentation with PathSegDiff).

Trains, at 100% and at 10% of the GlaS training images (after carving the validation split):
  (a) the segmentation head on the pretrained diffusion backbone's features,
  (b) the same head on a randomly initialised backbone of the same shape,
  (c) a U-Net of similar size (pathseg's compact CNN encoder + U-Net decoder) from scratch, with the same labels,
      crops and wall-clock budget as (a);
then scores each once on testA + testB (pooled pixel accuracy, Dice and mIoU; GlaS object F1 / Dice / Hausdorff
on connected components, approximate because the masks are binary).

``--ablation`` first picks the timestep(s) t and UNet blocks on the validation split only (short head runs).
``--models a`` trains and scores a subset (e.g. only (a) after more backbone pretraining: (b) and (c) do not depend
on the backbone's weights); (c) needs (a) in the same run, as its budget is (a)'s training time.
``--tta N`` averages N dihedral views per patch at test time for every model (the U-Net (c) too; pick N on the
validation split with ``benchmarks/tune_tissue_clean.py --tta``).
``--clean MAX_HOLE MIN_AREA`` adds, for every model, a row scored after the same class-map cleaning (areas in µm²,
picked beforehand on the validation split by ``benchmarks/tune_tissue_clean.py``).

    python benchmarks/glas.py --backbone ~/.cache/pathseg/pretrain/backbone --data ../shared/data/glas
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pathseg.io.atomic import atomic_open
from pathseg.metrics.glas import glas_scores
from pathseg.metrics.semantic import confusion_matrix, confusion_scores
from pathseg.table import format_table
from pathseg.tissue.classes import GLAS, IGNORE
from pathseg.tissue.data import TissueCrops, load_tissue_samples
from pathseg.tissue.model import TissueModel
from pathseg.tissue.postprocess import CleanParams, clean_classes
from pathseg.train.tissue import TissueTrainConfig, _split, class_weights, train_tissue

T_GRID = [[25], [50], [150], [300], [50, 150]]
BLOCK_GRID = [[1], [2], [3], [1, 2], [2, 3], [1, 2, 3]]


class SmallUNet(torch.nn.Module):
    """Baseline (c): pathseg's compact CNN encoder + U-Net decoder, from scratch, 2 classes."""

    def __init__(self, n_classes: int = 2) -> None:
        super().__init__()
        from pathseg.models.compact import CompactEncoder, UNetAISDecoder

        self.encoder = CompactEncoder()
        self.decoder = UNetAISDecoder(256, self.encoder.widths[:-1], out_channels=n_classes, final_activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb, skips = self.encoder.forward_features(x)
        return self.decoder(emb, skips)

    @torch.no_grad()
    def segment(self, rgb: np.ndarray, tta: int = 1) -> np.ndarray:
        """Class ids of a whole image; ``tta``: dihedral views averaged, as the tissue model's ``tta``."""
        from pathseg.tissue.model import TTA_VIEWS, unview_dihedral, view_dihedral

        self.eval()
        h, w = rgb.shape[:2]
        ph, pw = -(-h // 16) * 16, -(-w // 16) * 16
        x = torch.from_numpy(np.pad(rgb, ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect")).permute(2, 0, 1)
        x = (x[None].float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]
        ).view(1, 3, 1, 1)
        logits = sum(unview_dihedral(self(view_dihedral(x, k)), k) for k in TTA_VIEWS[tta])
        return logits[0, :, :h, :w].argmax(0).numpy().astype(np.uint8)


def train_unet(train, seconds: float, crop: int, batch: int, seed: int, stain: float = 0.0) -> SmallUNet:
    """Baseline (c) for a fixed wall-clock budget (the head's training time)."""
    torch.manual_seed(seed)
    net = SmallUNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    crops = TissueCrops(train, crop, seed=seed, stain=stain)
    weights = class_weights(train, 2)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        net.train()
        x, y = crops.batch(batch)
        loss = F.cross_entropy(net((x - mean) / std), y, weight=weights, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net


def score(segment, samples, clean: CleanParams | None = None, mpp: float = 0.62) -> list[dict]:
    """Scores of ``segment`` on ``samples``: one dict, or two with ``clean`` (the second after
    :func:`clean_classes` at ``mpp`` µm/px, its cleaning time counted in ``s_per_image``)."""
    from scipy import ndimage as ndi

    variants = [None] if clean is None else [None, clean]
    cms = [np.zeros((2, 2)) for _ in variants]
    objects: list[list[dict]] = [[] for _ in variants]
    seconds = [0.0 for _ in variants]
    for s in samples:
        start = time.perf_counter()
        raw = segment(s.image)
        base = time.perf_counter() - start
        for i, params in enumerate(variants):
            start = time.perf_counter()
            pred = raw if params is None else clean_classes(raw, mpp, params)
            seconds[i] += base + time.perf_counter() - start
            cms[i] += confusion_matrix(s.target, pred, 2, IGNORE)
            objects[i].append(glas_scores(ndi.label(s.target == 1)[0], ndi.label(pred == 1)[0]))
    out = []
    for cm, objs, secs in zip(cms, objects, seconds, strict=True):
        sem = confusion_scores(cm)
        row = {"accuracy": sem["accuracy"], "dice_gland": sem["dice"][1], "mean_dice": sem["mean_dice"]}
        row["miou"] = sem["mean_iou"]
        for k in ("object_f1", "object_dice"):
            row[k] = float(np.mean([o[k] for o in objs]))
        # Hausdorff is undefined (nan) where exactly one of prediction and truth is empty: mean over the rest, counted
        hd = np.array([o["object_hausdorff"] for o in objs])
        row["object_hausdorff"] = float(np.nanmean(hd)) if np.isfinite(hd).any() else float("nan")
        row["hausdorff_undefined"] = int(np.isnan(hd).sum())
        row["s_per_image"] = secs / len(samples)  # segmentation only, scoring excluded
        out.append(row)
    return out


def block_channels(features, blocks: list[int]) -> list[int]:
    """Channel indices of ``blocks`` inside features taken (for one t) from ``features.blocks``."""
    up = features.backbone.unet.up_blocks
    out, offset = [], 0
    for b in features.blocks:
        n = up[b].resnets[-1].conv2.out_channels
        if b in blocks:
            out += range(offset, offset + n)
        offset += n
    return out


def ablation(
    backbone_path: Path, train, val, grid_t, grid_blocks, iterations: int, log, grid_dilations=((1, 1),), views=1
) -> list[dict]:
    """Validation mIoU of a head per (t, blocks, head dilations): one feature cache per t (all candidate blocks),
    heads on channel subsets. Validation split only."""
    from pathseg.models.zoo import get_backbone
    from pathseg.tissue.cache import FeatureBank
    from pathseg.tissue.features import DiffusionFeatures
    from pathseg.tissue.head import SegHead
    from pathseg.train.tissue import evaluate_bank, head_loss

    bb = get_backbone(str(backbone_path))
    every = sorted({b for blocks in grid_blocks for b in blocks})
    weights = class_weights(train, 2)
    rows = []
    for t in grid_t:
        feats = DiffusionFeatures(bb, t, every)
        start = time.perf_counter()
        bank, vbank = FeatureBank(feats, train, 256, views), FeatureBank(feats, val, 256)
        log(f"t={t}: cached {len(bank)} + {len(vbank)} patches in {time.perf_counter() - start:.0f} s")
        for blocks, dilations in itertools.product(grid_blocks, grid_dilations):
            chans = torch.tensor(
                [c + i * (feats.channels // len(t)) for i in range(len(t)) for c in block_channels(feats, blocks)]
            )
            torch.manual_seed(0)
            head = SegHead(len(chans), 2, 128, dilations)
            opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
            rng = np.random.default_rng(0)
            for _ in range(iterations):
                head.train()
                f, y, _ = bank.batch(8, rng, chans)
                loss = head_loss(head, f, y, weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            s = evaluate_bank(head, vbank, chans)
            rows.append(
                {
                    "t": json.dumps(t),
                    "blocks": json.dumps(blocks),
                    "head_dilations": json.dumps(list(dilations)),
                    "val_miou": s["mean_iou"],
                    "val_dice": s["mean_dice"],
                }
            )
            log(str(rows[-1]))
        for blk in bb.unet.up_blocks:  # this t's feature hooks
            blk._forward_hooks.clear()
    return rows


def int_sets(specs: list[str]) -> list[list[int]]:
    """Command-line sets such as ``["25", "50,150"]`` as ``[[25], [50, 150]]``."""
    return [[int(v) for v in g.split(",")] for g in specs]


def at_mpp(segment, mpp_model: float, mpp_image: float):
    """``segment`` (class ids of an image at ``mpp_model``) applied to images at ``mpp_image``."""
    from pathseg.resize import resize_labels, resize_rgb, scaled_size

    def run(rgb: np.ndarray) -> np.ndarray:
        small = resize_rgb(rgb, scaled_size(rgb.shape, mpp_image / mpp_model))
        return resize_labels(segment(small), rgb.shape[:2])

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", type=Path, required=True, help="pretrained diffusion backbone folder")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/glas"))
    ap.add_argument("--mpp", type=float, default=0.62, help="GlaS pixel size (µm/px)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pathseg-glas"))
    ap.add_argument("--iterations", type=int, default=1500, help="head iterations per run")
    ap.add_argument("--ablation", action="store_true", help="pick t and blocks on the validation split first")
    ap.add_argument("--ablation-iterations", type=int, default=400)
    ap.add_argument(
        "--ablation-t", nargs="+", default=[",".join(map(str, t)) for t in T_GRID], help="t sets, e.g. 25 50,150"
    )
    ap.add_argument(
        "--ablation-blocks", nargs="+", default=[",".join(map(str, b)) for b in BLOCK_GRID], help="e.g. 1 3 1,2,3"
    )
    ap.add_argument("--timesteps", type=int, nargs="+", default=[50])
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    ap.add_argument("--head-dilations", type=int, nargs="+", default=[1, 1], help="the head's 3x3 blocks")
    ap.add_argument("--ablation-dilations", nargs="+", default=None, help="head dilation sets, e.g. 1,1 1,2,4,8")
    ap.add_argument("--views", type=int, default=2, help="dihedral views per training image in the feature cache")
    ap.add_argument("--refine", type=int, default=0, help="width of the heads' pixel refiner (0: none)")
    ap.add_argument(
        "--stain", type=float, default=0.0, help="stain augmentation of every model's training images (0: none)"
    )
    ap.add_argument(
        "--cache-gb", type=float, default=4.0, help="largest feature cache allowed (GB; 8 views of GlaS take ~5.3)"
    )
    ap.add_argument("--ablation-only", action="store_true", help="stop after the ablation (validation split only)")
    ap.add_argument(
        "--clean",
        type=float,
        nargs=2,
        default=None,
        metavar=("MAX_HOLE", "MIN_AREA"),
        help="also score every model after class-map cleaning with these areas (µm²; pick them on the validation "
        "split with benchmarks/tune_tissue_clean.py)",
    )
    ap.add_argument(
        "--tta", type=int, choices=[1, 2, 4, 8], default=1, help="test-time dihedral views, for every model"
    )
    ap.add_argument(
        "--models", nargs="+", choices=["a", "b", "c"], default=["a", "b", "c"], help="which models to train and score"
    )
    ap.add_argument("--tag", default="", help="suffix of the results files (glas<_TAG>.json, glas_ablation<_TAG>.json)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="draws the validation split, the label fraction's images, the feature noise and the U-Net's start",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "c" in args.models and "a" not in args.models:
        ap.error("--models c needs a: the U-Net's CPU budget is (a)'s training time")
    if not (args.data / "train").is_dir():
        print(f"skipped: {args.data} is absent")
        return 0
    results = Path("benchmarks/results")
    suffix = f"_{args.tag}" if args.tag else ""
    results.mkdir(parents=True, exist_ok=True)
    from pathseg.models.folder import read_config

    mpp_model = float(read_config(args.backbone, "diffusion backbone").get("mpp", 0.5))
    base = dict(
        data=[str(args.data / "train")],
        backbone=str(args.backbone),
        crop=256,
        batch=8,
        val_every=250,
        mpp_in=args.mpp,
        cache_gb=args.cache_gb,
        seed=args.seed,
    )
    timesteps, blocks = args.timesteps, args.blocks
    if args.ablation:
        samples = load_tissue_samples(base["data"], GLAS, args.mpp, mpp_model)
        train, val = _split(samples, TissueTrainConfig(out="", **base))
        grid_t, grid_blocks = int_sets(args.ablation_t), int_sets(args.ablation_blocks)
        grid_dilations = int_sets(args.ablation_dilations) if args.ablation_dilations else [args.head_dilations]
        rows = ablation(
            args.backbone,
            train,
            val,
            grid_t,
            grid_blocks,
            args.ablation_iterations,
            print,
            grid_dilations,
            args.views,
        )
        rows.sort(key=lambda r: -r["val_miou"])
        print(format_table(rows, ["t", "blocks", "head_dilations", "val_miou", "val_dice"]))
        summary = {
            "backbone": str(args.backbone),
            "head_iterations": args.ablation_iterations,
            "views": args.views,
            "rows": rows,
        }
        with atomic_open(results / f"glas_ablation{suffix}.json", "w") as f:
            json.dump(summary, f, indent=2)
        if args.ablation_only:
            return 0
        timesteps, blocks = json.loads(rows[0]["t"]), json.loads(rows[0]["blocks"])
        args.head_dilations = json.loads(rows[0]["head_dilations"])
    clean = CleanParams(*args.clean) if args.clean else None
    test = load_tissue_samples([args.data / "testA", args.data / "testB"], GLAS)
    table = []
    for fraction in args.fractions:
        runs = {}
        for kind, backbone in (
            ("a: diffusion features", str(args.backbone)),
            ("b: random backbone", f"random:{args.backbone}"),
        ):
            if kind[0] not in args.models:
                continue
            out = args.work / f"{kind[0]}_{int(fraction * 100)}"
            shutil.rmtree(out, ignore_errors=True)  # a benchmark times whole runs: never resume an old one
            cfg = TissueTrainConfig(
                out=str(out),
                timesteps=timesteps,
                blocks=blocks,
                iterations=args.iterations,
                label_fraction=fraction,
                head_dilations=args.head_dilations,
                views=args.views,
                refine=args.refine,
                stain=args.stain,
                **{**base, "backbone": backbone},
            )
            start = time.perf_counter()
            train_tissue(cfg, log=print)
            model = TissueModel.from_pretrained(out / "best")
            model.tta = args.tta
            runs[kind] = (lambda rgb, m=model: m.segment(rgb, mpp=args.mpp), time.perf_counter() - start)
        if "c" in args.models:
            train, _ = _split(
                load_tissue_samples(base["data"], GLAS, args.mpp, mpp_model),
                TissueTrainConfig(out="", label_fraction=fraction, **base),
            )
            budget = runs["a: diffusion features"][1]
            unet = train_unet(train, budget, 256, 4, args.seed, args.stain)
            segment_unet = functools.partial(unet.segment, tta=args.tta)
            runs["c: U-Net from scratch"] = (at_mpp(segment_unet, mpp_model, args.mpp), budget)
        for kind, (segment, seconds) in runs.items():
            for s, suffix_kind in zip(score(segment, test, clean, args.mpp), ("", " + cleaning"), strict=False):
                table.append(
                    {"labels": f"{int(fraction * 100)}%", "model": kind + suffix_kind, **s, "train_s": seconds}
                )
                print(table[-1], flush=True)
    cols = [
        "labels",
        "model",
        "accuracy",
        "dice_gland",
        "miou",
        "object_f1",
        "object_dice",
        "object_hausdorff",
        "train_s",
        "s_per_image",
    ]
    print(f"GlaS, torch threads {torch.get_num_threads()}")
    print(format_table(table, cols))
    with atomic_open(results / f"glas{suffix}.json", "w") as f:
        json.dump(
            {
                "backbone": str(args.backbone),
                "timesteps": timesteps,
                "blocks": blocks,
                "iterations": args.iterations,
                "head_dilations": args.head_dilations,
                "views": args.views,
                "refine": args.refine,
                "tta": args.tta,
                "seed": args.seed,
                "stain": args.stain,
                "models": args.models,
                "clean": clean.as_dict() if clean else None,
                "rows": table,
            },
            f,
            indent=2,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
