"""Cutie's convolutional parts: pixel encoder, key projection, mask encoder, pixel-feature fuser,
sensory (GRU-style) updates and the mask decoder.

Object-wise tensors ("groups") are (B, num_objects, C, H, W); convolutions on them fold the
object axis into the batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from maskml.models.common import Conv2d, add_inplace, capturing_graph, relu_inplace
from maskml.models.cutie.resnet import ResNetTrunk


def flatten_groups(g: torch.Tensor) -> torch.Tensor:
    """(B, N, C, H, W) -> (B * N, C, H, W). A channels-last result of batch size one gets the batch
    stride of a true channels-last tensor: a view can leave any stride on a size-1 axis, and
    convolutions and pooling then read the tensor as NCHW and copy all of it."""
    x = g.flatten(0, 1)
    if x.shape[0] == 1 and x.is_contiguous(memory_format=torch.channels_last) and not capturing_graph():
        c, h, w = x.shape[1:]
        x = x.as_strided(x.shape, (c * h * w, 1, w * c, c))
    return x


class GConv2d(Conv2d):
    """Conv2d over (B, N, C, H, W) groups."""

    def forward(self, g: torch.Tensor, in_channels: slice | None = None, bias: bool = True) -> torch.Tensor:
        """in_channels: apply only the weights of these input channels (g has just those); bias=False
        leaves the bias out (for the sum of such partial convolutions)."""
        b, n = g.shape[:2]
        x = flatten_groups(g)
        if self.kernel_size != (1, 1) and x.shape[-2] * x.shape[-1] >= 4096:
            # measured on CPU: large 3x3 convolutions (the decoder at strides 8 and 4) run 20-40%
            # faster on channels-last input; small ones (stride 16) do not gain
            x = x.contiguous(memory_format=torch.channels_last)
        if in_channels is None and bias:
            out = super().forward(x)
        else:
            weight = self.weight if in_channels is None else self.weight[:, in_channels]
            out = F.conv2d(x, weight, self.bias if bias else None, self.stride, self.padding, self.dilation,
                           self.groups)
        return out.view(b, n, *out.shape[1:])


def resize_groups(g: torch.Tensor, ratio: float, mode: str, channels_last: bool = False) -> torch.Tensor:
    b, n = g.shape[:2]
    x = flatten_groups(g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = (downsample_area(x, round(1 / ratio)) if mode == "area"
           else F.interpolate(x, scale_factor=ratio, mode=mode, align_corners=False))
    return out.view(b, n, *out.shape[1:])


def downsample_area(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Area downsampling by an integer factor of a map whose sides are multiples of it (Cutie's frames are
    padded to multiples of 16): F.interpolate(mode="area")'s values, as an average pooling, which an ONNX
    graph keeps dynamic in size (the exporter turns an area interpolation into a pooling of fixed size)."""
    return F.avg_pool2d(x, factor)


