"""A SAM-family nucleus model: SAM (any image encoder) + the AIS decoder (+ an optional semantic decoder).

Saved as a folder (or two files) in pathseg's format: ``config.json`` + ``model.safetensors`` whose keys are
``sam.*``, ``ais.*`` (and ``semantic.*``). Official SAM / PathoSAM checkpoints load through
:func:`from_checkpoint`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pathseg.errors import PathsegError
from pathseg.models import class_int8
from pathseg.models.class_int8 import class_int8_network
from pathseg.models.decoders import EmbeddingDecoder
from pathseg.models.device import module_device
from pathseg.models.folder import WEIGHTS_NAME, read_folder, save_folder, write_weights
from pathseg.models.fuse import fold_batchnorm, weights_state
from pathseg.models.quantize import (
    INT8,
    PRECISIONS,
    QPARAMS_NAME,
    cached_int8,
    int8_unavailable,
    ranges_to_save,
    weights_fingerprint,
)
from pathseg.models.sam.build import SAM_SIZES, ViTConfig, build_image_encoder, build_sam_from_encoder
from pathseg.models.sam.checkpoint import load_checkpoint, load_into, read_state
from pathseg.nuclei.automatic import AISParams, AutomaticSegmenter, checked_ais_params, drop_flat_fill
from pathseg.progress import ProgressCallback
from pathseg.resize import resize_maps, resize_rgb, scaled_size, shift_maps

#: PanNuke's classes as PathoSAM's semantic decoder orders them (index 0 = background), with QuPath-style colours.
PANNUKE_CLASSES = [
    {"name": "background", "color": [0, 0, 0]},
    {"name": "neoplastic", "color": [255, 0, 0]},
    {"name": "inflammatory", "color": [0, 255, 0]},
    {"name": "connective", "color": [0, 0, 255]},
    {"name": "dead", "color": [255, 255, 0]},
    {"name": "epithelial", "color": [255, 165, 0]},
]
#: CoNSeP's classes as HoVer-Net groups them (index 0 = background).
CONSEP_CLASSES = [
    {"name": "background", "color": [0, 0, 0]},
    {"name": "other", "color": [255, 165, 0]},
    {"name": "inflammatory", "color": [0, 200, 0]},
    {"name": "epithelial", "color": [255, 0, 0]},
    {"name": "spindle-shaped", "color": [0, 0, 255]},
]
#: the image axes (y = 0, x = 1) mirrored in each view of :attr:`SamNucleusModel.ais_tta`, by view count
_FLIPS: dict[int, list[tuple[int, ...]]] = {1: [()], 2: [(), (1,)], 4: [(), (1,), (0,), (0, 1)]}

#: Named nucleus class sets for ``pathseg train nuclei-classes --preset``.
CLASS_PRESETS = {"pannuke": PANNUKE_CLASSES, "consep": CONSEP_CLASSES}


def default_config(size: str | ViTConfig = "vit_b", mpp: float = 0.25, name: str | None = None) -> dict:
    """Config of a ViT SAM (``vit_b``/``vit_l``/``vit_h`` or a :class:`ViTConfig`) with an AIS decoder.

    ``mpp`` is the pixel size (µm/px) of the tiles the model expects.
    """
    if isinstance(size, str) and size not in SAM_SIZES:
        raise PathsegError(f"unknown SAM size {size!r}; one of {', '.join(SAM_SIZES)}")
    vit = SAM_SIZES[size] if isinstance(size, str) else size
    return {
        "name": name or (f"sam_{size}" if isinstance(size, str) else "sam_custom"),
        "encoder": {"type": "vit", **vit.as_dict()},
        "img_size": vit.img_size,
        "embedding_size": vit.img_size // vit.patch_size,
        "ais_decoder": {
            "embed_dim": vit.out_chans,
            "out_channels": 3,
            "use_conv_transpose": True,
            "initial_features": 64,
        },
        "semantic_decoder": None,
        "mpp": mpp,
        "tile": 512,
        "halo": 64,
        "ais_params": AISParams().as_dict(),
    }


def compact_config(mpp: float = 0.5, name: str = "pathseg_nuclei_cpu", tile: int = 512) -> dict:
    """Config of the compact CPU model: CNN encoder (stride-16 embedding) + U-Net AIS decoder with skips."""
    from pathseg.models.compact import CompactEncoder

    enc = CompactEncoder()
    return {
        "name": name,
        "encoder": {
            "type": "compact",
            "widths": list(enc.widths),
            "blocks": [1, 1, 2, 2, 2],
            "out_chans": 256,
            "img_size": tile,
        },
        "img_size": tile,
        "embedding_size": tile // 16,
        "ais_decoder": {
            "type": "unet",
            "embed_dim": 256,
            "skip_widths": list(enc.widths[:-1]),
            "widths": [128, 64, 48, 32],
            "out_channels": 3,
        },
        "semantic_decoder": None,
        "mpp": mpp,
        "tile": tile,
        "halo": 64,
        "ais_params": AISParams().as_dict(),
    }


def _build_encoder(cfg: dict) -> nn.Module:
    kind = cfg.get("type", "vit")
    fields = {k: v for k, v in cfg.items() if k != "type"}
    if kind == "vit":
        fields["global_attn_indexes"] = tuple(fields["global_attn_indexes"])
        return build_image_encoder(ViTConfig(**fields))
    if kind == "compact":
        from pathseg.models.compact import CompactEncoder

        return CompactEncoder(tuple(fields["widths"]), tuple(fields["blocks"]), fields["out_chans"], fields["img_size"])
    raise PathsegError(f"unknown image encoder type {kind!r}")


def _build_decoder(cfg: dict, final_activation: str | None) -> nn.Module:
    fields = {k: v for k, v in cfg.items() if k != "type"}
    if cfg.get("type") == "unet":
        from pathseg.models.compact import UNetAISDecoder

        return UNetAISDecoder(
            fields["embed_dim"],
            tuple(fields["skip_widths"]),
            tuple(fields["widths"]),
            fields["out_channels"],
            final_activation=final_activation,
        )
    return EmbeddingDecoder(**fields, final_activation=final_activation)


def _build_ais(cfg: dict | None) -> nn.Module | None:
    return _build_decoder(cfg, final_activation="sigmoid") if cfg else None


def _build_refiner(cfg: dict | None) -> nn.Module | None:
    if not cfg:
        return None
    from pathseg.models.refine import MaskRefiner

    return MaskRefiner(
        int(cfg.get("width", 32)),
        tuple(cfg.get("dilations", (1, 2, 4, 8))),
        int(cfg.get("prompt_channels", 0)),
        int(cfg.get("feature_in", 0)),
        int(cfg.get("feature_channels", 0)),
    )


def _build_correction_refiner(config: dict, refiner: nn.Module | None) -> nn.Module | None:
    """The refiner of corrective prompts (config ``correction_refiner``), if any: it reads the first 6 guide channels
    (pixels and AIS maps) of the main refiner's guide, so it has no feature projection of its own."""
    cfg = config.get("correction_refiner")
    if not cfg:
        return None
    if refiner is None or cfg.get("feature_channels"):
        raise PathsegError(
            f"model {config.get('name', 'sam')!r}: a correction_refiner needs a mask_refiner and no feature channels"
        )
    return _build_refiner(cfg)


