"""SAM: image encoder + prompt encoder + mask decoder, and the builder used by the zoo."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskml.models.sam.image_encoder import ImageEncoderViT
from maskml.models.sam.mask_decoder import MaskDecoder
from maskml.models.sam.prompt_encoder import PromptEncoder
from maskml.models.sam.transformer import TwoWayTransformer

PIXEL_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Holds the three parts; predictors drive them (see maskml.predict.image)."""

    mask_threshold = 0.0

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        return self.image_encoder.img_size

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, image_size, image_size) normalised, padded images -> (B, 256, 64, 64)."""
        return self.image_encoder(image)

    def embed_resized(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, h, w) float image on the 0-255 scale, resized so its longest side is image_size ->
        (1, 256, 64, 64). Normalisation and padding happen here so that the exported encoder graph,
        traced from this method, includes them."""
        x = (image - self.pixel_mean) / self.pixel_std
        x = F.pad(x, (0, self.image_size - image.shape[-1], 0, self.image_size - image.shape[-2]))
        return self.embed_image(x)


def build_sam(encoder: str = "vit", embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
              global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11), image_size: int = 1024) -> Sam:
    """encoder="vit": SAM ViT-B/L/H; encoder="tiny_vit": MobileSAM (other arguments ignored). image_size
    other than 1024 (a multiple of 64; for training at reduced cost) keeps MobileSAM's state dict shapes;
    ViT's position embeddings change shape with it."""
    if encoder == "vit":
        image_encoder = ImageEncoderViT(img_size=image_size, patch_size=16, embed_dim=embed_dim, depth=depth,
                                        num_heads=num_heads, mlp_ratio=4.0, out_chans=256, window_size=14,
                                        global_attn_indexes=tuple(global_attn_indexes))
    elif encoder == "tiny_vit":
        from maskml.models.sam.tiny_vit import TinyViT

        image_encoder = TinyViT(img_size=image_size, embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2),
                                num_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7), mlp_ratio=4.0,
                                mbconv_expand_ratio=4.0, local_conv_size=3)
    else:
        raise ValueError(f"unknown SAM image encoder {encoder!r}")
    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(image_size // 16, image_size // 16),
                                   input_image_size=(image_size, image_size),
                                   mask_in_chans=16)
    mask_decoder = MaskDecoder(TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048),
                               transformer_dim=256, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256)
    return Sam(image_encoder, prompt_encoder, mask_decoder).eval()
