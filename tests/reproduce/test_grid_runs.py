"""A real grid end to end on a small IDX Fashion-MNIST folder: 2 methods x 2 seeds, one teacher.

The table is checked against means and stds recomputed here from the runs' own results.json; a
second invocation must train nothing; a deleted run folder must be the only run trained again; a
run stopped after its checkpoint must resume; two shards must cover the grid exactly once.
"""

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from mimkd.cli import main
from mimkd.reproduce import load_plan

REQUIRED_COLUMNS = [
    "pair",
    "teacher",
    "student",
    "method",
    "seed",
    "best_accuracy",
    "last_accuracy",
    "best_epoch",
    "epochs",
    "wall_seconds",
    "teacher_sha256",
    "teacher_accuracy",
    "run_dir",
]


def write_grid(folder: Path, idx_folder: Path) -> Path:
    data = {"data.root": str(idx_folder), "data.download": False, "data.batch_size": 32}
    teacher = folder / "teacher.yaml"
    teacher.write_text(
        yaml.safe_dump(
            {"method": "ce", "model": {"name": "cnn_small"}, "epochs": 2, "optim": {"lr": 0.05}}
        )
    )
    grid = {
        "name": "tiny",
        "overrides": {**data, "epochs": 2, "optim.lr": 0.05},
        "teacher_overrides": data,
        "teachers": {"small": {"config": str(teacher)}},
        "pairs": [{"teacher": "small", "student": "cnn_tiny"}],
        "methods": ["ce", {"name": "kd", "overrides": {"kd.temperature": 2}}],
        "seeds": [0, 1],
    }
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def invocations(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "invocations.jsonl").read_text().splitlines()]


