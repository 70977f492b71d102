"""Small CNNs for 28x28 / 32x32 quick runs (Fashion-MNIST quickstart, tests).

`cnn_tiny` (~3.8k parameters) is the "extremely low capacity" student of MIMKD.md; `cnn_small`
(~56k) the teacher it learns from. Both read any input size: their head pools globally.
"""

from __future__ import annotations

from torch import nn

from mimkd.features import TapSet
from mimkd.models.registry import register_model


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallConvNet(nn.Module):
    """Three conv stages (two 2x max-pools), global average pooling, one linear head."""

    def __init__(self, widths: tuple[int, int, int], num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stage1 = nn.Sequential(conv_bn_relu(in_channels, widths[0]), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(conv_bn_relu(widths[0], widths[1]), nn.MaxPool2d(2))
        self.stage3 = conv_bn_relu(widths[1], widths[2])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        self.default_taps = TapSet(
            last_map="stage3", penultimate="fc:input", stages=["stage1", "stage2", "stage3"]
        )

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.pool(x).flatten(1))


@register_model("cnn_tiny", input_size=28, family="mnist")
def cnn_tiny(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A ~3.8k-parameter CNN (8-16-16 channels): the extremely-low-capacity student."""
    return SmallConvNet((8, 16, 16), num_classes, in_channels)


@register_model("cnn_small", input_size=28, family="mnist")
def cnn_small(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A ~56k-parameter CNN (32-64-64 channels): the quickstart teacher."""
    return SmallConvNet((32, 64, 64), num_classes, in_channels)
