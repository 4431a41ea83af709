"""A tissue model: frozen diffusion backbone + feature settings + a trained head, saved as one folder.

Images of any size are segmented in overlapping patches (the backbone's patch size); logits are blended with a
smooth window, so class maps show no seams at patch borders. Images are rescaled to the model's µm/px first.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch

from pathseg.errors import PathsegError
from pathseg.io.convert import black_fill_as_glass
from pathseg.models.device import module_device
from pathseg.models.diffusion.backbone import DiffusionBackbone
from pathseg.models.folder import WEIGHTS_NAME, read_folder, save_folder
from pathseg.models.precision import PRECISIONS, autocast, check_precision
from pathseg.models.sam.checkpoint import load_into
from pathseg.progress import ProgressCallback
from pathseg.resize import resize_maps, resize_rgb, scaled_size
from pathseg.tissue.features import DiffusionFeatures
from pathseg.tissue.head import SegHead
from pathseg.tissue.postprocess import clean_classes


def _window(size: int) -> torch.Tensor:
    """(size, size) blending weights: a raised cosine, never exactly zero at the rim."""
    r = torch.hann_window(size + 2, periodic=False, dtype=torch.float32)[1:-1]
    return r[:, None] * r[None, :]


TTA_VIEWS = {1: (0,), 2: (0, 4), 4: (0, 1, 2, 3), 8: tuple(range(8))}
#: where test-time views are taken: of the image (each view encoded) or of its latent (encoded once)
TTA_SPACES = ("image", "latent")


def view_dihedral(x, k: int, axes: tuple[int, int] = (-2, -1)):
    """Dihedral view ``k`` (0..7) of a tensor or array over its ``axes`` (rows, columns; default the last two, as in
    (B, C, H, W)): k % 4 quarter turns, then a left-right flip when k >= 4. The one convention for test-time views
    and the training feature cache."""
    lib = torch if isinstance(x, torch.Tensor) else np
    x = lib.rot90(x, k % 4, axes)
    return lib.flip(x, (axes[1],)) if k >= 4 else x


def unview_dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`view_dihedral`."""
    x = torch.flip(x, dims=(-1,)) if k >= 4 else x
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


