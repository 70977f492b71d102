"""Cross-entropy alone: the student trained without a teacher (the baseline every table needs).

Pairs: no teacher. The whole loss is the base class's label term (`ce_weight`, `label_smoothing`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mimkd.distillers.base import DistillConfig, Distiller
from mimkd.distillers.registry import register_distiller


@dataclass
class CEConfig(DistillConfig):
    pass


@register_distiller("ce", paper="-", taps="logits")
class CrossEntropy(Distiller):
    """Student alone with cross-entropy on the labels (no teacher)."""

    Config = CEConfig
    needs_teacher = False

    def loss(self, step):
        return {}  # the label term is the base class's
