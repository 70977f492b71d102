"""A grid file: teachers, pairs, methods and seeds, read into typed specs and checked.

    name: fashion_mnist
    config: configs/fashion_mnist/student.yaml        # the students' recipe (optional)
    overrides: {epochs: 30, data.train_subset: 2000}  # every student run
    teacher_overrides: {}                             # every recipe teacher
    teachers:
      cnn_small: {config: configs/fashion_mnist/teacher.yaml, overrides: {epochs: 6}}
      # or {checkpoint: PATH, model: NAME}; `model` only for a plain state_dict
    pairs: [{teacher: cnn_small, student: cnn_tiny}]  # also `config:`, `overrides:`, `name:`
    methods: [ce, kd, {name: dkd, label: dkd_w3, overrides: {dkd.warmup_epochs: 3}}]
    seeds: [0, 1, 2]                                  # or a count: 3

Overrides are mappings of the run's dotted config keys. A key whose head names a method
(`dkd.nckd_weight: 6`) reaches that method's runs only, so one shared mapping can carry every
method's settings (the same rule as `mimkd pack`). Paths are relative to the current directory
(`~` expands). Top-level keys starting with `_` are ignored: a place for YAML anchors.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mimkd.errors import ConfigError, did_you_mean

GRID_FIELDS = (
    "name",
    "out",
    "config",
    "overrides",
    "teacher_overrides",
    "teachers",
    "pairs",
    "methods",
    "seeds",
)
TEACHER_FIELDS = ("config", "overrides", "checkpoint", "model")
PAIR_FIELDS = ("teacher", "student", "config", "overrides", "name")
METHOD_FIELDS = ("name", "label", "overrides")


@dataclass
class TeacherSpec:
    """A teacher trained from a recipe (once, then reused) or read from a checkpoint file."""

    key: str
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    model: str | None = None


@dataclass
class PairSpec:
    teacher: str
    student: str | None = None
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    name: str | None = None


@dataclass
class MethodSpec:
    label: str
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class GridSpec:
    name: str
    source: str  # the grid file, for messages and the report
    out: str
    config: str | None
    overrides: dict[str, Any]
    teacher_overrides: dict[str, Any]
    teachers: dict[str, TeacherSpec]
    pairs: list[PairSpec]
    methods: list[MethodSpec]
    seeds: list[int]
    # key=value arguments that are run keys: applied last, to every student run
    run_overrides: dict[str, Any] = field(default_factory=dict)


def parse_value(raw: str) -> Any:
    """A command-line value as YAML (`3`, `[0, 1]`, `{epochs: 2}`), else the plain string."""
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def split_arguments(arguments: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`key=value` arguments -> (grid field overrides, run key overrides).

    A key that starts with a grid field (`out=DIR`, `seeds=[0]`, `teachers.t.checkpoint=PATH`)
    changes the grid; `overrides.KEY=V` and `teacher_overrides.KEY=V` add one dotted run key to
    that mapping; any other key (`epochs=2`) is a run key for every student run.
    """
    grid: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    for text in arguments:
        if "=" not in text:
            raise ConfigError(
                f"argument {text!r} is not key=value; e.g. out=runs/mine seeds=[0] epochs=2."
            )
        key, raw = text.split("=", 1)
        key = key.strip().lstrip("-")
        head = key.split(".", 1)[0]
        if head in GRID_FIELDS:
            grid[key] = parse_value(raw)
        else:
            runs[key] = parse_value(raw)
    return grid, runs


