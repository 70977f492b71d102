"""AB: transfer the activation boundaries of the teacher's hidden neurons (which are on, which off).

Heo, Lee, Yun, Choi, "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
Neurons", AAAI 2019 (arXiv 1811.03233). A connector maps each student stage onto the teacher's
shape; the alternative (squared-hinge) loss pushes a connector response above +margin where the
teacher neuron is active and below -margin where it is not:
    sum (s - m)^2 [t > 0, s <= m] + (s + m)^2 [t <= 0, s > -m].
AB is a pre-training ("init") method: the loss trains the student's feature layers and the
connectors for the first `init_epochs`, then the student trains on the labels.

Defaults and their sources (RepDistiller `distiller_zoo/AB.py`, `helper/pretrain.py`,
`helper/loops.py`, `train_student.py` and the CIFAR-100 script `--distill abound -r 1 -a 0 -b 1`):
margin 1.0; 30 init epochs with the AB loss alone (unweighted: `pretrain.py` sums the layer losses);
stage i of n weighted 2^(i - n + 1), so the deepest counts most; each layer's loss divided by the
batch size and scaled by 3/1000 (Heo et al.'s released code); taps are the intermediate stages
(`feat[1:-1]`). In the main stage RepDistiller's `loss_kd` for AB is 0, so its `-b 1` multiplies
nothing: the main stage is CE alone, i.e. `distill_weight = 0` here (raise it to keep AB on).

How the stages map to RepDistiller: it runs the 30 init epochs before and outside its 240-epoch
loop, with their own SGD optimizer; here they are the first `init_epochs` epochs of the run (the
stage follows `on_epoch_start`), so a faithful reproduction trains `init_epochs + 240` epochs with
the LR milestones shifted by `init_epochs`. No trainer or CLI knows about the stages: the method
says which epochs are its init stage (`stage()`), and the base class leaves the labels out there.

Pairs: any two models with spatial stages (paired from the deepest); a connector (conv + BN)
maps each student stage onto the teacher's channels and size; a ViT's blocks arrive as maps of
its patch grid.

Deviation: RepDistiller reads pre-ReLU stage outputs (`preact=True`); taps read what a module
returns, which for the zoo's stages is post-ReLU. The teacher side loses nothing (t > 0 is the
same test before and after a ReLU); the student side always goes through a connector (conv + BN,
as in Heo et al.'s code, where RepDistiller uses identity for equal shapes), so it can still
answer with negative values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimkd.distillers.adapters import ConvRegressor
from mimkd.distillers.base import MAIN_STAGE, Distiller, PairedLayersConfig, Stage
from mimkd.distillers.registry import register_distiller
from mimkd.options import option

# Heo et al.'s (and RepDistiller's) fixed scale on the per-sample boundary loss
AB_LOSS_SCALE = 3 / 1000


@dataclass
class ABConfig(PairedLayersConfig):
    distill_weight: float = option(
        0.0, "main-stage AB weight; 0: RepDistiller's main-stage AB term is 0", minimum=0
    )
    init_epochs: int = option(
        30, "AB-only epochs at the start of the run (RepDistiller --init_epochs)", minimum=0
    )
    init_weight: float = option(
        1.0, "AB loss weight in the init stage (RepDistiller: unweighted)", minimum=0
    )
    margin: float = option(1.0, "activation-boundary margin m (Heo et al.; RepDistiller ABLoss)")


INIT_STAGE = Stage("init", labels=False)


def activation_boundary_loss(
    student_response: torch.Tensor, teacher_response: torch.Tensor, margin: float
) -> torch.Tensor:
    """Heo et al.'s alternative (squared-hinge) loss, summed and divided by the batch size."""
    source = student_response
    teacher_active = teacher_response > 0
    push_up = (source - margin).pow(2) * (teacher_active & (source <= margin))
    push_down = (source + margin).pow(2) * (~teacher_active & (source > -margin))
    return (push_up + push_down).sum() / source.shape[0]


@register_distiller(
    "ab",
    paper="Heo et al., AAAI 2019 (arXiv 1811.03233)",
    taps="stages (student and teacher)",
)
class ActivationBoundaries(Distiller):
    """AB: pre-train student stages to reproduce the teacher's activation boundaries, then CE."""

    Config = ABConfig
    ddp_find_unused_parameters = True  # the init stage trains only some modules

    def setup(self):
        cfg = self.config
        self.layer_pairs = self.tap_pairs(
            cfg.student_layers, cfg.teacher_layers, "stages", maps=True
        )
        self.connectors = nn.ModuleList(
            ConvRegressor(self.student_shapes[s], self.teacher_shapes[t], use_relu=False)
            for s, t in self.layer_pairs
        )

    def stage(self, epoch):
        return INIT_STAGE if epoch < self.config.init_epochs else MAIN_STAGE

    def boundary_loss(
        self, student_features: dict[str, torch.Tensor], teacher_features: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        count = len(self.layer_pairs)
        total = 0.0
        for index, ((s, t), connector) in enumerate(zip(self.layer_pairs, self.connectors)):
            layer_weight = 2.0 ** (index - count + 1)
            total = total + layer_weight * activation_boundary_loss(
                connector(student_features[s]), teacher_features[t], self.config.margin
            )
        return total * AB_LOSS_SCALE

    def loss(self, step):
        cfg = self.config
        if step.stage == "init":
            # RepDistiller's init stage trains on the AB loss alone (no labels)
            loss = self.boundary_loss(step.student, step.teacher)
            return {"ab_init": cfg.init_weight * loss}, {"ab_loss": loss}
        if not cfg.distill_weight:
            return {}
        loss = self.boundary_loss(step.student, step.teacher)
        return {"ab": cfg.distill_weight * loss}, {"ab_loss": loss}
