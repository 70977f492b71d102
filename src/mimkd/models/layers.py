"""Building blocks shared by the CIFAR zoo (RepDistiller's layer conventions and weight init)."""

from __future__ import annotations

from torch import nn


def conv_bn_layers(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    relu: bool = True,
    bias: bool = False,
) -> list[nn.Module]:
    """Conv (same padding), BatchNorm and optionally ReLU, as a list to splice into a Sequential."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=bias,
        ),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU())
    return layers


def initialize(model: nn.Module, linear_std: float | None = None, zero_linear_bias: bool = False):
    """RepDistiller's initialisation: He (fan-out) convolutions, BN at identity, and for some
    families an N(0, linear_std) classifier with zero bias."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(module.weight, 0.0, linear_std)
            if linear_std is not None or zero_linear_bias:
                nn.init.zeros_(module.bias)


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The 1x1 conv + BN shortcut used when a block changes resolution or width, else None."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )
