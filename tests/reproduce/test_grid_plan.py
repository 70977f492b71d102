"""Planning a grid: run identity, shared runs, method-scoped overrides, shards, plan.json."""

from pathlib import Path

import pytest
import yaml

from mimkd.reproduce import load_grid, parse_shard, plan_grid, shard_units
from mimkd.reproduce.plan import Plan
from mimkd.reproduce.spec import split_arguments

REPO = Path(__file__).resolve().parents[2]
TEACHER = str(REPO / "configs/fashion_mnist/teacher.yaml")
STUDENT = str(REPO / "configs/fashion_mnist/student.yaml")


def grid_file(tmp_path, **changes) -> Path:
    grid = {
        "name": "plan",
        "out": str(tmp_path / "out"),
        "config": STUDENT,
        "overrides": {"dkd.warmup_epochs": 3, "kd.temperature": 2},
        "teachers": {"small": {"config": TEACHER}},
        "pairs": [{"teacher": "small", "student": "cnn_tiny"}],
        "methods": ["ce", "kd", "dkd"],
        "seeds": [0, 1],
        **changes,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def plan_of(path, *arguments) -> Plan:
    return plan_grid(load_grid(path, list(arguments)))


def test_identity_ignores_where_a_run_happens_but_not_what_it_computes(tmp_path):
    path = grid_file(tmp_path)
    base = plan_of(path)
    moved = plan_of(path, "device=cpu", "data.root=/elsewhere", "progress=true", "log_every=7")
    assert [u.pre_id for u in base.units] == [u.pre_id for u in moved.units]
    ce = base.units[0]
    assert ce.method == "ce" and ce.teacher is None
    assert base.unit_id(ce) == moved.unit_id(moved.units[0])  # known without the teacher
    assert base.unit_folder(ce).name.startswith("cnn_tiny-ce-s0-")
    assert base.unit_id(base.units[2]) is None  # kd waits for its teacher's file
    longer = plan_of(path, "epochs=31")
    assert all(a.pre_id != b.pre_id for a, b in zip(base.units, longer.units))
    # the runtime keys reach the teachers too, without changing their identity
    assert base.teachers["small"].identity == moved.teachers["small"].identity
    assert moved.teachers["small"].job[0].data.root == "/elsewhere"


def test_method_scoped_overrides_reach_their_method_only(tmp_path):
    plan = plan_of(grid_file(tmp_path))
    settings = {u.method: u.job[1] for u in plan.units}
    assert settings["kd"].temperature == 2
    assert settings["dkd"].warmup_epochs == 3 and settings["dkd"].temperature == 4
    assert settings["ce"].temperature == 4


def test_a_baseline_without_teacher_is_shared_by_the_pairs_of_its_student(tmp_path):
    path = grid_file(
        tmp_path,
        teachers={
            "small": {"config": TEACHER},
            "other": {"config": TEACHER, "overrides": {"epochs": 2}},
        },
        pairs=[
            {"teacher": "small", "student": "cnn_tiny"},
            {"teacher": "other", "student": "cnn_tiny"},
        ],
        methods=["ce", "kd"],
        seeds=[0],
    )
    plan = plan_of(path)
    assert len(plan.cells) == 4 and len(plan.units) == 3
    ce_cells = [c for c in plan.cells if c.method == "ce"]
    assert {c.pair for c in ce_cells} == {"small -> cnn_tiny", "other -> cnn_tiny"}
    assert len({c.unit for c in ce_cells}) == 1
    assert len({c.unit for c in plan.cells if c.method == "kd"}) == 2
    assert plan.teachers["small"].folder != plan.teachers["other"].folder


def test_a_checkpoint_teachers_file_is_part_of_its_students_identity(tmp_path):
    checkpoint = tmp_path / "t.pt"
    checkpoint.write_bytes(b"one teacher")
    path = grid_file(
        tmp_path, teachers={"small": {"checkpoint": str(checkpoint), "model": "cnn_small"}}
    )
    first = plan_of(path)
    kd = next(u for u in first.units if u.method == "kd")
    assert first.unit_id(kd) is not None
    assert kd.job[0].teacher.model == "cnn_small"
    checkpoint.write_bytes(b"another teacher")
    second = plan_of(path)
    assert second.unit_id(second.units[kd.index]) != first.unit_id(kd)
    assert second.unit_id(second.units[0]) == first.unit_id(first.units[0])  # ce: no teacher


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_shards_are_disjoint_and_cover_the_grid(tmp_path, count):
    plan = plan_of(grid_file(tmp_path))
    slices = [shard_units(plan, parse_shard(f"{k}/{count}")) for k in range(1, count + 1)]
    indices = [unit.index for part in slices for unit in part]
    assert sorted(indices) == list(range(len(plan.units)))  # each run exactly once
    assert max(map(len, slices)) - min(map(len, slices)) <= 1


def test_the_plan_survives_plan_json(tmp_path):
    plan = plan_of(grid_file(tmp_path))
    copy = Plan.from_dict(plan.to_dict())
    assert [plan.unit_id(u) for u in plan.units] == [copy.unit_id(u) for u in copy.units]
    assert [c.pair for c in copy.cells] == [c.pair for c in plan.cells]
    moved = Plan.from_dict(plan.to_dict(), out=tmp_path / "moved")
    assert moved.teachers["small"].checkpoint.startswith(str(tmp_path / "moved" / "teachers"))


def test_command_line_arguments_split_into_grid_fields_and_run_keys():
    grid, runs = split_arguments(
        [
            "seeds=[5]",
            "out=o",
            "teachers.t.checkpoint=x.pt",
            "overrides.data.train_subset=7",
            "epochs=2",
            "dkd.warmup_epochs=1",
        ]
    )
    assert grid == {
        "seeds": [5],
        "out": "o",
        "teachers.t.checkpoint": "x.pt",
        "overrides.data.train_subset": 7,
    }
    assert runs == {"epochs": 2, "dkd.warmup_epochs": 1}


def test_grid_overrides_from_the_command_line(tmp_path):
    path = grid_file(tmp_path)
    spec = load_grid(
        path, ["seeds=3", "methods=[ce]", "overrides.data.train_subset=7", "name=other"]
    )
    assert spec.seeds == [0, 1, 2] and [m.label for m in spec.methods] == ["ce"]
    assert spec.overrides["data.train_subset"] == 7 and spec.overrides["kd.temperature"] == 2
    assert spec.name == "other" and spec.out == str(tmp_path / "out")  # out given in the file
