"""Assemble the bundled tissue model from a tissue training run: backbone + head stored as float16 safetensors in
``src/pathseg/weights/<name>/``; the conditioning encoder is referenced from the bundled nucleus model (by name and
weights digest) instead of being stored twice.

    python tools/bundle_tissue_model.py --tissue RUN/best [--name pathseg_tissue] [--share-encoder pathseg_nuclei_cpu]

The autoencoder's decoder is left out (features only encode; 4.1 MB in float16) unless ``--keep-decoder``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pathseg.tissue.model import TissueModel

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "pathseg" / "weights"
LIMIT_MB = 30.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tissue", type=Path, required=True, help="tissue model folder (e.g. RUN/best)")
    ap.add_argument("--name", default="pathseg_tissue")
    ap.add_argument("--share-encoder", default="pathseg_nuclei_cpu", help="nucleus model holding the encoder")
    ap.add_argument(
        "--description",
        default="pathseg's tissue model: head on frozen features of pathseg's own small latent diffusion model, "
        "GlaS glands",
    )
    ap.add_argument("--keep-decoder", action="store_true", help="also ship the autoencoder's decoder (unused)")
    args = ap.parse_args(argv)
    model = TissueModel.from_pretrained(args.tissue)
    if not args.keep_decoder:
        model.backbone.drop_decoder()
    model.config["name"] = args.name
    model.config["description"] = args.description
    folder = model.save_pretrained(WEIGHTS / args.name, dtype=torch.float16, share_encoder=args.share_encoder or None)
    size = (folder / "model.safetensors").stat().st_size / 2**20
    print(f"{folder}: {size:.1f} MB")
    if size > LIMIT_MB:
        raise SystemExit(f"{size:.1f} MB exceeds the {LIMIT_MB:g} MB limit for a bundled tissue model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
