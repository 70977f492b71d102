"""Similarity-preserving KD: inputs similar for the teacher should be similar for the student.

Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019 (arXiv 1907.09682).
Defaults are RepDistiller's CIFAR-100 setting (`--distill similarity -r 1 -a 0 -b 3000`, kd_T 4):
on the last feature map (RepDistiller's `feat[-2]`), G = F F^T over the flattened batch, each row
L2-normalised (paper eq. 2), loss = ||G_t - G_s||_F^2 / B^2 (eq. 3), weight 3000.

Pairs: any two models. Only batch-by-batch Gram matrices are compared, so any widths, spatial
sizes and layouts (maps, tokens, vectors) work with no adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mimkd.distillers.base import Distiller, PairedLayersConfig
from mimkd.distillers.registry import register_distiller
from mimkd.features import flatten_vector
from mimkd.options import option


@dataclass
class SPConfig(PairedLayersConfig):
    distill_weight: float = option(3000.0, "similarity loss weight (RepDistiller -b)", minimum=0)


def similarity_preserving_loss(
    student_feature: torch.Tensor, teacher_feature: torch.Tensor
) -> torch.Tensor:
    batch = student_feature.shape[0]
    student_flat = flatten_vector(student_feature)
    teacher_flat = flatten_vector(teacher_feature)
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

    def setup(self):
        cfg = self.config
        self.pairs = self.tap_pairs(cfg.student_layers, cfg.teacher_layers, "last_map")

    def loss(self, step):
        sp = sum(
            similarity_preserving_loss(step.student[s], step.teacher[t]) for s, t in self.pairs
        )
        return {"sp": self.config.distill_weight * sp}, {"sp_loss": sp}