def patch_grid(n: int, patch: int, step: int) -> list[int]:
    """Patch starts 0, step, 2 step, ... covering ``n`` pixels (the last patch may reach past the end)."""
    return [i * step for i in range(1 + max(0, -(-(n - patch) // step)))]


def pad_to_grid(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """``img`` reflect-padded at the bottom / right to at least (h, w)."""
    ph, pw = max(0, h - img.shape[0]), max(0, w - img.shape[1])
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect") if ph or pw else img


class TissueModel(torch.nn.Module):
    """``config``: ``name``, ``mpp``, ``classes`` ([{"name", "color"}]), ``features`` ({timesteps, blocks,
    seed}), ``head`` ({hidden, dilations, refine}), ``backbone`` (a :class:`DiffusionBackbone` config)."""

    def __init__(self, config: dict, backbone: DiffusionBackbone | None = None) -> None:
        super().__init__()
        self.config = copy.deepcopy(config)
        self.config["backbone"] = copy.deepcopy(backbone.config if backbone is not None else config["backbone"])
        self.backbone = backbone if backbone is not None else DiffusionBackbone(self.config["backbone"])
        f = self.config["features"]
        self.features = DiffusionFeatures(self.backbone, f["timesteps"], f["blocks"], f.get("seed", 0))
        #: run the backbone in channels-last memory format: ~1.1x faster on CPU, same numbers up to float rounding
        self.channels_last = True
        self._layout: torch.memory_format | None = None
        if self.config.get("tta", 1) not in TTA_VIEWS:
            raise PathsegError(f"tissue model config: tta must be 1, 2, 4 or 8 views, got {self.config['tta']!r}")
        if self.config.get("tta_space", "image") not in TTA_SPACES:
            msg = f"tissue model config: tta_space must be one of {', '.join(TTA_SPACES)}"
            raise PathsegError(f"{msg}, got {self.config['tta_space']!r}")
        if self.precision not in PRECISIONS:
            msg = f"tissue model config: precision must be one of {', '.join(PRECISIONS)}"
            raise PathsegError(f"{msg}, got {self.config['precision']!r}")
        if "stride" in self.config:
            self.step = self.config["stride"]
        head = self.config["head"]
        self.head = SegHead(
            self.features.channels,
            len(self.config["classes"]),
            head.get("hidden", 128),
            head.get("dilations", (1, 1)),
            head.get("refine", 0),
        )

    @property
    def name(self) -> str:
        return self.config.get("name", "tissue")

    @property
    def mpp(self) -> float:
        return float(self.config.get("mpp", self.backbone.mpp))

    @property
    def network_mpp(self) -> float:
        """Pixel size (µm/px) images are resampled to for the network: :attr:`mpp`."""
        return self.mpp

    @property
    def class_names(self) -> list[dict]:
        return self.config["classes"]

    @property
    def patch(self) -> int:
        return int(self.config.get("patch_size", self.backbone.config.get("patch_size", 256)))

    @property
    def tta(self) -> int:
        """Test-time views per patch (config ``tta``, default 1): 1 = as is, 2 adds a left-right flip, 4 the four
        quarter turns, 8 all dihedral views. Logits of the views are turned back and averaged."""
        return int(self.config.get("tta", 1))

    @tta.setter
    def tta(self, views: int) -> None:
        if int(views) not in TTA_VIEWS:
            raise ValueError(f"tta must be 1, 2, 4 or 8 views, got {views}")
        self.config["tta"] = int(views)

    @property
    def tta_space(self) -> str:
        """Where the :attr:`tta` views are taken (config ``tta_space``, default ``image``): ``image`` turns the
        patch and encodes every view; ``latent`` encodes the patch once (autoencoder and SSL context) and turns its
        latent before the UNet, which saves the encoder passes of the other views."""
        return str(self.config.get("tta_space", "image"))

    @tta_space.setter
    def tta_space(self, space: str) -> None:
        if space not in TTA_SPACES:
            raise ValueError(f"tta_space must be one of {', '.join(TTA_SPACES)}, got {space!r}")
        self.config["tta_space"] = space

    @property
    def precision(self) -> str:
        """Inference precision (config ``precision``, default ``float32``): ``bfloat16`` runs the backbone and head
        under bfloat16 autocast (1.5-1.75x faster on a CPU with native bfloat16; ~0.25% of pixels change class);
        ``auto`` takes bfloat16 only where the device computes it natively (see :mod:`pathseg.models.precision`)."""
        return str(self.config.get("precision", "float32"))

    @precision.setter
    def precision(self, precision: str) -> None:
        self.config["precision"] = check_precision(precision)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) float32 logits of (B, 3, H, W) square patches in [0, 1], averaged over :attr:`tta`
        dihedral views (the head runs at the latent resolution; its pixel refiner, if any, once on the averaged
        logits), computed at :attr:`precision`."""
        views = self.tta
        total = None
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        if self._layout != layout:  # the frozen backbone only; the (trainable) head is left as is
            self.backbone.to(memory_format=layout)
            self._layout = layout
        x = x.contiguous(memory_format=layout)
        with torch.no_grad(), autocast(self.precision, x.device):
            latent = self.features.latent(x) if self.tta_space == "latent" else None
            for k in TTA_VIEWS[views]:
                if latent is None:
                    feats = self.features(view_dihedral(x, k))
                else:
                    feats = self.features.from_latent(view_dihedral(latent[0], k), latent[1])
                lg = unview_dihedral(self.head(feats), k).float()  # views summed in float32
                total = lg if total is None else total + lg
            return self.head.to_pixels(total / views, x.shape[-2:], x).float()

    @property
    def step(self) -> int:
        """Patch stride (pixels at :attr:`mpp`; config ``stride``, default 3/4 of the patch: a quarter overlap).
        A smaller stride blends more patches per pixel (costs more patches); 1 <= stride <= patch."""
        return int(self.config.get("stride", self.patch * 3 // 4))

    @step.setter
    def step(self, stride: int) -> None:
        if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= self.patch:
            msg = f"tissue model: stride must be a whole number of pixels from 1 to the patch size {self.patch}"
            raise PathsegError(f"{msg}, got {stride!r}")
        self.config["stride"] = stride

    def with_settings(
        self,
        tta: int | None = None,
        tta_space: str | None = None,
        stride: int | None = None,
        precision: str | None = None,
    ) -> TissueModel:
        """This model with other test-time views, view space, patch stride or precision (None: as it is): itself
        when nothing changes, else a copy that shares the weights and leaves this model's settings alone."""
        wanted = {"tta": tta, "tta_space": tta_space, "step": stride, "precision": precision}
        if all(v is None or v == getattr(self, k) for k, v in wanted.items()):
            return self
        model = copy.copy(self)
        model.config = {**self.config}
        for key, value in wanted.items():
            if value is not None:
                setattr(model, key, value)
        return model

    @torch.no_grad()
    def blend(
        self,
        pixels: np.ndarray,
        origin: tuple[int, int],
        ys: list[int],
        xs: list[int],
        box: tuple[int, int, int, int],
        batch: int = 4,
        progress: ProgressCallback | None = None,
    ) -> torch.Tensor:
        """Window-blended logits (K, y1 - y0, x1 - x0) over ``box`` = (y0, y1, x0, x1), from the patches at
        ``ys`` x ``xs`` (patch corners), all in one coordinate frame; ``pixels`` (RGB uint8) holds that frame from
        ``origin`` = (y, x) and contains every listed patch. Each output pixel is the weighted mean of the
        patches covering it, so any partition of an image into boxes gives the same result as one pass. Black fill
        is seen as glass (:func:`black_fill_as_glass`).
        ``progress(done, total, "patches")`` is called after each batch."""
        self.eval()
        p, (oy, ox) = self.patch, origin
        y0, y1, x0, x1 = box
        k = len(self.class_names)
        acc = torch.zeros(k, y1 - y0, x1 - x0)
        wsum = torch.zeros(y1 - y0, x1 - x0)
        win = _window(p)
        coords = [(y, x) for y in ys for x in xs if y < y1 and y + p > y0 and x < x1 and x + p > x0]
        x_all = torch.from_numpy(np.array(black_fill_as_glass(pixels))).permute(2, 0, 1)
        device = module_device(self)
        for i in range(0, len(coords), batch):
            part = coords[i : i + batch]
            xb = torch.stack([x_all[:, y - oy : y - oy + p, x - ox : x - ox + p] for y, x in part])
            xb = xb.to(device).float() / 255  # uint8 crosses to a GPU, a quarter of the bytes
            for (y, x), lg in zip(part, self.logits(xb).cpu(), strict=True):
                sy0, sy1, sx0, sx1 = max(y, y0), min(y + p, y1), max(x, x0), min(x + p, x1)
                w = win[sy0 - y : sy1 - y, sx0 - x : sx1 - x]
                acc[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] += lg[:, sy0 - y : sy1 - y, sx0 - x : sx1 - x] * w
                wsum[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] += w
            if progress:
                progress(min(i + batch, len(coords)), len(coords), "patches")
        return acc / wsum

    @torch.no_grad()
    def probabilities(
        self, rgb: np.ndarray, mpp: float | None = None, batch: int = 4, progress: ProgressCallback | None = None
    ) -> np.ndarray:
        """(K, H, W) float32 class probabilities of an RGB uint8 image at ``mpp`` µm/px (default: the model's);
        ``progress(done, total, "patches")`` follows the patches."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {rgb.shape} {rgb.dtype}")
        h0, w0 = rgb.shape[:2]
        img = rgb if mpp is None else resize_rgb(rgb, scaled_size(rgb.shape, mpp / self.mpp))
        H, W = img.shape[:2]
        ys, xs = patch_grid(H, self.patch, self.step), patch_grid(W, self.patch, self.step)
        pad = pad_to_grid(img, ys[-1] + self.patch, xs[-1] + self.patch)
        logits = self.blend(pad, (0, 0), ys, xs, (0, H, 0, W), batch, progress)
        probs = torch.softmax(logits, dim=0).numpy()
        return resize_maps(probs, (h0, w0)) if (H, W) != (h0, w0) else probs

    def segment(self, rgb: np.ndarray, mpp: float | None = None, clean: bool = True) -> np.ndarray:
        """(H, W) uint8 class ids (index into :attr:`class_names`); see :meth:`classes`."""
        return self.classes(self.probabilities(rgb, mpp), self.mpp if mpp is None else mpp, clean)

    def classes(self, probs: np.ndarray, mpp: float, clean: bool = True) -> np.ndarray:
        """(H, W) uint8 class ids from (K, H, W) probabilities at ``mpp`` µm/px: the argmax, then (``clean``)
        the model's small-hole / small-region cleaning (config ``clean``, areas in µm²; none if absent)."""
        classes = probs.argmax(0).astype(np.uint8)
        params = self.config.get("clean")
        return clean_classes(classes, mpp, params) if clean and params else classes

    # --- serialisation -------------------------------------------------------------------------------------
    def save_pretrained(
        self, folder: str | os.PathLike, dtype: torch.dtype | None = None, share_encoder: str | None = None
    ) -> Path:
        """Write the model folder. ``share_encoder``: the nucleus model whose image encoder conditions the
        backbone; its weights are then referenced (by name and digest) instead of stored a second time."""
        # the feature extractor holds the backbone a second time: its keys are left out
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("features.")}
        config = {**copy.deepcopy(self.config), "task": "tissue", "backbone": copy.deepcopy(self.backbone.config)}
        if share_encoder is not None:
            from pathseg.models.diffusion.backbone import compact_encoder_weights, weights_digest

            prefix = "backbone.encoder.body."
            mine = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            digest = weights_digest(compact_encoder_weights(share_encoder)[1])
            if weights_digest(mine) != digest:
                raise PathsegError(f"the conditioning encoder differs from {share_encoder!r}'s: it cannot be shared")
            config["backbone"]["encoder"]["weights_from"] = {"model": share_encoder, "sha256": digest}
            state = {k: v for k, v in state.items() if not k.startswith("backbone.encoder.")}
        return save_folder(folder, config, state, dtype)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> TissueModel:
        config, state = read_folder(folder, "tissue model")
        model = cls(config)
        source = Path(folder) / WEIGHTS_NAME
        shared = config["backbone"].get("encoder", {}).get("weights_from")
        if shared:
            from pathseg.models.diffusion.backbone import shared_encoder_state

            state.update({"backbone.encoder." + k: v for k, v in shared_encoder_state(shared).items()})
        for name in ("backbone", "head"):
            part = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
            load_into(getattr(model, name), part, f"tissue model {model.name!r} ({name})", source)
        unexpected = [k for k in state if not k.startswith(("backbone.", "head."))]
        if unexpected:
            raise PathsegError(f"{source}: does not fit tissue model {model.name!r}: unexpected key {unexpected[0]!r}")
        return model.eval()
