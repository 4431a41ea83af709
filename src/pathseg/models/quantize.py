"""Int8 inference of a compact nucleus model's automatic path: the image encoder and the AIS decoder's features run
as 8-bit integer convolutions (PyTorch's x86 / fbgemm kernels), the decoder's last 1x1 convolution and sigmoid in
float32.

Weights are quantized per output channel from the float weights whenever the network is built; activations need
ranges observed on real images (**calibration**), which are saved beside the model (config ``ais_int8`` names the
file and the fingerprint of the weights they were observed for) so that the network can be rebuilt anywhere without
the images. ``pathseg models int8 MODEL IMAGES... -o OUT`` writes such a model folder.

The bundled model's automatic path runs 1.40x faster end to end this way (14 MoNuSeg test images, ``python
benchmarks/int8_speed.py``), with MoNuSeg validation mSA + AJI + PQ 1.4485 against 1.4483 in float32. Where the
kernels are missing (a non-x86 CPU, a PyTorch without ``torch.ao.quantization``) the model runs in float32 and says
so once.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pathseg.errors import PathsegError
from pathseg.progress import ProgressCallback

#: the config value of ``ais_precision`` that asks for int8, and the file name ``pathseg models int8`` writes
INT8 = "int8"
PRECISIONS = ("float32", INT8)
QPARAMS_NAME = "ais_int8.safetensors"


def int8_unavailable() -> str | None:
    """None when this PyTorch can run the int8 network here, else why not (one line)."""
    if "x86" not in torch.backends.quantized.supported_engines:
        return "PyTorch has no x86 quantized kernels on this machine"
    try:
        importlib.import_module("torch.ao.quantization.quantize_fx")
    except ImportError:  # pragma: no cover - removed in some future PyTorch
        return f"PyTorch {torch.__version__} has no torch.ao.quantization"
    return None


def weights_fingerprint(modules: Iterable[nn.Module]) -> str:
    """sha256 (hex) of the float32 values and names of every parameter and buffer of ``modules``: what calibrated
    activation ranges belong to."""
    digest = hashlib.sha256()
    for i, module in enumerate(modules):
        for name, t in sorted(module.state_dict().items()):
            if "num_batches_tracked" in name:
                continue
            digest.update(f"{i}.{name}:{tuple(t.shape)}".encode())
            digest.update(t.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Features(nn.Module):
    """Normalised image (B, 3, H, W) -> the AIS decoder's last features (the part that runs in int8)."""

    def __init__(self, encoder: nn.Module, ais: nn.Module) -> None:
        super().__init__()
        self.encoder, self.ais = encoder, ais

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ais.features(*self.encoder.forward_features(x))


def _qconfig_mapping(calibrating: bool):
    """PyTorch's x86 default (histogram observers) to calibrate; to rebuild from stored ranges, the same with min/max
    observers, which give the same network (every range is replaced) and build ~0.2 s faster."""
    from torch.ao.quantization import MinMaxObserver, QConfig, get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping("x86")
    if calibrating:
        return mapping
    default = mapping.global_qconfig
    cheap = QConfig(activation=MinMaxObserver.with_args(reduce_range=True), weight=default.weight)
    mapping.set_global(cheap)
    for kind, qconfig in list(mapping.object_type_qconfigs.items()):
        if qconfig is not None and qconfig.activation is default.activation:
            mapping.set_object_type(kind, cheap)
    return mapping


