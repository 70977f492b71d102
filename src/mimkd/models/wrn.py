"""Wide ResNets of the CRD tables: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Pre-activation blocks (BN-ReLU-conv twice) in three stages of widths 16k/32k/64k after a 16-channel
stem, as in RepDistiller's `models/wrn.py`. Because blocks are pre-activation, the network ends with
its own BN + ReLU (`bn1`, `relu`): `relu` is the map the head pools, so it is the `last_map` tap.
RepDistiller nests each stage as `blockN.layer` and calls the shortcut `convShortcut`; here a stage
is the Sequential `blockN` and the shortcut `shortcut`.
"""

from __future__ import annotations

import torch
from torch import nn

from mimkd.features import TapSet
from mimkd.models.layers import initialize
from mimkd.models.registry import register_model


class WideBlock(nn.Module):
    """Pre-activation basic block; a width change projects the activated input with a 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = (
            None
            if in_channels == out_channels and stride == 1
            else nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        # Zagoruyko & Komodakis: an identity shortcut carries the raw input, a projection the
        # activated one.
        shortcut = x if self.shortcut is None else self.shortcut(activated)
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-k for 32x32 inputs: depth = 6n+4, n blocks per stage."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"a Wide ResNet has depth 6n+4 (16, 28, 40, ...), got {depth}")
        blocks_per_stage = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        channels = 16
        for index, width in enumerate(widths, start=1):
            stride = 1 if index == 1 else 2
            blocks = []
            for block_index in range(blocks_per_stage):
                blocks.append(WideBlock(channels, width, stride if block_index == 0 else 1))
                channels = width
            self.add_module(f"block{index}", nn.Sequential(*blocks))
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        initialize(self, zero_linear_bias=True)
        self.default_taps = TapSet(
            last_map="relu", penultimate="fc:input", stages=["block1", "block2", "block3"]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("wrn_16_1", input_size=32, family="cifar")
def wrn_16_1(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """Wide ResNet 16-1 (16-32-64 channels, 2 blocks per stage), ~0.18M parameters."""
    return WideResNet(16, 1, num_classes, in_channels)


@register_model("wrn_16_2", input_size=32, family="cifar")
def wrn_16_2(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """Wide ResNet 16-2 (32-64-128 channels, 2 blocks per stage), ~0.70M parameters."""
    return WideResNet(16, 2, num_classes, in_channels)


@register_model("wrn_40_1", input_size=32, family="cifar")
def wrn_40_1(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """Wide ResNet 40-1 (16-32-64 channels, 6 blocks per stage), ~0.57M parameters."""
    return WideResNet(40, 1, num_classes, in_channels)


@register_model("wrn_40_2", input_size=32, family="cifar")
def wrn_40_2(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """Wide ResNet 40-2 (32-64-128 channels, 6 blocks per stage), ~2.26M parameters."""
    return WideResNet(40, 2, num_classes, in_channels)
