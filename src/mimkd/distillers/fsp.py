"""FSP: teach the student the teacher's "flow of solution" between consecutive stages.

Yim, Joo, Bae, Kim, "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and
Transfer Learning", CVPR 2017. The FSP matrix of two layers is the Gram matrix between their
channels, G[i, j] = mean over locations of bottom_i * top_j; the student matches the teacher's FSP
matrices (squared error) for every pair of consecutive stages. FSP is a pre-training ("init")
method: the loss trains the student for the first `init_epochs`, then the student trains on the
labels.

Defaults and their sources (RepDistiller `distiller_zoo/FSP.py`, `helper/pretrain.py`,
`helper/loops.py`, `train_student.py` and the CIFAR-100 script `--distill fsp -r 1 -a 0 -b 50`):
30 init epochs with the FSP loss alone (unweighted: `pretrain.py` sums the pair losses), each pair's
loss the mean squared difference of the matrices; within a pair the larger map is average-pooled
to the smaller one's size. In the main stage RepDistiller's `loss_kd` for FSP is 0, so its `-b 50`
multiplies nothing: the main stage is CE alone, i.e. `distill_weight = 0` here.

How the stages map to RepDistiller: it runs the 30 init epochs before and outside its 240-epoch
loop, with their own SGD optimizer; here they are the first `init_epochs` epochs of the run (the
stage follows `on_epoch_start`), so a faithful reproduction trains `init_epochs + 240` epochs with
the LR milestones shifted by `init_epochs`. No trainer or CLI knows about the stages.

Constraints: an FSP matrix is C_bottom x C_top, so the student's paired stages need the teacher's
channel counts (resnet32x4 -> resnet8x4 qualifies; resnet32x4 -> shufflenetv2 does not); other
pairs are a ShapeError at construction, as in RepDistiller. Deviation: RepDistiller's list also
holds the stem output (`feat[:-1]`); the taps here are the models' stages (name the stem too to
match it, e.g. student_layers and teacher_layers = [relu, layer1, layer2, layer3] for ResNets).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from mimkd.distillers import register_distiller
from mimkd.distillers.adapters import pair_taps, pool_to_common_size
from mimkd.distillers.base import Distiller, StepOutput, check_logits_match
from mimkd.errors import ShapeError


@dataclass
class FSPConfig:
    ce_weight: float = 1.0  # main-stage cross-entropy weight (RepDistiller -r)
    kd_weight: float = 0.0  # main-stage Hinton KD weight (RepDistiller -a); 0 leaves it out
    temperature: float = 4.0  # KD temperature (RepDistiller --kd_T)
    distill_weight: float = 0.0  # main-stage FSP weight; 0: RepDistiller's main-stage FSP term is 0
    init_epochs: int = 30  # FSP-only epochs at the start of the run (RepDistiller --init_epochs)
    init_weight: float = 1.0  # FSP loss weight in the init stage (RepDistiller: unweighted)
    student_layers: list[str] = field(default_factory=list)  # student taps in order; empty: stages
    teacher_layers: list[str] = field(
        default_factory=list
    )  # teacher taps, as many as the student's


def fsp_matrix(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """[B, C_top, C_bottom] Gram matrix between two maps' channels, averaged over locations."""
    bottom, top = pool_to_common_size(bottom, top)
    bottom, top = bottom.flatten(2), top.flatten(2)
    return torch.bmm(top, bottom.transpose(1, 2)) / bottom.shape[2]


def fsp_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
    """Sum over consecutive pairs of the mean squared difference of the FSP matrices."""
    with torch.autocast(student_maps[0].device.type, enabled=False):
        student_maps = [m.float() for m in student_maps]
        teacher_maps = [m.float() for m in teacher_maps]
        total = 0.0
        for index in range(len(student_maps) - 1):
            student = fsp_matrix(student_maps[index], student_maps[index + 1])
            teacher = fsp_matrix(teacher_maps[index], teacher_maps[index + 1])
            total = total + (student - teacher).pow(2).mean()
        return total


