"""Assemble the bundled nucleus model from training runs: the nuclei model (with its tuned AIS thresholds) plus,
optionally, the class decoder of a ``--decoder-only`` class run on the same encoder; weights stored as float16
safetensors in ``src/pathseg/weights/<name>/``.

    python tools/bundle_nuclei_model.py --nuclei RUN/best [--classes CLASS_RUN/best] [--name pathseg_nuclei_cpu]

``--add-refiner REFINER_RUN/best`` instead adds a prompt-mask refiner (trained with ``pathseg train nuclei-refiner
--init <name>``) to the bundled model as a small add-on file ``refiner.safetensors``, leaving ``model.safetensors``
untouched (every copy of it stays in git history).
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
    ap.add_argument("--nuclei", type=Path, default=None, help="nuclei model folder (e.g. RUN/best)")
    ap.add_argument("--add-refiner", type=Path, default=None, help="refiner run folder to add to the bundled model")
    ap.add_argument("--classes", type=Path, default=None, help="class model folder trained with --decoder-only")
    ap.add_argument("--name", default="pathseg_nuclei_cpu")
    ap.add_argument("--description", default="pathseg's compact CPU nucleus model (SAM family), trained on MoNuSeg")
    args = ap.parse_args(argv)
    if args.add_refiner is not None:
        return add_refiner(args.add_refiner, WEIGHTS / args.name)
    if args.nuclei is None:
        ap.error("give --nuclei (or --add-refiner)")
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


def add_refiner(run: Path, folder: Path) -> int:
    """Write ``run``'s refiner beside the bundled model in ``folder`` (its other weights must be the bundled ones)."""
    from safetensors.torch import save_file

    from pathseg.io.atomic import atomic_path
    from pathseg.models.folder import update_config

    bundled, trained = SamNucleusModel.from_pretrained(folder), SamNucleusModel.from_pretrained(run)
    if trained.refiner is None:
        raise SystemExit(f"{run}: the model has no refiner")
    ours, theirs = bundled.state_dict(), trained.state_dict()
    if any(not torch.equal(v, theirs[k]) for k, v in ours.items() if not k.startswith("refiner.")):
        raise SystemExit(f"{run}: trained on other weights than {folder}; use --init {folder.name}")
    tensors = {k: v.contiguous() for k, v in theirs.items() if k.startswith("refiner.")}
    with atomic_path(folder / "refiner.safetensors") as tmp:
        save_file(tensors, str(tmp))
    update_config(folder, {"mask_refiner": trained.config["mask_refiner"], "extra_weights": ["refiner.safetensors"]})
    print(f"{folder / 'refiner.safetensors'}: {(folder / 'refiner.safetensors').stat().st_size / 2**10:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