def results_files(out: Path) -> dict[str, float]:
    """run folder name -> results.json's modification time."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/results.json")}


@pytest.fixture(scope="module")
def grid(idx_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid")
    path = write_grid(folder, idx_folder)
    out = folder / "out"
    assert main(["reproduce", str(path), f"out={out}"]) == 0
    return path, out


def test_the_grid_writes_one_row_per_run_and_the_mean_and_std_of_its_results(grid):
    _, out = grid
    with open(out / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 4
    assert set(REQUIRED_COLUMNS) <= set(rows[0])
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("ce", "0"), ("ce", "1"), ("kd", "0"), ("kd", "1"),
    ]  # fmt: skip
    teacher_results = json.loads(next((out / "teachers").glob("*/results.json")).read_text())
    # recomputed from the runs' own results.json, not from the CSV
    by_method: dict[str, list[dict]] = {}
    for path in (out / "runs").glob("*/results.json"):
        results = json.loads(path.read_text())
        by_method.setdefault(results["method"], []).append(results)
    assert sorted(by_method) == ["ce", "kd"] and all(len(v) == 2 for v in by_method.values())
    summary = {s["method"]: s for s in json.loads((out / "summary.json").read_text())}
    report = (out / "report.md").read_text()
    for method, runs in by_method.items():
        for key, prefix in (("best_accuracy", "best"), ("last_accuracy", "last")):
            values = [r[key] for r in runs]
            mean, std = statistics.mean(values), statistics.stdev(values)
            assert summary[method][f"{prefix}_mean"] == pytest.approx(mean, abs=1e-12)
            assert summary[method][f"{prefix}_std"] == pytest.approx(std, abs=1e-12)
            assert f"{mean:.4f} ± {std:.4f}" in report
        assert summary[method]["n"] == 2
    # the seeds really differ (a check of the check: equal runs would make any std 0)
    assert any(len({r["best_accuracy"] for r in runs}) == 2 for runs in by_method.values())
    # the teacher's identity reaches every row and the report
    for row in rows:
        assert row["teacher"] == "small" and row["student"] == "cnn_tiny"
        assert float(row["teacher_accuracy"]) == pytest.approx(teacher_results["best_accuracy"])
    kd_results = by_method["kd"][0]
    assert len(kd_results["teacher_sha256"]) == 64
    assert {r["teacher_sha256"] for r in rows} == {kd_results["teacher_sha256"]}
    assert kd_results["teacher_sha256"] in report
    assert by_method["ce"][0]["teacher_sha256"] is None  # the baseline trains without a teacher
    for name in ("overview.png", "pair-small-to-cnn_tiny.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # links to each run's own report, relative to report.md
    for row in rows:
        link = Path(row["run_dir"]).name + "/report.md"
        assert f"(runs/{link})" in report
        assert (out / "runs" / link).is_file()
    assert "## Hardware, versions, time" in report and "CPU" in report


def test_a_second_invocation_runs_nothing_and_says_so(grid, capsys):
    path, out = grid
    before = results_files(out)
    capsys.readouterr()
    assert main(["reproduce", str(path), f"out={out}"]) == 0
    assert "nothing to run: all 4 runs of this grid are finished" in capsys.readouterr().out
    assert results_files(out) == before
    assert invocations(out)[-1]["runs_started"] == 0
    assert invocations(out)[-1]["teachers_trained"] == []


def test_a_deleted_run_folder_is_the_only_run_trained_again(grid):
    import shutil

    path, out = grid
    before = results_files(out)
    victim = sorted(before)[1]
    shutil.rmtree(out / "runs" / victim)
    assert main(["reproduce", str(path), f"out={out}"]) == 0
    after = results_files(out)
    assert set(after) == set(before)
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {victim}
    assert invocations(out)[-1]["runs_started"] == 1


def test_a_run_stopped_after_its_checkpoint_resumes(grid, capsys):
    path, out = grid
    before = results_files(out)
    victim = sorted(before)[2]
    (out / "runs" / victim / "results.json").write_text('{"method": "kd", "best_ac')  # cut short
    capsys.readouterr()
    assert main(["reproduce", str(path), f"out={out}", "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "resume   " in listing and victim in listing.split("resume", 1)[1].splitlines()[0]
    assert "would run 0 new and resume 1; 3 finished" in listing
    assert main(["reproduce", str(path), f"out={out}"]) == 0
    after = results_files(out)
    assert {name for name in after if after[name] != before[name]} == {victim}
    config = yaml.safe_load((out / "runs" / victim / "config.yaml").read_text())
    assert config["epochs"] == 2


def test_report_rebuilds_the_same_table_from_the_folders(grid, capsys):
    _, out = grid
    csv_before = (out / "results.csv").read_text()
    (out / "results.csv").unlink()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "results.csv").read_text() == csv_before
    assert "## small -> cnn_tiny" in (out / "report.md").read_text()
    # bare run folders (no plan): pairs from each results.json, the CE baseline joins its student's pair
    loose = out.parent / "loose"
    assert main(["report", str(out / "runs"), "--out", str(loose)]) == 0
    with open(loose / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert {r["pair"] for r in rows} == {"cnn_small -> cnn_tiny"}
    assert len(rows) == 4


def test_two_shards_cover_the_grid_exactly_once(grid, capsys):
    path, out = grid
    shard_out = out.parent / "sharded"
    listed = []
    for shard in ("1/2", "2/2"):
        capsys.readouterr()
        assert (
            main(["reproduce", str(path), f"out={shard_out}", "--shard", shard, "--dry-run"]) == 0
        )
        listed.append(
            [
                line.split()[1:4]
                for line in capsys.readouterr().out.splitlines()
                if line.startswith("  ") and " seed " in line
            ]
        )
    assert len(listed[0]) == len(listed[1]) == 2
    assert sorted(map(tuple, listed[0] + listed[1])) == [
        ("ce", "seed", "0"), ("ce", "seed", "1"), ("kd", "seed", "0"), ("kd", "seed", "1"),
    ]  # fmt: skip
    for shard in ("1/2", "2/2"):
        assert main(["reproduce", str(path), f"out={shard_out}", "--shard", shard]) == 0
    records = invocations(shard_out)
    assert [r["runs_started"] for r in records] == [2, 2]
    assert records[0]["teachers_trained"] == ["small"] and records[1]["teachers_trained"] == []
    assert len(results_files(shard_out)) == 4
    plan = load_plan(shard_out)
    assert all(plan.unit_results(unit) is not None for unit in plan.units)
    with open(shard_out / "results.csv") as file:
        assert len(list(csv.DictReader(file))) == 4