@register_distiller(
    "fsp",
    paper="Yim et al., CVPR 2017",
    taps="stages (student and teacher, equal channel counts)",
)
class FlowOfSolution(Distiller):
    """FSP: pre-train the student to match the teacher's Gram matrices between stages, then CE."""

    Config = FSPConfig
    ddp_find_unused_parameters = True  # the init stage trains only some modules

    def __init__(self, student, teacher, config, context):
        super().__init__(student, teacher, config, context)
        pairs = pair_taps(
            config.student_layers,
            config.teacher_layers,
            self.student_taps.stages,
            self.teacher_taps.stages,
        )
        if len(pairs) < 2:
            raise ShapeError(
                "FSP needs at least two consecutive stages on each side; got "
                f"{[s for s, _ in pairs]} and {[t for _, t in pairs]}. Name more layers with "
                "student_layers=[...] and teacher_layers=[...]."
            )
        self.student_layers = [s for s, _ in pairs]
        self.teacher_layers = [t for _, t in pairs]
        student_shapes = self.probe(student, self.student_layers)
        teacher_shapes = self.probe(teacher, self.teacher_layers)
        for name, shape in [(n, student_shapes[n]) for n in self.student_layers] + [
            (n, teacher_shapes[n]) for n in self.teacher_layers
        ]:
            if len(shape) != 4:
                raise ShapeError(
                    f"FSP pools and correlates feature maps, but layer {name!r} gives shape "
                    f"{tuple(shape)}; tap convolutional stages [B, C, H, W]."
                )
        student_channels = [int(student_shapes[n][1]) for n in self.student_layers]
        teacher_channels = [int(teacher_shapes[n][1]) for n in self.teacher_layers]
        if student_channels != teacher_channels:
            raise ShapeError(
                "FSP compares C_bottom x C_top Gram matrices, so the paired stages need equal "
                f"channel counts: student {dict(zip(self.student_layers, student_channels))}, "
                f"teacher {dict(zip(self.teacher_layers, teacher_channels))}. Choose a pair "
                "of the same widths (e.g. resnet32x4 -> resnet8x4) or name matching layers "
                "with student_layers=[...] and teacher_layers=[...]."
            )
        if config.kd_weight:
            check_logits_match(student_shapes["logits"], teacher_shapes["logits"])
        if config.init_epochs >= context.total_epochs:
            warnings.warn(
                f"fsp spends its first {config.init_epochs} epochs in the init stage but the run "
                f"has {context.total_epochs}: the student never trains on the labels. Lower "
                "fsp.init_epochs or raise the number of epochs.",
                stacklevel=2,
            )
        self.tap_student(self.student_layers)
        self.tap_teacher(self.teacher_layers)

    @property
    def in_init_stage(self) -> bool:
        return self.epoch < self.config.init_epochs

    def _flow_loss(self, student_features, teacher_features) -> torch.Tensor:
        return fsp_loss(
            [student_features[n] for n in self.student_layers],
            [teacher_features[n] for n in self.teacher_layers],
        )

    def forward_train(self, images, labels, indices=None) -> StepOutput:
        cfg = self.config
        teacher_logits, teacher_features = self.teacher_forward(images)
        logits, student_features = self.student_forward(images)
        if self.in_init_stage:
            # RepDistiller's init stage trains on the FSP loss alone (no labels)
            loss = self._flow_loss(student_features, teacher_features)
            return StepOutput(
                logits, {"fsp_init": cfg.init_weight * loss}, {"fsp_loss": loss.detach()}
            )
        losses = self.label_and_kd_terms(logits, teacher_logits, labels)
        if not cfg.distill_weight:
            return StepOutput(logits, losses)
        loss = self._flow_loss(student_features, teacher_features)
        losses["fsp"] = cfg.distill_weight * loss
        return StepOutput(logits, losses, {"fsp_loss": loss.detach()})
