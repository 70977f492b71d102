"""The method contract every distiller follows (after mdistiller's `Distiller`).

A distiller owns the student, the frozen teacher and whatever the method adds (critics, adapters,
memory banks). The teacher stays in eval mode whatever `train()` is called with and runs under
no_grad. A training step returns the student's logits, a dict of *weighted* loss terms (the trainer
minimises their sum) and a dict of detached metrics to log. The trainer never knows which method it
runs: everything method-specific lives in the method's own file.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mimkd.distillers.losses import kd_loss
from mimkd.errors import MimkdError, ShapeError
from mimkd.features import FeatureExtractor, TapSet, discover_taps, probe_shapes


@dataclass
class StepOutput:
    logits: torch.Tensor
    losses: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def total_loss(self) -> torch.Tensor:
        return sum(self.losses.values())


@dataclass
class DistillerContext:
    """What a method may need to build itself: classes, a sample batch, the dataset size."""

    num_classes: int
    sample_input: torch.Tensor
    num_train_samples: int = 0
    total_epochs: int = 1


@dataclass
class MethodInfo:
    """How `mimkd list methods` describes a method."""

    name: str
    description: str
    paper: str
    taps: str
    config_class: type
    needs_teacher: bool = True
    needs_indices: bool = False
    min_batch_size: int = 1


class Distiller(nn.Module, metaclass=abc.ABCMeta):
    """Base class. Subclasses set `Config` (a dataclass) and implement `forward_train`."""

    Config: ClassVar[type] = type(None)
    needs_teacher: ClassVar[bool] = True
    needs_indices: ClassVar[bool] = False
    # a method that contrasts against other samples of the batch needs at least two
    min_batch_size: ClassVar[int] = 1
    # methods whose stages leave some parameters without gradient (AB/FT/FSP init) tell DDP so
    ddp_find_unused_parameters: ClassVar[bool] = False
    # the student/teacher taps a method reads; filled per instance from TapSets
    student_tap_paths: list[str]
    teacher_tap_paths: list[str]

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        config: Any,
        context: DistillerContext,
    ):
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise MimkdError(
                f"method {type(self).__name__} needs a teacher: pass teacher.checkpoint=PATH "
                "(train one with `mimkd train`)."
            )
        self.config = config
        self.context = context
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self._student_taps: TapSet | None = None
        self._teacher_taps: TapSet | None = None
        self._student_extractor: FeatureExtractor | None = None
        self._teacher_extractor: FeatureExtractor | None = None
        self.epoch = 0

    # ---- the contract ---------------------------------------------------------------------
    @abc.abstractmethod
    def forward_train(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> StepOutput:
        """One training step's forward: logits, weighted loss terms, detached metrics."""

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
    ):
        """With labels, a training step (so DDP can wrap the distiller); without, the student.

        Inference is the student alone: critics and adapters cost nothing at deployment.
        """
        if labels is None:
            return self.student(images)
        return self.forward_train(images, labels, indices)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def extra_modules(self) -> list[nn.Module]:
        """Modules the method trains besides the student (critics, adapters)."""
        return [
            module
            for name, module in self.named_children()
            if name not in ("student", "teacher") and not isinstance(module, FeatureExtractor)
        ]

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.student.parameters() if p.requires_grad]
        for module in self.extra_modules():
            params.extend(p for p in module.parameters() if p.requires_grad)
        return params

    def extra_parameter_count(self) -> int:
        return sum(p.numel() for module in self.extra_modules() for p in module.parameters())

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the trainer before each epoch (0-based): warm-ups and stage switches."""
        self.epoch = epoch

    @property
    def student_taps(self) -> TapSet:
        """The student's layers (declared by zoo models, discovered otherwise), found on first use."""
        if self._student_taps is None:
            self._student_taps = discover_taps(self.student, self.context.sample_input)
        return self._student_taps

    @property
    def teacher_taps(self) -> TapSet | None:
        if self._teacher_taps is None and self.teacher is not None:
            self._teacher_taps = discover_taps(self.teacher, self.context.sample_input)
        return self._teacher_taps

    # ---- helpers for subclasses ----------------------------------------------------------
    def tap_student(self, paths: Iterable[str]) -> None:
        self.student_tap_paths = list(dict.fromkeys(paths))
        self._student_extractor = FeatureExtractor(self.student, self.student_tap_paths)

    def tap_teacher(self, paths: Iterable[str]) -> None:
        if self.teacher is None:
            raise MimkdError("this method has no teacher to tap")
        self.teacher_tap_paths = list(dict.fromkeys(paths))
        self._teacher_extractor = FeatureExtractor(self.teacher, self.teacher_tap_paths)

    def student_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self._student_extractor is None:
            return self.student(images), {}
        return self._student_extractor(images)

    @torch.no_grad()
    def teacher_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.teacher is None:
            raise MimkdError("this method has no teacher")
        if self._teacher_extractor is None:
            return self.teacher(images), {}
        return self._teacher_extractor(images)

    def tap_pairs(self, pairs: list[tuple[str, str]]) -> None:
        """Tap both sides of (student path, teacher path) pairs."""
        self.tap_student(s for s, _ in pairs)
        self.tap_teacher(t for _, t in pairs)

    def check_teacher_logits(self) -> None:
        check_logits_match(
            self.probe(self.student, [])["logits"], self.probe(self.teacher, [])["logits"]
        )

    def label_and_kd_terms(self, logits, teacher_logits, labels) -> dict[str, torch.Tensor]:
        """gamma * CE, plus alpha * KD when the method's `kd_weight` is positive (RepDistiller's -r/-a)."""
        config = self.config
        losses = {"ce": config.ce_weight * F.cross_entropy(logits, labels)}
        if config.kd_weight > 0:
            losses["kd"] = config.kd_weight * kd_loss(logits, teacher_logits, config.temperature)
        return losses

    def probe(self, model: nn.Module, paths: Iterable[str]) -> dict[str, torch.Size]:
        return probe_shapes(model, paths, self.context.sample_input)

    def check_batch(self, images: torch.Tensor) -> None:
        if images.shape[0] < self.min_batch_size:
            raise ShapeError(
                f"method {type(self).__name__} needs batches of at least {self.min_batch_size} "
                f"(it contrasts samples of a batch); got {images.shape[0]}. Raise data.batch_size."
            )


def check_logits_match(student_logits_shape: torch.Size, teacher_logits_shape: torch.Size) -> None:
    if student_logits_shape[-1] != teacher_logits_shape[-1]:
        raise ShapeError(
            f"teacher predicts {teacher_logits_shape[-1]} classes but the student "
            f"{student_logits_shape[-1]}; build both for the dataset's classes."
        )


__all__ = [
    "Distiller",
    "DistillerContext",
    "MethodInfo",
    "StepOutput",
    "TapSet",
    "check_logits_match",
]