def _build_box_refiner(config: dict, refiner: nn.Module | None) -> nn.Module | None:
    """The refiner of box prompts alone (config ``box_refiner``), if any: shaped as the main refiner, it reads the
    main refiner's guide (the AIS features projected by the main refiner), so it has no projection of its own."""
    cfg = config.get("box_refiner")
    if not cfg:
        return None
    same = refiner is not None and all(
        int(cfg.get(k, 0)) == getattr(refiner, k) for k in ("feature_in", "feature_channels", "prompt_channels")
    )
    if not same:
        raise PathsegError(
            f"model {config.get('name', 'sam')!r}: a box_refiner needs a mask_refiner with the same feature and "
            "prompt channels"
        )
    box = _build_refiner(cfg)
    box.project = None
    return box


class SamNucleusModel(nn.Module):
    """SAM + AIS decoder. ``segment(rgb, mpp)`` gives nucleus labels; ``sam`` serves interactive prompts."""

    #: run inference on copies with each BatchNorm folded into its convolution (compact models; see
    #: :meth:`inference_nets`); False runs the trained modules as they are
    fold_batchnorm: bool = True

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = copy.deepcopy(config)
        self.sam = build_sam_from_encoder(
            _build_encoder(config["encoder"]),
            config["img_size"],
            config["embedding_size"],
            config["encoder"].get("out_chans", 256),
        )
        self.ais = _build_ais(config.get("ais_decoder"))
        self.refiner = _build_refiner(config.get("mask_refiner"))
        self.correction_refiner = _build_correction_refiner(config, self.refiner)
        self.box_refiner = _build_box_refiner(config, self.refiner)
        self._folded: tuple | None = None  # (weights key, folded encoder / AIS / class decoders, tensors keyed)
        self.int8_qparams: dict[str, torch.Tensor] | None = None  # calibrated activation ranges (ais_precision int8)
        self._int8: tuple | None = None  # (folded encoder, folded AIS decoder, int8 features network or None)
        self._features_hook = None  # a pathseg.models.quantize.Calibration while calibrating
        #: the class path's int8 ranges, network cache and calibration hook (:mod:`pathseg.models.class_int8`)
        self.class_int8_qparams: dict[str, torch.Tensor] | None = None
        self._class_int8: tuple | None = None
        self._class_features_hook = None
        self._slide_stain: tuple[np.ndarray, np.ndarray] | None = None  # set by fit_slide
        sem = config.get("semantic_decoder")
        self.semantic = _build_decoder(sem, final_activation=None) if sem else None

    def __getstate__(self) -> dict:
        """Pickled (e.g. scattered to Dask workers) without the inference caches: folded and int8 copies are
        rebuilt where they run."""
        state = self.__dict__.copy()
        state.update(_folded=None, _int8=None, _features_hook=None, _class_int8=None, _class_features_hook=None)
        return state

    # -- the NucleusModel interface -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.config.get("name", "sam"))

    @property
    def mpp(self) -> float:
        return float(self.config.get("mpp", 0.25))

    @property
    def ais_mpp(self) -> float:
        """Pixel size (µm/px) the network runs at for automatic segmentation (config ``ais_mpp``, default
        :attr:`mpp`). A compact model trained with scale jitter may outline nuclei better a little finer than
        its training pixel size; ``benchmarks/tune_ais.py --ais-mpp`` picks it on the validation split."""
        return float(self.config.get("ais_mpp") or self.mpp)

    @property
    def ais_params(self) -> dict[str, float]:
        """The automatic path's tuned thresholds (config ``ais_params``; :class:`AISParams` fields, ``min_size`` in
        model pixels), picked on the validation split by ``benchmarks/tune_ais.py``; a copy."""
        return dict(self.config.get("ais_params", {}))

    @property
    def prompt_mpp(self) -> float:
        """Pixel size (µm/px) the network runs at for prompts (config ``prompt_mpp``, default :attr:`mpp`), picked
        on the validation split by ``benchmarks/interactive.py --validation --prompt-mpp``."""
        return float(self.config.get("prompt_mpp") or self.mpp)

    @property
    def class_mpp(self) -> float:
        """Pixel size (µm/px) the network runs at for nucleus classes (config ``class_mpp``, default :attr:`mpp`):
        the pixel size the class decoder was trained at."""
        return float(self.config.get("class_mpp") or self.mpp)

    @property
    def network_mpp(self) -> float:
        """The finest pixel size (µm/px) any path (automatic, prompts, classes) runs the network at: an image is
        resampled to at most this resolution, which bounds the memory a run needs."""
        return min(self.mpp, self.ais_mpp, self.prompt_mpp, self.class_mpp)

    def refiner_for(self, feedback: bool, box_alone: bool = False) -> nn.Module | None:
        """The mask refiner of a prompt: with mask ``feedback`` (a corrective round), the model's
        ``correction_refiner`` when it has one; for a box alone its ``box_refiner`` when it has one; else its
        ``refiner`` (None: no refiner)."""
        if feedback and self.correction_refiner is not None:
            return self.correction_refiner
        if box_alone and not feedback and self.box_refiner is not None:
            return self.box_refiner
        return self.refiner

    @property
    def prompt_iou(self) -> str:
        """Which IoU estimate ranks a prompt's candidate masks when the model has a mask refiner: ``"refiner"``
        (its own head, the default) or ``"decoder"`` (the mask decoder's); config ``prompt_iou``, picked on the
        validation split by ``benchmarks/interactive.py --validation --prompt-iou refiner decoder``."""
        source = self.config.get("prompt_iou") or "refiner"
        if source not in ("refiner", "decoder"):
            raise PathsegError(f"model {self.name!r}: prompt_iou must be 'refiner' or 'decoder', got {source!r}")
        return source

    @property
    def box_from_ais(self) -> float | None:
        """Box prompts take the automatic segmentation's nucleus when its bounding box overlaps the box with at
        least this IoU (config ``box_from_ais``, 0 < value <= 1; default None: always the mask decoder), picked on the
        validation split by ``benchmarks/interactive.py --validation --box-from-ais``. Needs an AIS decoder."""
        value = self.config.get("box_from_ais")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise PathsegError(f"model {self.name!r}: box_from_ais must be a number in (0, 1] or null, got {value!r}")
        return float(value) if self.ais is not None else None

    @property
    def box_fit(self) -> bool:
        """Box prompts take, among the mask decoder's 3 candidates (and the :attr:`box_from_ais` nucleus), the mask
        whose bounding box best fits the box (config ``box_fit``, default False: the decoder's single mask)."""
        return bool(self.config.get("box_fit", False))

    @property
    def ais_stain(self) -> dict[str, list[float]] | None:
        """Reference LAB statistics (``{"mean", "std"}``, config ``ais_stain``) the automatic path matches each
        image's colours to before the network (:func:`pathseg.stain.reinhard`; prompts and classes see the image
        as it is); None (default): no normalisation. ``benchmarks/tune_ais.py --stain`` computes it from the
        training images and judges it on the validation split."""
        return self.config.get("ais_stain") or None

    def stain_stats(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The LAB statistics the automatic path normalises ``rgb`` (H, W, 3 uint8) from, or None without
        :attr:`ais_stain`. Pass a whole image's to :meth:`segment` for a crop of it (``stain=``)."""
        if self.ais_stain is None:
            return None
        from pathseg.stain import lab_stats

        return lab_stats(rgb)

    def fit_slide(self, samples: list[np.ndarray], mpp: float) -> None:
        """Fix the colour statistics the automatic path normalises from (models with :attr:`ais_stain`) from tissue
        samples of a whole slide (RGB uint8), so that every chunk of the slide is normalised alike; the model then
        uses them for every image it segments without ``stain=``. No effect without ``ais_stain``."""
        if self.ais_stain is None or not samples:
            return
        from pathseg.stain import lab_stats

        self._slide_stain = lab_stats(np.concatenate([s[..., :3].reshape(-1, 3) for s in samples])[:, None])

    @property
    def ais_tta(self) -> int:
        """Views the AIS maps are averaged over (config ``ais_tta``): 1 (default: none), 2 (+ the left-right
        mirror) or 4 (+ the upside-down and both mirrors); each view costs one network pass. Picked with its
        thresholds on the validation split by ``benchmarks/tune_ais.py --ais-tta``."""
        views = self.config.get("ais_tta", 1)
        if views not in _FLIPS:
            raise PathsegError(f"model {self.name!r}: ais_tta must be 1, 2 or 4, got {views!r}")
        return views

    @property
    def ais_shift(self) -> tuple[float, float] | None:
        """(dy, dx) in model pixels by which the AIS decoder's maps sit displaced from the nuclei it sees (config
        ``ais_shift``; default None: none). :meth:`predict_maps` moves each view's maps back by it (bilinear), so the
        automatic path and ``box_from_ais`` outline nuclei where the image shows them. Measured, not tuned: the
        shift of a decoder relative to one trained without the bias (``benchmarks/outline_offset.py``)."""
        value = self.config.get("ais_shift")
        if value is None:
            return None
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= 4 for v in value)
        ):
            raise PathsegError(
                f"model {self.name!r}: ais_shift must be [dy, dx] in model pixels, each within +-4, got {value!r}"
            )
        return float(value[0]), float(value[1])

    def predict_maps(self, rgb: np.ndarray) -> np.ndarray:
        """(3, H, W) float32 AIS maps for an RGB uint8 tile at the model's pixel size, the mean over
        :attr:`ais_tta` mirrored views (the maps are scalar fields, so a mirrored view's maps mirror back)."""
        if self.ais is None:
            raise PathsegError(f"model {self.name!r} has no AIS decoder; it can only be prompted")
        shift = self.ais_shift
        views = []
        for ax in _FLIPS[self.ais_tta]:
            maps = self._maps_once(np.flip(rgb, ax))
            if shift is not None:  # in the view's own frame, where the decoder's bias lies
                maps = shift_maps(maps, *shift)
            views.append(np.flip(maps, tuple(a + 1 for a in ax)))
        return views[0] if len(views) == 1 else np.mean(views, axis=0, dtype=np.float32)

    @property
    def device(self) -> torch.device:
        """Where the network runs (move it with ``model.to(device)`` or :func:`pathseg.models.device.place`);
        images go in and maps come out as numpy arrays wherever that is."""
        return module_device(self)

    def _input(self, rgb: np.ndarray) -> torch.Tensor:
        """(1, 3, H, W) float32 on :attr:`device` of an RGB uint8 array (uint8 crosses to a GPU, a quarter of the
        bytes)."""
        return torch.from_numpy(np.array(rgb)).to(self.device).permute(2, 0, 1)[None].float()

    @torch.inference_mode()
    def _maps_once(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        x = self._input(rgb)
        if self.is_compact:  # fully convolutional: any size that is a multiple of 16
            encoder, ais, _ = self.inference_nets()
            x = (x - self.sam.pixel_mean) / self.sam.pixel_std
            x = F.pad(x, (0, (-w) % 16, 0, (-h) % 16), mode="reflect" if min(h, w) > 16 else "constant")
            features = self._features_hook or self._int8_for(encoder, ais)
            if features is not None:
                return ais.head(features(x))[0, :, :h, :w].numpy()  # int8: on the CPU
            x = x.contiguous(memory_format=torch.channels_last)  # ~1.5x faster convolutions on CPU, same numbers
            return ais(*encoder.forward_features(x))[0, :, :h, :w].cpu().numpy()
        x = self.sam.resize_longest(x)
        input_size = tuple(x.shape[-2:])
        maps = self.ais(self.sam.embed(x))
        maps = self.sam.postprocess_masks(maps, input_size, (h, w))
        return maps[0].cpu().numpy()

    @property
    def class_names(self) -> list[dict]:
        """``[{"name", "color"}, ...]`` of the semantic decoder's outputs (index 0 = background)."""
        named = self.config.get("semantic_classes")
        if named:
            return named
        n = self.semantic.out_channels if self.semantic is not None else 0
        return (
            PANNUKE_CLASSES
            if n == len(PANNUKE_CLASSES)
            else [{"name": f"class {i}", "color": [128, 128, 128]} for i in range(n)]
        )

    @torch.inference_mode()
    def predict_class_maps(self, rgb: np.ndarray) -> np.ndarray:
        """(C, H, W) float32 class probabilities (softmax) for an RGB uint8 tile at the model's pixel size."""
        if self.semantic is None:
            raise PathsegError(f"model {self.name!r} has no semantic (class) decoder")
        h, w = rgb.shape[:2]
        x = self._input(rgb)
        if self.is_compact:
            x = (x - self.sam.pixel_mean) / self.sam.pixel_std
            x = F.pad(x, (0, (-w) % 16, 0, (-h) % 16), mode="reflect" if min(h, w) > 16 else "constant")
            encoder, _, semantic = self.inference_nets()
            features = self._class_features_hook or class_int8_network(self, encoder, semantic)
            if features is not None:  # int8 (or calibrating)
                logits = semantic.head(features(x))[..., :h, :w]
            else:
                emb, skips = encoder.forward_features(x.contiguous(memory_format=torch.channels_last))
                logits = semantic(emb, skips)[..., :h, :w]
        else:
            x = self.sam.resize_longest(x)
            input_size = tuple(x.shape[-2:])
            logits = self.sam.postprocess_masks(self.semantic(self.sam.embed(x)), input_size, (h, w))
        return torch.softmax(logits.float(), dim=1)[0].cpu().numpy()

    def class_probabilities(self, rgb: np.ndarray, mpp: float, progress: ProgressCallback | None = None) -> np.ndarray:
        """(C, H, W) class probabilities of ``rgb`` at ``mpp`` µm/px (tiled like the AIS maps)."""
        from pathseg.nuclei.automatic import stitch_tiles

        factor = mpp / self.class_mpp
        h, w = rgb.shape[:2]
        work = rgb if abs(factor - 1) < 1e-3 else resize_rgb(rgb, scaled_size((h, w), factor))
        probs = stitch_tiles(
            self.predict_class_maps, work, int(self.config.get("tile", 512)), int(self.config.get("halo", 64)), progress
        )
        return probs if work is rgb else resize_maps(probs, (h, w))

    @torch.inference_mode()
    def embed_window(self, rgb: np.ndarray) -> torch.Tensor:
        """Image embedding (C, h, w) of an RGB uint8 window for prompts.

        ViT SAM: the window is resized (longest side ``img_size``) and padded, as SAM does. Compact models: the
        window is only padded to a multiple of 16, exactly as the training crops were seen.
        """
        return self.prompt_context(rgb)[0]

    @torch.inference_mode()
    def prompt_context(self, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image embedding (C, h, w) of an RGB uint8 window and, for a model with a mask refiner, its guide image
        (6 or more channels, H, W) at the window's size (see :meth:`MaskRefiner.guide`; one encoder pass for all)."""
        x = self._input(rgb)
        if not self.is_compact:
            return self.sam.embed(self.sam.resize_longest(x))[0], None
        h, w = rgb.shape[:2]
        x = (x - self.sam.pixel_mean) / self.sam.pixel_std
        x = F.pad(x, (0, (-w) % 16, 0, (-h) % 16), mode="reflect" if min(h, w) > 16 else "constant")
        if self.refiner is None or self.ais is None:
            return self.inference_nets()[0](x.contiguous(memory_format=torch.channels_last))[0], None
        embedding, maps, features = self.guide_inputs(x)
        return embedding[0], self.refiner.guide(x, maps, features)[0, :, :h, :w]

    def guide_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Embedding, AIS maps and, for a refiner that reads them, the AIS decoder's last features (else None) of
        normalised input (B, 3, H, W) (compact models with an AIS decoder)."""
        encoder, ais, _ = self.inference_nets()
        embedding, skips = encoder.forward_features(x.contiguous(memory_format=torch.channels_last))
        if self.refiner is not None and self.refiner.feature_channels:
            features = ais.features(embedding, skips)
            return embedding, ais.head(features), features
        return embedding, ais(embedding, skips), None

    def inference_nets(self) -> tuple[nn.Module, nn.Module | None, nn.Module | None]:
        """The image encoder, AIS decoder and class decoder to run inference with. For a compact model in
        evaluation mode with :attr:`fold_batchnorm`, copies with each BatchNorm folded into its convolution
        (``pathseg.models.fuse``: same maps to ~1e-6, 1.14-1.24x faster), refolded whenever a weight changes; else the
        modules themselves."""
        parts = (self.sam.image_encoder, self.ais, self.semantic)
        if self.training or not self.fold_batchnorm or not self.is_compact:
            return parts
        key, tensors = weights_state(parts)
        if self._folded is None or self._folded[0] != key:
            with torch.inference_mode(False):  # ordinary tensors, usable outside inference mode too
                self._folded = (key, tuple(None if p is None else fold_batchnorm(p) for p in parts), tensors)
        return self._folded[1]

    @property
    def ais_precision(self) -> str:
        """``float32`` (default) or ``int8`` (config ``ais_precision``): the arithmetic of the automatic path's
        network. ``int8`` needs calibrated activation ranges (:attr:`int8_qparams`, written by ``pathseg models int8``);
        prompts always run in float32 (classes: :mod:`pathseg.models.class_int8`)."""
        value = self.config.get("ais_precision", "float32")
        if value not in PRECISIONS:
            msg = f"ais_precision must be one of {', '.join(PRECISIONS)}, got {value!r}"
            raise PathsegError(f"model {self.name!r}: {msg}")
        return value

    def set_ais_params(self, **overrides: float | tuple[float, ...]) -> None:
        """Override :attr:`ais_params` fields (:class:`AISParams` names; thresholds in [0, 1], σ and ``min_size``
        in model pixels) for this model object, checked now: ``segment``, slides and APG seeds use them."""
        merged = {**self.ais_params, **overrides}
        try:
            checked_ais_params(merged)
        except ValueError as exc:
            raise PathsegError(str(exc)) from None
        self.config["ais_params"] = merged

    def set_ais_precision(self, precision: str) -> None:
        """Run the automatic path in ``precision`` (``float32`` or ``int8``); int8 is refused where it cannot run
        (no calibrated ranges, no kernels) with a message that says what to do."""
        if precision not in PRECISIONS:
            raise PathsegError(f"ais precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == INT8:
            why = int8_unavailable()
            if why is None and (not self.is_compact or self.ais is None):
                why = f"model {self.name!r} is no compact model with an AIS decoder (ViT SAMs run in float32)"
            elif why is None and self.int8_qparams is None:
                why = (
                    f"model {self.name!r} has no int8 ranges; make a copy that has: pathseg models int8 {self.name} "
                    "SOME_IMAGES -o OUT (then --model OUT)"
                )
            if why is not None:
                raise PathsegError(f"int8: {why}")
        self.config["ais_precision"] = precision

    def int8_features(self) -> nn.Module | None:
        """The int8 network from normalised input to the AIS decoder's last features (:mod:`pathseg.models.quantize`)
        when :attr:`ais_precision` is ``int8`` and it can run here, else None (float32; why is logged once). Built on
        the BatchNorm-folded network on the CPU (with :attr:`fold_batchnorm` off or on a GPU, float32), so rebuilt
        whenever a weight changes; ranges calibrated for other weights are not used."""
        encoder, ais, _ = self.inference_nets()
        return self._int8_for(encoder, ais)

    def _int8_for(self, encoder: nn.Module, ais: nn.Module | None) -> nn.Module | None:
        """:meth:`int8_features` for the folded nets :meth:`inference_nets` just gave (they are refolded on any weight
        change, so they key the cache)."""
        if self.ais_precision != INT8 or self.training or not self.is_compact or self.ais is None:
            return None
        if encoder is self.sam.image_encoder or next(self.ais.parameters()).device.type != "cpu":  # unfolded; GPU
            return None
        sha = (self.config.get("ais_int8") or {}).get("weights_sha256")
        parts = (self.sam.image_encoder, self.ais)
        fallback = f"model {self.name!r} runs in float32, not int8"
        self._int8 = cached_int8(self._int8, parts, (encoder, ais), self.int8_qparams, sha, fallback)
        return self._int8[2]

    def set_int8(self, qparams: dict[str, torch.Tensor], images: int) -> None:
        """Run the automatic path in int8 with activation ranges ``qparams`` calibrated on ``images`` images for the
        current weights (:func:`pathseg.models.quantize.calibrate`); :meth:`save_pretrained` keeps them."""
        self.int8_qparams = dict(qparams)
        self.config.update(ais_precision=INT8, ais_int8=self.int8_info(images))
        self._int8 = None

    def int8_info(self, images: int) -> dict:
        """Config ``ais_int8`` for ranges calibrated on ``images`` images with the current weights."""
        sha = weights_fingerprint((self.sam.image_encoder, self.ais))
        return {"weights_sha256": sha, "images": images, "torch": torch.__version__}

    def window_logits(self, low: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Low-resolution mask logits (N, K, h', w') of a window embedded by :meth:`embed_window` -> (N, K, h, w)."""
        if self.is_compact:  # 4x up to the (padded) input, then crop the padding
            return F.interpolate(low, scale_factor=4, mode="bilinear", align_corners=False)[..., :h, :w]
        scale = self.sam.img_size / max(h, w)
        return self.sam.postprocess_masks(low, (round(h * scale), round(w * scale)), (h, w))

    def prompt_window(self, centre: tuple[float, float], h: int, w: int) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) part of an embedded ``h`` x ``w`` window (pixels, relative to it) that prompts centred
        at ``centre`` (x, y) are decoded on; the whole window for ViT SAMs.

        Compact models learnt their prompt path on crops of ``config["prompt_window"]`` px (default 256): the
        positional encoding beyond that was never seen, so a prompt is decoded on the part of the (fully
        convolutional) embedding of that size around it, aligned to the 16-px token grid.
        """
        if not self.is_compact:
            return (0, 0, h, w)
        size = int(self.config.get("prompt_window", 256))
        gh, gw = -(-h // 16), -(-w // 16)
        n = size // 16
        ty = int(np.clip(round(centre[1] / 16 - n / 2), 0, max(gh - n, 0)))
        tx = int(np.clip(round(centre[0] / 16 - n / 2), 0, max(gw - n, 0)))
        return (16 * ty, 16 * tx, min(16 * (ty + n), h), min(16 * (tx + n), w))

    def prompt_scale(self, h: int, w: int) -> float:
        """Factor from window pixels to the prompt encoder's input frame."""
        return 1.0 if self.is_compact else self.sam.img_size / max(h, w)

    @property
    def is_compact(self) -> bool:
        return self.config["encoder"].get("type") == "compact"

    def forward_train(self, x: torch.Tensor, with_semantic: bool = False):
        """AIS maps and the image embedding of normalised input (one encoder pass serves every loss); with
        ``with_semantic`` also the class logits. Returns (maps, embedding, logits or None)."""
        if with_semantic and self.semantic is None:
            raise PathsegError(f"model {self.name!r} has no semantic (class) decoder")
        if self.is_compact:
            embedding, skips = self.sam.image_encoder.forward_features(x)
            maps = self.ais(embedding, skips)
            logits = self.semantic(embedding, skips) if with_semantic else None
        else:
            embedding = self.sam.image_encoder(x)
            maps = self.ais(embedding)
            logits = self.semantic(embedding) if with_semantic else None
        return maps, embedding, logits

    def segmenter(self) -> AutomaticSegmenter:
        return AutomaticSegmenter(
            self.predict_maps, tile=int(self.config.get("tile", 512)), halo=int(self.config.get("halo", 64))
        )

    def segment(
        self,
        rgb: np.ndarray,
        mpp: float,
        progress: ProgressCallback | None = None,
        mode: str = "ais",
        stain: tuple[np.ndarray, np.ndarray] | None = None,
        **params: float,
    ) -> np.ndarray:
        """Nucleus labels (H, W) uint32 of ``rgb`` at ``mpp`` µm/px (resampled to the model's pixel size).

        ``mode``: ``ais`` (decoder maps + watershed, default), ``apg`` (SAM prompts at AIS seeds) or ``amg``
        (SAM's point grid). ``params`` override the mode's post-processing thresholds. ``stain``: for a model with
        :attr:`ais_stain`, the LAB statistics to normalise from (:meth:`stain_stats` of the whole image ``rgb`` is
        cut from; default: ``rgb``'s own). Objects of flat fill (black padding: :func:`drop_flat_fill`) are left
        out.
        """
        if mode in ("amg", "apg"):
            from pathseg.nuclei.interactive import Predictor
            from pathseg.nuclei.prompted import AutomaticMaskGenerator, AutomaticPromptGenerator

            gen = (
                AutomaticMaskGenerator(Predictor(self)) if mode == "amg" else AutomaticPromptGenerator(Predictor(self))
            )
            gen.initialize(rgb, mpp, progress=progress)
            labels = gen.generate(**params)  # APG seeds from the model's tuned AIS thresholds
        elif mode == "ais":
            labels = self.initialized_segmenter(rgb, mpp, progress, stain).generate(**{**self.ais_params, **params})
        else:
            raise PathsegError(f"unknown mode {mode!r}; one of ais, apg, amg")
        return drop_flat_fill(labels, rgb)

    def initialized_segmenter(
        self,
        rgb: np.ndarray,
        mpp: float,
        progress: ProgressCallback | None = None,
        stain: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> AutomaticSegmenter:
        """An :class:`AutomaticSegmenter` holding the maps of ``rgb`` at ``mpp`` µm/px: the network runs at
        :attr:`ais_mpp` (on colours normalised to :attr:`ais_stain` if the model has one, from ``stain``,
        :meth:`fit_slide`'s or ``rgb``'s own statistics) and the maps are resampled back to ``rgb``'s pixels, so
        ``generate`` labels ``rgb``'s pixels; its σ and min_size stay in pixels at the model's :attr:`mpp` whatever
        ``ais_mpp`` is."""
        factor = mpp / self.ais_mpp  # network pixels per image pixel
        h, w = rgb.shape[:2]
        if self.ais_stain is not None:
            from pathseg.stain import reinhard

            rgb = reinhard(rgb, self.ais_stain, stain if stain is not None else self._slide_stain)
        work = rgb if abs(factor - 1) < 1e-3 else resize_rgb(rgb, scaled_size((h, w), factor))
        seg = self.segmenter()
        seg.initialize(work, progress=progress)
        if work is not rgb:
            seg.maps = resize_maps(seg.maps, (h, w))
        seg.scale = self.mpp / mpp  # image pixels per model pixel
        return seg

    # -- persistence ----------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (optionally cast to ``dtype``) into ``folder``."""
        state = {k: v for k, v in self.state_dict().items() if "num_batches_tracked" not in k}
        encoder = self.sam.image_encoder
        config, ranges = ranges_to_save(
            self.config, "ais_precision", "ais_int8", self.int8_qparams, (encoder, self.ais)
        )
        config, class_ranges = ranges_to_save(
            config, "class_precision", "class_int8", self.class_int8_qparams, (encoder, self.semantic)
        )
        folder = save_folder(folder, config, state, dtype)
        for name, kept in ((QPARAMS_NAME, ranges), (class_int8.CLASS_QPARAMS_NAME, class_ranges)):
            if kept is not None:
                write_weights(folder / name, kept)
            elif (folder / name).is_file():  # an earlier save's ranges, for other weights
                (folder / name).unlink()
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> SamNucleusModel:
        """Load a model written by :meth:`save_pretrained`."""
        config, state = read_folder(folder)
        model = cls(config)
        expected = model.state_dict()
        for k in expected:  # BatchNorm counters are not saved
            if k.endswith("num_batches_tracked") and k not in state:
                state[k] = expected[k]
        load_into(model, state, f"model {model.name!r}", Path(folder) / WEIGHTS_NAME)
        if (Path(folder) / QPARAMS_NAME).is_file():
            model.int8_qparams = read_state(Path(folder) / QPARAMS_NAME)
        model.class_int8_qparams = class_int8.read_ranges(Path(folder))
        return model.eval()


def from_checkpoint(
    path: str | os.PathLike,
    size: str | None = None,
    decoder_path: str | os.PathLike | None = None,
    mpp: float = 0.25,
    name: str | None = None,
) -> SamNucleusModel:
    """Build a :class:`SamNucleusModel` from an official SAM / PathoSAM checkpoint (+ a separate decoder file)."""
    ckpt = load_checkpoint(path)
    if not ckpt.sam_state:
        raise PathsegError(f"{path}: holds no SAM weights (image_encoder.*); is it a decoder-only file?")
    if ckpt.vit is None:
        raise PathsegError(f"{path}: the image encoder is not a SAM ViT (no patch_embed / pos_embed / rel_pos)")
    if size is not None and size != ckpt.size:
        raise PathsegError(f"{path}: is a SAM {ckpt.size} checkpoint, expected {size}")
    decoder = ckpt.decoder_state
    if decoder_path is not None:
        decoder = load_checkpoint(decoder_path).decoder_state
        if decoder is None:
            raise PathsegError(f"{decoder_path}: no decoder weights (out_conv.*) found")
    cfg = default_config(ckpt.vit, mpp=mpp, name=name)
    if decoder is not None:
        cfg["ais_decoder"] = EmbeddingDecoder.config_from_state(decoder)
    else:
        cfg["ais_decoder"] = None
    model = SamNucleusModel(cfg)
    load_into(model.sam, ckpt.sam_state, f"SAM {ckpt.size}", path)
    if decoder is not None:
        load_into(model.ais, decoder, f"the AIS decoder of SAM {ckpt.size}", decoder_path or path)
    return model.eval()
