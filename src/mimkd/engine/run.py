"""One run from a config: data -> models -> distiller -> trainer -> report.

This is the library entry point behind `mimkd train` and `mimkd distill`; the Python API and the
quickstart call it too.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import platform
from pathlib import Path
from typing import Any

import torch
import yaml

from mimkd.config import RunConfig, config_to_dict, load_config
from mimkd.data import load_dataset, make_loader
from mimkd.distillers import DistillerContext, create_distiller, method_info
from mimkd.engine.checkpoint import seed_everything
from mimkd.engine.distributed import init_distributed
from mimkd.engine.fast import prepare_frozen_teacher
from mimkd.engine.report import write_run_report
from mimkd.engine.trainer import Trainer, evaluate
from mimkd.errors import ConfigError, MimkdError, ShapeError
from mimkd.models import create_model
from mimkd.models.loading import load_model


def select_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
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
    if config.run_dir:
        return Path(config.run_dir)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    name = config.name or f"{config.method}_{config.model.name.replace(':', '-')}"
    return Path(config.out_dir) / name / stamp


def run(
    config: RunConfig,
    method_config: Any,
    *,
    student: torch.nn.Module | None = None,
    teacher: torch.nn.Module | None = None,
    dataset=None,
) -> dict:
    """Train (method ce) or distil, write the run folder, return results.json's content.

    `student`/`teacher` modules and a `DatasetBundle` may be passed in directly (Python API);
    otherwise they are built from the config.
    """
    distributed = init_distributed()
    seed_everything(config.seed)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    device = select_device(config.device, distributed.local_rank)
    info = method_info(config.method)
    if config.data.batch_size < info.min_batch_size:
        raise ConfigError(
            f"method {config.method!r} contrasts samples within a batch and needs data.batch_size >= "
            f"{info.min_batch_size}; got {config.data.batch_size}."
        )
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
    teacher_record = {"teacher": None, "teacher_sha256": None, "teacher_accuracy": None}
    if teacher is None and (info.needs_teacher or config.teacher.checkpoint):
        if not config.teacher.checkpoint and not config.teacher.weights:
            raise MimkdError(
                f"method {config.method!r} needs a teacher: pass teacher.checkpoint=PATH (train one "
                "with `mimkd train`), or teacher.model=tv:NAME teacher.weights=DEFAULT when online."
            )
        loaded = load_model(
            config.teacher.checkpoint,
            model_name=config.teacher.model,
            num_classes=dataset.num_classes,
            in_channels=channels,
            image_size=height,
            weights=config.teacher.weights,
        )
        teacher = loaded.model
        teacher_record = {
            "teacher": loaded.name,
            "teacher_sha256": loaded.sha256,
            "teacher_accuracy": loaded.accuracy,
        }
    elif teacher is not None:
        teacher_record["teacher"] = type(teacher).__name__
        if config.fast_teacher:
            # the BatchNorm fold below rewrites the module in place: keep the caller's intact
            teacher = copy.deepcopy(teacher)
    if teacher is not None:
        _check_classes(teacher, sample_input, dataset.num_classes, "teacher")
    _check_classes(student, sample_input, dataset.num_classes, "student")

    # a last batch too small for the method's negatives is dropped; otherwise every image is used
    remainder = (len(dataset.train) // distributed.world_size) % config.data.batch_size
    needs_drop = 0 < remainder < info.min_batch_size
    train_loader = make_loader(
        dataset.train,
        config.data.batch_size,
        mean=dataset.mean,
        std=dataset.std,
        device=device,
        train=True,
        augment=config.data.augment,
        seed=config.seed,
        num_workers=config.data.num_workers,
        drop_last=needs_drop,
        rank=distributed.rank,
        world_size=distributed.world_size,
        channels_last=config.channels_last,
    )
    test_loader = make_loader(
        dataset.test,
        config.data.eval_batch_size,
        mean=dataset.mean,
        std=dataset.std,
        device=device,
        train=False,
        num_workers=config.data.num_workers,
        channels_last=config.channels_last,
    )
    if teacher is not None and teacher_record["teacher_accuracy"] is None:
        teacher_record["teacher_accuracy"] = evaluate(
            teacher.to(device), test_loader, contextlib.nullcontext
        )["top1"]

    context = DistillerContext(
        num_classes=dataset.num_classes,
        sample_input=sample_input,
        num_train_samples=len(dataset.train),
        total_epochs=config.epochs,
    )
    distiller = create_distiller(config.method, student, teacher, context, method_config)
    if distiller.teacher is not None and config.fast_teacher:
        # after the distiller registered its taps: the fold leaves every hooked value as it was
        prepare_frozen_teacher(distiller.teacher)

    run_dir = Path(config.run_dir) if config.resume else new_run_dir(config)
    run_dir = distributed.broadcast_path(run_dir)  # every rank writes into rank 0's folder
    if config.resume and not (run_dir / "last.pt").is_file():
        raise MimkdError(
            f"cannot resume: {run_dir / 'last.pt'} does not exist; pass the folder of an earlier run (run_dir=... or --resume RUN_DIR)."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    config_dict = config_to_dict(config, method_config)
    if distributed.is_main:
        (run_dir / "config.yaml").write_text(
            yaml.safe_dump(
                {**config_dict, "resume": False, "run_dir": str(run_dir)}, sort_keys=False
            )
        )
    extras = {
        "model_name": config.model.name,
        "num_classes": dataset.num_classes,
        "in_channels": channels,
        "image_shape": [channels, height, width],
        "method": config.method,
        "config": config_dict,
        **teacher_record,
    }
    trainer = Trainer(
        distiller,
        train_loader,
        test_loader,
        config,
        run_dir,
        device=device,
        checkpoint_extras=extras,
        distributed=distributed,
    )
    if config.resume:
        trainer.resume(run_dir / "last.pt")
    result = trainer.fit()

    student_parameters = sum(p.numel() for p in student.parameters())
    results = {
        "title": f"{config.method}: {config.model.name} on {dataset.name}",
        "method": config.method,
        "student": config.model.name,
        "student_parameters": student_parameters,
        "extra_parameters": distiller.extra_parameter_count(),
        **teacher_record,
        "dataset": f"{dataset.name} ({len(dataset.train)} train / {len(dataset.test)} test, {channels}x{height}x{width})",
        "best_accuracy": result.best_accuracy,
        "best_epoch": result.best_epoch,
        "last_accuracy": result.last_accuracy,
        "epochs": config.epochs,
        "seed": config.seed,
        "wall_seconds": result.wall_seconds,
        "device": device_description(device),
        "run_dir": str(run_dir),
        "torch": torch.__version__,
    }
    if distributed.is_main:
        write_run_report(run_dir, results, result.history)
    return results


def _check_classes(
    model: torch.nn.Module, sample: torch.Tensor, num_classes: int, role: str
) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(sample)
    except RuntimeError as error:
        raise ShapeError(
            f"the {role} cannot run on {tuple(sample.shape[1:])} images ({str(error).splitlines()[0]}); set data.image_size/data.channels to what it expects."
        ) from None
    finally:
        model.train(was_training)
    if logits.shape[-1] != num_classes:
        raise ShapeError(
            f"the {role} predicts {logits.shape[-1]} classes but the dataset has {num_classes}; build it with num_classes={num_classes} or use a {role} trained on this dataset."
        )


def run_from_args(config_file: str | None, overrides: list[str], base: dict | None = None) -> dict:
    config, method_config = load_config(config_file, overrides, base)
    return run(config, method_config)
