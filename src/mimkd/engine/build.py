"""One run, assembled in one place: config -> data -> models -> distiller -> loaders -> folder.

`build_run(config, method_config)` returns the `RunParts` a `Trainer` needs; `Trainer(parts).fit()`
trains, checkpoints and reports. The CLI, the Python API, packing, the benchmarks and the grid
runner all go through this pair, so a run means the same thing wherever it starts. Any part can be
passed in ready-made (an `nn.Module` student or teacher, a `DatasetBundle`), and a caller may
replace a part of the result (the benchmarks wrap `train_loader` in a timer) before training.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mimkd.config import RunConfig, config_to_dict
from mimkd.data import DatasetBundle, load_dataset, make_loader
from mimkd.distillers import (
    DistillerContext,
    create_distiller,
    method_config_class,
    method_info,
)
from mimkd.engine.checkpoint import seed_everything
from mimkd.engine.distributed import DistributedContext, init_distributed
from mimkd.engine.fast import prepare_frozen_teacher
from mimkd.engine.metrics import evaluate
from mimkd.engine.rundir import RunFolder, claim_run_folder
from mimkd.engine.trainer import RunParts
from mimkd.errors import ConfigError, MimkdError, ShapeError
from mimkd.models import create_model
from mimkd.models.loading import load_model


def select_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MimkdError(
            f"device={name} was asked for but CUDA is not available; use device=cpu or device=auto."
        )
    return device


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def new_run_dir(config: RunConfig) -> Path:
    """run_dir when given, else a new out_dir/<name>/<timestamp>."""
    if config.run_dir:
        return Path(config.run_dir)
    if config.resume:
        raise ConfigError("resume=true needs the run's folder: run_dir=PATH (or --resume PATH).")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    name = config.name or f"{config.method}_{config.model.name.replace(':', '-')}"
    return Path(config.out_dir) / name / stamp


def build_run(
    config: RunConfig,
    method_config: Any = None,
    *,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    dataset: DatasetBundle | None = None,
) -> RunParts:
    """Assemble a run from its config; modules and a dataset passed in are used as they are.

    The run folder is claimed first (locked, checked: see `mimkd.engine.rundir`), so a folder the
    run may not use is refused before any data is read; `Trainer.fit` releases it. Under DDP
    rank 0 claims it and every rank learns the outcome; an error in any rank's set-up stops
    every rank, shown once (`DistributedContext.agreement`: the blocks below hold no collective).
    """
    distributed = init_distributed(config.dist_timeout)
    seed_everything(config.seed)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    with distributed.agreement():
        device = select_device(config.device, distributed.local_rank)
        info = method_info(config.method)
        if config.data.batch_size < info.min_batch_size:
            raise ConfigError(
                f"method {config.method!r} compares samples within a batch and needs "
                f"data.batch_size >= {info.min_batch_size}; got {config.data.batch_size}."
            )
        if method_config is None:
            method_config = method_config_class(config.method)()
        recorded_config = config_to_dict(config, method_config)
        run_dir = new_run_dir(config)
    run_dir = distributed.broadcast_path(run_dir)  # every rank uses rank 0's folder
    folder = None
    with distributed.agreement():
        if distributed.is_main:
            folder = claim_run_folder(run_dir, resume=config.resume, config=recorded_config)
    with _abandoned_on_failure(folder):
        with distributed.agreement():
            dataset, student, teacher, teacher_record, train_loader, test_loader = _data_and_models(
                config, info, distributed, device, student, teacher, dataset
            )
        if teacher is not None and teacher_record["teacher_accuracy"] is None:
            teacher_record["teacher_accuracy"] = evaluate(
                teacher.to(device), test_loader, contextlib.nullcontext, distributed
            )["top1"]
        channels, height, width = dataset.image_shape
        with distributed.agreement():
            context = DistillerContext(
                num_classes=dataset.num_classes,
                sample_input=torch.zeros(2, channels, height, width),
                num_train_samples=len(dataset.train),
                total_epochs=config.epochs,
            )
            distiller = create_distiller(config.method, student, teacher, context, method_config)
            if distiller.teacher is not None and config.fast_teacher:
                # after the distiller registered its taps: the fold leaves every hooked value as
                # it was
                prepare_frozen_teacher(distiller.teacher)

        record = {
            "title": f"{config.method}: {config.model.name} on {dataset.name}",
            "method": config.method,
            "model_name": config.model.name,
            "student": config.model.name,
            "student_parameters": sum(p.numel() for p in student.parameters()),
            "extra_parameters": distiller.extra_parameter_count(),
            "num_classes": dataset.num_classes,
            "class_names": [str(name) for name in dataset.classes],
            "input": dataset.input_facts(),  # what `mimkd predict` needs from the file alone
            "in_channels": channels,
            "image_shape": [channels, height, width],
            "mean": [float(value) for value in dataset.mean],
            "std": [float(value) for value in dataset.std],
            "dataset": f"{dataset.name} ({len(dataset.train)} train / {len(dataset.test)} test, "
            f"{channels}x{height}x{width})",
            "dataset_name": dataset.name,
            "data_source": str(dataset.source),
            "data_files": list(dataset.files),
            "config": recorded_config,
            **teacher_record,
            "device": device_description(device),
            "torch": str(torch.__version__),
        }
        return RunParts(
            config=config,
            distiller=distiller,
            train_loader=train_loader,
            test_loader=test_loader,
            run_dir=run_dir,
            device=device,
            method_config=distiller.config,
            distributed=distributed,
            record=record,
            folder=folder,
        )


def _data_and_models(
    config: RunConfig,
    info,
    distributed: DistributedContext,
    device: torch.device,
    student: nn.Module | None,
    teacher: nn.Module | None,
    dataset: DatasetBundle | None,
):
    """The dataset, the student and teacher (checked against it) and both loaders."""
    if dataset is None:
        dataset = load_dataset(
            config.data.name,
            root=config.data.root,
            download=config.data.download,
            image_size=config.data.image_size,
            channels=config.data.channels,
            train_subset=config.data.train_subset,
            test_subset=config.data.test_subset,
            augment=config.data.augment,
        )
    channels, height, width = dataset.image_shape
    sample_input = torch.zeros(2, channels, height, width)

    if student is None:
        weights = {"weights": config.model.weights} if config.model.weights else {}
        student = create_model(
            config.model.name, num_classes=dataset.num_classes, in_channels=channels, **weights
        )
    teacher, teacher_record = _teacher(config, info, teacher, dataset)
    if teacher is not None:
        _check_classes(teacher, sample_input, dataset.num_classes, "teacher")
    _check_classes(student, sample_input, dataset.num_classes, "student")

    # what both loaders share: normalisation, placement, workers and this rank's shard
    loader = functools.partial(
        make_loader,
        mean=dataset.mean,
        std=dataset.std,
        device=device,
        num_workers=config.data.num_workers,
        rank=distributed.rank,
        world_size=distributed.world_size,
        channels_last=config.channels_last,
    )
    # a last batch too small for the method's negatives is dropped; otherwise every image is used
    remainder = (len(dataset.train) // distributed.world_size) % config.data.batch_size
    train_loader = loader(
        dataset.train,
        config.data.batch_size,
        train=True,
        augment=config.data.augment,
        seed=config.seed,
        drop_last=0 < remainder < info.min_batch_size,
    )
    # every rank evaluates its shard; `evaluate` adds the counts over ranks
    test_loader = loader(dataset.test, config.data.eval_batch_size, train=False)
    return dataset, student, teacher, teacher_record, train_loader, test_loader


@contextlib.contextmanager
def _abandoned_on_failure(folder: RunFolder | None):
    """A run that fails while being assembled leaves its folder as it found it (unlocked)."""
    try:
        yield
    except BaseException:
        if folder is not None:
            folder.abandon()
        raise


def _teacher(config: RunConfig, info, teacher: nn.Module | None, dataset: DatasetBundle):
    """The teacher module and what the run records about it (name, file SHA-256, accuracy)."""
    record = {"teacher": None, "teacher_sha256": None, "teacher_accuracy": None}
    if teacher is not None:
        record["teacher"] = type(teacher).__name__
        # the BatchNorm fold rewrites the module in place: keep the caller's intact
        return (copy.deepcopy(teacher) if config.fast_teacher else teacher), record
    wants_teacher = info.needs_teacher or config.teacher.checkpoint
    if not wants_teacher:
        return None, record
    if not config.teacher.checkpoint and not config.teacher.weights:
        raise MimkdError(
            f"method {config.method!r} needs a teacher: pass teacher.checkpoint=PATH (train one "
            "with `mimkd train`), or teacher.model=tv:NAME teacher.weights=DEFAULT when online."
        )
    channels, height, _ = dataset.image_shape
    loaded = load_model(
        config.teacher.checkpoint,
        model_name=config.teacher.model,
        num_classes=dataset.num_classes,
        in_channels=channels,
        image_size=height,
        weights=config.teacher.weights,
    )
    record.update(
        teacher=loaded.name, teacher_sha256=loaded.sha256, teacher_accuracy=loaded.accuracy
    )
    return loaded.model, record


def _check_classes(model: nn.Module, sample: torch.Tensor, num_classes: int, role: str) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(sample)
    except RuntimeError as error:
        raise ShapeError(
            f"the {role} cannot run on {tuple(sample.shape[1:])} images "
            f"({str(error).splitlines()[0]}); set data.image_size/data.channels to what it expects."
        ) from None
    finally:
        model.train(was_training)
    if logits.shape[-1] != num_classes:
        raise ShapeError(
            f"the {role} predicts {logits.shape[-1]} classes but the dataset has {num_classes}; "
            f"build it with num_classes={num_classes} or use a {role} trained on this dataset."
        )
