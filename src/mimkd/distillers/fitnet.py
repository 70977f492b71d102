"""FitNets: regress an intermediate student map onto the teacher's ("hint") map.

Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (arXiv 1412.6550).
Defaults are RepDistiller's CIFAR-100 setting (`--distill hint -r 1 -a 0 -b 100`, kd_T 4):
CE weight 1, KD weight 0, hint weight 100, MSE between the regressed student map and the teacher
map. The hint layer is RepDistiller's `--hint_layer 2`: `hint_stage=1` indexes the model's TapSet
stages, which on CIFAR ResNets/WRNs (stages layer1..3, stem excluded) is `layer2`, the same layer.
RepDistiller counts the stem (or VGG's first block) as feature 0; a model whose TapSet lists that
block as its first stage (the zoo's VGGs: block0) matches RepDistiller with hint_stage=2.

Pairs: any two models with stages. Maps of any sizes and widths (`adapters.ConvRegressor`
resizes); a ViT's blocks arrive as maps of its patch grid; explicit pooled vectors get a linear
regressor. A model without stages uses its last map.

Deviations: RepDistiller trains hint and classifier jointly (no separate stage-1 hint training, as
in the paper), and so does this; its `ConvReg` is generalised to any pair of spatial sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkd.distillers.adapters import make_regressor
from mimkd.distillers.base import Distiller, PairedLayersConfig
from mimkd.distillers.registry import register_distiller
from mimkd.errors import ConfigError
from mimkd.features import TapSet
from mimkd.options import option


@dataclass
class FitNetConfig(PairedLayersConfig):
    distill_weight: float = option(100.0, "hint loss weight (RepDistiller -b)", minimum=0)
    hint_stage: int = option(
        1, "index into the TapSet stages; 1 = RepDistiller hint_layer 2 on ResNets"
    )


def hint_loss(regressed_student: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element (RepDistiller's HintLoss, nn.MSELoss)."""
    return F.mse_loss(regressed_student, teacher_feature)


def _hint_tap(taps: TapSet, index: int) -> str:
    if not taps.stages:
        return taps.last_map
    if not -len(taps.stages) <= index < len(taps.stages):
        raise ConfigError(
            f"hint_stage={index} but the model has {len(taps.stages)} stages {taps.stages}; "
            f"pick an index in [0, {len(taps.stages) - 1}] or name student_layers/teacher_layers."
        )
    return taps.stages[index]


@register_distiller(
    "fitnet",
    paper="Romero et al., ICLR 2015 (arXiv 1412.6550)",
    taps="one stage (hint_stage=1: the second stage) + a conv regressor",
)
class FitNet(Distiller):
    """FitNets hints: MSE between a regressed student stage and the teacher's same stage."""

    Config = FitNetConfig

    def setup(self):
        cfg = self.config
        explicit = bool(cfg.student_layers or cfg.teacher_layers)
        self.pairs = self.tap_pairs(
            cfg.student_layers,
            cfg.teacher_layers,
            lambda taps: _hint_tap(taps, cfg.hint_stage),
            maps=not explicit,  # named layers may be vectors or tokens; regressors fit each
        )
        self.regressors = nn.ModuleList(
            make_regressor(self.student_shapes[s], self.teacher_shapes[t]) for s, t in self.pairs
        )

    def loss(self, step):
        hint = sum(
            hint_loss(regressor(step.student[s]), step.teacher[t])
            for regressor, (s, t) in zip(self.regressors, self.pairs)
        )
        return {"fitnet": self.config.distill_weight * hint}, {"hint_mse": hint}
