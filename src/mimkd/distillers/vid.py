"""Variational information distillation: maximise a variational lower bound on I(teacher; student).

Ahn et al., "Variational Information Distillation for Knowledge Transfer", CVPR 2019
(arXiv 1904.05835). Defaults are RepDistiller's CIFAR-100 setting (`--distill vid -r 1 -a 0 -b 1`,
kd_T 4) with the authors' `VIDLoss`: for every stage pair (RepDistiller's `feat[1:-1]`), a Gaussian
q(t | s) whose mean is three 1x1 convs (Cs -> Ct -> Ct -> Ct, ReLU between, no bias) of the
student map and whose per-channel variance is softplus(log_scale) + 1e-5, initialised to 5 (paper
eq. 4-5); loss = mean over elements of 0.5 * ((mu - t)^2 / var + log var), summed over pairs.

As in RepDistiller the larger map of a pair is average-pooled to the smaller's size; stages are
paired from the deepest when the counts differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mimkd.distillers import register_distiller
from mimkd.distillers.adapters import pair_taps, pool_to_common_size
from mimkd.distillers.base import Distiller, StepOutput, check_logits_match
from mimkd.errors import ShapeError


@dataclass
class VIDConfig:
    ce_weight: float = 1.0  # cross-entropy weight (RepDistiller -r)
    kd_weight: float = 0.0  # Hinton KD weight (RepDistiller -a); 0 leaves the term out
    temperature: float = 4.0  # KD temperature (RepDistiller --kd_T)
    distill_weight: float = 1.0  # VID loss weight (RepDistiller -b)
    initial_variance: float = 5.0  # initial variance of q(t | s) (authors' init_pred_var)
    variance_floor: float = 1e-5  # added to softplus(log_scale) (authors' eps)
    student_layers: list[str] = field(default_factory=list)  # student taps; empty: stages
    teacher_layers: list[str] = field(default_factory=list)  # teacher taps, paired in order


class GaussianRegressor(nn.Module):
    """q(t | s): a 1x1-conv mean network and a learned per-channel variance."""

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        initial_variance: float = 5.0,
        variance_floor: float = 1e-5,
    ):
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=1, bias=False),
        )
        # inverse softplus, so that softplus(log_scale) + floor starts at initial_variance
        inverse_softplus = math.log(math.expm1(initial_variance - variance_floor))
        self.log_scale = nn.Parameter(torch.full((teacher_channels,), inverse_softplus))
        self.variance_floor = variance_floor

    def variance(self) -> torch.Tensor:
        return F.softplus(self.log_scale) + self.variance_floor

    def forward(self, student_map: torch.Tensor) -> torch.Tensor:
        return self.mean(student_map)


def vid_loss(
    predicted_mean: torch.Tensor, variance: torch.Tensor, teacher_map: torch.Tensor
) -> torch.Tensor:
    """Gaussian negative log-likelihood (without the constant), averaged over all elements."""
    variance = variance.float().view(1, -1, 1, 1)
    squared_error = (predicted_mean.float() - teacher_map.float()).pow(2)
    return (0.5 * (squared_error / variance + torch.log(variance))).mean()


@register_distiller(
    "vid",
    paper="Ahn et al., CVPR 2019 (arXiv 1904.05835)",
    taps="stages (deepest paired), pooled to a common size + 1x1-conv Gaussian regressors",
)
class VariationalInformationDistillation(Distiller):
    """VID: Gaussian log-likelihood of teacher stages given regressed student stages."""

    Config = VIDConfig

    def __init__(self, student, teacher, config, context):
        super().__init__(student, teacher, config, context)
        self.pairs = pair_taps(
            config.student_layers,
            config.teacher_layers,
            self.student_taps.stages,
            self.teacher_taps.stages,
        )
        student_shapes = self.probe(student, [s for s, _ in self.pairs])
        teacher_shapes = self.probe(teacher, [t for _, t in self.pairs])
        for s, t in self.pairs:
            if len(student_shapes[s]) != 4 or len(teacher_shapes[t]) != 4:
                raise ShapeError(
                    f"VID regresses feature maps [B, C, H, W]; taps {(s, t)} give "
                    f"{tuple(student_shapes[s])} and {tuple(teacher_shapes[t])}. "
                    "Tap convolutional stages."
                )
        if config.kd_weight > 0:
            check_logits_match(student_shapes["logits"], teacher_shapes["logits"])
        self.regressors = nn.ModuleList(
            GaussianRegressor(
                student_shapes[s][1],
                teacher_shapes[t][1],
                config.initial_variance,
                config.variance_floor,
            )
            for s, t in self.pairs
        )
        self.tap_pairs(self.pairs)

    def forward_train(self, images, labels, indices=None) -> StepOutput:
        cfg = self.config
        teacher_logits, teacher_features = self.teacher_forward(images)
        logits, student_features = self.student_forward(images)
        vid = 0
        for regressor, (s, t) in zip(self.regressors, self.pairs):
            student_map, teacher_map = pool_to_common_size(student_features[s], teacher_features[t])
            vid = vid + vid_loss(regressor(student_map), regressor.variance(), teacher_map)
        losses = self.label_and_kd_terms(logits, teacher_logits, labels)
        losses["vid"] = cfg.distill_weight * vid
        return StepOutput(logits, losses, {"vid_nll": vid.detach()})
