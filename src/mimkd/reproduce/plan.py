"""From a grid spec to every run it implies, each config resolved and checked before any training.

A *cell* is one entry of the table: (pair, method label, seed). A *unit* is one run to train:
cells whose resolved runs are identical share it (the CE baseline of a student trains once even
when two pairs use that student, since a run without a teacher does not depend on the pair). A
*teacher* is trained once per recipe and config, in `out/teachers/<name>-<hash>/`, or read from a
checkpoint. A unit's folder, `out/runs/<student>-<method>-s<seed>-<id>/`, is named by its identity
(`identity.run_id`), known once its teacher's file exists.

The plan is plain data (`to_dict` / `from_dict`, saved as `out/plan.json`), so `mimkd report`
rebuilds the same table from the folders without the grid file or the recipes it named.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mimkd.config import RunConfig, TeacherConfig, config_to_dict, load_config
from mimkd.data import DATASETS
from mimkd.distillers import DISTILLERS, method_info
from mimkd.errors import ConfigError, MimkdError
from mimkd.models import MODELS, is_known_model
from mimkd.reproduce.identity import (
    digest,
    finished_results,
    identity_config,
    is_runtime_key,
    run_id,
    slug,
)
from mimkd.reproduce.spec import GridSpec, PairSpec, TeacherSpec
from mimkd.serialization import sha256_of

PLAN_FORMAT = "mimkd-grid-plan-v1"
Job = tuple[RunConfig, Any]


@dataclass
class TeacherPlan:
    key: str
    kind: str  # "recipe" (trained here) or "checkpoint" (a given file)
    model: str | None  # the architecture, when known
    source: str  # the recipe or the checkpoint path
    identity: str  # recipe: hash of its config; checkpoint: its SHA-256, shortened
    checkpoint: str  # the file students load
    folder: str | None = None  # recipe: where it trains
    sha256: str | None = None  # checkpoint: known at once; recipe: once trained
    expected: dict[str, Any] = field(default_factory=dict)  # what its results.json must say
    job: Job | None = field(default=None, repr=False)  # in memory only


@dataclass
class UnitPlan:
    index: int
    pre_id: str  # identity before the teacher's SHA-256 is known: dedup and sharding
    slug: str
    method: str
    seed: int
    student: str
    epochs: int
    teacher: str | None  # the teacher's key when the run uses one
    identity: dict[str, Any]
    job: Job | None = field(default=None, repr=False)


@dataclass
class CellPlan:
    pair: str
    teacher: str
    student: str
    method: str  # the grid's label
    method_name: str
    seed: int
    unit: int


@dataclass
class Plan:
    name: str
    source: str
    out: str
    teachers: dict[str, TeacherPlan]
    units: list[UnitPlan]
    cells: list[CellPlan]
    pairs: list[str]
    methods: list[str]
    seeds: list[int]

    # ---- where things are, once teachers are known -------------------------------------------
    def teacher_sha256(self, key: str | None) -> str | None:
        """The teacher's SHA-256 (hashing a trained recipe teacher's file once), None if pending."""
        if key is None:
            return None
        teacher = self.teachers[key]
        if teacher.sha256 is None and teacher.kind == "recipe" and teacher_finished(teacher):
            teacher.sha256 = sha256_of(teacher.checkpoint)
        return teacher.sha256

    def unit_id(self, unit: UnitPlan) -> str | None:
        if unit.teacher is None:
            return run_id(unit.identity, None)
        sha = self.teacher_sha256(unit.teacher)
        return None if sha is None else run_id(unit.identity, sha)

    def unit_folder(self, unit: UnitPlan) -> Path | None:
        identity = self.unit_id(unit)
        return None if identity is None else Path(self.out) / "runs" / f"{unit.slug}-{identity}"

    def unit_expected(self, unit: UnitPlan) -> dict[str, Any]:
        return {
            "method": unit.method,
            "seed": unit.seed,
            "epochs": unit.epochs,
            "student": unit.student,
            "teacher_sha256": self.teacher_sha256(unit.teacher),
        }

    def unit_results(self, unit: UnitPlan) -> dict | None:
        folder = self.unit_folder(unit)
        return None if folder is None else finished_results(folder, self.unit_expected(unit))

    # ---- plan.json ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def plain(item) -> dict:
            record = dataclasses.asdict(dataclasses.replace(item, job=None))
            record.pop("job")
            return record

        return {
            "format": PLAN_FORMAT,
            "name": self.name,
            "source": self.source,
            "out": self.out,
            "pairs": self.pairs,
            "methods": self.methods,
            "seeds": self.seeds,
            "teachers": {key: plain(teacher) for key, teacher in self.teachers.items()},
            "units": [plain(unit) for unit in self.units],
            "cells": [dataclasses.asdict(cell) for cell in self.cells],
        }

    @classmethod
    def from_dict(cls, data: dict, out: str | Path | None = None) -> Plan:
        if data.get("format") != PLAN_FORMAT:
            raise MimkdError(f"plan format {data.get('format')!r} is not {PLAN_FORMAT!r}.")
        teachers = {key: TeacherPlan(**record) for key, record in data["teachers"].items()}
        root = str(out) if out is not None else data["out"]
        if out is not None:  # a grid folder that moved: its teachers moved with it
            for teacher in teachers.values():
                if teacher.kind == "recipe" and teacher.folder:
                    teacher.folder = str(Path(root) / "teachers" / Path(teacher.folder).name)
                    teacher.checkpoint = str(Path(teacher.folder) / "best.pt")
        return cls(
            name=data["name"],
            source=data["source"],
            out=root,
            teachers=teachers,
            units=[UnitPlan(**record) for record in data["units"]],
            cells=[CellPlan(**record) for record in data["cells"]],
            pairs=list(data["pairs"]),
            methods=list(data["methods"]),
            seeds=list(data["seeds"]),
        )

    def save(self) -> Path:
        path = Path(self.out) / "plan.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".plan.json.{socket.gethostname()}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=1))
        temporary.replace(path)  # shards write the same plan at once: old or new, never half
        return path


def load_plan(folder: str | Path) -> Plan | None:
    path = Path(folder) / "plan.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise MimkdError(f"{path} is damaged; rerun `mimkd reproduce` to rewrite it.") from None
    return Plan.from_dict(data, out=folder)


def teacher_finished(teacher: TeacherPlan) -> dict | None:
    """A recipe teacher's results when its training finished and its checkpoint exists."""
    if teacher.kind != "recipe" or not Path(teacher.checkpoint).is_file():
        return None
    return finished_results(teacher.folder, teacher.expected)


