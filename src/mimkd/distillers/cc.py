"""Correlation congruence: transfer the correlation between instances, not only each instance.

Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019 (arXiv 1904.01802).
Defaults are RepDistiller's CIFAR-100 setting (`--distill correlation -r 1 -a 0 -b 0.02`, kd_T 4):
both penultimate vectors are projected by a trainable linear embedding to 128 dimensions
(RepDistiller's `LinearEmbed`, `--feat_dim 128`, no normalisation), and the loss is RepDistiller's
`Correlation` (code the CC authors sent to RepDistiller): with delta = |e_s - e_t|, the batch mean of
sum_d delta[i] * delta[i+1] over consecutive samples; weight 0.02.

Pairs: any two models (the embeddings map any widths and layouts, flattened, to 128-d).

Deviation from the paper: this is RepDistiller's formulation (which produced the CC numbers every
later table quotes), not the paper's Gaussian-RBF correlation matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimkd.distillers.adapters import LinearEmbed, flat_size
from mimkd.distillers.base import Distiller, PairedLayersConfig
from mimkd.distillers.registry import register_distiller
from mimkd.features import flatten_vector
from mimkd.options import option


@dataclass
class CCConfig(PairedLayersConfig):
    distill_weight: float = option(0.02, "correlation loss weight (RepDistiller -b)", minimum=0)
    embed_dim: int = option(
        128, "linear embedding size on both sides (RepDistiller --feat_dim)", minimum=1
    )


def correlation_congruence_loss(
    student_embedding: torch.Tensor, teacher_embedding: torch.Tensor
) -> torch.Tensor:
    delta = (flatten_vector(student_embedding) - flatten_vector(teacher_embedding)).abs()
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

    def setup(self):
        cfg = self.config
        self.pairs = self.tap_pairs(cfg.student_layers, cfg.teacher_layers, "penultimate")
        self.student_embeds = nn.ModuleList(
            LinearEmbed(flat_size(self.student_shapes[s]), cfg.embed_dim, normalize=False)
            for s, _ in self.pairs
        )
        # trained too (RepDistiller's trainable_list holds embed_t); the teacher itself stays frozen
        self.teacher_embeds = nn.ModuleList(
            LinearEmbed(flat_size(self.teacher_shapes[t]), cfg.embed_dim, normalize=False)
            for _, t in self.pairs
        )

    def loss(self, step):
        cc = sum(
            correlation_congruence_loss(
                student_embed(step.student[s]), teacher_embed(step.teacher[t])
            )
            for student_embed, teacher_embed, (s, t) in zip(
                self.student_embeds, self.teacher_embeds, self.pairs
            )
        )
        return {"cc": self.config.distill_weight * cc}, {"cc_loss": cc}
