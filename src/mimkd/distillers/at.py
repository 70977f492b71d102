"""Attention transfer: match where each stage "looks", as normalised spatial attention maps.

Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017 (arXiv 1612.03928).
Defaults are RepDistiller's CIFAR-100 setting (`--distill attention -r 1 -a 0 -b 1000`, kd_T 4):
attention map = L2-normalised flattened channel mean of f^p with p = 2 (RepDistiller's
`Attention(p=2)`), loss = mean squared difference, summed over the stage pairs (RepDistiller's
`feat[1:-1]`, i.e. every stage after the stem), weight 1000.

Pairs: any two models with spatial stages (the deepest stages paired when the counts differ);
widths may differ (attention averages over channels); the larger map of a pair is average-pooled
to the smaller one's size (as RepDistiller does); a ViT's blocks arrive as maps of its patch grid.

Deviations: as RepDistiller (not the paper's beta/2 * ||.||_2 per layer), the loss is the mean of
squared differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mimkd.distillers.adapters import pool_to_common_size
from mimkd.distillers.base import Distiller, PairedLayersConfig
from mimkd.distillers.registry import register_distiller
from mimkd.features import as_locations
from mimkd.options import option


@dataclass
class ATConfig(PairedLayersConfig):
    distill_weight: float = option(1000.0, "attention loss weight (RepDistiller -b)", minimum=0)
    p: float = option(
        2.0, "exponent of the attention map mean_c |f|^p (paper section 3.1)", greater_than=0
    )


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """[B, C, H, W] maps or [B, N, C] tokens -> [B, locations]: normalise(mean_c |f|^p)."""
    locations = as_locations(feature)  # [B, L, C]
    return F.normalize(locations.abs().pow(p).mean(dim=2), dim=1)


def attention_transfer_loss(
    student_feature: torch.Tensor, teacher_feature: torch.Tensor, p: float = 2.0
) -> torch.Tensor:
    if student_feature.dim() == 4 and teacher_feature.dim() == 4:
        student_feature, teacher_feature = pool_to_common_size(student_feature, teacher_feature)
    return (attention_map(student_feature, p) - attention_map(teacher_feature, p)).pow(2).mean()


@register_distiller(
    "at",
    paper="Zagoruyko & Komodakis, ICLR 2017 (arXiv 1612.03928)",
    taps="stages (deepest paired), pooled to a common size",
)
class AttentionTransfer(Distiller):
    """Attention transfer: squared distance between normalised spatial attention maps."""

    Config = ATConfig

    def setup(self):
        cfg = self.config
        self.pairs = self.tap_pairs(cfg.student_layers, cfg.teacher_layers, "stages", maps=True)

    def loss(self, step):
        at = sum(
            attention_transfer_loss(step.student[s], step.teacher[t], self.config.p)
            for s, t in self.pairs
        )
        return {"at": self.config.distill_weight * at}, {"at_loss": at}
