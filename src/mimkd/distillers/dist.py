"""DIST: match the teacher's relations between predictions (Pearson correlation), not the values.

Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022 (arXiv 2205.10536).
Inter-class relation: 1 - mean over samples of the Pearson correlation between the student's and
the teacher's class distributions; intra-class relation: the same over each class's column across
the batch (paper eq. 5-7). Both are scaled by tau^2 as in the authors' loss
(`image_classification_sota/lib/models/losses/dist_kd.py`, vendored by `hunto/DIST_KD` as
`classification/lib/models/losses/dist_kd.py`).

Pairs: any teacher and student predicting the same classes (logits only).
Defaults are the authors' `--kd dist` setting (`kd_loss.py`: `DIST(beta=1, gamma=1, tau=1)`; CE and
DIST weights 1 via `ori_loss_weight`/`kd_loss_weight`: `ce_weight` and `distill_weight` here, and
`kd_weight`, Hinton KD on top, stays 0). Their code also has `dist_t<tau>` (tau = 4 is `dist_t4`);
set `temperature=4` for it (tau is the shared `temperature`, default 1 here). The CIFAR-100 config file (`dist_cifar.yaml`) was not
available to check which of the two it selects, so the plain `dist` values are the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mimkd.distillers.base import DistillConfig, Distiller, with_default
from mimkd.distillers.registry import register_distiller
from mimkd.options import option


@dataclass
class DISTConfig(DistillConfig):
    temperature: float = with_default("temperature", 1.0)  # tau (their dist_t4: 4)
    distill_weight: float = option(1.0, "DIST term weight (authors' kd_loss_weight)", minimum=0)
    inter_weight: float = option(1.0, "inter-class relation weight, beta in the paper", minimum=0)
    intra_weight: float = option(1.0, "intra-class relation weight, gamma in the paper", minimum=0)


def pearson_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise Pearson correlation of two [N, D] tensors -> [N] (eps as the authors' code)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_parts(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter-class, intra-class) relation losses, each scaled by tau^2."""
    student_probs = F.softmax(student_logits / temperature, dim=1)
    teacher_probs = F.softmax(teacher_logits / temperature, dim=1)
    inter = 1 - pearson_correlation(student_probs, teacher_probs).mean()
    intra = 1 - pearson_correlation(student_probs.t(), teacher_probs.t()).mean()
    return inter * temperature**2, intra * temperature**2


@register_distiller("dist", paper="Huang et al., NeurIPS 2022 (arXiv 2205.10536)", taps="logits")
class DIST(Distiller):
    """DIST: inter- and intra-class Pearson-correlation relations of the softmax outputs."""

    Config = DISTConfig
    uses_teacher_logits = True
    # the intra-class correlation runs over the batch
    min_batch_size = 2

    def loss(self, step):
        cfg = self.config
        inter, intra = dist_parts(step.logits, step.teacher_logits, cfg.temperature)
        dist = cfg.distill_weight * (cfg.inter_weight * inter + cfg.intra_weight * intra)
        return {"dist": dist}, {"dist_inter": inter, "dist_intra": intra}
