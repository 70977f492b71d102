"""Hinton KD: match the teacher's temperature-softened class distribution.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS workshop 2015.
Defaults: T = 4, CE weight 0.1 and KD weight 0.9 (RepDistiller's CIFAR-100 setting: -r 0.1 -a 0.9).
The terms are the base class's shared CE + T^2 KL (`losses.kd_loss`); KD adds nothing else.
Pairs: any teacher and student predicting the same classes (logits only).
"""

from __future__ import annotations

from dataclasses import dataclass

from mimkd.distillers.base import DistillConfig, Distiller, with_default
from mimkd.distillers.registry import register_distiller


@dataclass
class KDConfig(DistillConfig):
    ce_weight: float = with_default("ce_weight", 0.1)
    kd_weight: float = with_default("kd_weight", 0.9)


@register_distiller("kd", paper="Hinton et al., 2015 (arXiv 1503.02531)", taps="logits")
class KnowledgeDistillation(Distiller):
    """Hinton KD: CE on labels plus T^2-scaled KL to the teacher's softened logits."""

    Config = KDConfig
    uses_teacher_logits = True

    def loss(self, step):
        return {}  # gamma * CE + alpha * T^2 KL, added by the base class, is all KD is
