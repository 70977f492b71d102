"""A run folder is never overwritten: what a run may start in, refused with one line otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mimkd.cli import main

LOCK_NAME = ".mimkd.lock"  # the run folder's lock file (mimkd.engine.rundir)


def _train(idx_folder, run_dir: Path, *extra: str) -> list[str]:
    return [
        "train",
        "model=cnn_tiny",
        f"data.root={idx_folder}",
        "data.download=false",
        "data.batch_size=64",
        "data.train_subset=128",
        "data.test_subset=64",
        "epochs=1",
        "progress=false",
        f"run_dir={run_dir}",
        *extra,
    ]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the lock file's (it names whoever locked the folder last)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != LOCK_NAME
    }


def _refused(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def finished_run(idx_folder, tmp_path, capsys) -> Path:
    run_dir = tmp_path / "finished"
    assert main(_train(idx_folder, run_dir)) == 0
    capsys.readouterr()
    return run_dir


def test_a_finished_run_is_not_overwritten_by_a_new_run(capsys, idx_folder, finished_run):
    before = _snapshot(finished_run)
    # was: exit 0, every file rewritten, metrics.jsonl epochs [1, 1]
    _refused(
        capsys,
        _train(idx_folder, finished_run),
        "already holds a finished run",
        f"--resume {finished_run}",
        "another run_dir",
    )
    assert _snapshot(finished_run) == before


def test_a_diverging_run_into_a_finished_run_leaves_its_config(capsys, idx_folder, finished_run):
    before = _snapshot(finished_run)
    # was: the NaN stopped it, after it had rewritten config.yaml
    _refused(capsys, _train(idx_folder, finished_run, "optim.lr=1e30"), "already holds")
    assert _snapshot(finished_run) == before


def test_resume_with_overrides_on_a_corrupt_checkpoint_leaves_config_yaml(
    capsys, idx_folder, finished_run
):
    (finished_run / "last.pt").write_bytes(b"not a checkpoint")
    before = _snapshot(finished_run)
    _refused(capsys, ["distill", "--resume", str(finished_run), "epochs=3"], "corrupt")
    assert _snapshot(finished_run) == before


def test_a_folder_that_holds_no_run_is_refused(capsys, idx_folder, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    _refused(
        capsys, _train(idx_folder, tmp_path), "is not empty and holds no mimkd run", "notes.txt"
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no lock file left


def test_a_run_stopped_before_its_first_checkpoint_is_kept_from_a_different_run(
    capsys, idx_folder, tmp_path
):
    run_dir = tmp_path / "run"
    _refused(capsys, _train(idx_folder, run_dir, "optim.lr=1e30", "log_every=1"), "no checkpoint")
    before = _snapshot(run_dir)
    assert "config.yaml" in before and "last.pt" not in before
    _refused(capsys, _train(idx_folder, run_dir), "stopped before its first checkpoint", "optim.lr")
    assert _snapshot(run_dir) == before
    # restarting it with other settings is asked for explicitly
    assert main(["distill", "--resume", str(run_dir), "optim.lr=0.05"]) == 0
    epochs = [
        json.loads(line)["epoch"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "epoch"
    ]
    assert epochs == [1]


def test_run_dir_that_is_a_file_is_one_line(capsys, idx_folder, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("x")
    # was: FileExistsError traceback
    _refused(capsys, _train(idx_folder, target), "is a file, not a folder")
    assert target.read_text() == "x"


def test_a_run_that_fails_before_writing_leaves_no_folder(capsys, idx_folder, tmp_path):
    # the folder is claimed before the data and models are read: a failure there undoes it
    run_dir = tmp_path / "new" / "run"
    _refused(capsys, _train(idx_folder, run_dir, "model=resnet9000"), "unknown model")
    assert not (tmp_path / "new").exists()


def test_resume_without_a_run_dir_is_one_line(capsys, idx_folder):
    _refused(capsys, [*_train(idx_folder, ""), "resume=true"], "resume=true needs")


def test_extending_a_finished_run_rewrites_its_report(capsys, idx_folder, finished_run):
    assert json.loads((finished_run / "results.json").read_text())["epochs"] == 1
    assert main(["train", "--resume", str(finished_run), "epochs=2"]) == 0
    results = json.loads((finished_run / "results.json").read_text())
    assert results["epochs"] == 2 and len(results["data_files"]) == 4
    assert "| 2 |" in (finished_run / "report.md").read_text()
