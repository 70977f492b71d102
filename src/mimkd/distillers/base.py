"""The method contract (after mdistiller's `Distiller`): a method writes its loss and nothing else.

A method file holds a `Config` dataclass (extending `DistillConfig`, which owns the label and KD
terms every method shares), a `setup()` that declares the layers it reads and builds its adapters
from their probed shapes, and a `loss(step)` that returns its weighted terms. The base class does
the rest, once, for every method:

- freezes the teacher: eval mode whatever `train()` says, no gradients, run under no_grad;
- runs both networks with the declared taps (forward hooks, `mimkd.features`) and hands `loss`
  the features and logits in fp32 with autocast off, whatever precision the networks ran in;
- bridges layouts where that is well defined: a tap declared with `maps=True` arrives as a map
  [B, C, H, W] even from a ViT (patch tokens, class/register tokens dropped, on their grid);
- checks the batch size (`min_batch_size`) and that teacher and student predict the same classes;
- adds gamma * CE and, when `kd_weight > 0`, alpha * T^2 KL (RepDistiller's -r and -a);
- detaches the metrics.

Epochs: a value that changes during the run reaches `loss` as the tensor `step.epoch`, never as a
Python number a compiled step would specialise on. A method with stages (AB's and FT's init
epochs) says which stage an epoch is in (`stage()`); each stage runs its own copy of the step
function, so a compiled step is built once per stage and never recompiled when the stage changes.
"""

from __future__ import annotations

import abc
import dataclasses
import types
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mimkd.distillers.adapters import pair_taps
from mimkd.distillers.losses import kd_loss
from mimkd.errors import CheckpointError, MimkdError, ShapeError
from mimkd.features import (
    FeatureExtractor,
    TapSet,
    discover_taps,
    token_grid,
    tokens_to_map,
)
from mimkd.options import check, option


@dataclass
class DistillConfig:
    """What every method shares: the label term, and Hinton KD on top (RepDistiller's -r, -a).

    A config is valid from the moment it exists: `__post_init__` checks every field's declared
    choices and range, so a bad value fails where it was written, naming `method.key`.
    """

    method_name: ClassVar[str] = ""  # set by @register_distiller, for error messages

    ce_weight: float = option(
        1.0, "gamma: weight of cross-entropy on the labels (RepDistiller -r)", minimum=0
    )
    kd_weight: float = option(
        0.0,
        "alpha: weight of Hinton KD, T^2 KL to the teacher's softened logits (RepDistiller -a); "
        "0 leaves the term out",
        minimum=0,
    )
    temperature: float = option(
        4.0, "softening temperature T of the KD term (RepDistiller --kd_T)", greater_than=0
    )
    label_smoothing: float = option(
        0.0, "label smoothing of the cross-entropy", minimum=0, maximum=1
    )

    def __post_init__(self) -> None:
        check(self, f"{self.method_name}." if self.method_name else "")


@dataclass
class PairedLayersConfig(DistillConfig):
    """A method that compares layers of the two networks pair by pair."""

    student_layers: list[str] = option(
        [], "student taps (module paths); empty: the method's default layers"
    )
    teacher_layers: list[str] = option([], "teacher taps, paired in order with student_layers")


def with_default(name: str, default: Any) -> Any:
    """A shared field (`DistillConfig`'s) with a method's own default; help and range kept."""
    shared = {f.name: f for f in dataclasses.fields(DistillConfig)}[name]
    return field(default=default, metadata=shared.metadata)


@dataclass(frozen=True)
class Stage:
    """A part of the run in which a method's step has one shape.

    `labels`: the step adds CE and KD. `student_trains`: false runs the student in eval mode
    without gradients (a stage that trains only the method's own modules, as FT's init).
    """

    name: str = "main"
    labels: bool = True
    student_trains: bool = True


MAIN_STAGE = Stage()


