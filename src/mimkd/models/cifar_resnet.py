"""CIFAR ResNets of the CRD tables: resnet8 ... resnet110, resnet8x4 and resnet32x4.

Layout, widths and heads follow RepDistiller's `models/resnet.py` (3x3 stem, three stages of basic
blocks at 32/16/8 pixels, global average pooling, one linear head), so parameter counts equal the
published ones and module names (conv1/bn1/layerN/fc, blocks with conv1/bn1/conv2/bn2/downsample)
equal theirs. `CifarResNet` is generic in block type and stage widths: resnet50_cifar.py builds the
Bottleneck ResNet50 with it. The zoo's shared layer helpers (`conv_bn_layers`, `initialize`) live
here too.

Activations are never in-place: a tap on any module (say `layer2.0.bn2`) must keep the value that
module returned, not one a later ReLU overwrote.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mimkd.features import TapSet
from mimkd.models.layers import initialize, projection
from mimkd.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; ReLU after the sum."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = projection(in_channels, channels * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """3x3 stem, stages of residual blocks (the first at stride 1, the others at stride 2),
    global average pooling and a linear head; reads 32x32 (or any) inputs."""

    def __init__(
        self,
        block: type[nn.Module],
        blocks_per_stage: tuple[int, ...],
        stem_width: int,
        widths: tuple[int, ...],
        num_classes: int = 100,
        in_channels: int = 3,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU()
        channels = stem_width
        self.stage_names: tuple[str, ...] = ()
        for index, (width, num_blocks) in enumerate(zip(widths, blocks_per_stage), start=1):
            first_stride = 1 if index == 1 else 2
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(block(channels, width, first_stride if block_index == 0 else 1))
                channels = width * block.expansion
            name = f"layer{index}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names += (name,)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        initialize(self)
        self.default_taps = TapSet(
            last_map=self.stage_names[-1], penultimate="fc:input", stages=list(self.stage_names)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(self.avgpool(x).flatten(1))


def cifar_resnet(
    depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int
) -> CifarResNet:
    """A depth-(6n+2) basic-block ResNet; `widths` = (stem, stage1, stage2, stage3)."""
    if (depth - 2) % 6 != 0:
        raise ValueError(
            f"a basic-block CIFAR ResNet has depth 6n+2 (20, 32, 56, ...), got {depth}"
        )
    blocks = (depth - 2) // 6
    return CifarResNet(BasicBlock, (blocks,) * 3, widths[0], widths[1:], num_classes, in_channels)


NARROW = (16, 16, 32, 64)
WIDE_X4 = (32, 64, 128, 256)


@register_model("resnet8", input_size=32, family="cifar")
def resnet8(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-8 (16-32-64 channels, 1 block per stage), ~0.08M parameters."""
    return cifar_resnet(8, NARROW, num_classes, in_channels)


@register_model("resnet14", input_size=32, family="cifar")
def resnet14(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-14 (16-32-64 channels, 2 blocks per stage), ~0.18M parameters."""
    return cifar_resnet(14, NARROW, num_classes, in_channels)


@register_model("resnet20", input_size=32, family="cifar")
def resnet20(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-20 (16-32-64 channels, 3 blocks per stage), ~0.28M parameters."""
    return cifar_resnet(20, NARROW, num_classes, in_channels)


@register_model("resnet32", input_size=32, family="cifar")
def resnet32(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-32 (16-32-64 channels, 5 blocks per stage), ~0.47M parameters."""
    return cifar_resnet(32, NARROW, num_classes, in_channels)


@register_model("resnet44", input_size=32, family="cifar")
def resnet44(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-44 (16-32-64 channels, 7 blocks per stage), ~0.67M parameters."""
    return cifar_resnet(44, NARROW, num_classes, in_channels)


@register_model("resnet56", input_size=32, family="cifar")
def resnet56(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-56 (16-32-64 channels, 9 blocks per stage), ~0.86M parameters."""
    return cifar_resnet(56, NARROW, num_classes, in_channels)


@register_model("resnet110", input_size=32, family="cifar")
def resnet110(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-110 (16-32-64 channels, 18 blocks per stage), ~1.74M parameters."""
    return cifar_resnet(110, NARROW, num_classes, in_channels)


@register_model("resnet8x4", input_size=32, family="cifar")
def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-8 at 4x width (64-128-256 channels), ~1.23M parameters."""
    return cifar_resnet(8, WIDE_X4, num_classes, in_channels)


@register_model("resnet32x4", input_size=32, family="cifar")
def resnet32x4(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-32 at 4x width (64-128-256 channels), ~7.43M parameters."""
    return cifar_resnet(32, WIDE_X4, num_classes, in_channels)
