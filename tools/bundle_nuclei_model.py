"""Assemble the bundled nucleus model from training runs: the nuclei model (with its tuned AIS thresholds) plus,
optionally, the class decoder of a ``--decoder-only`` class run on the same encoder; weights stored as float16
safetensors in ``src/pathseg/weights/<name>/``.

    python tools/bundle_nuclei_model.py --nuclei RUN/best [--classes CLASS_RUN/best] [--name pathseg_nuclei_cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pathseg.models.nucleus_sam import SamNucleusModel

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "pathseg" / "weights"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nuclei", type=Path, required=True, help="nuclei model folder (e.g. RUN/best)")
    ap.add_argument("--classes", type=Path, default=None, help="class model folder trained with --decoder-only")
    ap.add_argument("--name", default="pathseg_nuclei_cpu")
    ap.add_argument("--description", default="pathseg's compact CPU nucleus model (SAM family), trained on MoNuSeg")
    args = ap.parse_args(argv)
    model = SamNucleusModel.from_pretrained(args.nuclei)
    if args.classes is not None:
        cls = SamNucleusModel.from_pretrained(args.classes)
        ours, theirs = model.state_dict(), cls.state_dict()
        shared = [k for k in ours if not k.startswith("semantic.")]
        if any(not torch.equal(ours[k], theirs[k]) for k in shared):
            raise SystemExit("the class model's encoder / nuclei decoders differ: train it with --decoder-only --init")
        model.semantic = cls.semantic
        model.config["semantic_decoder"] = cls.config["semantic_decoder"]
        model.config["semantic_classes"] = cls.config["semantic_classes"]
        args.description += " + nucleus classes (CoNSeP)"
    model.config["name"] = args.name
    model.config["task"] = "nuclei"
    model.config["description"] = args.description
    folder = model.save_pretrained(WEIGHTS / args.name, dtype=torch.float16)
    size = (folder / "model.safetensors").stat().st_size / 2**20
    print(f"{folder}: {size:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
