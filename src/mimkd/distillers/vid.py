"""Variational information distillation: maximise a variational lower bound on I(teacher; student).

Ahn et al., "Variational Information Distillation for Knowledge Transfer", CVPR 2019
(arXiv 1904.05835). Defaults are RepDistiller's CIFAR-100 setting (`--distill vid -r 1 -a 0 -b 1`,
kd_T 4) with the authors' `VIDLoss`: for every stage pair (RepDistiller's `feat[1:-1]`), a Gaussian
q(t | s) whose mean is three 1x1 convs (Cs -> Ct -> Ct -> Ct, ReLU between, no bias) of the
student map and whose per-channel variance is softplus(log_scale) + 1e-5, initialised to 5 (paper
eq. 4-5); loss = mean over elements of 0.5 * ((mu - t)^2 / var + log var), summed over pairs.

Pairs: any two models with spatial stages (paired from the deepest when the counts differ; any
widths, as the regressor maps Cs -> Ct); as in RepDistiller the larger map of a pair is
average-pooled to the smaller's size; a ViT's blocks arrive as maps of its patch grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkd.distillers.adapters import pool_to_common_size
from mimkd.distillers.base import Distiller, PairedLayersConfig
from mimkd.distillers.registry import register_distiller
from mimkd.options import option


@dataclass
class VIDConfig(PairedLayersConfig):
    distill_weight: float = option(1.0, "VID loss weight (RepDistiller -b)", minimum=0)
    initial_variance: float = option(
        5.0, "initial variance of q(t | s) (authors' init_pred_var)", greater_than=0
    )
    variance_floor: float = option(
        1e-5, "added to softplus(log_scale) (authors' eps)", greater_than=0
    )


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
    variance = variance.view(1, -1, 1, 1)
    squared_error = (predicted_mean - teacher_map).pow(2)
    return (0.5 * (squared_error / variance + torch.log(variance))).mean()


@register_distiller(
    "vid",
    paper="Ahn et al., CVPR 2019 (arXiv 1904.05835)",
    taps="stages (deepest paired), pooled to a common size + 1x1-conv Gaussian regressors",
)
class VariationalInformationDistillation(Distiller):
    """VID: Gaussian log-likelihood of teacher stages given regressed student stages."""

    Config = VIDConfig

    def setup(self):
        cfg = self.config
        self.pairs = self.tap_pairs(cfg.student_layers, cfg.teacher_layers, "stages", maps=True)
        self.regressors = nn.ModuleList(
            GaussianRegressor(
                self.student_shapes[s][1],
                self.teacher_shapes[t][1],
                cfg.initial_variance,
                cfg.variance_floor,
            )
            for s, t in self.pairs
        )

    def loss(self, step):
        vid = 0
        for regressor, (s, t) in zip(self.regressors, self.pairs):
            student_map, teacher_map = pool_to_common_size(step.student[s], step.teacher[t])
            vid = vid + vid_loss(regressor(student_map), regressor.variance(), teacher_map)
        return {"vid": self.config.distill_weight * vid}, {"vid_nll": vid}
