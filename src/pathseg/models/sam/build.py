"""A registry of SAM sizes (vit_b / vit_l / vit_h, as in segment-anything) and builders."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from pathseg.models.sam.image_encoder import ImageEncoderViT
from pathseg.models.sam.mask_decoder import MaskDecoder
from pathseg.models.sam.prompt_encoder import PromptEncoder
from pathseg.models.sam.sam import Sam
from pathseg.models.sam.transformer import TwoWayTransformer


@dataclass(frozen=True)
class ViTConfig:
    """Image-encoder configuration. Sizes in tokens/channels; ``img_size`` in pixels."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    out_chans: int = 256

    def as_dict(self) -> dict:
        return asdict(self)


SAM_SIZES: dict[str, ViTConfig] = {
    "vit_b": ViTConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": ViTConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": ViTConfig(1280, 32, 16, (7, 15, 23, 31)),
}


def build_image_encoder(cfg: ViTConfig) -> ImageEncoderViT:
    return ImageEncoderViT(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        out_chans=cfg.out_chans,
        use_rel_pos=True,
        window_size=cfg.window_size,
        global_attn_indexes=cfg.global_attn_indexes,
    )


def build_sam_from_encoder(image_encoder: nn.Module, img_size: int, embedding_size: int, prompt_dim: int = 256) -> Sam:
    """SAM with the standard prompt encoder and mask decoder around any encoder producing
    (B, ``prompt_dim``, ``embedding_size``, ``embedding_size``) for an ``img_size`` input."""
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(prompt_dim, (embedding_size, embedding_size), (img_size, img_size), 16),
        mask_decoder=MaskDecoder(prompt_dim, TwoWayTransformer(2, prompt_dim, 8, 2048), 3, 3, 256),
    )


def build_sam(size: str = "vit_b") -> Sam:
    """A SAM of ``size`` (``vit_b``, ``vit_l``, ``vit_h``) with randomly initialised weights."""
    if size not in SAM_SIZES:
        raise ValueError(f"unknown SAM size {size!r}; one of {', '.join(SAM_SIZES)}")
    cfg = SAM_SIZES[size]
    return build_sam_from_encoder(build_image_encoder(cfg), cfg.img_size, cfg.img_size // cfg.patch_size, cfg.out_chans)
