"""Assemble the bundled nucleus model from training runs: the nuclei model (with its tuned AIS thresholds) plus,
optionally, the class decoder of a ``--decoder-only`` class run on the same encoder; weights stored as float16
safetensors in ``src/pathseg/weights/<name>/``.

    python tools/bundle_nuclei_model.py --nuclei RUN/best [--classes CLASS_RUN/best] [--name pathseg_nuclei_cpu]

``--add-refiner REFINER_RUN/best`` instead adds a prompt-mask refiner (trained with ``pathseg train nuclei-refiner
--init <name>``) to the bundled model as a small add-on file ``refiner.safetensors``, leaving ``model.safetensors``
untouched (every copy of it stays in git history). With ``--keep-for-corrections`` the refiner it replaces stays, as
``correction_refiner.safetensors``, the refiner of corrective prompts (those feeding back an earlier mask). With
``--for-boxes`` the run's refiner (``train nuclei-refiner --prompts box``) is added as ``box_refiner.safetensors``,
the refiner of box prompts alone; the bundled refiner keeps point prompts.

``--replace-ais AIS_RUN/best`` likewise ships an AIS decoder retrained on the bundled model's frozen encoder
(``pathseg train nuclei --init <name> --decoder-only --model-mpp M``, thresholds then tuned with
``benchmarks/tune_ais.py --run AIS_RUN --write``) as ``ais.safetensors``, which replaces the main file's AIS decoder
on loading, with the run's ``ais_mpp`` and ``ais_params``.

``--replace-mask MASK_RUN/best`` ships the prompt path's mask decoder + prompt encoder retrained on the frozen bundled
model (``pathseg train nuclei --init <name> --decoder-only mask --model-mpp M``) as ``mask.safetensors`` the same way,
with the run's ``prompt_mpp``.
``--fold`` writes the bundled model's replacement files into ``model.safetensors`` (bit for bit: they are float16 as
the main file) and removes them, so the package ships one copy of each tensor (the folder must stay <= 20 MB).

``--int8 KEY_PART...`` rewrites the main file with every floating matrix whose key contains one of the parts stored
as int8 rows (one float32 scale per row, ``pathseg.models.folder.quantize_rows``), e.g. ``--int8 mlp.lin`` for the
mask decoder's transformer MLPs (2.1 M of the model's 10.2 M weights, used by prompts only). Run it last: ``--nuclei``
writes every tensor as float16 again (``--add-refiner``, ``--replace-*`` and ``--fold`` keep the int8 rows).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pathseg.models.nucleus_sam import SamNucleusModel

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "pathseg" / "weights"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nuclei", type=Path, default=None, help="nuclei model folder (e.g. RUN/best)")
    ap.add_argument("--add-refiner", type=Path, default=None, help="refiner run folder to add to the bundled model")
    ap.add_argument(
        "--keep-for-corrections",
        action="store_true",
        help="with --add-refiner: the bundled refiner stays as the refiner of corrective prompts",
    )
    ap.add_argument(
        "--for-boxes",
        action="store_true",
        help="with --add-refiner: the run's refiner (train nuclei-refiner --prompts box) answers box prompts alone "
        "(box_refiner.safetensors); the bundled refiner keeps the other first prompts",
    )
    ap.add_argument("--replace-ais", type=Path, default=None, help="AIS decoder run folder (--decoder-only) to ship")
    ap.add_argument("--replace-mask", type=Path, default=None, help="prompt-path run folder (--decoder-only mask)")
    ap.add_argument("--fold", action="store_true", help="fold the bundled model's replace_weights into its main file")
    ap.add_argument("--int8", nargs="+", default=None, metavar="KEY_PART", help="store these matrices as int8 rows")
    ap.add_argument("--classes", type=Path, default=None, help="class model folder trained with --decoder-only")
    ap.add_argument("--name", default="pathseg_nuclei_cpu")
    ap.add_argument("--description", default="pathseg's compact CPU nucleus model (SAM family), trained on MoNuSeg")
    args = ap.parse_args(argv)
    if args.add_refiner is not None and args.for_boxes:
        return add_box_refiner(args.add_refiner, WEIGHTS / args.name)
    if args.add_refiner is not None:
        return add_refiner(args.add_refiner, WEIGHTS / args.name, args.keep_for_corrections)
    if args.replace_ais is not None:
        return replace_ais(args.replace_ais, WEIGHTS / args.name)
    if args.replace_mask is not None:
        return replace_mask(args.replace_mask, WEIGHTS / args.name)
    if args.fold:
        return fold(WEIGHTS / args.name)
    if args.int8:
        return store_int8(WEIGHTS / args.name, args.int8)
    if args.nuclei is None:
        ap.error("give --nuclei (or --add-refiner)")
    model = SamNucleusModel.from_pretrained(args.nuclei)
    if args.classes is not None:
        cls = SamNucleusModel.from_pretrained(args.classes)
        ours, theirs = model.state_dict(), cls.state_dict()
        shared = [k for k in ours if not k.startswith(("semantic.", "refiner."))]  # neither feeds the other
        if any(not torch.equal(ours[k], theirs[k]) for k in shared):
            raise SystemExit("the class model's encoder / nuclei decoders differ: train it with --decoder-only --init")
        model.semantic = cls.semantic
        model.config["semantic_decoder"] = cls.config["semantic_decoder"]
        model.config["semantic_classes"] = cls.config["semantic_classes"]
        model.config["class_mpp"] = cls.class_mpp  # the pixel size the class decoder was trained at
        args.description += " + nucleus classes (CoNSeP)"
    model.config["name"] = args.name
    model.config["task"] = "nuclei"
    model.config["description"] = args.description
    folder = model.save_pretrained(WEIGHTS / args.name, dtype=torch.float16)
    size = (folder / "model.safetensors").stat().st_size / 2**20
    print(f"{folder}: {size:.1f} MB")
    return 0


def _part_file(
    run: Path, folder: Path, prefix: str | tuple[str, ...], filename: str, dtype: torch.dtype | None
) -> SamNucleusModel:
    """Write the ``prefix`` tensors of ``run``'s model to ``folder/filename``; every other tensor must equal the
    bundled model's (the part was trained on it). Returns the run's model."""
    from pathseg.models.folder import write_weights

    bundled, trained = SamNucleusModel.from_pretrained(folder), SamNucleusModel.from_pretrained(run)
    ours, theirs = bundled.state_dict(), trained.state_dict()
    if not any(k.startswith(prefix) for k in theirs):
        raise SystemExit(f"{run}: the model has no {prefix} part")
    if any(k not in theirs or not torch.equal(v, theirs[k]) for k, v in ours.items() if not k.startswith(prefix)):
        raise SystemExit(f"{run}: trained on other weights than {folder}; use --init {folder.name}")
    tensors = {  # BatchNorm counters are not saved (as in save_pretrained)
        k: (v if dtype is None else v.to(dtype)).contiguous()
        for k, v in theirs.items()
        if k.startswith(prefix) and not k.endswith("num_batches_tracked")
    }
    write_weights(folder / filename, tensors)
    print(f"{folder / filename}: {(folder / filename).stat().st_size / 2**10:.0f} kB")
    return trained


def add_refiner(run: Path, folder: Path, keep_for_corrections: bool = False) -> int:
    """Write ``run``'s refiner beside the bundled model in ``folder`` (its other weights must be the bundled ones);
    with ``keep_for_corrections`` the bundled refiner becomes the correction refiner."""
    from safetensors.torch import load_file

    from pathseg.models.folder import read_config, update_config, write_weights

    config = read_config(folder)
    extra = _add_ons(config, "refiner.safetensors")
    entries = {}
    if keep_for_corrections:
        if not config.get("mask_refiner") or config.get("correction_refiner"):
            raise SystemExit(f"{folder}: --keep-for-corrections needs a refiner and no correction refiner yet")
        kept = {"correction_" + k: v for k, v in load_file(str(folder / "refiner.safetensors")).items()}
        extra, entries = [*extra, "correction_refiner.safetensors"], {"correction_refiner": config["mask_refiner"]}
    trained = _part_file(run, folder, "refiner.", "refiner.safetensors", None)
    if keep_for_corrections:
        write_weights(folder / "correction_refiner.safetensors", kept)
    update_config(folder, {"mask_refiner": trained.config["mask_refiner"], **entries, "extra_weights": extra})
    return 0


def _add_ons(config: dict, name: str) -> list[str]:
    """The folder's ``extra_weights`` with ``name`` added (the other add-on files stay listed, each once)."""
    return list(dict.fromkeys([*config.get("extra_weights", []), name]))


