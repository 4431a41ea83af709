"""Int8 inference of a compact nucleus model's class path: the image encoder and the class decoder's features run as
8-bit integer convolutions (:mod:`pathseg.models.quantize`, the same x86 / fbgemm workflow as the automatic path),
the decoder's last 1x1 convolution and the softmax in float32.

Config ``class_precision`` (``float32`` default, ``int8``) and ``class_int8`` (the fingerprint of the weights the
ranges were observed for, as ``ais_int8``); the ranges live in ``class_int8.safetensors`` beside the model.
``pathseg models int8`` calibrates them with the automatic path's
(:func:`pathseg.models.quantize.calibrate` with ``classes=True``). On the bundled model the class path runs 1.47x
faster (demo slide), CoNSeP train class accuracy 0.798 against 0.799 in float32 (``benchmarks/NUCLEI.md``, session
52).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pathseg.errors import PathsegError
from pathseg.models.quantize import INT8, PRECISIONS, cached_int8, int8_unavailable, weights_fingerprint

CLASS_QPARAMS_NAME = "class_int8.safetensors"


def class_precision(model) -> str:
    """``float32`` (default) or ``int8``: config ``class_precision`` of a :class:`SamNucleusModel`."""
    value = model.config.get("class_precision", "float32")
    if value not in PRECISIONS:
        msg = f"class_precision must be one of {', '.join(PRECISIONS)}, got {value!r}"
        raise PathsegError(f"model {model.name!r}: {msg}")
    return value


def set_class_precision(model, precision: str) -> None:
    """Run ``model``'s class path in ``precision``; int8 is refused where it cannot run (no ranges, no kernels)."""
    if precision not in PRECISIONS:
        raise PathsegError(f"class precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == INT8:
        why = int8_unavailable()
        if why is None and model.class_int8_qparams is None:
            why = f"model {model.name!r} has no class int8 ranges (`pathseg models int8` writes them)"
        if why is not None:
            raise PathsegError(f"int8: {why}")
    model.config["class_precision"] = precision


def _parts(model) -> tuple[nn.Module, nn.Module]:
    return model.sam.image_encoder, model.semantic


def class_int8_info(model, images: int) -> dict:
    """Config ``class_int8`` for ranges calibrated on ``images`` images with ``model``'s current weights."""
    return {"weights_sha256": weights_fingerprint(_parts(model)), "images": images, "torch": torch.__version__}


def set_class_int8(model, qparams: dict[str, torch.Tensor], images: int) -> None:
    """Run ``model``'s class path in int8 with ranges ``qparams`` calibrated on ``images`` images."""
    model.class_int8_qparams = dict(qparams)
    model.config.update(class_precision=INT8, class_int8=class_int8_info(model, images))
    model._class_int8 = None


def class_int8_network(model, encoder: nn.Module, semantic: nn.Module) -> nn.Module | None:
    """The int8 network from normalised input to the class decoder's last features for the folded ``encoder`` /
    ``semantic`` (:meth:`SamNucleusModel.inference_nets`, which key the cache), or None: float32 (not asked for, in
    training, unfolded or not on the CPU, or it cannot be built here: then why is logged once)."""
    if class_precision(model) != INT8 or model.training or not model.is_compact or model.semantic is None:
        return None
    if encoder is model.sam.image_encoder or next(model.semantic.parameters()).device.type != "cpu":
        return None
    sha = (model.config.get("class_int8") or {}).get("weights_sha256")
    fallback = f"model {model.name!r} classifies in float32, not int8"
    model._class_int8 = cached_int8(
        model._class_int8, _parts(model), (encoder, semantic), model.class_int8_qparams, sha, fallback
    )
    return model._class_int8[2]


def read_ranges(folder: Path) -> dict[str, torch.Tensor] | None:
    """The class ranges stored in model folder ``folder``, or None."""
    from pathseg.models.sam.checkpoint import read_state

    path = Path(folder) / CLASS_QPARAMS_NAME
    return read_state(path) if path.is_file() else None
