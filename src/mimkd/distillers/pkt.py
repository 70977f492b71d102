"""Probabilistic knowledge transfer: match the distributions of pairwise cosine similarities.

Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018
(arXiv 1803.10837). Defaults are RepDistiller's CIFAR-100 setting (`--distill pkt -r 1 -a 0
-b 30000`, kd_T 4) with the authors' loss as RepDistiller ships it: on the penultimate vectors,
cosine similarities rescaled to [0, 1], each row normalised into a conditional distribution
(paper eq. 9 with the cosine kernel), and KL(teacher || student) averaged over all B^2 entries,
eps 1e-7; weight 30000.

Pairs: any two models: only batch-by-batch similarities are compared, so any widths and layouts
(flattened) pair with no adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimkd.distillers.base import Distiller, PairedLayersConfig
from mimkd.distillers.registry import register_distiller
from mimkd.features import flatten_vector
from mimkd.options import option


@dataclass
class PKTConfig(PairedLayersConfig):
    distill_weight: float = option(30000.0, "PKT loss weight (RepDistiller -b)", minimum=0)


def _conditional_similarities(features: torch.Tensor, eps: float) -> torch.Tensor:
    features = flatten_vector(features)
    # an all-zero row gives 0/eps = 0, never NaN; nan_to_num guards NaN inputs as the authors do
    unit = torch.nan_to_num(features / (features.norm(dim=1, keepdim=True) + eps), nan=0.0)
    similarity = (unit @ unit.t() + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    student_probs = _conditional_similarities(student, eps)
    teacher_probs = _conditional_similarities(teacher, eps)
    return (teacher_probs * torch.log((teacher_probs + eps) / (student_probs + eps))).mean()


@register_distiller(
    "pkt",
    paper="Passalis & Tefas, ECCV 2018 (arXiv 1803.10837)",
    taps="penultimate (cosine-similarity distributions within the batch)",
)
class ProbabilisticKT(Distiller):
    """PKT: KL between teacher and student conditional cosine-similarity distributions."""

    Config = PKTConfig
    min_batch_size = 2

    def setup(self):
        cfg = self.config
        self.pairs = self.tap_pairs(cfg.student_layers, cfg.teacher_layers, "penultimate")

    def loss(self, step):
        pkt = sum(pkt_loss(step.student[s], step.teacher[t]) for s, t in self.pairs)
        return {"pkt": self.config.distill_weight * pkt}, {"pkt_loss": pkt}
