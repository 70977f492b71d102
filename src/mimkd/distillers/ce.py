"""Cross-entropy alone: the student trained without a teacher (the baseline every table needs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from mimkd.distillers import register_distiller
from mimkd.distillers.base import Distiller, StepOutput


@dataclass
class CEConfig:
    ce_weight: float = 1.0  # weight of cross-entropy on the labels
    label_smoothing: float = 0.0  # label smoothing of the cross-entropy


@register_distiller("ce", paper="-", taps="logits")
class CrossEntropy(Distiller):
    """Student alone with cross-entropy on the labels (no teacher)."""

    Config = CEConfig
    needs_teacher = False

    def forward_train(self, images, labels, indices=None) -> StepOutput:
        logits = self.student(images)
        ce = F.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)
        return StepOutput(logits, {"ce": self.config.ce_weight * ce})
