"""Assemble the bundled tissue model from a tissue training run: backbone + head stored as float16 safetensors in
``src/pathseg/weights/<name>/``; the conditioning encoder is referenced from the bundled nucleus model (by name and
weights digest) instead of being stored twice.

    python tools/bundle_tissue_model.py --tissue RUN/best [--name pathseg_tissue] [--share-encoder pathseg_nuclei_cpu]

The autoencoder's decoder is left out (features only encode; 4.1 MB in float16) unless ``--keep-decoder``.

``--own-encoder`` instead gives the bundled tissue model its own copy of the conditioning encoder it references, as an
add-on file ``encoder.safetensors`` (``model.safetensors`` untouched, outputs unchanged), so that the nucleus model
it came from can be retrained. Run it before the nucleus model changes: the copy is checked against the digest.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from pathseg.tissue.model import TissueModel

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "pathseg" / "weights"
LIMIT_MB = 30.0  # MiB, all .safetensors files of the folder
ENCODER_FILE = "encoder.safetensors"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tissue", type=Path, default=None, help="tissue model folder (e.g. RUN/best)")
    ap.add_argument("--name", default="pathseg_tissue")
    ap.add_argument("--share-encoder", default="pathseg_nuclei_cpu", help="nucleus model holding the encoder")
    ap.add_argument(
        "--description",
        default="pathseg's tissue model: head on frozen features of pathseg's own small latent diffusion model, "
        "GlaS glands",
    )
    ap.add_argument("--keep-decoder", action="store_true", help="also ship the autoencoder's decoder (unused)")
    ap.add_argument("--own-encoder", action="store_true", help="store the referenced conditioning encoder beside it")
    args = ap.parse_args(argv)
    if args.own_encoder:
        return own_encoder(WEIGHTS / args.name)
    if args.tissue is None:
        ap.error("--tissue is required (unless --own-encoder)")
    model = TissueModel.from_pretrained(args.tissue)
    if not args.keep_decoder:
        model.backbone.drop_decoder()
    model.config["name"] = args.name
    model.config["description"] = args.description
    folder = model.save_pretrained(WEIGHTS / args.name, dtype=torch.float16, share_encoder=args.share_encoder or None)
    return check_size(folder)


def check_size(folder: Path) -> int:
    """Print the folder's weights size (MiB) and stop if it exceeds the limit."""
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20
    print(f"{folder}: {size:.1f} MB")
    if size > LIMIT_MB:
        raise SystemExit(f"{size:.1f} MB exceeds the {LIMIT_MB:g} MB limit for a bundled tissue model")
    return 0


def own_encoder(folder: Path) -> int:
    """Write the conditioning encoder ``folder``'s config references (``weights_from``) into ``encoder.safetensors``
    beside it (float16, bit for bit: the source is float16) and list that file in ``extra_weights``."""
    from pathseg.models.diffusion.backbone import shared_encoder_state
    from pathseg.models.folder import read_config, update_config, write_weights

    config = read_config(folder, "tissue model")
    backbone = copy.deepcopy(config["backbone"])
    spec = backbone.get("encoder", {}).pop("weights_from", None)
    if not spec:
        raise SystemExit(f"{folder}: holds its conditioning encoder already (no weights_from in its config)")
    source = shared_encoder_state(spec)
    state = {"backbone.encoder." + k: v.half().contiguous() for k, v in source.items()}
    if any(not torch.equal(state["backbone.encoder." + k].float(), v) for k, v in source.items()):
        raise SystemExit(f"{spec['model']!r}'s encoder is not float16-exact: it cannot be stored in float16")
    write_weights(folder / ENCODER_FILE, state)
    extra = [*config.get("extra_weights", []), ENCODER_FILE]
    update_config(folder, {"backbone": backbone, "extra_weights": extra}, "tissue model")
    return check_size(folder)


if __name__ == "__main__":
    sys.exit(main())