# ---- building the plan ----------------------------------------------------------------------


def method_of_key(key: str) -> str | None:
    """The method a dotted key belongs to (`dkd.nckd_weight` -> dkd), None for a run key."""
    head, dot, _ = key.partition(".")
    return head if dot and head in DISTILLERS else None


def scoped(overrides: dict[str, Any], method: str) -> dict[str, Any]:
    """The overrides that reach a run of `method`: run keys, and that method's own keys."""
    return {k: v for k, v in overrides.items() if method_of_key(k) in (None, method)}


def as_arguments(overrides: dict[str, Any]) -> list[str]:
    """{key: value} -> ['key=value'] in load_config's syntax (values as YAML flow text)."""
    arguments = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
        if text.endswith("\n..."):
            text = text[: -len("\n...")]
        elif text == "...":
            text = ""
        arguments.append(f"{key}={text}")
    return arguments


def _load(path: str | None, overrides: dict[str, Any], where: str) -> Job:
    if path is not None and not Path(path).is_file():
        raise ConfigError(
            f"{where}: config file {path!r} does not exist (paths are relative to the current "
            "directory); fix the path in the grid."
        )
    try:
        return load_config(path, as_arguments(overrides))
    except MimkdError as error:
        raise type(error)(f"{where}: {error}") from None


