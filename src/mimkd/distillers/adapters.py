"""Trainable adapters that map student features onto the teacher's shape (shared by methods).

Every adapter is built from shapes a method has probed with one dummy forward (`Distiller.probe`),
so a method never hard-codes channel counts and works on pairs of different architectures. Shapes
include the batch dimension, as `probe` returns them ([B, C, H, W] maps, [B, N, C] tokens, [B, D]
vectors); the batch size is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mimkd.errors import ConfigError, ShapeError
from mimkd.features import flatten_vector

Shape = Sequence[int]


def _map_shape(shape: Shape, role: str) -> tuple[int, int, int]:
    if len(shape) != 4:
        raise ShapeError(
            f"the {role} feature has shape {tuple(shape)}, but a convolutional adapter needs a "
            "feature map [B, C, H, W]; tap a convolutional layer (a stage or last_map)."
        )
    return int(shape[1]), int(shape[2]), int(shape[3])


class ConvRegressor(nn.Module):
    """RepDistiller's `ConvReg`, generalised: student map [B, Cs, Hs, Ws] -> teacher [B, Ct, Ht, Wt].

    RepDistiller's three spatial cases are kept (same size: 1x1 conv; student twice the teacher:
    3x3 stride-2 conv; half: 4x4 stride-2 transposed conv; slightly larger: a valid conv whose kernel
    absorbs the difference). Any other ratio, which RepDistiller rejects, resizes first (average
    pooling to shrink, bilinear interpolation to grow) and then applies a 3x3 conv. BatchNorm (and
    ReLU, as in FitNets' regressor) follow, as in RepDistiller.
    """

    # a valid conv larger than this absorbs too much of the map; resize instead
    max_valid_kernel = 5

    def __init__(self, student_shape: Shape, teacher_shape: Shape, use_relu: bool = True):
        super().__init__()
        s_channels, s_height, s_width = _map_shape(student_shape, "student")
        t_channels, t_height, t_width = _map_shape(teacher_shape, "teacher")
        self.target_size = (t_height, t_width)
        self.resize: str | None = None
        same = (s_height, s_width) == (t_height, t_width)
        if same:
            self.conv: nn.Module = nn.Conv2d(s_channels, t_channels, kernel_size=1)
        elif (s_height, s_width) == (2 * t_height, 2 * t_width):
            self.conv = nn.Conv2d(s_channels, t_channels, kernel_size=3, stride=2, padding=1)
        elif (2 * s_height, 2 * s_width) == (t_height, t_width):
            self.conv = nn.ConvTranspose2d(
                s_channels, t_channels, kernel_size=4, stride=2, padding=1
            )
        elif (
            s_height >= t_height
            and s_width >= t_width
            and max(1 + s_height - t_height, 1 + s_width - t_width) <= self.max_valid_kernel
        ):
            kernel = (1 + s_height - t_height, 1 + s_width - t_width)
            self.conv = nn.Conv2d(s_channels, t_channels, kernel_size=kernel)
        else:
            self.resize = "pool" if s_height >= t_height and s_width >= t_width else "bilinear"
            self.conv = nn.Conv2d(s_channels, t_channels, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(t_channels)
        self.use_relu = use_relu

    def forward(self, student_map: torch.Tensor) -> torch.Tensor:
        if self.resize == "pool":
            student_map = F.adaptive_avg_pool2d(student_map, self.target_size)
        elif self.resize == "bilinear":
            student_map = F.interpolate(
                student_map, size=self.target_size, mode="bilinear", align_corners=False
            )
        out = self.bn(self.conv(student_map))
        return F.relu(out) if self.use_relu else out


class TokenRegressor(nn.Module):
    """Tokens [B, N, Cs] -> [B, N, Ct] by a per-token linear map (needs equal token counts)."""

    def __init__(self, student_shape: Shape, teacher_shape: Shape):
        super().__init__()
        if len(student_shape) != 3 or len(teacher_shape) != 3:
            raise ShapeError(
                f"token adapter needs [B, N, C] on both sides; got {tuple(student_shape)} and "
                f"{tuple(teacher_shape)}."
            )
        if student_shape[1] != teacher_shape[1]:
            raise ShapeError(
                f"student has {student_shape[1]} tokens and the teacher {teacher_shape[1]}; "
                "tap layers with the same number of tokens."
            )
        self.linear = nn.Linear(int(student_shape[2]), int(teacher_shape[2]))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens)


class LinearRegressor(nn.Module):
    """Any student feature, flattened to [B, Ds], -> the teacher's shape via one linear layer."""

    def __init__(self, student_shape: Shape, teacher_shape: Shape):
        super().__init__()
        self.target_shape = tuple(int(d) for d in teacher_shape[1:])
        in_dim = flat_size(student_shape)
        out_dim = flat_size(teacher_shape)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        out = self.linear(flatten_vector(feature))
        return out.reshape(out.shape[0], *self.target_shape)


def flat_size(shape: Shape) -> int:
    """Elements per sample of a probed shape (everything after the batch dimension)."""
    size = 1
    for dim in shape[1:]:
        size *= int(dim)
    return size


def make_regressor(student_shape: Shape, teacher_shape: Shape, use_relu: bool = True) -> nn.Module:
    """The adapter that fits the layout: maps -> ConvRegressor, tokens -> TokenRegressor,
    vectors -> LinearRegressor. Mixed layouts (a map and a vector) are a ShapeError."""
    s_rank, t_rank = len(student_shape), len(teacher_shape)
    if s_rank == 4 and t_rank == 4:
        return ConvRegressor(student_shape, teacher_shape, use_relu=use_relu)
    if s_rank == 3 and t_rank == 3:
        return TokenRegressor(student_shape, teacher_shape)
    if s_rank == 2 and t_rank == 2:
        return LinearRegressor(student_shape, teacher_shape)
    raise ShapeError(
        f"cannot regress a student feature of shape {tuple(student_shape)} onto a teacher feature "
        f"of shape {tuple(teacher_shape)}: tap layers of the same kind (both maps, both tokens or "
        "both pooled vectors)."
    )


class LinearEmbed(nn.Module):
    """RepDistiller's `Embed`: flatten, one linear layer, then (optionally) L2-normalise each row.

    Used to project students and teachers of different widths into one embedding space (CRD).
    """

    def __init__(self, in_dim: int, out_dim: int = 128, normalize: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.normalize = normalize

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        out = self.linear(flatten_vector(feature))
        return F.normalize(out, p=2, dim=1) if self.normalize else out


class ConvEmbed(nn.Module):
    """1x1 conv (+ BatchNorm, optional ReLU) from Cs to Ct channels, keeping the spatial size.

    For methods that align spatial size themselves (pooling) and only need matching channels.
    """

    def __init__(self, in_channels: int, out_channels: int, use_relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.use_relu = use_relu

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(feature_map))
        return F.relu(out) if self.use_relu else out


def pool_to_common_size(
    student_map: torch.Tensor, teacher_map: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two maps to the smaller one's H x W (RepDistiller's AT and VID).

    Pooling, rather than upsampling the smaller, adds no information the smaller map lacks.
    """
    s_size, t_size = student_map.shape[-2:], teacher_map.shape[-2:]
    if s_size == t_size:
        return student_map, teacher_map
    common = (min(s_size[0], t_size[0]), min(s_size[1], t_size[1]))
    if s_size != common:
        student_map = F.adaptive_avg_pool2d(student_map, common)
    if t_size != common:
        teacher_map = F.adaptive_avg_pool2d(teacher_map, common)
    return student_map, teacher_map


def pair_stages(
    student_stages: Sequence[str], teacher_stages: Sequence[str]
) -> list[tuple[str, str]]:
    """Pair the deepest stages of two models when their counts differ.

    RepDistiller zips the intermediate features of both models; with unequal counts the deepest
    stages carry the most comparable (semantic) information, so the shallow extras are dropped.
    """
    count = min(len(student_stages), len(teacher_stages))
    if count == 0:
        raise ShapeError(
            "no stages to pair: a model exposes no stage outputs; name the taps explicitly "
            "(student_layers=[...], teacher_layers=[...])."
        )
    return list(zip(student_stages[-count:], teacher_stages[-count:]))


def pair_taps(
    student_layers: Sequence[str],
    teacher_layers: Sequence[str],
    default_student: Sequence[str],
    default_teacher: Sequence[str],
) -> list[tuple[str, str]]:
    """The (student, teacher) tap pairs a method reads: the config's lists, else the defaults.

    Explicit lists are paired in order and must have equal lengths; defaults are paired from the
    deepest end (`pair_stages`), so models with different stage counts still pair.
    """
    if student_layers or teacher_layers:
        if len(student_layers) != len(teacher_layers):
            raise ConfigError(
                f"student_layers has {len(student_layers)} taps and teacher_layers "
                f"{len(teacher_layers)}; give both, of equal length (pairs are matched in order)."
            )
        return list(zip(student_layers, teacher_layers))
    return pair_stages(default_student, default_teacher)


__all__ = [
    "ConvEmbed",
    "ConvRegressor",
    "LinearEmbed",
    "LinearRegressor",
    "TokenRegressor",
    "flat_size",
    "make_regressor",
    "pair_stages",
    "pair_taps",
    "pool_to_common_size",
]