@dataclass
class Step:
    """What a method's `loss` sees: the batch and both networks' outputs, all fp32."""

    labels: torch.Tensor
    logits: torch.Tensor
    teacher_logits: torch.Tensor | None
    student: dict[str, torch.Tensor]  # tapped student features by tap path
    teacher: dict[str, torch.Tensor]
    indices: torch.Tensor | None  # the samples' positions in the training set
    epoch: torch.Tensor  # completed epochs (0-based epoch index), a 0-d float tensor
    stage: str = "main"  # the method's stage this epoch (`Distiller.stage`)


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


Losses = dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]

_SIDES = ("student", "teacher")


class Distiller(nn.Module, metaclass=abc.ABCMeta):
    """Base class. Subclasses set `Config` and implement `loss` (and `setup`, `stage` if needed)."""

    Config: ClassVar[type] = DistillConfig
    needs_teacher: ClassVar[bool] = True
    needs_indices: ClassVar[bool] = False
    # a method that contrasts samples of a batch needs at least two
    min_batch_size: ClassVar[int] = 1
    # the method reads the teacher's logits itself (DKD, DIST), so they must match the student's
    uses_teacher_logits: ClassVar[bool] = False
    # a stage that leaves some parameters without gradient (AB/FT/FSP's init) tells DDP so
    ddp_find_unused_parameters: ClassVar[bool] = False
    method_name: ClassVar[str] = ""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        config: Any = None,
        context: DistillerContext | None = None,
    ):
        super().__init__()
        config = config if config is not None else self.Config()
        if teacher is None and (self.needs_teacher or config.kd_weight > 0):
            raise MimkdError(
                f"method {self.method_name or type(self).__name__} needs a teacher: pass "
                "teacher.checkpoint=PATH (train one with `mimkd train`)."
            )
        if context is None:
            raise MimkdError("a distiller needs a DistillerContext (classes and a sample batch).")
        self.config = config
        self.context = context
        self.student = student
        self.teacher = teacher
        # a teacher passed to a method that reads nothing of it (ce without KD) is never run
        self._uses_teacher = teacher is not None and (self.needs_teacher or config.kd_weight > 0)
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        # plain dicts, not submodules: taps add nothing to state_dict() or parameters()
        self._map_taps: dict[str, dict[str, tuple[int, tuple[int, int]] | None]] = {
            "student": {},
            "teacher": {},
        }
        self._extractors: dict[str, FeatureExtractor] = {}
        self._tap_sets: dict[str, TapSet] = {}
        self.student_shapes: dict[str, torch.Size] = {}
        self.teacher_shapes: dict[str, torch.Size] = {}
        self._steps: dict[str, Callable] = {}
        self._wrap_step: Callable[[Callable, str], Callable] | None = None
        self.epoch = 0
        self._stage = MAIN_STAGE
        self.setup()
        self._stage = self.stage(0)
        last_stage = self.stage(max(context.total_epochs - 1, 0))
        if last_stage.name != MAIN_STAGE.name:
            warnings.warn(
                f"{self.method_name} is in its {last_stage.name} stage for all "
                f"{context.total_epochs} epochs of the run: the student never trains on the "
                f"labels. Raise epochs or shorten the stage ({self.method_name}.init_epochs).",
                stacklevel=3,
            )
        if teacher is not None and (config.kd_weight > 0 or self.uses_teacher_logits):
            self._check_logits_match()

    # ---- what a method writes ---------------------------------------------------------------
    def setup(self) -> None:
        """Declare the taps (`tap`, `tap_pairs`) and build adapters from their probed shapes."""

    @abc.abstractmethod
    def loss(self, step: Step) -> Losses:
        """The method's weighted loss terms, optionally with metrics: `{name: term}` or
        `({name: term}, {name: value})`. CE and KD are added by the base class."""

    def stage(self, epoch: int) -> Stage:
        """The stage the run is in during `epoch` (0-based); methods with init epochs override."""
        return MAIN_STAGE

    # ---- taps ---------------------------------------------------------------------------------
    @property
    def student_taps(self) -> TapSet:
        """The student's layers (declared by zoo models, discovered otherwise), found on first use."""
        return self._tap_set("student")

    @property
    def teacher_taps(self) -> TapSet:
        if self.teacher is None:
            raise MimkdError("this method has no teacher to tap")
        return self._tap_set("teacher")

    @property
    def student_tap_paths(self) -> list[str]:
        """Every student tap the method declared, in order."""
        return list(self._map_taps["student"])

    @property
    def teacher_tap_paths(self) -> list[str]:
        return list(self._map_taps["teacher"])

    def _tap_set(self, side: str) -> TapSet:
        if side not in self._tap_sets:
            self._tap_sets[side] = discover_taps(getattr(self, side), self.context.sample_input)
        return self._tap_sets[side]

    def tap(
        self, student: Iterable[str] = (), teacher: Iterable[str] = (), *, maps: bool = False
    ) -> None:
        """Read these layers in every step; their shapes land in `student_shapes`/`teacher_shapes`.

        `maps=True`: the method needs feature maps [B, C, H, W]; token sequences [B, N, C] are
        laid out on their grid (class/register tokens dropped), vectors are a ShapeError.
        """
        for side, paths in (("student", list(student)), ("teacher", list(teacher))):
            if not paths:
                continue
            if side == "teacher" and self.teacher is None:
                raise MimkdError("this method has no teacher to tap")
            for path in paths:
                self._map_taps[side].setdefault(path, None)
            self._probe(side, paths, maps)

    def tap_pairs(
        self,
        student_layers: list[str],
        teacher_layers: list[str],
        default: str | Callable[[TapSet], list[str]],
        *,
        maps: bool = False,
    ) -> list[tuple[str, str]]:
        """Tap (student, teacher) pairs: the config's lists paired in order, else the models'
        default layers (`default`: a TapSet field or a function of it) paired from the deepest
        (`adapters.pair_taps`)."""

        def layers(taps: TapSet) -> list[str]:
            chosen = default(taps) if callable(default) else getattr(taps, default)
            return [chosen] if isinstance(chosen, str) else list(chosen)

        if student_layers or teacher_layers:
            pairs = pair_taps(student_layers, teacher_layers, [], [])
        else:
            pairs = pair_taps([], [], layers(self.student_taps), layers(self.teacher_taps))
        self.tap([s for s, _ in pairs], [t for _, t in pairs], maps=maps)
        return pairs

    def _probe(self, side: str, new_paths: list[str], maps: bool) -> None:
        """(Re)hook `side` with every declared tap and record the new taps' shapes."""
        model = getattr(self, side)
        if side in self._extractors:
            self._extractors[side].remove()
        extractor = FeatureExtractor(model, list(self._map_taps[side]))
        self._extractors[side] = extractor
        was_training = model.training
        model.eval()  # BatchNorm statistics stay untouched by the dummy batch
        try:
            with torch.no_grad():
                _, features = extractor(self.context.sample_input)
        finally:
            model.train(was_training)
        shapes = self.student_shapes if side == "student" else self.teacher_shapes
        for path in new_paths:
            shape = features[path].shape
            if maps and len(shape) == 3:
                layout = token_grid(model, int(shape[1]))
                self._map_taps[side][path] = layout
                shape = torch.Size([shape[0], shape[2], *layout[1]])
            elif maps and len(shape) != 4:
                raise ShapeError(
                    f"{self.method_name} reads feature maps [B, C, H, W], but the {side} tap "
                    f"{path!r} gives {tuple(shape)}; tap a convolutional stage or a token layer "
                    f"({side}_layers=[...])."
                )
            shapes[path] = shape

    def _run_side(self, side: str, images: torch.Tensor):
        model = getattr(self, side)
        extractor = self._extractors.get(side)
        if extractor is None:
            return model(images), {}
        logits, features = extractor(images)
        for path, layout in self._map_taps[side].items():
            if layout is not None:
                features[path] = tokens_to_map(features[path], *layout)
        return logits, features

    def student_forward(self, images: torch.Tensor):
        """(logits, {tap: feature}) of the student with the declared taps."""
        return self._run_side("student", images)

    @torch.no_grad()
    def teacher_forward(self, images: torch.Tensor):
        """(logits, {tap: feature}) of the frozen teacher with the declared taps."""
        return self._run_side("teacher", images)

    def _check_logits_match(self) -> None:
        sample = self.context.sample_input
        with torch.no_grad():
            shapes = []
            for model in (self.student, self.teacher):
                was_training = model.training
                model.eval()
                try:
                    shapes.append(model(sample).shape)
                finally:
                    model.train(was_training)
        check_logits_match(*shapes)

    # ---- the step -----------------------------------------------------------------------------
    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
        epoch: torch.Tensor | None = None,
    ):
        """With labels, a training step (so DDP can wrap the distiller); without, the student.

        Inference is the student alone: critics and adapters cost nothing at deployment.
        """
        if labels is None:
            return self.student(images)
        return self.forward_train(images, labels, indices, epoch)

    def forward_train(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor | None = None,
        epoch: torch.Tensor | None = None,
    ) -> StepOutput:
        """One training step's forward: logits, weighted loss terms, detached metrics."""
        if images.shape[0] < self.min_batch_size:
            raise ShapeError(
                f"method {self.method_name} needs batches of at least {self.min_batch_size} "
                f"(it compares samples of a batch); got {images.shape[0]}. Raise data.batch_size."
            )
        if self.needs_indices and indices is None:
            raise MimkdError(
                f"{self.method_name} needs the batch's dataset indices "
                "(forward_train(images, labels, indices))."
            )
        if epoch is None:
            epoch = torch.tensor(float(self.epoch), device=images.device)
        stage = self._stage
        # what does not train runs as inference, outside the training graph: the teacher always,
        # the student in a stage that freezes it (a training graph that toggles grad mode loses
        # its gradients under inductor, and inference graphs save no activations)
        teacher_out = self._infer("teacher", images) if self._uses_teacher else (None, {})
        frozen_student = None
        if not stage.student_trains:
            was_training = self.student.training
            self.student.eval()
            try:
                frozen_student = self._infer("student", images)
            finally:
                self.student.train(was_training)
        step = self._steps.get(stage.name)
        if step is None:
            step = types.MethodType(_own_code(Distiller._run_step, f"step_{stage.name}"), self)
            if self._wrap_step is not None:
                step = self._wrap_step(step, f"{self.method_name} {stage.name} step")
            self._steps[stage.name] = step
        output = step(images, labels, indices, epoch, teacher_out, frozen_student)
        output.metrics = {key: value.detach() for key, value in output.metrics.items()}
        return output

    def _infer(self, side: str, images: torch.Tensor):
        """(logits, features) of a network that does not train this step, without gradients."""
        forward = self._steps.get(f"{side} inference")
        if forward is None:
            # one code object per side: a compiled teacher forward is never invalidated by the
            # student's (FT's frozen init stage runs both)
            forward = types.MethodType(_own_code(Distiller._run_frozen, f"infer_{side}"), self)
            if self._wrap_step is not None:
                forward = self._wrap_step(forward, f"{self.method_name} {side} inference")
            self._steps[f"{side} inference"] = forward
        return forward(side, images)

    def _run_frozen(self, side: str, images: torch.Tensor):
        with torch.no_grad():
            return self._run_side(side, images)

    def _run_step(self, images, labels, indices, epoch, teacher_out, frozen_student) -> StepOutput:
        stage = self._stage
        teacher_logits, teacher_features = teacher_out
        if frozen_student is None:
            logits, student_features = self._run_side("student", images)
        else:
            logits, student_features = frozen_student
        with torch.autocast(images.device.type, enabled=False):
            logits32 = logits.float()
            teacher32 = teacher_logits.float() if teacher_logits is not None else None
            losses: dict[str, torch.Tensor] = {}
            if stage.labels:
                losses = self.label_terms(logits32, teacher32, labels)
            step = Step(
                labels=labels,
                logits=logits32,
                teacher_logits=teacher32,
                student={path: value.float() for path, value in student_features.items()},
                teacher={path: value.float() for path, value in teacher_features.items()},
                indices=indices,
                epoch=epoch,
                stage=stage.name,
            )
            terms = self.loss(step)
        method_losses, metrics = terms if isinstance(terms, tuple) else (terms, {})
        losses.update(method_losses)
        # metrics leave undetached and are detached by the caller: a metric can be the very value
        # of a loss term (weight 1.0), and a compiled graph returning one buffer both with and
        # without gradient drops the term's gradient (inductor folds the x1.0 into one output)
        return StepOutput(logits, losses, metrics)

    def label_terms(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """gamma * CE, plus alpha * T^2 KL when `kd_weight` is positive (RepDistiller's -r/-a)."""
        config = self.config
        ce = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
        losses = {"ce": config.ce_weight * ce}
        if config.kd_weight > 0 and teacher_logits is not None:
            losses["kd"] = config.kd_weight * kd_loss(logits, teacher_logits, config.temperature)
        return losses

    # ---- what the trainer uses ----------------------------------------------------------------
    def compile_steps(self, wrap: Callable[[Callable, str], Callable] | None) -> None:
        """Wrap every stage's step with `wrap(step, label)` (the trainer's torch.compile)."""
        self._wrap_step = wrap
        self._steps = {}

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the trainer before each epoch (0-based): selects the epoch's stage."""
        self.epoch = epoch
        self._stage = self.stage(epoch)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def extra_modules(self) -> list[nn.Module]:
        """Modules the method trains besides the student (critics, adapters, memories)."""
        return [module for name, module in self.named_children() if name not in _SIDES]

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.student.parameters() if p.requires_grad]
        for module in self.extra_modules():
            params.extend(p for p in module.parameters() if p.requires_grad)
        return params

    def extra_parameter_count(self) -> int:
        return sum(p.numel() for module in self.extra_modules() for p in module.parameters())

    def method_state_dict(self) -> dict[str, torch.Tensor]:
        """The method's own state (critics, adapters, memory banks): checkpointed beside the
        student; the frozen teacher is not (it is its own file)."""
        return {
            key: value
            for key, value in self.state_dict().items()
            if key.split(".", 1)[0] not in _SIDES
        }

    def load_method_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `method_state_dict()` exactly: a missing or extra key is an error, never a
        silently half-restored critic or memory."""
        expected = set(self.method_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            detail = "; ".join(
                f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            )
            raise CheckpointError(
                f"the checkpoint's {self.method_name} state does not fit this run ({detail}); "
                "resume with the method settings the run was started with."
            )
        try:
            self.load_state_dict(state, strict=False)
        except RuntimeError as error:
            raise CheckpointError(
                f"the checkpoint's {self.method_name} state does not fit this run "
                f"({str(error).splitlines()[-1].strip()}); resume with the run's own settings."
            ) from None


def _own_code(template: Callable, name: str) -> Callable:
    """A copy of `template` with a code object of its own, named `name`.

    torch.compile keeps compiled code per code object, guarded on what the code read (here
    `self._stage`, or which network runs). One shared step function would be compiled for the
    first stage and fail its guards (a recompile) whenever the stage changed; a copy per stage
    compiles once for its stage and stays valid for the rest of the run.
    """
    code = template.__code__.replace(co_name=name)
    return types.FunctionType(code, template.__globals__, name, template.__defaults__)


def check_logits_match(student_logits_shape: torch.Size, teacher_logits_shape: torch.Size) -> None:
    if student_logits_shape[-1] != teacher_logits_shape[-1]:
        raise ShapeError(
            f"teacher predicts {teacher_logits_shape[-1]} classes but the student "
            f"{student_logits_shape[-1]}; build both for the dataset's classes."
        )


__all__ = [
    "MAIN_STAGE",
    "DistillConfig",
    "Distiller",
    "DistillerContext",
    "MethodInfo",
    "PairedLayersConfig",
    "Stage",
    "Step",
    "StepOutput",
    "check_logits_match",
    "with_default",
]
