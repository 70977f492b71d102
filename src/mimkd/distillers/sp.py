"""Similarity-preserving KD: inputs similar for the teacher should be similar for the student.

Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019 (arXiv 1907.09682).
Defaults are RepDistiller's CIFAR-100 setting (`--distill similarity -r 1 -a 0 -b 3000`, kd_T 4):
on the last feature map (RepDistiller's `feat[-2]`), G = F F^T over the flattened batch, each row
L2-normalised (paper eq. 2), loss = ||G_t - G_s||_F^2 / B^2 (eq. 3), weight 3000.

Only batch-by-batch Gram matrices are compared, so any pair of widths and spatial sizes works with
no adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mimkd.distillers import register_distiller
from mimkd.distillers.adapters import pair_taps
from mimkd.distillers.base import Distiller, StepOutput
from mimkd.features import flatten_vector


@dataclass
class SPConfig:
    ce_weight: float = 1.0  # cross-entropy weight (RepDistiller -r)
    kd_weight: float = 0.0  # Hinton KD weight (RepDistiller -a); 0 leaves the term out
    temperature: float = 4.0  # KD temperature (RepDistiller --kd_T)
    distill_weight: float = 3000.0  # similarity loss weight (RepDistiller -b)
    student_layers: list[str] = field(default_factory=list)  # student taps; empty: last_map
    teacher_layers: list[str] = field(default_factory=list)  # teacher taps, paired in order


def similarity_preserving_loss(
    student_feature: torch.Tensor, teacher_feature: torch.Tensor
) -> torch.Tensor:
    batch = student_feature.shape[0]
    student_flat = flatten_vector(student_feature.float())
    teacher_flat = flatten_vector(teacher_feature.float())
    student_gram = F.normalize(student_flat @ student_flat.t(), dim=1)
    teacher_gram = F.normalize(teacher_flat @ teacher_flat.t(), dim=1)
    return (teacher_gram - student_gram).pow(2).sum() / (batch * batch)


@register_distiller(
    "sp",
    paper="Tung & Mori, ICCV 2019 (arXiv 1907.09682)",
    taps="last_map (any widths/sizes: batch Gram matrices)",
)
class SimilarityPreserving(Distiller):
    """SP: match the row-normalised batch similarity (Gram) matrices of the last maps."""

    Config = SPConfig
    min_batch_size = 2

    def __init__(self, student, teacher, config, context):
        super().__init__(student, teacher, config, context)
        self.pairs = pair_taps(
            config.student_layers,
            config.teacher_layers,
            [self.student_taps.last_map],
            [self.teacher_taps.last_map],
        )
        if config.kd_weight > 0:
            self.check_teacher_logits()
        self.tap_pairs(self.pairs)

    def forward_train(self, images, labels, indices=None) -> StepOutput:
        cfg = self.config
        self.check_batch(images)
        teacher_logits, teacher_features = self.teacher_forward(images)
        logits, student_features = self.student_forward(images)
        sp = sum(
            similarity_preserving_loss(student_features[s], teacher_features[t])
            for s, t in self.pairs
        )
        losses = self.label_and_kd_terms(logits, teacher_logits, labels)
        losses["sp"] = cfg.distill_weight * sp
        return StepOutput(logits, losses, {"sp_loss": sp.detach()})
