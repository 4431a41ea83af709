"""Compare pathseg's SAM with the official segment-anything implementation: same weights, same inputs.

Builds the official model with random weights (fixed seed), loads its state dict into ours with strict=True,
and reports (1) max |difference| of image embeddings and of mask logits for point, box, box+point and mask
prompts, relative to the largest magnitude, and (2) image-encoder time at 1024x1024 for both, measured
alternately in one process. Needs `segment_anything` (which needs torchvision), so run it in a throwaway
environment outside the repository:

    python -m venv /tmp/samenv
    /tmp/samenv/bin/pip install torch==2.14.1 torchvision==0.29.1 segment-anything tqdm scipy
    PYTHONPATH=src /tmp/samenv/bin/python benchmarks/sam_equivalence.py --size vit_b

It skips (exit 0 with a message) where segment_anything is not importable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    ap.add_argument("--repeats", type=int, default=3, help="timed encoder runs per implementation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        from segment_anything import sam_model_registry
    except ImportError as exc:
        print(f"skipped: segment_anything is not importable here ({exc}); see this script's docstring")
        return 0
    from pathseg.models.sam import build_sam

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    official = sam_model_registry[args.size]().eval()
    # random, non-trivial weights everywhere (the official init leaves rel-pos tables and some biases at zero)
    with torch.no_grad():
        for p in official.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = build_sam(args.size).eval()
    ours.load_state_dict(official.state_dict(), strict=True)

    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 1024, 1024, generator=g) * 255
    rows = []
    with torch.inference_mode():
        x = official.preprocess(image)
        e_off = official.image_encoder(x)
        e_our = ours.image_encoder(ours.preprocess(image))
        rows.append(("image embedding", rel_diff(e_our, e_off)))
        pe = official.prompt_encoder.get_dense_pe()
        pts = (torch.tensor([[[300.0, 420.0], [520.0, 610.0]]]), torch.tensor([[1, 0]]))
        box = torch.tensor([[250.0, 380.0, 600.0, 700.0]])
        mask_in = torch.randn(1, 1, 256, 256, generator=g)
        prompts = {
            "points (+/-)": dict(points=pts, boxes=None, masks=None),
            "box": dict(points=None, boxes=box, masks=None),
            "box + point": dict(points=(pts[0][:, :1], pts[1][:, :1]), boxes=box, masks=None),
            "mask + point": dict(points=(pts[0][:, :1], pts[1][:, :1]), boxes=None, masks=mask_in),
        }
        for name, p in prompts.items():
            sp_o, de_o = official.prompt_encoder(points=p["points"], boxes=p["boxes"], masks=p["masks"])
            m_o, iou_o = official.mask_decoder(e_off, pe, sp_o, de_o, multimask_output=True)[:2]
            m_u, iou_u = ours.decode(e_off, points=p["points"], boxes=p["boxes"], mask_input=p["masks"])
            rows.append((f"mask logits, {name}", rel_diff(m_u, m_o)))
            rows.append((f"IoU prediction, {name}", rel_diff(iou_u, iou_o)))

        times = {"official": [], "pathseg": []}
        for _ in range(args.repeats):
            for name, model in (("official", official), ("pathseg", ours)):
                t = time.perf_counter()
                model.image_encoder(x)
                times[name].append(time.perf_counter() - t)
    print(f"SAM {args.size}, random weights, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(f"{'output':40s} {'max |ours - official| / max |official|':>40s}")
    for name, d in rows:
        print(f"{name:40s} {d:40.2e}")
    best = {k: min(v) for k, v in times.items()}
    print(
        f"\nimage encoder at 1024x1024 (best of {args.repeats}): official {best['official']:.2f} s, "
        f"pathseg {best['pathseg']:.2f} s, speed-up {best['official'] / best['pathseg']:.2f}x"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"size": args.size, "torch": torch.__version__, "diffs": dict(rows), "encoder_seconds": times}, indent=2
            )
        )
    worst = max(d for _, d in rows)
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