def _check_names(config: RunConfig, where: str) -> None:
    for role, name in (("model", config.model.name), ("teacher.model", config.teacher.model)):
        if name is not None and not is_known_model(name):
            try:
                MODELS.get(name)
            except MimkdError as error:
                raise type(error)(f"{where}: {role}: {error}") from None
    try:
        DATASETS.get(config.data.name)
    except MimkdError as error:
        raise type(error)(f"{where}: {error}") from None


def _plan_teacher(spec: GridSpec, teacher: TeacherSpec) -> TeacherPlan:
    where = f"grid {spec.source}, teacher {teacher.key!r}"
    if teacher.checkpoint is not None:
        path = Path(teacher.checkpoint)
        if not path.is_file():
            raise ConfigError(
                f"{where}: checkpoint {teacher.checkpoint!r} does not exist; fix the path "
                f"(or `teachers.{teacher.key}.checkpoint=PATH` on the command line)."
            )
        if teacher.model is not None and not is_known_model(teacher.model):
            MODELS.get(teacher.model)
        sha = sha256_of(path)
        return TeacherPlan(
            key=teacher.key,
            kind="checkpoint",
            model=teacher.model,
            source=str(path),
            identity=sha[:12],
            checkpoint=str(path),
            sha256=sha,
        )
    overrides = {
        **scoped(spec.teacher_overrides, "ce"),
        **scoped(teacher.overrides, "ce"),
        **{k: v for k, v in spec.run_overrides.items() if is_runtime_key(k)},
    }
    config, method_config = _load(teacher.config, overrides, where)
    if config.method != "ce":
        raise ConfigError(
            f"{where}: a teacher recipe trains from scratch (method ce), not {config.method!r}; "
            "distil into a checkpoint first and give it as {checkpoint: PATH}."
        )
    _check_names(config, where)
    identity = digest(
        {
            "format": "mimkd-grid-teacher-v1",
            "config": identity_config(config_to_dict(config, method_config)),
        }
    )
    folder = Path(spec.out) / "teachers" / slug(teacher.key, identity)
    config = dataclasses.replace(config, run_dir=str(folder), progress=False, name=teacher.key)
    return TeacherPlan(
        key=teacher.key,
        kind="recipe",
        model=config.model.name,
        source=teacher.config or "",
        identity=identity,
        checkpoint=str(folder / "best.pt"),
        folder=str(folder),
        expected={
            "method": "ce",
            "seed": config.seed,
            "epochs": config.epochs,
            "student": config.model.name,
        },
        job=(config, method_config),
    )


def _student_job(
    spec: GridSpec, pair: PairSpec, method, seed: int, teacher: TeacherPlan, where: str
) -> tuple[Job, bool]:
    """The resolved run of one cell, and whether it uses the teacher."""
    name = method.name
    overrides: dict[str, Any] = {
        **scoped(spec.overrides, name),
        **scoped(pair.overrides, name),
        **({"model.name": pair.student} if pair.student else {}),
        **method.overrides,
        **scoped(spec.run_overrides, name),
        "method": name,
        "seed": seed,
        "teacher.checkpoint": teacher.checkpoint,
        "progress": False,
    }
    if teacher.kind == "checkpoint" and teacher.model:
        overrides["teacher.model"] = teacher.model
    config, method_config = _load(pair.config or spec.config, overrides, where)
    uses_teacher = method_info(name).needs_teacher or method_config.kd_weight > 0
    if not uses_teacher:
        # a run that never reads the teacher does not depend on the pair: drop it entirely
        config = dataclasses.replace(config, teacher=TeacherConfig())
    _check_names(config, where)
    if uses_teacher and teacher.kind == "recipe":
        if config.teacher.model not in (None, teacher.model):
            raise ConfigError(
                f"{where}: the pair's config expects teacher.model={config.teacher.model!r} but "
                f"teacher {teacher.key!r} is a {teacher.model!r}; fix the pair or the teacher."
            )
        teacher_config = teacher.job[0]
        for key in ("name", "image_size", "channels"):
            mine, theirs = getattr(config.data, key), getattr(teacher_config.data, key)
            if mine != theirs:
                raise ConfigError(
                    f"{where}: the student's data.{key} is {mine!r} but teacher {teacher.key!r} "
                    f"is trained with {theirs!r}; give both the same data (teacher_overrides / "
                    "overrides)."
                )
    return (config, method_config), uses_teacher


