"""VGG with BatchNorm for CIFAR, as in the CRD tables: vgg8, vgg11, vgg13, vgg16, vgg19.

RepDistiller's `models/vgg.py` (its `vggN_bn`): five blocks of 3x3 conv-BN-ReLU, 2x max-pools after
the first three, global average pooling and a single 512 -> classes linear layer (no VGG FC stack).
On 32x32 inputs the last two blocks both run at 4x4: RepDistiller only pools between them for
64x64 inputs, which the CIFAR zoo does not read, so that pool is left out. Module names (`blockN`
Sequentials, `classifier`) equal theirs.
"""

from __future__ import annotations

import torch
from torch import nn

from mimkd.features import TapSet
from mimkd.models.layers import conv_bn_layers, initialize
from mimkd.models.registry import register_model

# convolution widths of the five blocks
VGG_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": (
        (64, 64),
        (128, 128),
        (256, 256, 256, 256),
        (512, 512, 512, 512),
        (512, 512, 512, 512),
    ),
}
POOLED_BLOCKS = 3  # blocks followed by a 2x max-pool: 32 -> 16 -> 8 -> 4


class VGG(nn.Module):
    """Five conv-BN-ReLU blocks, three max-pools, global average pooling, one linear head."""

    def __init__(
        self, config: tuple[tuple[int, ...], ...], num_classes: int = 100, in_channels: int = 3
    ):
        super().__init__()
        channels = in_channels
        self.block_names = tuple(f"block{index}" for index in range(len(config)))
        for name, widths in zip(self.block_names, config):
            layers: list[nn.Module] = []
            for width in widths:
                layers += conv_bn_layers(channels, width, bias=True)
                channels = width
            self.add_module(name, nn.Sequential(*layers))
        for index in range(POOLED_BLOCKS):
            self.add_module(f"pool{index}", nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        initialize(self, linear_std=0.01)
        self.default_taps = TapSet(
            last_map=self.block_names[-1],
            penultimate="classifier:input",
            stages=list(self.block_names),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, name in enumerate(self.block_names):
            x = getattr(self, name)(x)
            if index < POOLED_BLOCKS:
                x = getattr(self, f"pool{index}")(x)
        return self.classifier(self.avgpool(x).flatten(1))


@register_model("vgg8", input_size=32, family="cifar")
def vgg8(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """VGG-8 with BatchNorm (one conv per block), ~3.97M parameters."""
    return VGG(VGG_CONFIGS["vgg8"], num_classes, in_channels)


@register_model("vgg11", input_size=32, family="cifar")
def vgg11(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """VGG-11 with BatchNorm (configuration A), ~9.28M parameters."""
    return VGG(VGG_CONFIGS["vgg11"], num_classes, in_channels)


@register_model("vgg13", input_size=32, family="cifar")
def vgg13(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """VGG-13 with BatchNorm (configuration B), ~9.46M parameters."""
    return VGG(VGG_CONFIGS["vgg13"], num_classes, in_channels)


@register_model("vgg16", input_size=32, family="cifar")
def vgg16(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """VGG-16 with BatchNorm (configuration D), ~14.8M parameters."""
    return VGG(VGG_CONFIGS["vgg16"], num_classes, in_channels)


@register_model("vgg19", input_size=32, family="cifar")
def vgg19(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """VGG-19 with BatchNorm (configuration E), ~20.1M parameters."""
    return VGG(VGG_CONFIGS["vgg19"], num_classes, in_channels)
