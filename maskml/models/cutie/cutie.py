"""Cutie (Cheng et al., "Putting the Object Back into Video Object Segmentation", CVPR 2024):
the network. The memory that drives it lives in maskml/predict/cutie/."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskml.models.cutie.modules import (KeyProjection, MaskDecoder, MaskEncoder, PixelEncoder, PixelFeatureFuser,
                                         downsample_area)
from maskml.models.cutie.readout import read_top_k
from maskml.models.cutie.transformer import ObjectSummarizer, QueryTransformer, aggregate

PIXEL_MEAN = (0.485, 0.456, 0.406)  # images in [0, 1]
PIXEL_STD = (0.229, 0.224, 0.225)

SIZES = {"small": dict(encoder="resnet18", ms_dims=(256, 128, 64)),
         "base": dict(encoder="resnet50", ms_dims=(1024, 512, 256))}


class Cutie(nn.Module):
    def __init__(self, encoder: str = "resnet50", ms_dims=(1024, 512, 256), pixel_dim: int = 256, key_dim: int = 64,
                 value_dim: int = 256, sensory_dim: int = 256, embed_dim: int = 256, num_queries: int = 16,
                 num_blocks: int = 3, num_heads: int = 8, ff_dim: int = 2048, up_dims=(256, 128, 128),
                 pe_scale: float = 32, pe_temperature: float = 128) -> None:
        super().__init__()
        self.value_dim, self.sensory_dim, self.key_dim = value_dim, sensory_dim, key_dim
        self.pixel_encoder = PixelEncoder(encoder)
        self.pix_feat_proj = nn.Conv2d(ms_dims[0], pixel_dim, 1)
        self.key_proj = KeyProjection(ms_dims[0], pixel_dim, key_dim)
        self.mask_encoder = MaskEncoder("resnet18", pixel_dim, value_dim, sensory_dim, final_dim=256)
        self.mask_decoder = MaskDecoder(list(ms_dims), list(up_dims), sensory_dim)
        self.pixel_fuser = PixelFeatureFuser(pixel_dim, value_dim, sensory_dim, embed_dim)
        self.object_transformer = QueryTransformer(value_dim, embed_dim, num_heads, num_blocks, num_queries, ff_dim,
                                                   pe_scale, pe_temperature)
        self.object_summarizer = ObjectSummarizer(value_dim, embed_dim, num_queries, pe_scale, pe_temperature)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.pixel_mean) / self.pixel_std

    def encode_image(self, image: torch.Tensor):
        """(B, 3, H, W) in [0, 1] -> multi-scale features (f16, f8, f4), pixel features, key,
        shrinkage, selection (all at stride 16 but the multi-scale ones)."""
        ms_features = self.pixel_encoder(self.normalize(image))
        pix_feat = self.pix_feat_proj(ms_features[0])
        key, shrinkage, selection = self.key_proj(ms_features[0])
        return ms_features, pix_feat, key, shrinkage, selection

    def encode_mask(self, image: torch.Tensor, pix_feat: torch.Tensor, sensory: torch.Tensor, masks: torch.Tensor,
                    deep_update: bool = True):
        """masks (B, N, H, W) probabilities -> values (B, N, C, h, w), new sensory, object summaries."""
        value, sensory = self.mask_encoder(self.normalize(image), pix_feat, sensory, masks, others_of(masks),
                                           deep_update=deep_update)
        return value, sensory, self.object_summarizer(masks, value)

    def read_top_k(self, query_key: torch.Tensor, query_selection: torch.Tensor, mem_key: torch.Tensor,
                   mem_shrinkage: torch.Tensor, mem_values: torch.Tensor, top_k: int):
        """The pixel memory (keys and values of a dynamic length N) read by the query pixels: readout,
        top-k weights and indices (maskml.models.cutie.readout.read_top_k)."""
        return read_top_k(query_key, query_selection, mem_key, mem_shrinkage, mem_values, top_k)

    def read_memory(self, pixel_readout: torch.Tensor, pix_feat: torch.Tensor, sensory: torch.Tensor,
                    last_mask: torch.Tensor, obj_memory: torch.Tensor, selector: torch.Tensor | None = None,
                    aux_logits: list | None = None):
        """Readout of the pixel memory (B, N, C, h, w) -> fused with sensory memory and the last masks,
        then refined by the object transformer (aux_logits: see QueryTransformer.forward)."""
        last_mask = downsample_area(last_mask, last_mask.shape[-1] // sensory.shape[-1])
        fused = self.pixel_fuser(pix_feat, pixel_readout, sensory, last_mask, others_of(last_mask))
        return self.object_transformer(fused, obj_memory, selector=selector, aux_logits=aux_logits)

    def segment(self, ms_features, readout: torch.Tensor, sensory: torch.Tensor, selector: torch.Tensor | None = None,
                update_sensory: bool = True):
        """-> new sensory, logits (B, N + 1, H, W) with background first, probabilities (softmax)."""
        sensory, logits = self.mask_decoder(ms_features, readout, sensory, update_sensory=update_sensory)
        prob = torch.sigmoid(logits)
        if selector is not None:
            prob = prob * selector
        logits = F.interpolate(aggregate(prob, dim=1), scale_factor=4, mode="bilinear", align_corners=False)
        return sensory, logits, F.softmax(logits, dim=1)


def others_of(masks: torch.Tensor) -> torch.Tensor:
    """For each object, the union of all the other objects' masks."""
    return (masks.sum(dim=1, keepdim=True) - masks).clamp(0, 1)


def build_cutie(size: str = "base") -> Cutie:
    if size not in SIZES:
        raise ValueError(f"unknown Cutie size {size!r}: choose from {', '.join(SIZES)}")
    return Cutie(**SIZES[size]).eval()