def _observed(encoder: nn.Module, ais: nn.Module, calibrating: bool = True) -> nn.Module:
    """The features network (from BatchNorm-folded copies) with observers that record activation ranges."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = "x86"  # process-wide: the quantized kernels read it when they run
    net = _Features(copy.deepcopy(encoder), copy.deepcopy(ais)).eval().to(memory_format=torch.contiguous_format)
    from torch.fx import config as fx_config

    traces = getattr(fx_config, "do_not_emit_stack_traces", None)  # not in every PyTorch
    if traces is not None:
        fx_config.do_not_emit_stack_traces = True  # symbolising them cost ~1.5 s the first time
    try:
        with warnings.catch_warnings():  # the FX workflow's deprecation and observer notices; its kernels are current
            warnings.simplefilter("ignore")
            return prepare_fx(net, _qconfig_mapping(calibrating), (torch.zeros(1, 3, 32, 32),))
    finally:
        if traces is not None:
            fx_config.do_not_emit_stack_traces = traces


def _converted(observed: nn.Module) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(observed)


def _is_qparam(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return last in ("scale", "zero_point") or last.endswith(("_scale_0", "_zero_point_0"))


class Calibration:
    """Observe activation ranges of the folded ``encoder`` + ``ais`` on normalised inputs: call it on each tile
    (it returns the features, so the automatic path runs on), then :meth:`qparams`."""

    def __init__(self, encoder: nn.Module, ais: nn.Module) -> None:
        self.observed = _observed(encoder, ais)
        self.seen = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += 1
        return self.observed(x.contiguous())

    def qparams(self) -> dict[str, torch.Tensor]:
        """The activation scales and zero points (0-d tensors by the converted network's names)."""
        if not self.seen:
            raise ValueError("calibration saw no image")
        state = _converted(self.observed).state_dict()
        return {k: v.detach().clone() for k, v in state.items() if _is_qparam(k) and isinstance(v, torch.Tensor)}


def build_int8(encoder: nn.Module, ais: nn.Module, qparams: dict[str, torch.Tensor]) -> nn.Module:
    """The int8 features network of the folded ``encoder`` + ``ais`` with the calibrated ``qparams``; ValueError when
    they do not fit its layers (calibrated with another architecture or PyTorch version)."""
    observed = _observed(encoder, ais, calibrating=False)
    with torch.no_grad():
        observed(torch.zeros(1, 3, 32, 32))  # any range: every activation's is replaced below
    net = _converted(observed)
    state = net.state_dict()
    wanted = {k for k in state if _is_qparam(k)}
    if wanted != set(qparams):
        missing, extra = sorted(wanted - set(qparams)), sorted(set(qparams) - wanted)
        raise ValueError(f"int8 ranges do not fit this network (missing {missing[:2]}, unexpected {extra[:2]})")
    state.update({k: v.to(state[k].dtype).reshape(state[k].shape) for k, v in qparams.items()})
    net.load_state_dict(state)
    return net.eval()


def int8_network(
    parts: tuple[nn.Module, nn.Module],
    folded: tuple[nn.Module, nn.Module],
    qparams: dict[str, torch.Tensor] | None,
    weights_sha256: str | None,
) -> tuple[nn.Module | None, str | None]:
    """(network, None) for a model's ``parts`` (encoder, AIS decoder; ``folded`` their BatchNorm-folded copies) and
    its calibrated ``qparams`` taken for weights of fingerprint ``weights_sha256``; else (None, why not)."""
    why = int8_unavailable()
    if why is None and qparams is None:
        why = f"it has no calibrated ranges ({QPARAMS_NAME}; `pathseg models int8` writes them)"
    elif why is None and weights_sha256 != weights_fingerprint(parts):
        why = "its ranges were calibrated for other weights (recalibrate with `pathseg models int8`)"
    if why is not None:
        return None, why
    try:
        return build_int8(*folded, qparams), None
    except ValueError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - another PyTorch's FX workflow: float32 is always a correct answer
        return None, f"this PyTorch ({torch.__version__}) could not build it: {type(exc).__name__}: {exc}"


def cached_int8(
    cache: tuple | None,
    parts: tuple[nn.Module, nn.Module],
    folded: tuple[nn.Module, nn.Module],
    qparams: dict[str, torch.Tensor] | None,
    weights_sha256: str | None,
    fallback: str,
) -> tuple:
    """(folded encoder, folded decoder, int8 network or None): ``cache`` when it was built for these ``folded``
    modules (they are refolded on any weight change, so they key it), else :func:`int8_network` built anew, the reason
    it could not be logged once after ``fallback`` (e.g. "model 'x' runs in float32, not int8")."""
    if cache is not None and cache[0] is folded[0] and cache[1] is folded[1]:
        return cache
    with torch.inference_mode(False):
        net, why = int8_network(parts, folded, qparams, weights_sha256)
    if why is not None:
        logging.getLogger("pathseg").warning("%s: %s", fallback, why)
    return (*folded, net)  # holding the keys: their identities cannot be reused meanwhile


def ranges_to_save(
    config: dict,
    precision_key: str,
    info_key: str,
    ranges: dict[str, torch.Tensor] | None,
    parts: tuple[nn.Module, nn.Module],
) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """A model's ``config`` to save and the int8 ``ranges`` to save with it: the ranges and the config's
    ``info_key`` / ``precision_key`` only while the ranges still belong to ``parts``' weights (their fingerprint in
    ``config[info_key]``); a retrained encoder or decoder drops them."""
    saved = {k: v for k, v in config.items() if k not in (precision_key, info_key)}
    info = config.get(info_key) or {}
    if ranges is None or None in parts or info.get("weights_sha256") != weights_fingerprint(parts):
        return saved, None
    saved[info_key] = info
    if config.get(precision_key) == INT8:
        saved[precision_key] = INT8
    return saved, ranges


def calibrate(
    model,
    images: Iterable[tuple[np.ndarray, float]],
    total: int | None = None,
    progress: ProgressCallback | None = None,
    classes: bool = False,
) -> dict[str, torch.Tensor]:
    """Activation ranges of ``model``'s automatic-path network (a compact :class:`SamNucleusModel`; with
    ``classes``, of its class path's: :mod:`pathseg.models.class_int8`) observed on ``images``, pairs of (RGB uint8
    array, pixel size in µm/px) run exactly as that path runs them (``total``: how many, for ``progress``)."""
    encoder, ais, semantic = model.inference_nets()
    calibration = Calibration(encoder, semantic if classes else ais)
    hook = "_class_features_hook" if classes else "_features_hook"
    setattr(model, hook, calibration)
    try:
        for i, (rgb, mpp) in enumerate(images):
            if classes:
                model.class_probabilities(rgb, mpp)
            else:
                model.initialized_segmenter(rgb, mpp)
            if progress is not None:
                progress(i + 1, total, "")
    finally:
        setattr(model, hook, None)
    return calibration.qparams()


def write_int8_folder(
    source: Path,
    out: Path,
    qparams: dict[str, torch.Tensor],
    info: dict,
    class_ranges: tuple[dict[str, torch.Tensor], dict] | None = None,
) -> Path:
    """A new model folder ``out``: the files of model folder ``source`` as they are, plus the int8 ranges
    (``QPARAMS_NAME``), config ``ais_precision`` / ``ais_int8`` (``info``) and ``_int8`` after its name; with
    ``class_ranges`` (ranges, info) also the class path's (:mod:`pathseg.models.class_int8`). Written beside ``out``
    and renamed into place, so an interrupted run leaves no half folder."""
    from pathseg.models.class_int8 import CLASS_QPARAMS_NAME
    from pathseg.models.folder import read_config, update_config, write_weights

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PathsegError(f"-o {out}: exists and is not an empty folder; choose a new one")
    tmp = out.absolute().parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a run of this process id that was killed
    tmp.mkdir(parents=True)
    try:
        for f in sorted(source.iterdir()):
            if f.is_file() and f.name not in (QPARAMS_NAME, CLASS_QPARAMS_NAME) and not f.name.startswith("."):
                shutil.copy2(f, tmp / f.name)
        write_weights(tmp / QPARAMS_NAME, qparams)
        name = str(read_config(tmp).get("name") or source.name)
        name = name if name.endswith("_int8") else f"{name}_int8"  # outputs and reports tell the copies apart
        update = {"name": name, "ais_precision": INT8, "ais_int8": info}
        if class_ranges is not None:
            write_weights(tmp / CLASS_QPARAMS_NAME, class_ranges[0])
            update.update(class_precision=INT8, class_int8=class_ranges[1])
        update_config(tmp, update)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
