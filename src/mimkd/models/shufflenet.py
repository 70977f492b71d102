"""ShuffleNetV1 (g=3) and ShuffleNetV2 (1x) for CIFAR, as in the CRD tables.

RepDistiller's `ShuffleV1` / `ShuffleV2`: a 1x1 stem to 24 channels at full resolution, three
stages that each halve the resolution (32 -> 16 -> 8 -> 4), global average pooling and a linear
head named `linear`. Module names inside the blocks equal theirs (conv1/bn1/..., `shortcut`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mimkd.features import TapSet
from mimkd.models.registry import register_model

STEM_CHANNELS = 24


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, g*c, H, W] -> interleave the g groups' channels, so grouped convs see every group."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


class ShuffleV1Block(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; a stride-2 block concatenates an
    average-pooled shortcut instead of adding it (so its branch outputs `out - in` channels)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, groups: int, first_groups: int
    ):
        super().__init__()
        self.stride = stride
        self.first_groups = first_groups
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        mid_channels = branch_channels // 4
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(
            mid_channels, mid_channels, 3, stride=stride, padding=1, groups=mid_channels, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, branch_channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_channels)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        out = torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut
        return F.relu(out)


class ShuffleNetV1(nn.Module):
    """1x1 stem, three stages of ShuffleV1 blocks (the first of each at stride 2), linear head."""

    def __init__(
        self,
        stage_channels: tuple[int, ...] = (240, 480, 960),
        blocks_per_stage: tuple[int, ...] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_channels: int = 3,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU()
        channels = STEM_CHANNELS
        for index, (width, num_blocks) in enumerate(zip(stage_channels, blocks_per_stage), start=1):
            blocks = []
            for block_index in range(num_blocks):
                # the network's first 1x1 conv reads the 24-channel stem, too few to group
                first_groups = 1 if channels == STEM_CHANNELS else groups
                stride = 2 if block_index == 0 else 1
                blocks.append(ShuffleV1Block(channels, width, stride, groups, first_groups))
                channels = width
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)
        self.default_taps = TapSet(
            last_map="layer3", penultimate="linear:input", stages=["layer1", "layer2", "layer3"]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))


class ShuffleV2Block(nn.Module):
    """Split the channels: one half passes, the other goes 1x1-dw3x3-1x1; concat, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        passed, processed = x.chunk(2, dim=1)
        processed = F.relu(self.bn1(self.conv1(processed)))
        processed = self.bn2(self.conv2(processed))
        processed = F.relu(self.bn3(self.conv3(processed)))
        return channel_shuffle(torch.cat([passed, processed], 1), 2)


class ShuffleV2DownBlock(nn.Module):
    """Both branches see the whole input at stride 2 (left: dw3x3-1x1, right: 1x1-dw3x3-1x1),
    each giving half the output channels; concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """1x1 stem, three stages (a down block then basic blocks), 1x1 head conv, linear head."""

    def __init__(
        self,
        stage_channels: tuple[int, ...] = (116, 232, 464),
        blocks_per_stage: tuple[int, ...] = (3, 7, 3),
        head_channels: int = 1024,
        num_classes: int = 100,
        in_channels: int = 3,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu1 = nn.ReLU()
        channels = STEM_CHANNELS
        for index, (width, num_blocks) in enumerate(zip(stage_channels, blocks_per_stage), start=1):
            blocks = [ShuffleV2DownBlock(channels, width)]
            blocks += [ShuffleV2Block(width) for _ in range(num_blocks)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            channels = width
        self.conv2 = nn.Conv2d(channels, head_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head_channels)
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(head_channels, num_classes)
        self.default_taps = TapSet(
            last_map="relu2", penultimate="linear:input", stages=["layer1", "layer2", "layer3"]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.linear(self.avgpool(x).flatten(1))


@register_model("shufflenetv1", input_size=32, family="cifar")
def shufflenetv1(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """ShuffleNetV1 g=3 (240-480-960 channels), ~0.95M parameters."""
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels)


@register_model("shufflenetv2", input_size=32, family="cifar")
def shufflenetv2(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """ShuffleNetV2 1x (116-232-464 channels, 1024-channel head), ~1.36M parameters."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels)
