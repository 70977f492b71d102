"""Relational KD: transfer distances between samples and angles between sample triplets.

Park et al., "Relational Knowledge Distillation", CVPR 2019 (arXiv 1904.05068).
Defaults are RepDistiller's CIFAR-100 setting (`--distill rkd -r 1 -a 0 -b 1`, kd_T 4) with its
`RKDLoss(w_d=25, w_a=50)`: on the penultimate vectors, the distance term (pairwise Euclidean
distances divided by their mean over distinct pairs, paper eq. 6-7) and the angle term (cosines
of the angles each triplet makes, eq. 8-9), each compared by the Huber (smooth L1) loss, weighted
25 and 50 inside, and the sum weighted 1.

Pairs: any two models: distances and angles are computed within each model, so any widths and
layouts (flattened) pair with no adapter. The mean
distance is taken over the off-diagonal entries directly rather than by RepDistiller's `d[d > 0]`
selection: the same value (distances are clamped positive) without a host sync.
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
class RKDConfig(PairedLayersConfig):
    distill_weight: float = option(1.0, "RKD loss weight (RepDistiller -b)", minimum=0)
    distance_weight: float = option(
        25.0, "distance term weight inside RKD (RepDistiller w_d)", minimum=0
    )
    angle_weight: float = option(50.0, "angle term weight inside RKD (RepDistiller w_a)", minimum=0)


def pairwise_distances(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances [B, B] with a zero diagonal; clamped so sqrt has a finite gradient."""
    squared_norms = embeddings.pow(2).sum(dim=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2 * embeddings @ embeddings.t()
    distances = squared.clamp(min=eps).sqrt()
    off_diagonal = 1 - torch.eye(len(embeddings), device=embeddings.device, dtype=distances.dtype)
    return distances * off_diagonal


def _normalised_distances(embeddings: torch.Tensor) -> torch.Tensor:
    distances = pairwise_distances(embeddings)
    batch = len(embeddings)
    return distances / (distances.sum() / (batch * (batch - 1)))


def _triplet_cosines(embeddings: torch.Tensor) -> torch.Tensor:
    differences = F.normalize(embeddings[None, :, :] - embeddings[:, None, :], p=2, dim=2)
    return torch.bmm(differences, differences.transpose(1, 2)).reshape(-1)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    student, teacher = flatten_vector(student), flatten_vector(teacher)
    return F.smooth_l1_loss(_normalised_distances(student), _normalised_distances(teacher))


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    student, teacher = flatten_vector(student), flatten_vector(teacher)
    return F.smooth_l1_loss(_triplet_cosines(student), _triplet_cosines(teacher))


@register_distiller(
    "rkd",
    paper="Park et al., CVPR 2019 (arXiv 1904.05068)",
    taps="penultimate (distance + angle relations within the batch)",
)
class RelationalKD(Distiller):
    """RKD: Huber loss between normalised pairwise distances and triplet angles."""

    Config = RKDConfig
    # angles need three distinct samples
    min_batch_size = 3

    def setup(self):
        cfg = self.config
        self.pairs = self.tap_pairs(cfg.student_layers, cfg.teacher_layers, "penultimate")

    def loss(self, step):
        cfg = self.config
        distance = sum(rkd_distance_loss(step.student[s], step.teacher[t]) for s, t in self.pairs)
        angle = sum(rkd_angle_loss(step.student[s], step.teacher[t]) for s, t in self.pairs)
        rkd = cfg.distill_weight * (cfg.distance_weight * distance + cfg.angle_weight * angle)
        return {"rkd": rkd}, {"rkd_distance": distance, "rkd_angle": angle}
