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
initialised. No trainer or CLI knows about the stages.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkd.distillers import register_distiller
from mimkd.distillers.adapters import pool_to_common_size
from mimkd.distillers.base import Distiller, StepOutput, check_logits_match
from mimkd.errors import ShapeError


@dataclass
class FTConfig:
    ce_weight: float = 1.0  # main-stage cross-entropy weight (RepDistiller -r)
    kd_weight: float = 0.0  # main-stage Hinton KD weight (RepDistiller -a); 0 leaves it out
    temperature: float = 4.0  # KD temperature (RepDistiller --kd_T)
    distill_weight: float = 200.0  # factor transfer loss weight (RepDistiller -b)
    init_epochs: int = 30  # paraphraser-only epochs at the start (RepDistiller --init_epochs)
    init_weight: float = 1.0  # reconstruction loss weight in the init stage (RepDistiller: 1)
    paraphrase_rate: float = 0.5  # factor channels / teacher channels (paper's k; RepDistiller)
    collapse_channels: bool = True  # RepDistiller's factor mean_c(f^2); false: paper's whole factor
    student_layer: str = ""  # student tap; empty: its last map before pooling
    teacher_layer: str = ""  # teacher tap; empty: its last map before pooling


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
    with torch.autocast(student_factor.device.type, enabled=False):
        student, teacher = pool_to_common_size(student_factor.float(), teacher_factor.float())
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

    def __init__(self, student, teacher, config, context):
        super().__init__(student, teacher, config, context)
        self.student_layer = config.student_layer or self.student_taps.last_map
        self.teacher_layer = config.teacher_layer or self.teacher_taps.last_map
        student_shapes = self.probe(student, [self.student_layer])
        teacher_shapes = self.probe(teacher, [self.teacher_layer])
        student_shape = student_shapes[self.student_layer]
        teacher_shape = teacher_shapes[self.teacher_layer]
        for name, shape in (
            (self.student_layer, student_shape),
            (self.teacher_layer, teacher_shape),
        ):
            if len(shape) != 4:
                raise ShapeError(
                    f"FT's paraphraser and translator are convolutional, but layer {name!r} "
                    f"gives shape {tuple(shape)}; tap a feature map [B, C, H, W]."
                )
        factor_channels = int(teacher_shape[1] * config.paraphrase_rate)
        if factor_channels < 1:
            raise ShapeError(
                f"paraphrase_rate={config.paraphrase_rate} leaves no factor channels for a teacher "
                f"map of {teacher_shape[1]} channels; raise it."
            )
        self.paraphraser = Paraphraser(int(teacher_shape[1]), config.paraphrase_rate)
        self.translator = Translator(int(student_shape[1]), factor_channels)
        if config.kd_weight:
            check_logits_match(student_shapes["logits"], teacher_shapes["logits"])
        if config.init_epochs >= context.total_epochs:
            warnings.warn(
                f"ft spends its first {config.init_epochs} epochs in the init stage but the run "
                f"has {context.total_epochs}: the student never trains. Lower ft.init_epochs "
                "or raise the number of epochs.",
                stacklevel=2,
            )
        self.tap_student([self.student_layer])
        self.tap_teacher([self.teacher_layer])

    @property
    def in_init_stage(self) -> bool:
        return self.epoch < self.config.init_epochs

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if not self.in_init_stage:
            # the paraphraser is frozen after its stage: no stale gradient for momentum or decay
            for parameter in self.paraphraser.parameters():
                parameter.grad = None

    def _student_logits_frozen(self, images: torch.Tensor) -> torch.Tensor:
        """The init stage leaves the student untouched (eval mode, no graph), as RepDistiller."""
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                return self.student_forward(images)[0]
        finally:
            self.student.train(was_training)

    def forward_train(self, images, labels, indices=None) -> StepOutput:
        cfg = self.config
        teacher_logits, teacher_features = self.teacher_forward(images)
        teacher_map = teacher_features[self.teacher_layer]
        if self.in_init_stage:
            _, reconstruction = self.paraphraser(teacher_map)
            loss = F.mse_loss(reconstruction.float(), teacher_map.float())
            return StepOutput(
                self._student_logits_frozen(images),
                {"ft_init": cfg.init_weight * loss},
                {"paraphraser_mse": loss.detach()},
            )
        logits, student_features = self.student_forward(images)
        with torch.no_grad():
            teacher_factor = self.paraphraser.encoder(teacher_map)
        student_factor = self.translator(student_features[self.student_layer])
        loss = factor_transfer_loss(student_factor, teacher_factor, cfg.collapse_channels)
        losses = self.label_and_kd_terms(logits, teacher_logits, labels)
        losses["ft"] = cfg.distill_weight * loss
        return StepOutput(logits, losses, {"ft_loss": loss.detach()})
