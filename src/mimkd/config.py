"""Typed run configuration: dataclasses filled from YAML files and `key=value` overrides.

OmegaConf structured configs do the merging and type checking (why not hand-written: it already
validates types, handles dotted keys and lists, and reports the failing key). We only translate its
errors into one-line messages that name the closest valid key.

The method's own options live under a node named after the method, typed by the method's `Config`
dataclass: `method=mimkd mimkd.beta_local=0.5`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from mimkd.distillers import DISTILLERS, method_config_class
from mimkd.errors import ConfigError, MimkdError, did_you_mean
from mimkd.options import check, field_default, field_help, option


@dataclass
class DataConfig:
    name: str = option("fashion_mnist", "dataset name: `mimkd list datasets`")
    root: str | None = option(
        None, "folder with the dataset files (default: $MIMKD_DATA, then system paths)"
    )
    download: bool = option(True, "download when the files are missing and the network allows")
    image_size: int = option(
        0, "resize/pad images to this size (0: native; 32: CIFAR models on MNIST)", minimum=0
    )
    channels: int = option(0, "3 repeats grey images to RGB (0: native)", choices=(0, 1, 3))
    train_subset: int = option(
        0, "use the first N training images, class-balanced (0: all)", minimum=0
    )
    test_subset: int = option(0, "evaluate on the first N test images (0: all)", minimum=0)
    augment: str = option(
        "none",
        "none | crop_flip (RandomCrop(size, 4) + horizontal flip, batched)",
        choices=("none", "crop_flip"),
    )
    batch_size: int = option(
        128,
        "training batch size per process (global batch: processes x this x "
        "optim.accumulation_steps)",
        minimum=1,
    )
    eval_batch_size: int = option(1000, "evaluation batch size (per process)", minimum=1)
    num_workers: int = option(
        2, "decoding workers for file-streamed datasets (imagefolder)", minimum=0
    )


@dataclass
class OptimConfig:
    lr: float = option(0.05, "peak learning rate", greater_than=0)
    momentum: float = option(0.9, "SGD momentum", minimum=0, maximum=1)
    nesterov: bool = option(False, "Nesterov momentum")
    weight_decay: float = option(5e-4, "L2 weight decay", minimum=0)
    schedule: str = option(
        "multistep", "learning-rate schedule", choices=("multistep", "cosine", "constant")
    )
    milestones: list[float] = option(
        [0.625, 0.75, 0.875],
        "epochs, or fractions of the run when < 1 (0.625 = 150/240)",
        minimum=0,
    )
    lr_decay: float = option(0.1, "multistep factor", greater_than=0)
    warmup_epochs: float = option(
        0.0, "linear warm-up from 0 (epochs, fractional allowed)", minimum=0
    )
    lr_scaling: str = option(
        "none",
        "none: lr as given | linear: lr x global batch / reference_batch_size (Goyal et al. "
        "2017), printed at the start and kept in results.json",
        choices=("none", "linear"),
    )
    reference_batch_size: int = option(
        256, "the global batch that lr is given for (lr_scaling=linear)", minimum=1
    )
    accumulation_steps: int = option(
        1,
        "batches per optimizer step, gradients summed: the global batch is processes x "
        "data.batch_size x this (exact for per-sample losses without BatchNorm)",
        minimum=1,
    )


@dataclass
class ModelConfig:
    name: str = option("cnn_tiny", "model name: `mimkd list models`, tv:<name>, timm:<name>")
    weights: str | None = option(None, "tv:/timm: pretrained weights name (needs internet)")


@dataclass
class TeacherConfig:
    checkpoint: str | None = option(
        None,
        "teacher file: mimkd's .pt, a RepDistiller/mdistiller .pth ({'model': ...}), "
        "a state_dict .pt/.pth/.safetensors",
    )
    model: str | None = option(
        None,
        "architecture of the teacher file; unset: what the file records, else its folder "
        "name as RepDistiller names it (resnet32x4_vanilla/ -> resnet32x4)",
    )
    weights: str | None = option(
        None, "tv:/timm: pretrained weights name when no checkpoint is given"
    )


@dataclass
class RunConfig:
    """Everything one `train` or `distill` run needs; saved with every checkpoint."""

    method: str = option("ce", "distillation method: `mimkd list methods` (train uses ce)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = option(10, "training epochs", minimum=1)
    seed: int = option(
        0,
        "seeds every RNG (python, numpy, torch, data order, augmentation)",
        minimum=0,
        maximum=2**63 - 1,  # torch generators take 64-bit seeds
    )
    device: str = option("auto", "auto (cuda when present) | cpu | cuda | cuda:N")
    precision: str = option(
        "auto",
        "auto: bf16 where native (CUDA, AVX512-BF16/AMX CPUs), else fp32",
        choices=("auto", "fp32", "bf16"),
    )
    channels_last: bool = option(True, "NHWC memory format (faster convolutions on CPU and GPU)")
    compile: bool | None = option(
        None, "torch.compile the training step and evaluation; null: on for CUDA only"
    )
    compile_mode: str = option(
        "default",
        "torch.compile mode (reduce-overhead: CUDA graphs)",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    )
    compile_backend: str = option(
        "inductor", "torch.compile backend (aot_eager: traced, no code generation; for checks)"
    )
    fast_teacher: bool = option(True, "fold the frozen teacher's BatchNorms into its convolutions")
    deterministic: bool = option(False, "torch.use_deterministic_algorithms")
    log_every: int = option(
        50, "steps between progress-bar refreshes (the only host syncs)", minimum=1
    )
    progress: bool = option(True, "show a progress bar")
    tensorboard: bool = option(False, "also write TensorBoard event files")
    out_dir: str = option("runs", "runs are written to out_dir/name/<timestamp>")
    name: str = option("", "run name (default: <method>_<model>)")
    run_dir: str = option("", "exact run folder (overrides out_dir/name/<timestamp>)")
    resume: bool = option(False, "continue the run in run_dir from its last.pt")
    max_steps: int = option(
        0, "stop after this many steps in total (0: no limit; for smoke runs)", minimum=0
    )
    checkpoint_every: int = option(
        0,
        "also write last.pt every N optimizer steps (atomically, replacing it; resuming "
        "continues mid-epoch); 0: at epoch ends only",
        minimum=0,
    )
    sync_batchnorm: bool = option(
        False,
        "DDP: BatchNorm normalises with the global batch's statistics (SyncBatchNorm), so N "
        "processes train as one process on the global batch",
    )
    dist_timeout: float = option(
        600.0,
        "DDP: seconds a collective waits for the other processes before the run fails",
        greater_than=0,
    )


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for key in node:
            dotted = f"{prefix}{key}"
            keys.append(dotted)
            keys.extend(_all_keys(node._get_node(key), dotted + "."))
    return keys


def _schema(method: str | None) -> DictConfig:
    schema = OmegaConf.structured(RunConfig)
    if method:
        method_schema = OmegaConf.structured(method_config_class(method))
        OmegaConf.set_struct(schema, False)
        schema[method] = method_schema
        OmegaConf.set_struct(schema, True)
    return schema


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. optim.lr=0.05).")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


# short forms: `model=resnet8x4` means model.name, `teacher=PATH` teacher.checkpoint
ALIASES = {"model": "model.name", "teacher": "teacher.checkpoint", "dataset": "data.name"}


def _nested(key: str, value: Any) -> dict:
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


def _translate(error: OmegaConfBaseException, schema: DictConfig, source: str) -> ConfigError:
    key = getattr(error, "full_key", None) or ""
    if isinstance(error, ConfigKeyError) or "not in struct" in str(error) or "Key '" in str(error):
        hint = did_you_mean(key, _all_keys(schema))
        return ConfigError(
            f"unknown config key {key!r} in {source}.{hint} "
            "See `mimkd distill --help` for every key."
        )
    message = str(error).split("\n")[0]
    return ConfigError(f"bad value for config key {key!r} in {source}: {message}.")


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict | None = None,
) -> tuple[RunConfig, Any]:
    """Build (RunConfig, method Config) from defaults <- base dict <- YAML file <- overrides."""
    layers: list[tuple[str, dict]] = []
    if base:
        layers.append(("defaults", base))
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file {str(path)!r} does not exist; pass --config with a YAML file."
            )
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values.")
        layers.append((str(path), loaded))
    for text in overrides or []:
        key, value = _parse_override(text)
        if key in ALIASES and not isinstance(value, dict):
            key = ALIASES[key]
        layers.append((f"override {text!r}", _nested(key, value)))

    method = RunConfig.method
    for _, layer in layers:
        if isinstance(layer.get("method"), str):
            method = layer["method"]
    DISTILLERS.get(method)  # unknown method: a clear error before anything else
    schema = _schema(method)
    merged = schema
    for source, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as error:
            raise _translate(error, schema, source) from None
    method_node = merged[method]
    OmegaConf.set_struct(merged, False)
    del merged[method]
    try:
        run = OmegaConf.to_object(merged)
        method_config = OmegaConf.to_object(method_node)
    except OmegaConfBaseException as error:
        cause = error.__cause__ or error.__context__
        if isinstance(cause, MimkdError):  # a method config's own check (__post_init__)
            raise type(cause)(str(cause)) from None
        raise _translate(error, schema, "config") from None
    check(run)
    return run, method_config


def config_to_dict(run: RunConfig, method_config: Any) -> dict:
    """Plain data (for YAML files and checkpoints, which must not pickle classes)."""
    result = dataclasses.asdict(run)
    result[run.method] = dataclasses.asdict(method_config)
    return result


def describe_keys(method: str | None = None) -> list[tuple[str, Any, str]]:
    """Every key with its default and meaning (the field's `option` metadata), for --help."""
    rows: list[tuple[str, Any, str]] = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            default = field_default(f)
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{prefix}{f.name}.")
                continue
            rows.append((f"{prefix}{f.name}", default, field_help(f)))

    walk(RunConfig, "")
    if method:
        walk(method_config_class(method), f"{method}.")
    return rows
