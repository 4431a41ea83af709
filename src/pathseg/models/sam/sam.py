"""The SAM model: image encoder + prompt encoder + mask decoder, with SAM's pre- and post-processing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pathseg.models.sam.mask_decoder import MaskDecoder
from pathseg.models.sam.prompt_encoder import PromptEncoder

#: SAM's normalisation of 0-255 RGB pixels.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """Size after resizing the longest side to ``long_side`` (SAM's rounding)."""
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


class Sam(nn.Module):
    """Segment Anything. State-dict keys: ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``."""

    mask_threshold: float = 0.0

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, ...] = PIXEL_MEAN,
        pixel_std: tuple[float, ...] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def img_size(self) -> int:
        return int(self.image_encoder.img_size)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (B, 3, H, W) 0-255 pixels and zero-pad bottom/right to ``img_size`` square."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def resize_longest(self, x: torch.Tensor) -> torch.Tensor:
        """Resize (B, C, H, W) so that the longest side is ``img_size`` (bilinear, antialiased)."""
        size = preprocess_shape(x.shape[-2], x.shape[-1], self.img_size)
        if tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Low-resolution logits -> logits at ``original_size`` (remove padding, undo the resize)."""
        masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) 0-255 RGB at model scale (longest side <= img_size) -> (B, 256, h, w) embedding."""
        return self.image_encoder(self.preprocess(image))

    def decode(
        self,
        embedding: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits (N, K, 4h, 4w) and predicted IoU (N, K) for N prompts on one embedding.

        Coordinates are in the padded input frame (pixels of the ``img_size`` square). An embedding of an input
        smaller than ``img_size`` (compact models, training crops) uses the matching top-left part of the
        positional encoding, as if the input had been padded.
        """
        sparse, dense = self.prompt_encoder(points, boxes, mask_input)
        h, w = embedding.shape[-2:]
        pe = self.prompt_encoder.get_dense_pe()[..., :h, :w]  # an embedding of a smaller (unpadded) input
        if mask_input is None:
            dense = dense[..., :h, :w]
        return self.mask_decoder(embedding, pe, sparse, dense, multimask_output)
