"""Correlation congruence: transfer the correlation between instances, not only each instance.

Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019 (arXiv 1904.01802).
Defaults are RepDistiller's CIFAR-100 setting (`--distill correlation -r 1 -a 0 -b 0.02`, kd_T 4):
both penultimate vectors are projected by a trainable linear embedding to 128 dimensions
(RepDistiller's `LinearEmbed`, `--feat_dim 128`, no normalisation), and the loss is RepDistiller's
`Correlation` (code the CC authors sent to RepDistiller): with delta = |e_s - e_t|, the batch mean of
sum_d delta[i] * delta[i+1] over consecutive samples; weight 0.02.

Deviation from the paper: this is RepDistiller's formulation (which produced the CC numbers every
later table quotes), not the paper's Gaussian-RBF correlation matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mimkd.distillers import register_distiller
from mimkd.distillers.adapters import LinearEmbed, flat_size, pair_taps
from mimkd.distillers.base import Distiller, StepOutput, check_logits_match
from mimkd.features import flatten_vector


@dataclass
class CCConfig:
    ce_weight: float = 1.0  # cross-entropy weight (RepDistiller -r)
    kd_weight: float = 0.0  # Hinton KD weight (RepDistiller -a); 0 leaves the term out
    temperature: float = 4.0  # KD temperature (RepDistiller --kd_T)
    distill_weight: float = 0.02  # correlation loss weight (RepDistiller -b)
    embed_dim: int = 128  # linear embedding size on both sides (RepDistiller --feat_dim)
    student_layers: list[str] = field(default_factory=list)  # student taps; empty: penultimate
    teacher_layers: list[str] = field(default_factory=list)  # teacher taps, paired in order


def correlation_congruence_loss(
    student_embedding: torch.Tensor, teacher_embedding: torch.Tensor
) -> torch.Tensor:
    delta = (
        flatten_vector(student_embedding.float()) - flatten_vector(teacher_embedding.float())
    ).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


@register_distiller(
    "cc",
    paper="Peng et al., ICCV 2019 (arXiv 1904.01802)",
    taps="penultimate + linear embeddings (128-d) on both sides",
)
class CorrelationCongruence(Distiller):
    """CC (RepDistiller's formulation) on linearly embedded penultimate vectors."""

    Config = CCConfig
    min_batch_size = 2

    def __init__(self, student, teacher, config, context):
        super().__init__(student, teacher, config, context)
        self.pairs = pair_taps(
            config.student_layers,
            config.teacher_layers,
            [self.student_taps.penultimate],
            [self.teacher_taps.penultimate],
        )
        student_shapes = self.probe(student, [s for s, _ in self.pairs])
        teacher_shapes = self.probe(teacher, [t for _, t in self.pairs])
        if config.kd_weight > 0:
            check_logits_match(student_shapes["logits"], teacher_shapes["logits"])
        self.student_embeds = nn.ModuleList(
            LinearEmbed(flat_size(student_shapes[s]), config.embed_dim, normalize=False)
            for s, _ in self.pairs
        )
        # trained too (RepDistiller's trainable_list holds embed_t); the teacher itself stays frozen
        self.teacher_embeds = nn.ModuleList(
            LinearEmbed(flat_size(teacher_shapes[t]), config.embed_dim, normalize=False)
            for _, t in self.pairs
        )
        self.tap_pairs(self.pairs)

    def forward_train(self, images, labels, indices=None) -> StepOutput:
        cfg = self.config
        self.check_batch(images)
        teacher_logits, teacher_features = self.teacher_forward(images)
        logits, student_features = self.student_forward(images)
        cc = sum(
            correlation_congruence_loss(
                student_embed(student_features[s]), teacher_embed(teacher_features[t])
            )
            for student_embed, teacher_embed, (s, t) in zip(
                self.student_embeds, self.teacher_embeds, self.pairs
            )
        )
        losses = self.label_and_kd_terms(logits, teacher_logits, labels)
        losses["cc"] = cfg.distill_weight * cc
        return StepOutput(logits, losses, {"cc_loss": cc.detach()})
