"""GlaS evidence for diffusion features (issue: tissue segmentation with PathSegDiff).

Trains, at 100% and at 10% of the GlaS training images (after carving the validation split):
  (a) the segmentation head on the pretrained diffusion backbone's features,
  (b) the same head on a randomly initialised backbone of the same shape,
  (c) a U-Net of similar size (pathseg's compact CNN encoder + U-Net decoder) from scratch, with the same labels,
      crops and wall-clock budget as (a);
then scores each once on testA + testB (pooled pixel accuracy, Dice and mIoU; GlaS object F1 / Dice / Hausdorff
on connected components, approximate because the masks are binary).

``--ablation`` first picks the timestep(s) t and UNet blocks on the validation split only (short head runs).

    python benchmarks/glas.py --backbone ~/.cache/pathseg/pretrain/backbone --data ../shared/data/glas
"""

from __future__ import annotations

import argparse
import json
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
from pathseg.train.tissue import TissueTrainConfig, _split, class_weights, train_tissue

T_GRID = [[10], [50], [100], [200], [50, 150]]
BLOCK_GRID = [[1], [2], [1, 2], [2, 3], [1, 2, 3]]


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
    def segment(self, rgb: np.ndarray) -> np.ndarray:
        self.eval()
        h, w = rgb.shape[:2]
        ph, pw = -(-h // 16) * 16, -(-w // 16) * 16
        x = torch.from_numpy(np.pad(rgb, ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect")).permute(2, 0, 1)
        x = (x[None].float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]
        ).view(1, 3, 1, 1)
        return self(x)[0, :, :h, :w].argmax(0).numpy().astype(np.uint8)


def train_unet(train, seconds: float, crop: int, batch: int, seed: int) -> SmallUNet:
    """Baseline (c) for a fixed wall-clock budget (the head's training time)."""
    torch.manual_seed(seed)
    net = SmallUNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    crops = TissueCrops(train, crop, seed=seed)
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


def score(segment, samples) -> dict:
    cm = np.zeros((2, 2))
    objects = []
    from scipy import ndimage as ndi

    for s in samples:
        pred = segment(s.image)
        cm += confusion_matrix(s.target, pred, 2, IGNORE)
        objects.append(glas_scores(ndi.label(s.target == 1)[0], ndi.label(pred == 1)[0]))
    sem = confusion_scores(cm)
    out = {
        "accuracy": sem["accuracy"],
        "dice_gland": sem["dice"][1],
        "mean_dice": sem["mean_dice"],
        "miou": sem["mean_iou"],
    }
    for k in ("object_f1", "object_dice", "object_hausdorff"):
        out[k] = float(np.mean([o[k] for o in objects]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", type=Path, required=True, help="pretrained diffusion backbone folder")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/glas"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/pathseg-glas"))
    ap.add_argument("--iterations", type=int, default=1500, help="head iterations per run")
    ap.add_argument("--ablation", action="store_true", help="pick t and blocks on the validation split first")
    ap.add_argument("--ablation-iterations", type=int, default=300)
    ap.add_argument("--timesteps", type=int, nargs="+", default=[50])
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    if not (args.data / "train").is_dir():
        print(f"skipped: {args.data} is absent")
        return 0
    results = Path("benchmarks/results")
    results.mkdir(parents=True, exist_ok=True)
    base = dict(data=[str(args.data / "train")], backbone=str(args.backbone), crop=256, batch=4, val_every=250)
    timesteps, blocks = args.timesteps, args.blocks
    if args.ablation:
        rows = []
        for t in T_GRID:
            for b in BLOCK_GRID:
                out = args.work / f"abl_t{'-'.join(map(str, t))}_b{'-'.join(map(str, b))}"
                cfg = TissueTrainConfig(
                    out=str(out), timesteps=t, blocks=b, iterations=args.ablation_iterations, **base
                )
                best = train_tissue(cfg, log=lambda *a: None)
                rows.append(
                    {"t": str(t), "blocks": str(b), "val_miou": best["mean_iou"], "val_dice": best["mean_dice"]}
                )
                print(rows[-1], flush=True)
        rows.sort(key=lambda r: -r["val_miou"])
        print(format_table(rows, ["t", "blocks", "val_miou", "val_dice"]))
        with atomic_open(results / "glas_ablation.json", "w") as f:
            json.dump(rows, f, indent=2)
        timesteps, blocks = json.loads(rows[0]["t"]), json.loads(rows[0]["blocks"])
    test = load_tissue_samples([args.data / "testA", args.data / "testB"], GLAS)
    table = []
    for fraction in (1.0, 0.1):
        runs = {}
        for kind, backbone in (
            ("a: diffusion features", str(args.backbone)),
            ("b: random backbone", f"random:{args.backbone}"),
        ):
            out = args.work / f"{kind[0]}_{int(fraction * 100)}"
            cfg = TissueTrainConfig(
                out=str(out),
                timesteps=timesteps,
                blocks=blocks,
                iterations=args.iterations,
                label_fraction=fraction,
                **{**base, "backbone": backbone},
            )
            start = time.perf_counter()
            train_tissue(cfg, log=lambda *a: None)
            runs[kind] = (TissueModel.from_pretrained(out / "best").segment, time.perf_counter() - start)
        train, _ = _split(
            load_tissue_samples(base["data"], GLAS), TissueTrainConfig(out="", label_fraction=fraction, **base)
        )
        budget = runs["a: diffusion features"][1]
        unet = train_unet(train, budget, 256, 4, 0)
        runs["c: U-Net from scratch"] = (unet.segment, budget)
        for kind, (segment, seconds) in runs.items():
            s = score(segment, test)
            table.append({"labels": f"{int(fraction * 100)}%", "model": kind, **s, "train_s": seconds})
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
    ]
    print(format_table(table, cols))
    with atomic_open(results / "glas.json", "w") as f:
        json.dump({"timesteps": timesteps, "blocks": blocks, "rows": table}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
