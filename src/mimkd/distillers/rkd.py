"""Relational KD: transfer distances between samples and angles between sample triplets.

Park et al., "Relational Knowledge Distillation", CVPR 2019 (arXiv 1904.05068).
Defaults are RepDistiller's CIFAR-100 setting (`--distill rkd -r 1 -a 0 -b 1`, kd_T 4) with its
`RKDLoss(w_d=25, w_a=50)`: on the penultimate vectors, the distance term (pairwise Euclidean
distances divided by their mean over distinct pairs, paper eq. 6-7) and the angle term (cosines
of the angles each triplet makes, eq. 8-9), each compared by the Huber (smooth L1) loss, weighted
25 and 50 inside, and the sum weighted 1.

Distances and angles are computed within each model, so any widths pair with no adapter. The mean
distance is taken over the off-diagonal entries directly rather than by RepDistiller's `d[d > 0]`
selection: the same value (distances are clamped positive) without a host sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mimkd.distillers import register_distiller
from mimkd.distillers.adapters import pair_taps
from mimkd.distillers.base import Distiller, StepOutput
from mimkd.features import flatten_vector


@dataclass
class RKDConfig:
    ce_weight: float = 1.0  # cross-entropy weight (RepDistiller -r)
    kd_weight: float = 0.0  # Hinton KD weight (RepDistiller -a); 0 leaves the term out
    temperature: float = 4.0  # KD temperature (RepDistiller --kd_T)
    distill_weight: float = 1.0  # RKD loss weight (RepDistiller -b)
    distance_weight: float = 25.0  # distance term weight inside RKD (RepDistiller w_d)
    angle_weight: float = 50.0  # angle term weight inside RKD (RepDistiller w_a)
    student_layers: list[str] = field(default_factory=list)  # student taps; empty: penultimate
    teacher_layers: list[str] = field(default_factory=list)  # teacher taps, paired in order


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
    student, teacher = flatten_vector(student.float()), flatten_vector(teacher.float())
    return F.smooth_l1_loss(_normalised_distances(student), _normalised_distances(teacher))


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    student, teacher = flatten_vector(student.float()), flatten_vector(teacher.float())
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
        distance = sum(
            rkd_distance_loss(student_features[s], teacher_features[t]) for s, t in self.pairs
        )
        angle = sum(rkd_angle_loss(student_features[s], teacher_features[t]) for s, t in self.pairs)
        losses = self.label_and_kd_terms(logits, teacher_logits, labels)
        losses["rkd"] = cfg.distill_weight * (
            cfg.distance_weight * distance + cfg.angle_weight * angle
        )
        metrics = {"rkd_distance": distance.detach(), "rkd_angle": angle.detach()}
        return StepOutput(logits, losses, metrics)
