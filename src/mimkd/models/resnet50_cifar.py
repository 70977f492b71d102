"""The CIFAR ResNet50 of the CRD tables (RepDistiller's `models/resnetv2.py`, `ResNet50`).

ImageNet's Bottleneck ResNet50 with a 3x3 stride-1 stem and no max-pool, so the four stages run at
32/16/8/4 pixels on CIFAR. RepDistiller names the head `linear` and the shortcut `shortcut`; here
they are `fc` and `downsample`, like the rest of the zoo.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mimkd.models.cifar_resnet import CifarResNet
from mimkd.models.layers import projection
from mimkd.models.registry import register_model


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4; ReLU after the residual sum."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


@register_model("resnet50", input_size=32, family="cifar")
def resnet50(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-50 (Bottleneck 3-4-6-3, 3x3 stem, no max-pool), ~23.7M parameters."""
    return CifarResNet(Bottleneck, (3, 4, 6, 3), 64, (64, 128, 256, 512), num_classes, in_channels)
