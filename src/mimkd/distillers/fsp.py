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

Pairs: an FSP matrix is C_bottom x C_top, so the student's paired stages need the teacher's
channel counts (resnet32x4 -> resnet8x4 qualifies; resnet32x4 -> shufflenetv2 does not); other
pairs are a ShapeError at construction, as in RepDistiller. So it cannot pair most cross-family
pairs (a ViT's constant-width blocks with a CNN's widening stages, two torchvision families): it
says so and names the channels. Deviation: RepDistiller's list also
holds the stem output (`feat[:-1]`); the taps here are the models' stages (name the stem too to
match it, e.g. student_layers and teacher_layers = [relu, layer1, layer2, layer3] for ResNets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimkd.distillers.adapters import pool_to_common_size
from mimkd.distillers.base import MAIN_STAGE, Distiller, PairedLayersConfig, Stage
from mimkd.distillers.registry import register_distiller
from mimkd.errors import ShapeError
from mimkd.options import option


@dataclass
class FSPConfig(PairedLayersConfig):
    distill_weight: float = option(
        0.0, "main-stage FSP weight; 0: RepDistiller's main-stage FSP term is 0", minimum=0
    )
    init_epochs: int = option(
        30, "FSP-only epochs at the start of the run (RepDistiller --init_epochs)", minimum=0
    )
    init_weight: float = option(
        1.0, "FSP loss weight in the init stage (RepDistiller: unweighted)", minimum=0
    )


INIT_STAGE = Stage("init", labels=False)


def fsp_matrix(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """[B, C_top, C_bottom] Gram matrix between two maps' channels, averaged over locations."""
    bottom, top = pool_to_common_size(bottom, top)
    bottom, top = bottom.flatten(2), top.flatten(2)
    return torch.bmm(top, bottom.transpose(1, 2)) / bottom.shape[2]


def fsp_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
    """Sum over consecutive pairs of the mean squared difference of the FSP matrices."""
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

    def setup(self):
        cfg = self.config
        pairs = self.tap_pairs(cfg.student_layers, cfg.teacher_layers, "stages", maps=True)
        if len(pairs) < 2:
            raise ShapeError(
                "FSP needs at least two consecutive stages on each side; got "
                f"{[s for s, _ in pairs]} and {[t for _, t in pairs]}. Name more layers with "
                "student_layers=[...] and teacher_layers=[...]."
            )
        self.student_layers = [s for s, _ in pairs]
        self.teacher_layers = [t for _, t in pairs]
        student_channels = [int(self.student_shapes[n][1]) for n in self.student_layers]
        teacher_channels = [int(self.teacher_shapes[n][1]) for n in self.teacher_layers]
        if student_channels != teacher_channels:
            raise ShapeError(
                "FSP compares C_bottom x C_top Gram matrices, so the paired stages need equal "
                f"channel counts: student {dict(zip(self.student_layers, student_channels))}, "
                f"teacher {dict(zip(self.teacher_layers, teacher_channels))}. Choose a pair "
                "of the same widths (e.g. resnet32x4 -> resnet8x4) or name matching layers "
                "with student_layers=[...] and teacher_layers=[...]."
            )

    def stage(self, epoch):
        return INIT_STAGE if epoch < self.config.init_epochs else MAIN_STAGE

    def loss(self, step):
        cfg = self.config
        if step.stage != "init" and not cfg.distill_weight:
            return {}
        loss = fsp_loss(
            [step.student[n] for n in self.student_layers],
            [step.teacher[n] for n in self.teacher_layers],
        )
        if step.stage == "init":
            # RepDistiller's init stage trains on the FSP loss alone (no labels)
            return {"fsp_init": cfg.init_weight * loss}, {"fsp_loss": loss}
        return {"fsp": cfg.distill_weight * loss}, {"fsp_loss": loss}
