"""NST: transfer neuron selectivity by matching the distributions of channel response maps.

Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", arXiv
1707.01219 (2017). Every channel's spatial response map, L2-normalised, is one sample; NST minimises
the squared maximum mean discrepancy (MMD) between the teacher's and the student's samples under
the paper's polynomial kernel k(x, y) = (x^T y + c)^d with d = 2, c = 0, summed over the paired
stages. Channel counts may differ: the kernel compares spatial maps, not channels.

Defaults and their sources (RepDistiller `distiller_zoo/NST.py`, `helper/loops.py` and the CIFAR-100
script `--distill nst -r 1 -a 0 -b 50`): CE weight 1, KD weight 0, NST weight 50; the taps are the
intermediate stage outputs (RepDistiller's `feat[1:-1]`), the larger map of a pair average-pooled to
the smaller one's size; the teacher-teacher kernel term is kept (RepDistiller's `full_loss=True`)
though it is a constant, so the logged loss is the MMD itself.

Deviation: the kernel matrices are computed with one batched matmul ([B, Cs, Ct]) instead of
RepDistiller's broadcast product ([B, Cs, Ct, H*W]): the same numbers in far less memory; and in
fp32 whatever autocast says (a difference of kernel means loses its digits in bf16).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mimkd.distillers import register_distiller
from mimkd.distillers.adapters import pair_taps, pool_to_common_size
from mimkd.distillers.base import Distiller, StepOutput, check_logits_match
from mimkd.errors import ShapeError


@dataclass
class NSTConfig:
    ce_weight: float = 1.0  # cross-entropy weight (RepDistiller -r)
    kd_weight: float = 0.0  # Hinton KD weight (RepDistiller -a); 0 leaves the term out
    temperature: float = 4.0  # KD temperature (RepDistiller --kd_T)
    distill_weight: float = 50.0  # NST (MMD) loss weight (RepDistiller -b)
    student_layers: list[str] = field(default_factory=list)  # student taps; empty: stages
    teacher_layers: list[str] = field(default_factory=list)  # teacher taps, paired in order


def _polynomial_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of (a_i^T b_j)^2 over the batch and every channel pair; a, b are [B, C, L]."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """Squared MMD between the L2-normalised channel maps under k(x, y) = (x^T y)^2."""
    with torch.autocast(student_map.device.type, enabled=False):
        student_map, teacher_map = pool_to_common_size(student_map.float(), teacher_map.float())
        student = F.normalize(student_map.flatten(2), dim=2)
        teacher = F.normalize(teacher_map.flatten(2), dim=2)
        return (
            _polynomial_kernel_mean(teacher, teacher).detach()
            + _polynomial_kernel_mean(student, student)
            - 2 * _polynomial_kernel_mean(student, teacher)
        )


@register_distiller(
    "nst",
    paper="Huang & Wang, 2017 (arXiv 1707.01219)",
    taps="stages (student and teacher)",
)
class NeuronSelectivityTransfer(Distiller):
    """NST: polynomial-kernel MMD between teacher and student channel response maps per stage."""

    Config = NSTConfig

    def __init__(self, student, teacher, config, context):
        super().__init__(student, teacher, config, context)
        self.layer_pairs = pair_taps(
            config.student_layers,
            config.teacher_layers,
            self.student_taps.stages,
            self.teacher_taps.stages,
        )
        student_shapes = self.probe(student, [s for s, _ in self.layer_pairs])
        teacher_shapes = self.probe(teacher, [t for _, t in self.layer_pairs])
        for student_layer, teacher_layer in self.layer_pairs:
            for name, shape in (
                (student_layer, student_shapes[student_layer]),
                (teacher_layer, teacher_shapes[teacher_layer]),
            ):
                if len(shape) != 4:
                    raise ShapeError(
                        f"NST compares spatial response maps, but layer {name!r} gives shape "
                        f"{tuple(shape)}; tap convolutional stages [B, C, H, W]."
                    )
        if config.kd_weight:
            check_logits_match(student_shapes["logits"], teacher_shapes["logits"])
        self.tap_student([s for s, _ in self.layer_pairs])
        self.tap_teacher([t for _, t in self.layer_pairs])

    def forward_train(self, images, labels, indices=None) -> StepOutput:
        cfg = self.config
        teacher_logits, teacher_features = self.teacher_forward(images)
        logits, student_features = self.student_forward(images)
        distance = sum(
            nst_loss(student_features[s], teacher_features[t]) for s, t in self.layer_pairs
        )
        losses = self.label_and_kd_terms(logits, teacher_logits, labels)
        losses["nst"] = cfg.distill_weight * distance
        return StepOutput(logits, losses, {"nst_mmd": distance.detach()})
