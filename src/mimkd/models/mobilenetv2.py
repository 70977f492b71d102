"""The half-width MobileNetV2 of the CRD tables (RepDistiller's `mobile_half`), as `mobilenetv2`.

Width multiplier 0.5 and expansion 6 over the standard seven inverted-residual groups, a stride-2
stem (32 -> 16 pixels) and a full 1280-channel 1x1 head conv. Unlike torchvision's, the t=1 first
block keeps its 1x1 expansion conv, as in RepDistiller. Module names (`conv1`, `blocks`, `conv2`,
`classifier`) equal theirs.
"""

from __future__ import annotations

import torch
from torch import nn

from mimkd.features import TapSet
from mimkd.models.layers import conv_bn_layers, initialize
from mimkd.models.registry import register_model

# (expansion, output channels before the width multiplier, blocks, first stride); None = `expansion`
INVERTED_RESIDUAL_GROUPS: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
HEAD_CHANNELS = 1280
# the groups whose outputs RepDistiller returns as features: one per resolution (16, 8, 4, 2)
STAGE_GROUPS = (1, 2, 4, 6)


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise (with the stride), linear 1x1 project; residual if shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            *conv_bn_layers(in_channels, hidden, kernel_size=1),
            *conv_bn_layers(hidden, hidden, stride=stride, groups=hidden),
            *conv_bn_layers(hidden, out_channels, kernel_size=1, relu=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs with a width multiplier (RepDistiller's `MobileNetV2`)."""

    def __init__(
        self,
        expansion: int = 6,
        width_multiplier: float = 0.5,
        num_classes: int = 100,
        in_channels: int = 3,
    ):
        super().__init__()
        channels = int(32 * width_multiplier)
        self.conv1 = nn.Sequential(*conv_bn_layers(in_channels, channels, stride=2))
        self.blocks = nn.ModuleList()
        for group_expansion, base_width, num_blocks, first_stride in INVERTED_RESIDUAL_GROUPS:
            width = int(base_width * width_multiplier)
            group = []
            for block_index in range(num_blocks):
                stride = first_stride if block_index == 0 else 1
                group.append(
                    InvertedResidual(channels, width, stride, group_expansion or expansion)
                )
                channels = width
            self.blocks.append(nn.Sequential(*group))
        head_channels = (
            int(HEAD_CHANNELS * width_multiplier) if width_multiplier > 1 else HEAD_CHANNELS
        )
        self.conv2 = nn.Sequential(*conv_bn_layers(channels, head_channels, kernel_size=1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(head_channels, num_classes))
        initialize(self, linear_std=0.01)
        self.default_taps = TapSet(
            last_map="conv2",
            penultimate="classifier:input",
            stages=[f"blocks.{index}" for index in STAGE_GROUPS],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        x = self.conv2(x)
        return self.classifier(self.avgpool(x).flatten(1))


@register_model("mobilenetv2", input_size=32, family="cifar")
def mobilenetv2(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """Half-width MobileNetV2 (RepDistiller's mobile_half), ~0.81M parameters."""
    return MobileNetV2(6, 0.5, num_classes, in_channels)