class CAResBlock(nn.Module):
    """Residual block of two 3x3 convs with efficient channel attention (1-D conv over pooled channels)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv1 = Conv2d(in_dim, out_dim, 3, padding=1)
        self.conv2 = Conv2d(out_dim, out_dim, 3, padding=1)
        t = int((abs(math.log2(out_dim)) + 1) // 2)
        k = t if t % 2 else t + 1
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.downsample = nn.Identity() if in_dim == out_dim else nn.Conv2d(in_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x
        x = self.conv2(relu_inplace(self.conv1(F.relu(x))))
        b, c = x.shape[:2]
        w = self.conv(x.mean(dim=(2, 3)).view(b, 1, c)).transpose(-1, -2).unsqueeze(-1).sigmoid()
        return x * w + self.downsample(r)


class GroupResBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.downsample = nn.Identity() if in_dim == out_dim else GConv2d(in_dim, out_dim, 1)
        self.conv1 = GConv2d(in_dim, out_dim, 3, padding=1)
        self.conv2 = GConv2d(out_dim, out_dim, 3, padding=1)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return add_inplace(self.conv2(relu_inplace(self.conv1(F.relu(g)))), self.downsample(g))


class Distributor(nn.Module):
    """x (B, C, H, W) added to every object's features g (B, N, C', H, W), after 1x1 projections."""

    def __init__(self, x_in_dim: int, g_in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.x_transform = nn.Conv2d(x_in_dim, out_dim, 1)
        self.g_transform = GConv2d(g_in_dim, out_dim, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.x_transform(x).unsqueeze(1) + self.g_transform(g)


class GroupFeatureFusionBlock(nn.Module):
    def __init__(self, x_in_dim: int, g_in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.distributor = Distributor(x_in_dim, g_in_dim, out_dim)
        self.block1 = CAResBlock(out_dim, out_dim)
        self.block2 = CAResBlock(out_dim, out_dim)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        b, n = g.shape[:2]
        g = self.block2(self.block1(self.distributor(x, g).flatten(0, 1)))
        return g.view(b, n, *g.shape[1:])


def recurrent_update(h: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """GRU-style gated update of the sensory memory h from 3*C gate channels."""
    dim = values.shape[2] // 3
    forget_gate = torch.sigmoid(values[:, :, :dim])
    update_gate = torch.sigmoid(values[:, :, dim:2 * dim])
    new_value = torch.tanh(values[:, :, 2 * dim:])
    return forget_gate * h * (1 - update_gate) + update_gate * new_value


class SensoryUpdater(nn.Module):
    """Sensory update from the decoder's features at strides 16, 8 and 4."""

    def __init__(self, g_dims: list[int], mid_dim: int, sensory_dim: int) -> None:
        super().__init__()
        self.g16_conv = GConv2d(g_dims[0], mid_dim, 1)
        self.g8_conv = GConv2d(g_dims[1], mid_dim, 1)
        self.g4_conv = GConv2d(g_dims[2], mid_dim, 1)
        self.transform = GConv2d(mid_dim + sensory_dim, sensory_dim * 3, 3, padding=1)

    def forward(self, g: list[torch.Tensor], logits: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """g: decoder features at strides 16, 8, 4; logits (B, N, H4, W4): the masks at stride 4, which
        g4_conv reads as one more channel of g[2]. That channel's share of the (linear) pooling and
        1x1 convolution is taken apart, so the full-resolution features are never concatenated."""
        g4 = self.g4_conv(resize_groups(g[2], 1 / 4, "area"), in_channels=slice(0, -1))
        g4 = g4 + self.g4_conv(resize_groups(logits.unsqueeze(2), 1 / 4, "area"), in_channels=slice(-1, None),
                               bias=False)
        g = self.g16_conv(g[0]) + self.g8_conv(resize_groups(g[1], 1 / 2, "area")) + g4
        return recurrent_update(h, self.transform(torch.cat([g, h], dim=2)))


class SensoryDeepUpdater(nn.Module):
    """Sensory update from the mask encoder's value features (on memory frames)."""

    def __init__(self, f_dim: int, sensory_dim: int) -> None:
        super().__init__()
        self.transform = GConv2d(f_dim + sensory_dim, sensory_dim * 3, 3, padding=1)

    def forward(self, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return recurrent_update(h, self.transform(torch.cat([g, h], dim=2)))


class PixelEncoder(ResNetTrunk):
    """Image -> features at strides 16, 8, 4."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind, 3, first_layer_name="res2")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # the trunk runs faster in channels-last order (convolutions, and max-pooling by far); the
        # stride-16 features, mixed with object groups by the rest of the network, go back to NCHW;
        # f8 and f4 only feed the decoder's skip convolutions, which run channels-last anyway
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.max_pool2d(relu_inplace(self.stem(x)), 3, 2, 1)
        f4 = self.res2(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16.contiguous(), f8, f4


class KeyProjection(nn.Module):
    def __init__(self, in_dim: int, mid_dim: int, key_dim: int) -> None:
        super().__init__()
        self.pix_feat_proj = nn.Conv2d(in_dim, mid_dim, 1)
        self.key_proj = nn.Conv2d(mid_dim, key_dim, 3, padding=1)
        self.d_proj = nn.Conv2d(mid_dim, 1, 3, padding=1)
        self.e_proj = nn.Conv2d(mid_dim, key_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> key, shrinkage (>= 1), selection (in (0, 1))."""
        x = self.pix_feat_proj(x)
        return self.key_proj(x), self.d_proj(x) ** 2 + 1, torch.sigmoid(self.e_proj(x))


class MaskEncoder(ResNetTrunk):
    """(image, each object's mask, the union of the other objects) -> per-object values, and the
    deep sensory update."""

    def __init__(self, kind: str, pixel_dim: int, value_dim: int, sensory_dim: int, final_dim: int) -> None:
        super().__init__(kind, 3 + 2)
        self.fuser = GroupFeatureFusionBlock(pixel_dim, final_dim, value_dim)
        self.sensory_update = SensoryDeepUpdater(value_dim, sensory_dim)

    def forward(self, image: torch.Tensor, pix_feat: torch.Tensor, sensory: torch.Tensor, masks: torch.Tensor,
                others: torch.Tensor, deep_update: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        b, n = masks.shape[:2]
        g = torch.cat([image.unsqueeze(1).expand(-1, n, -1, -1, -1), masks.unsqueeze(2), others.unsqueeze(2)], 2)
        g = g.flatten(0, 1).contiguous(memory_format=torch.channels_last)  # as in PixelEncoder
        g = relu_inplace(F.max_pool2d(self.stem(g), 3, 2, 1))
        g = self.layer3(self.layer2(self.layer1(g))).contiguous()
        g = self.fuser(pix_feat, g.view(b, n, *g.shape[1:]))
        new_sensory = self.sensory_update(g, sensory) if deep_update else sensory
        return g, new_sensory


class PixelFeatureFuser(nn.Module):
    """Memory readout + compressed sensory memory and last masks, fused with the pixel features."""

    def __init__(self, pixel_dim: int, value_dim: int, sensory_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.fuser = GroupFeatureFusionBlock(pixel_dim, value_dim, embed_dim)
        self.sensory_compress = GConv2d(sensory_dim + 2, value_dim, 1)

    def forward(self, pix_feat: torch.Tensor, pixel_memory: torch.Tensor, sensory: torch.Tensor,
                last_mask: torch.Tensor, last_others: torch.Tensor) -> torch.Tensor:
        last = torch.stack([last_mask, last_others], dim=2)
        readout = pixel_memory + self.sensory_compress(torch.cat([sensory, last], 2))
        return self.fuser(pix_feat, readout)


class MaskUpsampleBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.out_conv = GroupResBlock(in_dim, out_dim)

    def forward(self, g: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # upsampled in channels-last order, like the skip features and the convolutions that follow:
        # every element-wise op on the way then sees one memory layout and needs no copy
        return self.out_conv(add_inplace(resize_groups(g, 2, "bilinear", channels_last=True), skip.unsqueeze(1)))


class DecoderFeatureProcessor(nn.Module):
    def __init__(self, in_dims: list[int], out_dims: list[int]) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(nn.Conv2d(i, o, 1) for i, o in zip(in_dims, out_dims))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t(f) for f, t in zip(features, self.transforms)]


class MaskDecoder(nn.Module):
    """Object readout at stride 16 -> mask logits at stride 4 (+ the sensory update)."""

    def __init__(self, ms_dims: list[int], up_dims: list[int], sensory_dim: int) -> None:
        super().__init__()
        self.sensory_update = SensoryUpdater([up_dims[0], up_dims[1], up_dims[2] + 1], sensory_dim, sensory_dim)
        self.decoder_feat_proc = DecoderFeatureProcessor(ms_dims[1:], up_dims[:-1])
        self.up_16_8 = MaskUpsampleBlock(up_dims[0], up_dims[1])
        self.up_8_4 = MaskUpsampleBlock(up_dims[1], up_dims[2])
        self.pred = nn.Conv2d(up_dims[-1], 1, 3, padding=1)

    def forward(self, ms_features: list[torch.Tensor], readout: torch.Tensor, sensory: torch.Tensor,
                update_sensory: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        b, n = readout.shape[:2]
        f8, f4 = self.decoder_feat_proc(ms_features[1:])
        p8 = self.up_16_8(readout, f8)
        p4 = self.up_8_4(p8, f4)
        logits = self.pred(F.relu(flatten_groups(p4)))
        if update_sensory:
            sensory = self.sensory_update([readout, p8, p4], logits.view(b, n, *logits.shape[-2:]), sensory)
        return sensory, logits.view(b, n, *logits.shape[-2:])
