"""A bad grid stops before anything trains, with one line saying what is wrong and what to do."""

import pytest
import yaml

from mimkd.cli import main


def fails_cleanly(capsys, argv, *fragments):
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("mimkd: error: ") and "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def make_grid(tmp_path, idx_folder):
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(yaml.safe_dump({"method": "ce", "model": {"name": "cnn_small"}}))

    def make(**changes):
        grid = {
            "name": "bad",
            "out": str(tmp_path / "out"),
            "overrides": {"data.root": str(idx_folder), "data.download": False, "epochs": 1},
            "teachers": {"small": {"config": str(teacher)}},
            "pairs": [{"teacher": "small", "student": "cnn_tiny"}],
            "methods": ["ce", "kd"],
            "seeds": [0],
        }
        for key, value in changes.items():
            if value is None:
                grid.pop(key)
            else:
                grid[key] = value
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump(grid))
        return str(path)

    return make


def test_grid_file_problems(capsys, make_grid, tmp_path):
    fails_cleanly(capsys, ["reproduce", str(tmp_path / "nope.yaml")], "does not exist")
    (tmp_path / "broken.yaml").write_text("teachers: [unclosed\n")
    fails_cleanly(capsys, ["reproduce", str(tmp_path / "broken.yaml")], "not valid YAML")
    fails_cleanly(capsys, ["reproduce", make_grid(seed=[0])], "unknown field 'seed'", "'seeds'")
    fails_cleanly(capsys, ["reproduce", make_grid(pairs=None)], "`pairs` is missing")
    fails_cleanly(capsys, ["reproduce", make_grid(seeds=["a"])], "`seeds` must be a list")
    fails_cleanly(
        capsys,
        [
            "reproduce",
            make_grid(methods=["kd", {"name": "kd", "overrides": {"kd.temperature": 2}}]),
        ],
        "label 'kd' is used twice",
    )


def test_unknown_names(capsys, make_grid):
    fails_cleanly(
        capsys,
        ["reproduce", make_grid(methods=["ce", "kdd"])],
        "method 'kdd'",
        "unknown method",
        "'kd'",
    )
    fails_cleanly(
        capsys,
        ["reproduce", make_grid(pairs=[{"teacher": "small", "student": "cnn_tin"}])],
        "unknown model 'cnn_tin'",
        "'cnn_tiny'",
    )
    fails_cleanly(
        capsys,
        ["reproduce", make_grid(pairs=[{"teacher": "smal", "student": "cnn_tiny"}])],
        "teacher 'smal' is not under `teachers`",
        "'small'",
    )
    fails_cleanly(
        capsys, ["reproduce", make_grid(), "optim.lrr=0.1"], "unknown config key 'optim.lrr'"
    )


def test_teacher_problems(capsys, make_grid, tmp_path):
    fails_cleanly(
        capsys,
        ["reproduce", make_grid(teachers={"small": {"checkpoint": str(tmp_path / "t.pt")}})],
        "teacher 'small'",
        "does not exist",
    )
    fails_cleanly(
        capsys,
        ["reproduce", make_grid(teachers={"small": {"config": "configs/fashion_mnist/kd.yaml"}})],
        "trains from scratch (method ce)",
    )
    fails_cleanly(
        capsys,
        ["reproduce", make_grid(teachers={"small": {}})],
        "needs exactly one of `config`",
    )
    # a teacher trained on other images than its students
    fails_cleanly(
        capsys,
        ["reproduce", make_grid(), "teacher_overrides.data.image_size=32"],
        "data.image_size is 0",
        "teacher 'small' is trained with 32",
    )


def test_command_line_problems(capsys, make_grid):
    for shard in ("3/2", "x", "0/2", "1/0"):
        fails_cleanly(capsys, ["reproduce", make_grid(), "--shard", shard], "--shard")
    fails_cleanly(capsys, ["reproduce", make_grid(), "--jobs", "0"], "--jobs 0")
    fails_cleanly(capsys, ["reproduce", make_grid(), "seeds"], "not key=value")
    fails_cleanly(capsys, ["report", "/nonexistent/folder"], "is not a folder")


def test_the_whole_grid_is_checked_before_anything_trains(capsys, make_grid, tmp_path):
    grid = make_grid(
        pairs=[
            {"teacher": "small", "student": "cnn_tiny"},
            {
                "teacher": "small",
                "student": "cnn_tiny",
                "name": "again",
                "overrides": {"dkd.nckd_weight": -2},
            },
        ],
        methods=["ce", "kd", {"name": "dkd", "overrides": {"dkd.warmup_epochs": 1}}],
    )
    # the last run of the grid is the bad one
    fails_cleanly(capsys, ["reproduce", grid], "pair 2, method 'dkd'", "nckd_weight")
    assert not (tmp_path / "out").exists()  # no teacher, no run, not even the plan
