"""ResNet-18/50 trunks (conv1 .. layer3) as Cutie uses them; keys as in torchvision's ResNet."""
from __future__ import annotations

import torch
from torch import nn

from maskml.models.common import ConvBNCache, add_inplace, relu_inplace


def residual_relu(out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """relu(out + shortcut), in place on the fresh `out` when no graph is recorded."""
    return relu_inplace(add_inplace(out, shortcut))


class Block(ConvBNCache):
    """A residual block: its (conv, bn) pairs in order, then the downsampling pair if any (registered
    last, for torchvision's key order)."""

    downsample: nn.Sequential | None

    def main_pairs(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
        raise NotImplementedError

    def conv_bn_pairs(self):
        return self.main_pairs() + ([tuple(self.downsample)] if self.downsample is not None else [])

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.conv_bn(len(self.main_pairs()), x)


class BasicBlock(Block):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def main_pairs(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = relu_inplace(self.conv_bn(0, x))
        return residual_relu(self.conv_bn(1, out), self.shortcut(x))


class Bottleneck(Block):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def main_pairs(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = relu_inplace(self.conv_bn(0, x))
        out = relu_inplace(self.conv_bn(1, out))
        return residual_relu(self.conv_bn(2, out), self.shortcut(x))


def make_layer(block, inplanes: int, planes: int, blocks: int, stride: int = 1) -> tuple[nn.Sequential, int]:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                                   nn.BatchNorm2d(planes * block.expansion))
    layers = [block(inplanes, planes, stride, downsample)]
    inplanes = planes * block.expansion
    layers += [block(inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers), inplanes


class ResNetTrunk(ConvBNCache):
    """conv1, bn1, (maxpool), layer1..layer3 of ResNet-18 ("resnet18") or ResNet-50 ("resnet50").
    `first_layer_name` is "layer1", or "res2" for Cutie's pixel encoder."""

    def __init__(self, kind: str, in_chans: int = 3, first_layer_name: str = "layer1") -> None:
        super().__init__()
        block, depths = {"resnet18": (BasicBlock, (2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6))}[kind]
        self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layer1, planes = make_layer(block, 64, 64, depths[0])
        self.first_layer_name = first_layer_name
        self.add_module(first_layer_name, layer1)
        self.layer2, planes = make_layer(block, planes, 128, depths[1], stride=2)
        self.layer3, planes = make_layer(block, planes, 256, depths[2], stride=2)
        self.out_dims = (planes, planes // 2, planes // 4)  # stride 16, 8, 4

    def train(self, mode: bool = True):
        """Always in eval mode, in training too: BatchNorm normalises with its stored statistics (those of the
        weights loaded) and only its scale and shift learn, as in Cutie's own training; batch statistics of
        a few correlated frames would also differ from what inference then uses."""
        return super().train(False)

    @property
    def first_layer(self) -> nn.Sequential:
        return getattr(self, self.first_layer_name)

    def conv_bn_pairs(self):
        return [(self.conv1, self.bn1)]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 + bn1 (BatchNorm folded in outside training)."""
        return self.conv_bn(0, x)