def add_box_refiner(run: Path, folder: Path) -> int:
    """Write ``run``'s refiner (``train nuclei-refiner --init <name> --prompts box``) beside the bundled model in
    ``folder`` as its box refiner; it reads the bundled refiner's guide, so its feature projection must be the
    bundled one's (that training keeps it frozen) and is not stored again."""
    from safetensors.torch import load_file

    from pathseg.models.folder import read_config, update_config, write_weights

    config = read_config(folder)
    if not config.get("mask_refiner") or config.get("box_refiner"):
        raise SystemExit(f"{folder}: --for-boxes needs a refiner and no box refiner yet")
    file = folder / "box_refiner.safetensors"
    trained = _part_file(run, folder, "refiner.", file.name, None)
    tensors = load_file(str(file))
    project = {k: v for k, v in load_file(str(folder / "refiner.safetensors")).items() if ".project." in k}
    if any(not torch.equal(v, tensors[k]) for k, v in project.items()):
        file.unlink()
        raise SystemExit(f"{run}: its refiner's feature projection differs from the bundled one; use --prompts box")
    write_weights(file, {"box_" + k: v for k, v in tensors.items() if ".project." not in k})
    update_config(folder, {"box_refiner": trained.config["mask_refiner"], "extra_weights": _add_ons(config, file.name)})
    return 0