def _apply_grid_override(document: dict, key: str, value: Any) -> None:
    head, _, rest = key.partition(".")
    if not rest:
        document[head] = value
        return
    if head in ("overrides", "teacher_overrides"):
        node = document.setdefault(head, {}) or {}
        if not isinstance(node, dict):
            raise ConfigError(f"grid field {head!r} must be a mapping of run keys to values.")
        node[rest] = value  # the rest is one dotted run key
        document[head] = node
        return
    node = document
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            if part in node:
                raise ConfigError(f"cannot set {key!r}: {part!r} in the grid is not a mapping.")
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def load_grid(
    path: str | Path,
    arguments: list[str] | None = None,
    *,
    default_out_root: str = "runs/reproduce",
) -> GridSpec:
    """Read and check a grid file; `arguments` are the command line's `key=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid file {str(path)!r} does not exist; pass a YAML grid file.")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0]
        raise ConfigError(f"grid file {str(path)!r} is not valid YAML ({first}).") from None
    if not isinstance(document, dict):
        raise ConfigError(f"grid file {str(path)!r} must hold a mapping (name, teachers, ...).")
    document = copy.deepcopy(document)
    grid_arguments, run_arguments = split_arguments(arguments or [])
    for key, value in grid_arguments.items():
        _apply_grid_override(document, key, value)
    return parse_grid(
        document, source=str(path), run_overrides=run_arguments, default_out_root=default_out_root
    )


def parse_grid(
    document: dict,
    *,
    source: str,
    run_overrides: dict[str, Any] | None = None,
    default_out_root: str = "runs/reproduce",
) -> GridSpec:
    where = f"grid {source}"
    # top-level keys starting with "_" hold YAML anchors or notes: read by nothing
    document = {key: value for key, value in document.items() if not str(key).startswith("_")}
    _check_fields(document, GRID_FIELDS, where)
    for required in ("teachers", "pairs", "methods"):
        if not document.get(required):
            raise ConfigError(
                f"{where}: `{required}` is missing or empty; see `mimkd reproduce --help`."
            )
    name = _text(document.get("name") or Path(source).stem, f"{where}: name")
    teachers = _teachers(document["teachers"], where)
    pairs = _pairs(document["pairs"], teachers, where)
    methods = _methods(document["methods"], where)
    return GridSpec(
        name=name,
        source=source,
        out=_text(document.get("out") or f"{default_out_root}/{name}", f"{where}: out"),
        config=_path(document.get("config"), f"{where}: config"),
        overrides=_mapping(document.get("overrides"), f"{where}: overrides"),
        teacher_overrides=_mapping(
            document.get("teacher_overrides"), f"{where}: teacher_overrides"
        ),
        teachers=teachers,
        pairs=pairs,
        methods=methods,
        seeds=_seeds(document.get("seeds", [0]), where),
        run_overrides=dict(run_overrides or {}),
    )


def _check_fields(node: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in node:
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown field {key!r}.{did_you_mean(str(key), allowed)} "
                f"Allowed: {', '.join(allowed)}."
            )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a non-empty string, got {value!r}.")
    return value


def _optional_text(value: Any, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _path(value: Any, where: str) -> str | None:
    text = _optional_text(value, where)
    return None if text is None else str(Path(text).expanduser())


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where} must be a mapping of run keys to values (e.g. {{epochs: 30}}), got {value!r}."
        )
    return {str(key): item for key, item in value.items()}


def _teachers(node: Any, where: str) -> dict[str, TeacherSpec]:
    if not isinstance(node, dict):
        raise ConfigError(
            f"{where}: `teachers` must map names to {{config: ...}} or {{checkpoint: ...}}."
        )
    teachers = {}
    for key, entry in node.items():
        here = f"{where}: teacher {key!r}"
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{here} must be {{config: RECIPE, overrides: {{...}}}} or {{checkpoint: PATH}}."
            )
        _check_fields(entry, TEACHER_FIELDS, here)
        has_config, has_checkpoint = bool(entry.get("config")), bool(entry.get("checkpoint"))
        if has_config == has_checkpoint:
            raise ConfigError(
                f"{here} needs exactly one of `config` (a recipe to train) or `checkpoint` (a file)."
            )
        if has_checkpoint and entry.get("overrides"):
            raise ConfigError(
                f"{here}: `overrides` belong to a recipe teacher; a checkpoint is used as it is."
            )
        teachers[str(key)] = TeacherSpec(
            key=str(key),
            config=_path(entry.get("config"), f"{here}: config"),
            overrides=_mapping(entry.get("overrides"), f"{here}: overrides"),
            checkpoint=_path(entry.get("checkpoint"), f"{here}: checkpoint"),
            model=_optional_text(entry.get("model"), f"{here}: model"),
        )
    return teachers


def _pairs(node: Any, teachers: dict[str, TeacherSpec], where: str) -> list[PairSpec]:
    if not isinstance(node, list):
        raise ConfigError(f"{where}: `pairs` must be a list of {{teacher: NAME, student: MODEL}}.")
    pairs = []
    for index, entry in enumerate(node, start=1):
        here = f"{where}: pair {index}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{here} must be {{teacher: NAME, student: MODEL}}, got {entry!r}.")
        _check_fields(entry, PAIR_FIELDS, here)
        teacher = entry.get("teacher")
        if teacher not in teachers:
            raise ConfigError(
                f"{here}: teacher {teacher!r} is not under `teachers`.{did_you_mean(str(teacher), teachers)} "
                f"Defined: {', '.join(teachers)}."
            )
        if not entry.get("student") and not entry.get("config"):
            raise ConfigError(
                f"{here} needs a `student` model (or a `config` that sets model.name)."
            )
        pairs.append(
            PairSpec(
                teacher=teacher,
                student=_optional_text(entry.get("student"), f"{here}: student"),
                config=_path(entry.get("config"), f"{here}: config"),
                overrides=_mapping(entry.get("overrides"), f"{here}: overrides"),
                name=_optional_text(entry.get("name"), f"{here}: name"),
            )
        )
    return pairs


def _methods(node: Any, where: str) -> list[MethodSpec]:
    if not isinstance(node, list):
        raise ConfigError(
            f"{where}: `methods` must be a list of names or {{name: ..., overrides: ...}}."
        )
    methods: list[MethodSpec] = []
    for index, entry in enumerate(node, start=1):
        here = f"{where}: method {index}"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"{here} must be a method name or {{name: ..., overrides: {{...}}}}.")
        _check_fields(entry, METHOD_FIELDS, here)
        name = _text(entry.get("name"), f"{here}: name")
        label = _text(entry.get("label") or name, f"{here}: label")
        if any(method.label == label for method in methods):
            raise ConfigError(
                f"{here}: the label {label!r} is used twice; give each entry of the same method "
                "its own `label` (e.g. {name: mimkd, label: mimkd_h512, overrides: {...}})."
            )
        methods.append(
            MethodSpec(label, name, _mapping(entry.get("overrides"), f"{here}: overrides"))
        )
    return methods


def _seeds(node: Any, where: str) -> list[int]:
    if isinstance(node, bool):
        node = None
    if isinstance(node, int):
        if node < 1:
            raise ConfigError(f"{where}: `seeds` as a count must be >= 1, got {node}.")
        return list(range(node))
    if (
        not isinstance(node, list)
        or not node
        or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in node)
    ):
        raise ConfigError(
            f"{where}: `seeds` must be a list of integers (e.g. [0, 1, 2]) or a count."
        )
    if len(set(node)) != len(node):
        raise ConfigError(f"{where}: `seeds` lists a seed twice: {node}.")
    return list(node)