def plan_grid(spec: GridSpec) -> Plan:
    """Resolve and check every run of the grid; raises one ConfigError naming the first problem."""
    teachers = {key: _plan_teacher(spec, teacher) for key, teacher in spec.teachers.items()}
    units: list[UnitPlan] = []
    by_pre_id: dict[str, int] = {}
    cells: list[CellPlan] = []
    pair_labels: list[str] = []
    for index, pair in enumerate(spec.pairs, start=1):
        teacher = teachers[pair.teacher]
        seen_in_pair: dict[int, str] = {}
        label = None
        for method in spec.methods:
            for seed in spec.seeds:
                where = f"grid {spec.source}, pair {index}, method {method.label!r}, seed {seed}"
                (config, method_config), uses_teacher = _student_job(
                    spec, pair, method, seed, teacher, where
                )
                label = label or pair.name or f"{pair.teacher} -> {config.model.name}"
                identity = identity_config(config_to_dict(config, method_config))
                pre_id = digest(
                    {"identity": identity, "teacher": teacher.identity if uses_teacher else None}
                )
                if pre_id not in by_pre_id:
                    by_pre_id[pre_id] = len(units)
                    units.append(
                        UnitPlan(
                            index=len(units),
                            pre_id=pre_id,
                            slug=slug(config.model.name, method.name, f"s{seed}"),
                            method=method.name,
                            seed=seed,
                            student=config.model.name,
                            epochs=config.epochs,
                            teacher=pair.teacher if uses_teacher else None,
                            identity=identity,
                            job=(config, method_config),
                        )
                    )
                unit = by_pre_id[pre_id]
                if unit in seen_in_pair:
                    raise ConfigError(
                        f"{where}: this run is the same as method {seen_in_pair[unit]!r}'s; give "
                        "the entries different overrides or drop one."
                    )
                seen_in_pair[unit] = method.label
                cells.append(
                    CellPlan(
                        pair="",  # set below, once the pair's label is known
                        teacher=pair.teacher,
                        student=config.model.name,
                        method=method.label,
                        method_name=method.name,
                        seed=seed,
                        unit=unit,
                    )
                )
        if label in pair_labels:
            raise ConfigError(
                f"grid {spec.source}, pair {index}: {label!r} is listed twice; give one a `name`."
            )
        pair_labels.append(label)
        for cell in cells[-len(spec.methods) * len(spec.seeds) :]:
            cell.pair = label
    return Plan(
        name=spec.name,
        source=spec.source,
        out=spec.out,
        teachers=teachers,
        units=units,
        cells=cells,
        pairs=pair_labels,
        methods=[method.label for method in spec.methods],
        seeds=list(spec.seeds),
    )


def parse_shard(text: str | None) -> tuple[int, int]:
    """'K/N' -> (K, N), 1 <= K <= N; None -> (1, 1)."""
    if text is None:
        return 1, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(
            f"--shard {text!r} is not K/N; e.g. --shard 2/4 runs the second of four slices."
        ) from None
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(
            f"--shard {text!r}: K must be between 1 and N (N >= 1), e.g. 1/{max(count, 1)}."
        )
    return index, count


def shard_units(plan: Plan, shard: tuple[int, int]) -> list[UnitPlan]:
    """The K-th of N disjoint slices, round-robin over the grid's order (methods and seeds spread
    over the machines), fixed by the grid alone: which runs are finished never moves a run."""
    index, count = shard
    return [unit for unit in plan.units if unit.index % count == index - 1]