def replace_ais(run: Path, folder: Path) -> int:
    """Ship ``run``'s AIS decoder (trained with --decoder-only on the bundled encoder) as ``ais.safetensors``."""
    from pathseg.models.folder import update_config

    trained = _part_file(run, folder, "ais.", "ais.safetensors", torch.float16)
    entries = {k: trained.config[k] for k in ("ais_mpp", "ais_params")}
    update_config(folder, {**entries, "replace_weights": _replacements(folder, "ais.safetensors")})
    print(f"ais_mpp {entries['ais_mpp']}, ais_params {entries['ais_params']}")
    return 0


def _replacements(folder: Path, name: str) -> list[str]:
    """The folder's ``replace_weights`` with ``name`` added (each replacement file listed once)."""
    from pathseg.models.folder import read_config

    return [*(n for n in read_config(folder).get("replace_weights", []) if n != name), name]


def replace_mask(run: Path, folder: Path) -> int:
    """Ship ``run``'s mask decoder + prompt encoder (``--decoder-only mask`` on the bundled encoder) as
    ``mask.safetensors``."""
    from pathseg.models.folder import update_config

    trained = _part_file(run, folder, ("sam.mask_decoder.", "sam.prompt_encoder."), "mask.safetensors", torch.float16)
    update_config(
        folder, {"prompt_mpp": trained.prompt_mpp, "replace_weights": _replacements(folder, "mask.safetensors")}
    )
    print(f"prompt_mpp {trained.prompt_mpp}")
    return 0


def fold(folder: Path) -> int:
    """Write the ``replace_weights`` files of ``folder`` into its main file and delete them; the loaded model is
    unchanged (the same tensors, same dtype)."""
    from safetensors.torch import load_file

    from pathseg.io.atomic import atomic_open
    from pathseg.models.folder import CONFIG_NAME, WEIGHTS_NAME, read_config, write_weights

    config = read_config(folder)
    names = config.pop("replace_weights", [])
    if not names:
        raise SystemExit(f"{folder}: nothing to fold (no replace_weights)")
    before = SamNucleusModel.from_pretrained(folder).state_dict()
    state = load_file(str(folder / WEIGHTS_NAME))
    for name in names:
        part = load_file(str(folder / name))
        bad = [k for k, v in part.items() if k not in state or state[k].shape != v.shape or state[k].dtype != v.dtype]
        if bad:
            raise SystemExit(f"{folder / name}: {bad[0]!r} does not replace a main-file tensor of its shape and dtype")
        state.update(part)
    write_weights(folder / WEIGHTS_NAME, state)
    with atomic_open(folder / CONFIG_NAME, "w") as f:
        json.dump(config, f, indent=2)
    for name in names:
        (folder / name).unlink()
    after = SamNucleusModel.from_pretrained(folder).state_dict()
    if before.keys() != after.keys() or not all(torch.equal(before[k], after[k]) for k in before):
        raise SystemExit(f"{folder}: the folded model differs from the one before folding")
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"{folder}: folded {', '.join(names)}; {size} bytes ({size / 2**20:.2f} MiB) in all")
    return 0


def store_int8(folder: Path, parts: list[str]) -> int:
    """Rewrite the main file of ``folder`` with the floating matrices whose keys contain one of ``parts`` as int8
    rows; prints what changed and the folder's size."""
    from safetensors.torch import load_file

    from pathseg.models.folder import INT8_SCALE, WEIGHTS_NAME, dequantize, quantize_rows, write_weights

    state = load_file(str(folder / WEIGHTS_NAME))
    chosen = [k for k, v in state.items() if v.is_floating_point() and v.ndim >= 2 and any(p in k for p in parts)]
    if not chosen:
        raise SystemExit(f"{folder}: no floating matrix has a key containing {parts}")
    for k in chosen:
        q, scale = quantize_rows(state[k])
        err = (dequantize({k: q, k + INT8_SCALE: scale})[k] - state[k].float()).abs().max().item()
        top = state[k].abs().max().item()
        print(f"{k}: {tuple(q.shape)} as int8 rows, max |change| {err:.2e} (largest |value| {top:.3f})")
        state[k], state[k + INT8_SCALE] = q, scale
    write_weights(folder / WEIGHTS_NAME, state)
    SamNucleusModel.from_pretrained(folder)  # loads
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"{folder}: {len(chosen)} matrices as int8; {size} bytes ({size / 2**20:.2f} MiB) in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
