"""FitNets: regress an intermediate student map onto the teacher's ("hint") map.

Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (arXiv 1412.6550).
Defaults are RepDistiller's CIFAR-100 setting (`--distill hint -r 1 -a 0 -b 100`, kd_T 4):
CE weight 1, KD weight 0, hint weight 100, MSE between the regressed student map and the teacher
map. The hint layer is RepDistiller's `--hint_layer 2`: `hint_stage=1` indexes the model's TapSet
stages, which on CIFAR ResNets/WRNs (stages layer1..3, stem excluded) is `layer2`, the same layer.
RepDistiller counts the stem (or VGG's first block) as feature 0; a model whose TapSet lists that
block as its first stage (the zoo's VGGs: block0) matches RepDistiller with hint_stage=2.

Deviations: RepDistiller trains hint and classifier jointly (no separate stage-1 hint training, as
in the paper), and so does this; its `ConvReg` is generalised to any pair of spatial sizes
(`adapters.ConvRegressor`), and vectors or tokens get a linear regressor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mimkd.distillers import register_distiller
from mimkd.distillers.adapters import make_regressor, pair_taps
from mimkd.distillers.base import Distiller, StepOutput, check_logits_match
from mimkd.errors import ConfigError


@dataclass
class FitNetConfig:
    ce_weight: float = 1.0  # cross-entropy weight (RepDistiller -r)
    kd_weight: float = 0.0  # Hinton KD weight (RepDistiller -a); 0 leaves the term out
    temperature: float = 4.0  # KD temperature (RepDistiller --kd_T)
    distill_weight: float = 100.0  # hint loss weight (RepDistiller -b)
    hint_stage: int = 1  # index into the TapSet stages; 1 = RepDistiller hint_layer 2 on ResNets
    student_layers: list[str] = field(default_factory=list)  # student taps; overrides hint_stage
    teacher_layers: list[str] = field(default_factory=list)  # teacher taps, paired in order


def hint_loss(regressed_student: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element (RepDistiller's HintLoss, nn.MSELoss)."""
    return F.mse_loss(regressed_student.float(), teacher_feature.float())


def _hint_tap(stages: list[str], last_map: str, index: int) -> str:
    if not stages:
        return last_map
    if not -len(stages) <= index < len(stages):
        raise ConfigError(
            f"hint_stage={index} but the model has {len(stages)} stages {stages}; "
            f"pick an index in [0, {len(stages) - 1}] or name student_layers/teacher_layers."
        )
    return stages[index]


@register_distiller(
    "fitnet",
    paper="Romero et al., ICLR 2015 (arXiv 1412.6550)",
    taps="one stage (hint_stage=1: the second stage) + a conv regressor",
)
class FitNet(Distiller):
    """FitNets hints: MSE between a regressed student stage and the teacher's same stage."""

    Config = FitNetConfig

    def __init__(self, student, teacher, config, context):
        super().__init__(student, teacher, config, context)
        default_student = [
            _hint_tap(self.student_taps.stages, self.student_taps.last_map, config.hint_stage)
        ]
        default_teacher = [
            _hint_tap(self.teacher_taps.stages, self.teacher_taps.last_map, config.hint_stage)
        ]
        self.pairs = pair_taps(
            config.student_layers, config.teacher_layers, default_student, default_teacher
        )
        student_shapes = self.probe(student, [s for s, _ in self.pairs])
        teacher_shapes = self.probe(teacher, [t for _, t in self.pairs])
        if config.kd_weight > 0:
            check_logits_match(student_shapes["logits"], teacher_shapes["logits"])
        self.regressors = nn.ModuleList(
            make_regressor(student_shapes[s], teacher_shapes[t]) for s, t in self.pairs
        )
        self.tap_pairs(self.pairs)

    def forward_train(self, images, labels, indices=None) -> StepOutput:
        cfg = self.config
        teacher_logits, teacher_features = self.teacher_forward(images)
        logits, student_features = self.student_forward(images)
        hint = sum(
            hint_loss(regressor(student_features[s]), teacher_features[t])
            for regressor, (s, t) in zip(self.regressors, self.pairs)
        )
        losses = self.label_and_kd_terms(logits, teacher_logits, labels)
        losses["fitnet"] = cfg.distill_weight * hint
        return StepOutput(logits, losses, {"hint_mse": hint.detach()})
