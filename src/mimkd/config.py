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
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from mimkd.errors import ConfigError, did_you_mean


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # dataset name: `mimkd list datasets`
    root: str | None = None  # folder with the dataset files (default: $MIMKD_DATA, system paths)
    download: bool = True  # download when the files are missing and the network allows
    image_size: int = 0  # resize/pad images to this size (0: native; 32: CIFAR models on MNIST)
    channels: int = 0  # 3 repeats grey images to RGB (0: native)
    train_subset: int = 0  # use the first N training images, class-balanced (0: all)
    test_subset: int = 0  # evaluate on the first N test images (0: all)
    augment: str = "none"  # none | crop_flip (RandomCrop(size, 4) + horizontal flip, batched)
    batch_size: int = 128  # training batch size (per process)
    eval_batch_size: int = 1000  # evaluation batch size
    num_workers: int = 2  # decoding workers for file-streamed datasets (imagefolder)


@dataclass
class OptimConfig:
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum
    weight_decay: float = 5e-4  # L2 weight decay
    schedule: str = "multistep"  # multistep | cosine | constant
    milestones: list[float] = field(
        default_factory=lambda: [0.625, 0.75, 0.875]
    )  # epochs, or fractions of the run when < 1 (0.625 = 150/240)
    lr_decay: float = 0.1  # multistep factor
    warmup_epochs: float = 0.0  # linear warm-up from 0 (epochs, fractional allowed)


@dataclass
class ModelConfig:
    name: str = "cnn_tiny"  # model name: `mimkd list models`, tv:<name>, timm:<name>
    weights: str | None = None  # tv:/timm: pretrained weights name (needs internet)


@dataclass
class TeacherConfig:
    checkpoint: str | None = (
        None  # teacher checkpoint: mimkd's .pt, a state_dict .pt/.pth/.safetensors
    )
    model: str | None = None  # architecture for a plain state_dict (mimkd checkpoints record it)
    weights: str | None = None  # tv:/timm: pretrained weights name when no checkpoint is given


@dataclass
class RunConfig:
    """Everything one `train` or `distill` run needs; saved with every checkpoint."""

    method: str = "ce"  # distillation method: `mimkd list methods` (train uses ce)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 10  # training epochs
    seed: int = 0  # seeds every RNG (python, numpy, torch, data order, augmentation)
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 where native: CUDA, AVX512-BF16/AMX CPUs) | fp32 | bf16
    channels_last: bool = True  # NHWC memory format (faster convolutions on CPU and GPU)
    compile: bool | None = None  # torch.compile student+teacher+critics; null: on for CUDA only
    compile_mode: str = "default"  # default | reduce-overhead (CUDA graphs) | max-autotune | ...
    fast_teacher: bool = True  # fold the frozen teacher's BatchNorms into its convolutions
    deterministic: bool = False  # torch.use_deterministic_algorithms
    log_every: int = 50  # steps between progress-bar refreshes (the only host syncs)
    progress: bool = True  # show a progress bar
    tensorboard: bool = False  # also write TensorBoard event files
    out_dir: str = "runs"  # runs are written to out_dir/name/<timestamp>
    name: str = ""  # run name (default: <method>_<model>)
    run_dir: str = ""  # exact run folder (overrides out_dir/name/<timestamp>)
    resume: bool = False  # continue the run in run_dir from its last.pt
    max_steps: int = 0  # stop after this many steps in total (0: no limit; for smoke runs)


VALID_CHOICES = {
    "data.augment": ("none", "crop_flip"),
    "optim.schedule": ("multistep", "cosine", "constant"),
    "precision": ("auto", "fp32", "bf16"),
    "compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}


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
        from mimkd.distillers import method_config_class

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
    from mimkd.distillers import DISTILLERS

    DISTILLERS.get(method)  # unknown method: a clear error before anything else
    schema = _schema(method)
    merged = schema
    for source, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as error:
            raise _translate(error, schema, source) from None
    for key, choices in VALID_CHOICES.items():
        value = OmegaConf.select(merged, key)
        if value not in choices:
            raise ConfigError(f"bad value {value!r} for {key}: choose one of {', '.join(choices)}.")
    method_node = merged[method]
    OmegaConf.set_struct(merged, False)
    del merged[method]
    try:
        run = OmegaConf.to_object(merged)
        method_config = OmegaConf.to_object(method_node)
    except OmegaConfBaseException as error:
        raise _translate(error, schema, "config") from None
    return run, method_config


def config_to_dict(run: RunConfig, method_config: Any) -> dict:
    """Plain data (for YAML files and checkpoints, which must not pickle classes)."""
    result = dataclasses.asdict(run)
    result[run.method] = dataclasses.asdict(method_config)
    return result


def describe_keys(method: str | None = None) -> list[tuple[str, Any, str]]:
    """Every key with its default and meaning (the comment beside the field), for --help."""
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    rows: list[tuple[str, Any, str]] = []

    def comments_of(cls: type) -> dict[str, str]:
        """The trailing comment of each field's statement (formatters may wrap it)."""
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            return {}
        comments_by_line = {
            token.start[0]: token.string.lstrip("#").strip()
            for token in tokenize.generate_tokens(io.StringIO(source).readline)
            if token.type == tokenize.COMMENT
        }
        comments = {}
        for node in ast.parse(source).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                for line in range(node.lineno, node.end_lineno + 1):
                    if line in comments_by_line:
                        comments[node.target.id] = comments_by_line[line]
                        break
        return comments

    def walk(cls: type, prefix: str) -> None:
        comments = comments_of(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or (
                f.default_factory is not dataclasses.MISSING
                and dataclasses.is_dataclass(f.default_factory())
            ):
                walk(type(f.default_factory()), f"{prefix}{f.name}.")
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = MISSING
            rows.append((f"{prefix}{f.name}", default, comments.get(f.name, "")))

    walk(RunConfig, "")
    if method:
        from mimkd.distillers import method_config_class

        walk(method_config_class(method), f"{method}.")
    return rows
