"""FT: factor transfer. A paraphraser compresses the teacher's last map into "factors"; a translator
learns to produce the same factors from the student's.

Kim, Park, Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer", NeurIPS
2018 (arXiv 1802.04977). Stage 1 ("init"): the paraphraser, a convolutional autoencoder on the
teacher's last map with factor channels = rate x teacher channels, is trained to reconstruct that
map (MSE). Stage 2: the paraphraser is frozen; the student trains on CE plus the L1 distance between
its translated, L2-normalised factor and the teacher's.

Defaults and their sources (RepDistiller `distiller_zoo/FT.py`, `models/util.py` (Paraphraser,
Translator), `helper/pretrain.py`, `helper/loops.py` and the CIFAR-100 script
`--distill factor -r 1 -a 0 -b 200`): paraphrase rate 0.5; 30 init epochs training the paraphraser
alone on the unweighted MSE; main stage CE weight 1, KD weight 0, FT weight 200; taps are the last
maps before pooling (`feat[-2]`); the paraphraser has no BatchNorm and the translator has (both with
LeakyReLU 0.1, three 3x3 convolutions per encoder); a larger factor map is average-pooled to the
smaller one's size. The factor loss is RepDistiller's: factors collapsed over channels as
mean(f^2), flattened, L2-normalised, mean absolute difference. The paper's own form (the whole
factor flattened, no channel collapse) is `collapse_channels=false`; the default FT weight 200 was
tuned for RepDistiller's form.

How the stages map to RepDistiller: it trains the paraphraser for 30 epochs before and outside its
240-epoch loop, with its own SGD optimizer (LR 0.01 for ResNet/WRN students, else the run's LR);
here those are the first `init_epochs` epochs of the run at the run's LR (lower `init_weight` to
approximate the smaller LR), so a faithful reproduction trains `init_epochs + 240` epochs with the
LR milestones shifted by `init_epochs`. During the init stage the student runs in eval mode without
gradients, as RepDistiller's `init()` leaves it, so its weights and BatchNorm statistics stay as
initialised. No trainer or CLI knows about the stages: the method says which epochs are its init
stage (`stage()`) and the base class runs that stage without labels and with the student frozen.

Pairs: any two models with a last map (a ViT's last tokens arrive as a map of its patch grid);
the paraphraser and translator are convolutional, so pooled vectors cannot be paired.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkd.distillers.adapters import pool_to_common_size
from mimkd.distillers.base import MAIN_STAGE, DistillConfig, Distiller, Stage
from mimkd.distillers.registry import register_distiller
from mimkd.errors import ShapeError
from mimkd.options import option


@dataclass
class FTConfig(DistillConfig):
    distill_weight: float = option(
        200.0, "factor transfer loss weight (RepDistiller -b)", minimum=0
    )
    init_epochs: int = option(
        30, "paraphraser-only epochs at the start (RepDistiller --init_epochs)", minimum=0
    )
    init_weight: float = option(
        1.0, "reconstruction loss weight in the init stage (RepDistiller: 1)", minimum=0
    )
    paraphrase_rate: float = option(
        0.5, "factor channels / teacher channels (paper's k; RepDistiller)", greater_than=0
    )
    collapse_channels: bool = option(
        True, "RepDistiller's factor mean_c(f^2); false: the paper's whole factor"
    )
    student_layer: str = option("", "student tap; empty: its last map before pooling")
    teacher_layer: str = option("", "teacher tap; empty: its last map before pooling")


# the init stage trains the paraphraser alone: no labels, the student frozen in eval mode
INIT_STAGE = Stage("init", labels=False, student_trains=False)


def _conv_stack(channels: list[int], batch_norm: bool, transposed: bool = False) -> nn.Sequential:
    """3x3 (transposed) convolutions at stride 1, each followed by [BN] and LeakyReLU(0.1)."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for in_channels, out_channels in zip(channels[:-1], channels[1:]):
        layers.append(conv(in_channels, out_channels, 3, 1, 1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Autoencoder on the teacher's map: C -> C -> rate*C (the factor) -> rate*C -> C -> C."""

    def __init__(self, channels: int, rate: float):
        super().__init__()
        factor_channels = int(channels * rate)
        self.encoder = _conv_stack([channels, channels, factor_channels, factor_channels], False)
        self.decoder = _conv_stack(
            [factor_channels, factor_channels, channels, channels], False, transposed=True
        )

    def forward(self, teacher_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = self.encoder(teacher_map)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Student map -> a factor with the paraphraser's channel count: Cs -> Cs -> F -> F."""

    def __init__(self, student_channels: int, factor_channels: int):
        super().__init__()
        self.encoder = _conv_stack(
            [student_channels, student_channels, factor_channels, factor_channels], True
        )

    def forward(self, student_map: torch.Tensor) -> torch.Tensor:
        return self.encoder(student_map)


def factor_transfer_loss(
    student_factor: torch.Tensor, teacher_factor: torch.Tensor, collapse_channels: bool = True
) -> torch.Tensor:
    """Mean |normalize(phi(F_s)) - normalize(phi(F_t))|, phi = channel mean of F^2 or identity."""
    student, teacher = pool_to_common_size(student_factor, teacher_factor)
    if collapse_channels:
        student, teacher = student.pow(2).mean(1), teacher.pow(2).mean(1)
    student = F.normalize(student.flatten(1), dim=1)
    teacher = F.normalize(teacher.flatten(1), dim=1)
    return (student - teacher).abs().mean()


@register_distiller(
    "ft",
    paper="Kim et al., NeurIPS 2018 (arXiv 1802.04977)",
    taps="last_map (student and teacher)",
)
class FactorTransfer(Distiller):
    """FT: pre-train a paraphraser on the teacher's map, then match its factors via a translator."""

    Config = FTConfig
    ddp_find_unused_parameters = True  # the init stage trains only some modules

    def setup(self):
        cfg = self.config
        self.student_layer = cfg.student_layer or self.student_taps.last_map
        self.teacher_layer = cfg.teacher_layer or self.teacher_taps.last_map
        self.tap([self.student_layer], [self.teacher_layer], maps=True)
        teacher_channels = int(self.teacher_shapes[self.teacher_layer][1])
        factor_channels = int(teacher_channels * cfg.paraphrase_rate)
        if factor_channels < 1:
            raise ShapeError(
                f"paraphrase_rate={cfg.paraphrase_rate} leaves no factor channels for a teacher "
                f"map of {teacher_channels} channels; raise it."
            )
        self.paraphraser = Paraphraser(teacher_channels, cfg.paraphrase_rate)
        self.translator = Translator(
            int(self.student_shapes[self.student_layer][1]), factor_channels
        )

    def stage(self, epoch):
        return INIT_STAGE if epoch < self.config.init_epochs else MAIN_STAGE

    def loss(self, step):
        cfg = self.config
        teacher_map = step.teacher[self.teacher_layer]
        if step.stage == "init":
            _, reconstruction = self.paraphraser(teacher_map)
            loss = F.mse_loss(reconstruction, teacher_map)
            return {"ft_init": cfg.init_weight * loss}, {"paraphraser_mse": loss}
        with torch.no_grad():
            teacher_factor = self.paraphraser.encoder(teacher_map)
        student_factor = self.translator(step.student[self.student_layer])
        loss = factor_transfer_loss(student_factor, teacher_factor, cfg.collapse_channels)
        return {"ft": cfg.distill_weight * loss}, {"ft_loss": loss}
