"""Hinton KD: match the teacher's temperature-softened class distribution.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS workshop 2015.
Defaults: T = 4, CE weight 0.1 and KD weight 0.9 (RepDistiller's CIFAR-100 setting: -r 0.1 -a 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from mimkd.distillers import register_distiller
from mimkd.distillers.base import Distiller, StepOutput
from mimkd.distillers.losses import kd_loss


@dataclass
class KDConfig:
    temperature: float = 4.0  # softening temperature T (Hinton et al.; 4 in RepDistiller)
    ce_weight: float = 0.1  # gamma: weight of cross-entropy on the labels
    kd_weight: float = 0.9  # alpha: weight of the T^2-scaled KL term


@register_distiller("kd", paper="Hinton et al., 2015 (arXiv 1503.02531)", taps="logits")
class KnowledgeDistillation(Distiller):
    """Hinton KD: CE on labels plus T^2-scaled KL to the teacher's softened logits."""

    Config = KDConfig

    def __init__(self, student, teacher, config, context):
        super().__init__(student, teacher, config, context)
        self.check_teacher_logits()

    def forward_train(self, images, labels, indices=None) -> StepOutput:
        teacher_logits, _ = self.teacher_forward(images)
        logits = self.student(images)
        return StepOutput(
            logits,
            {
                "ce": self.config.ce_weight * F.cross_entropy(logits, labels),
                "kd": self.config.kd_weight
                * kd_loss(logits, teacher_logits, self.config.temperature),
            },
        )
