"""SGD and the learning-rate schedules of the KD protocols, as one per-step LambdaLR.

The learning rate is `optim.lr` unless `optim.lr_scaling=linear` scales it with the global batch
(processes x data.batch_size x optim.accumulation_steps) against `optim.reference_batch_size`
(Goyal et al. 2017, "Accurate, Large Minibatch SGD": lr 0.1 per 256 images). Never implicit: a run
on more processes keeps its learning rate unless the config asks, and the trainer prints the
scaled value. The schedule counts optimizer steps (with accumulation, one per accumulated batch).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mimkd.config import OptimConfig


def scaled_lr(config: OptimConfig, global_batch_size: int) -> float:
    """The learning rate the run trains with: `lr`, or `lr` x global batch / reference batch."""
    if config.lr_scaling == "linear":
        return config.lr * global_batch_size / config.reference_batch_size
    return config.lr


def build_optimizer(
    params: list[nn.Parameter],
    config: OptimConfig,
    device: torch.device,
    lr: float | None = None,
) -> torch.optim.Optimizer:
    """SGD at `lr` (default `config.lr`; the trainer passes `scaled_lr`)."""
    # foreach kernels batch the update over all tensors (fused SGD where the device supports it)
    fused = device.type == "cuda"
    return torch.optim.SGD(
        params,
        lr=config.lr if lr is None else lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
        fused=fused or None,
        foreach=None if fused else True,
    )


def milestone_epochs(config: OptimConfig, total_epochs: int) -> list[int]:
    """Milestones below 1 are fractions of the run (0.625 of 240 = 150), others are epochs."""
    return sorted(round(m * total_epochs) if m < 1 else int(m) for m in config.milestones)


def lr_factor(step: int, steps_per_epoch: int, total_epochs: int, config: OptimConfig) -> float:
    """Multiplier of the base LR at a global step (warm-up, then the schedule)."""
    epoch_float = step / steps_per_epoch
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if config.schedule == "multistep":
        # decays at epoch boundaries, as RepDistiller's adjust_learning_rate does
        epoch = step // steps_per_epoch
        passed = sum(epoch >= m for m in milestone_epochs(config, total_epochs))
        return config.lr_decay**passed
    if config.schedule == "cosine":
        start = config.warmup_epochs
        progress = (epoch_float - start) / max(total_epochs - start, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return 1.0


def build_scheduler(optimizer, config: OptimConfig, steps_per_epoch: int, total_epochs: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, total_epochs, config)
    )
