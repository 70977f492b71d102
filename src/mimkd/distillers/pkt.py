"""Probabilistic knowledge transfer: match the distributions of pairwise cosine similarities.

Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018
(arXiv 1803.10837). Defaults are RepDistiller's CIFAR-100 setting (`--distill pkt -r 1 -a 0
-b 30000`, kd_T 4) with the authors' loss as RepDistiller ships it: on the penultimate vectors,
cosine similarities rescaled to [0, 1], each row normalised into a conditional distribution
(paper eq. 9 with the cosine kernel), and KL(teacher || student) averaged over all B^2 entries,
eps 1e-7; weight 30000.

Only batch-by-batch similarities are compared, so any widths pair with no adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mimkd.distillers import register_distiller
from mimkd.distillers.adapters import pair_taps
from mimkd.distillers.base import Distiller, StepOutput
from mimkd.features import flatten_vector


@dataclass
class PKTConfig:
    ce_weight: float = 1.0  # cross-entropy weight (RepDistiller -r)
    kd_weight: float = 0.0  # Hinton KD weight (RepDistiller -a); 0 leaves the term out
    temperature: float = 4.0  # KD temperature (RepDistiller --kd_T)
    distill_weight: float = 30000.0  # PKT loss weight (RepDistiller -b)
    student_layers: list[str] = field(default_factory=list)  # student taps; empty: penultimate
    teacher_layers: list[str] = field(default_factory=list)  # teacher taps, paired in order


def _conditional_similarities(features: torch.Tensor, eps: float) -> torch.Tensor:
    features = flatten_vector(features.float())
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

    def __init__(self, student, teacher, config, context):
        super().__init__(student, teacher, config, context)
        self.pairs = pair_taps(
            config.student_layers,
            config.teacher_layers,
            [self.student_taps.penultimate],
            [self.teacher_taps.penultimate],
        )
        if config.kd_weight > 0:
            self.check_teacher_logits()
        self.tap_pairs(self.pairs)

    def forward_train(self, images, labels, indices=None) -> StepOutput:
        cfg = self.config
        self.check_batch(images)
        teacher_logits, teacher_features = self.teacher_forward(images)
        logits, student_features = self.student_forward(images)
        pkt = sum(pkt_loss(student_features[s], teacher_features[t]) for s, t in self.pairs)
        losses = self.label_and_kd_terms(logits, teacher_logits, labels)
        losses["pkt"] = cfg.distill_weight * pkt
        return StepOutput(logits, losses, {"pkt_loss": pkt.detach()})
