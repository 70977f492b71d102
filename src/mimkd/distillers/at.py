"""Attention transfer: match where each stage "looks", as normalised spatial attention maps.

Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017 (arXiv 1612.03928).
Defaults are RepDistiller's CIFAR-100 setting (`--distill attention -r 1 -a 0 -b 1000`, kd_T 4):
attention map = L2-normalised flattened channel mean of f^p with p = 2 (RepDistiller's
`Attention(p=2)`), loss = mean squared difference, summed over the stage pairs (RepDistiller's
`feat[1:-1]`, i.e. every stage after the stem), weight 1000.

Deviations: as RepDistiller (not the paper's beta/2 * ||.||_2 per layer), the loss is the mean of
squared differences. When the two models' maps differ in size the larger is average-pooled to the
smaller (RepDistiller does the same); when they have different numbers of stages the deepest
stages are paired.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mimkd.distillers import register_distiller
from mimkd.distillers.adapters import pair_taps, pool_to_common_size
from mimkd.distillers.base import Distiller, StepOutput, check_logits_match
from mimkd.errors import ShapeError
from mimkd.features import as_locations


@dataclass
class ATConfig:
    ce_weight: float = 1.0  # cross-entropy weight (RepDistiller -r)
    kd_weight: float = 0.0  # Hinton KD weight (RepDistiller -a); 0 leaves the term out
    temperature: float = 4.0  # KD temperature (RepDistiller --kd_T)
    distill_weight: float = 1000.0  # attention loss weight (RepDistiller -b)
    p: float = 2.0  # exponent of the attention map mean_c |f|^p (paper section 3.1)
    student_layers: list[str] = field(default_factory=list)  # student taps; empty: stages
    teacher_layers: list[str] = field(default_factory=list)  # teacher taps, paired in order


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """[B, C, H, W] maps or [B, N, C] tokens -> [B, locations]: normalise(mean_c |f|^p)."""
    locations = as_locations(feature.float())  # [B, L, C]
    return F.normalize(locations.abs().pow(p).mean(dim=2), dim=1)


def attention_transfer_loss(
    student_feature: torch.Tensor, teacher_feature: torch.Tensor, p: float = 2.0
) -> torch.Tensor:
    if student_feature.dim() == 4 and teacher_feature.dim() == 4:
        student_feature, teacher_feature = pool_to_common_size(student_feature, teacher_feature)
    return (attention_map(student_feature, p) - attention_map(teacher_feature, p)).pow(2).mean()


def _check_pair(student_shape, teacher_shape, pair) -> None:
    ranks = (len(student_shape), len(teacher_shape))
    if ranks == (4, 4):
        return
    if ranks == (3, 3) and student_shape[1] == teacher_shape[1]:
        return
    raise ShapeError(
        f"attention transfer needs two feature maps [B, C, H, W] (or token sequences of equal "
        f"length); taps {pair} give {tuple(student_shape)} and {tuple(teacher_shape)}. "
        "Tap spatial layers (stages)."
    )


@register_distiller(
    "at",
    paper="Zagoruyko & Komodakis, ICLR 2017 (arXiv 1612.03928)",
    taps="stages (deepest paired), pooled to a common size",
)
class AttentionTransfer(Distiller):
    """Attention transfer: squared distance between normalised spatial attention maps."""

    Config = ATConfig

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
            _check_pair(student_shapes[s], teacher_shapes[t], (s, t))
        if config.kd_weight > 0:
            check_logits_match(student_shapes["logits"], teacher_shapes["logits"])
        self.tap_pairs(self.pairs)

    def forward_train(self, images, labels, indices=None) -> StepOutput:
        cfg = self.config
        teacher_logits, teacher_features = self.teacher_forward(images)
        logits, student_features = self.student_forward(images)
        at = sum(
            attention_transfer_loss(student_features[s], teacher_features[t], cfg.p)
            for s, t in self.pairs
        )
        losses = self.label_and_kd_terms(logits, teacher_logits, labels)
        losses["at"] = cfg.distill_weight * at
        return StepOutput(logits, losses, {"at_loss": at.detach()})
