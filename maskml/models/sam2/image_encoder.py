"""SAM 2's image encoder: the Hiera trunk, then an FPN neck that maps every trunk level to 256
channels with a 1x1 convolution and adds the nearest-upsampled coarser level into the stride-16
and stride-32 levels only; the stride-32 output is then dropped (scalp). Each kept level comes
with a fixed sine position encoding."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from maskml.models.common import is_inference
from maskml.models.sam2.hiera import Hiera
from maskml.models.sam2.position_encoding import PositionEmbeddingSine

HIERA_SIZES = ("tiny", "small", "base_plus", "large")

# Trunk settings of the official configs (identical in SAM 2 and SAM 2.1); unlisted ones are Hiera's defaults.
_HIERA_CONFIGS = {
    "tiny": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                 window_pos_embed_bkg_spatial_size=(7, 7)),
    "small": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
                  window_pos_embed_bkg_spatial_size=(7, 7)),
    "base_plus": dict(embed_dim=112, num_heads=2),
    "large": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                  window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 16, 8)),
}


class FpnNeck(nn.Module):
    """`convs.k` is the lateral 1x1 convolution of trunk level 3-k (convs.0: stride 32)."""

    def __init__(self, d_model: int, backbone_channel_list: list[int], fpn_top_down_levels=(2, 3)) -> None:
        super().__init__()
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList(nn.Sequential(OrderedDict(conv=nn.Conv2d(c, d_model, kernel_size=1)))
                                   for c in backbone_channel_list)
        self.fpn_top_down_levels = tuple(fpn_top_down_levels)
        self.position_encoding = PositionEmbeddingSine(d_model)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Trunk features [stride 4, ..., stride 32] -> the same levels with d_model channels."""
        n = len(xs)
        out: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
        coarser = None
        for level in reversed(range(n)):
            x = self.convs[n - 1 - level](xs[level])
            if level in self.fpn_top_down_levels and coarser is not None:
                top_down = F.interpolate(coarser, scale_factor=2.0, mode="nearest")
                x = x.add_(top_down) if is_inference() else x + top_down
            out[level] = coarser = x
        return out


class ImageEncoder(nn.Module):
    def __init__(self, trunk: Hiera, neck: FpnNeck, scalp: int = 1) -> None:
        super().__init__()
        assert trunk.channel_list == neck.backbone_channel_list, (trunk.channel_list, neck.backbone_channel_list)
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """x (B, 3, 1024, 1024) normalised -> (backbone_fpn, vision_pos_enc): lists [stride 4, 8, 16]
        of (B, 256, h, w) features (channels-last memory) and their (B, 256, h, w) position encodings
        (shared cached tensors, expanded over the batch)."""
        features = self.neck(self.trunk(x))
        if self.scalp > 0:
            features = features[: -self.scalp]
        return features, [self.neck.position_encoding(f) for f in features]


def build_image_encoder(size: str) -> ImageEncoder:
    """The image encoder of SAM 2 / SAM 2.1 `size` (one of HIERA_SIZES), with zero weights."""
    if size not in _HIERA_CONFIGS:
        raise ValueError(f"unknown Hiera size {size!r}; expected one of {', '.join(HIERA_SIZES)}")
    trunk = Hiera(**_HIERA_CONFIGS[size])
    return ImageEncoder(trunk, FpnNeck(256, trunk.channel_list), scalp=1)
