"""Decoupled KD: split the KD loss into target-class (TCKD) and non-target-class (NCKD) parts.

Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022 (arXiv 2203.08679).
Pairs: any teacher and student predicting the same classes (logits only).
Defaults are mdistiller's CIFAR-100 setting (`mdistiller/engine/cfg.py`, `DKD.*`): CE weight 1,
alpha (TCKD weight) 1, beta (NCKD weight) 8, T 4, and a linear warm-up of the whole DKD term over 20
epochs, min(epoch / 20, 1) (`mdistiller/distillers/DKD.py`). mdistiller overrides beta for a few
pairs (`configs/cifar100/dkd/vgg13_mv2.yaml`: 6); ResNet32x4 -> ResNet8x4/ShuffleNetV2 use 8.

TCKD is the T^2-scaled KL between the binary (target, rest) distributions and NCKD the T^2-scaled
KL between the distributions over the non-target classes (paper eq. 4). mdistiller takes the log of
summed probabilities and masks the target with a -1000 logit offset; here both parts come from
log-sum-exp over gathered logits, the same values without log(0) risk.

Epochs: mdistiller counts from 1, the trainer here from 0, so the ramp is min((epoch + 1) / 20, 1):
1/20 in the first epoch, as in mdistiller. The epoch arrives as a tensor (`step.epoch`), so a
compiled step is not rebuilt every epoch. The temperature is the shared `temperature` (DKD.T, 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mimkd.distillers.base import DistillConfig, Distiller
from mimkd.distillers.registry import register_distiller
from mimkd.options import option


@dataclass
class DKDConfig(DistillConfig):
    tckd_weight: float = option(
        1.0, "target-class KD weight, alpha in the paper (mdistiller DKD.ALPHA)", minimum=0
    )
    nckd_weight: float = option(
        8.0, "non-target-class KD weight, beta in the paper (DKD.BETA)", minimum=0
    )
    warmup_epochs: int = option(
        20, "epochs of linear ramp of the DKD term (DKD.WARMUP); 0: none", minimum=0
    )


def _non_target_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, C] -> [B, C-1] without the labelled class, by gather (no boolean-mask host sync)."""
    batch, classes = logits.shape
    columns = torch.arange(classes - 1, device=logits.device).expand(batch, -1)
    columns = columns + (columns >= labels[:, None]).long()
    return logits.gather(1, columns)


def _binary_log_probs(scaled_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log [p(target), p(not target)] as [B, 2]."""
    log_normaliser = torch.logsumexp(scaled_logits, dim=1)
    target = scaled_logits.gather(1, labels[:, None]).squeeze(1)
    rest = torch.logsumexp(_non_target_logits(scaled_logits, labels), dim=1)
    return torch.stack([target - log_normaliser, rest - log_normaliser], dim=1)


def dkd_parts(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each T^2 * KL(teacher || student) averaged over the batch."""
    student_scaled = student_logits / temperature
    teacher_scaled = teacher_logits / temperature
    tckd = F.kl_div(
        _binary_log_probs(student_scaled, labels),
        _binary_log_probs(teacher_scaled, labels),
        reduction="batchmean",
        log_target=True,
    )
    nckd = F.kl_div(
        F.log_softmax(_non_target_logits(student_scaled, labels), dim=1),
        F.log_softmax(_non_target_logits(teacher_scaled, labels), dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return tckd * temperature**2, nckd * temperature**2


def warmup_factor(epoch: torch.Tensor | int, warmup_epochs: int) -> torch.Tensor | float:
    """mdistiller's min(epoch / warmup, 1) with its 1-based epoch; `epoch` here is 0-based.

    A tensor epoch (the training step's) gives a tensor, so the ramp stays on the device.
    """
    is_tensor = isinstance(epoch, torch.Tensor)
    if warmup_epochs <= 0:
        return torch.ones_like(epoch) if is_tensor else 1.0
    ramp = (epoch + 1) / warmup_epochs
    return ramp.clamp(max=1.0) if is_tensor else min(ramp, 1.0)


@register_distiller("dkd", paper="Zhao et al., CVPR 2022 (arXiv 2203.08679)", taps="logits")
class DecoupledKD(Distiller):
    """DKD: alpha * TCKD + beta * NCKD with a linear warm-up, plus CE."""

    Config = DKDConfig
    uses_teacher_logits = True

    def loss(self, step):
        cfg = self.config
        tckd, nckd = dkd_parts(step.logits, step.teacher_logits, step.labels, cfg.temperature)
        ramp = warmup_factor(step.epoch, cfg.warmup_epochs)
        dkd = ramp * (cfg.tckd_weight * tckd + cfg.nckd_weight * nckd)
        return {"dkd": dkd}, {"tckd": tckd, "nckd": nckd}
