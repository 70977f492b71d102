"""Runs killed for real (SIGKILL at a step, inside each checkpoint write), then resumed: nothing
lost, nothing repeated, weights bit-identical to an uninterrupted run (see reliability_zygote)."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability_zygote import Zygote

from mimkd.cli import main
from mimkd.serialization import load_checkpoint

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork, SIGKILL and rlimits")

# 400 training images in batches of 32: 13 steps an epoch (the last batch 16)
STEPS_PER_EPOCH = 13
EXTRA = {
    "ce": [],
    "kd": [],
    "mimkd": [],
    "crd": ["crd.num_negatives=64"],  # the default 16384 negatives outnumber 400 images
}

LOCK_NAME = ".mimkd.lock"  # the run folder's lock file (mimkd.engine.rundir)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    process = Zygote(tmp_path_factory.mktemp("zygote"))
    yield process
    process.close()


def _common(idx_folder) -> list[str]:
    return [
        "model=cnn_tiny",
        f"data.root={idx_folder}",
        "data.download=false",
        "data.batch_size=32",
        "data.augment=crop_flip",
        "optim.schedule=cosine",
        "epochs=3",
        "log_every=5",
        "device=cpu",
        "progress=false",
    ]


@pytest.fixture(scope="module")
def teacher(zygote, idx_folder, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("teacher") / "run"
    argv = ["train", *_common(idx_folder), "model=cnn_small", "data.augment=none", "epochs=2"]
    outcome = zygote.run([*argv, f"run_dir={folder}"])
    assert outcome.exit == 0, outcome.log
    return folder / "best.pt"


def _argv(method: str, idx_folder, teacher: Path, run_dir: Path) -> list[str]:
    argv = ["distill", f"method={method}", *_common(idx_folder), *EXTRA[method]]
    if method != "ce":
        argv.append(f"teacher={teacher}")
    return [*argv, f"run_dir={run_dir}"]


def _resume(run_dir: Path) -> list[str]:
    return ["distill", "--resume", str(run_dir)]


@pytest.fixture(scope="module")
def references(zygote, idx_folder, teacher, tmp_path_factory):
    """Uninterrupted runs, one per method, made once."""
    made: dict[str, Path] = {}

    def reference(method: str) -> Path:
        if method not in made:
            folder = tmp_path_factory.mktemp(f"reference-{method}") / "run"
            outcome = zygote.run(_argv(method, idx_folder, teacher, folder))
            assert outcome.exit == 0, outcome.log
            made[method] = folder
        return made[method]

    return reference


# ---- what a finished folder must hold -----------------------------------------------------------
def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _epochs(run_dir: Path) -> list[int]:
    return [r["epoch"] for r in _records(run_dir) if r["kind"] == "epoch"]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file's bytes, but the lock file's (it names whoever locked the folder last)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(run_dir.iterdir())
        if p.is_file() and p.name != LOCK_NAME
    }


def _temp_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob(".*.tmp*"))


def _assert_equal_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_equal_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            _assert_equal_tensors(x, y, f"{where}[{index}]")


# values that measure the machine, not the training
_TIMING = ("images_per_second", "epoch_seconds")


def _assert_same_run(resumed: Path, reference: Path) -> None:
    """Each epoch logged once, the same records, no temp files, best.pt agreeing with
    results.json, and every tensor of last.pt and best.pt equal to the uninterrupted run's."""
    assert _epochs(resumed) == [1, 2, 3]
    strip = [{k: v for k, v in r.items() if k not in _TIMING} for r in _records(resumed)]
    expected = [{k: v for k, v in r.items() if k not in _TIMING} for r in _records(reference)]
    assert strip == expected
    assert _temp_files(resumed) == []
    results = json.loads((resumed / "results.json").read_text())
    reference_results = json.loads((reference / "results.json").read_text())
    for key in ("best_epoch", "best_accuracy", "last_accuracy"):
        assert results[key] == reference_results[key], key
    assert (resumed / "report.md").is_file()
    for name in ("last.pt", "best.pt"):
        mine, theirs = load_checkpoint(resumed / name), load_checkpoint(reference / name)
        for key in ("model", "distiller", "optimizer", "scheduler", "loader", "rng"):
            _assert_equal_tensors(mine[key], theirs[key], f"{name}:{key}")
        assert (mine["epoch"], mine["step"]) == (theirs["epoch"], theirs["step"]), name
    best = load_checkpoint(resumed / "best.pt")
    assert best["epoch"] == results["best_epoch"]


def _killed(outcome) -> None:
    assert outcome.killed, f"the fault never fired:\n{outcome.log}"


# ---- the matrix: ce, kd, mimkd, crd ---------------------------------------------------------------
@pytest.mark.parametrize("method", ["ce", "kd", "mimkd", "crd"])
def test_kills_at_random_steps_and_inside_each_checkpoint_write_then_resume(
    zygote, idx_folder, teacher, references, tmp_path, method
):
    """One folder killed seven times in a row, each resume picking up what the last kill left."""
    draw = random.Random(f"kills-{method}")
    run_dir = tmp_path / "run"
    faults = [
        # epoch 1, before the first checkpoint: --resume must start over cleanly
        {"kind": "step", "at": draw.randint(1, STEPS_PER_EPOCH - 1)},
        # inside epoch 1's last.pt write (a torn temp file), then inside its best.pt write
        {"kind": "save", "file": "last.pt", "at": 1},
        {"kind": "save", "file": "best.pt", "at": 1},
        # epoch 2 at a random step, then between its logged record and its last.pt
        {"kind": "step", "at": draw.randint(1, STEPS_PER_EPOCH - 1)},
        {"kind": "replace_before", "file": "last.pt", "at": 1},
        # epoch 2's last.pt renamed, its best.pt (if best) not yet written
        {"kind": "replace_after", "file": "last.pt", "at": 1},
        # resumed from epoch 2: its first last.pt is the final one; done, the report not yet
        {"kind": "replace_after", "file": "last.pt", "at": 1},
    ]
    for index, fault in enumerate(faults):
        argv = _argv(method, idx_folder, teacher, run_dir) if index == 0 else _resume(run_dir)
        _killed(zygote.run(argv, fault))
    outcome = zygote.run(_resume(run_dir))
    assert outcome.exit == 0, outcome.log
    _assert_same_run(run_dir, references(method))


# ---- one test per failure of issue 12 ----------------------------------------------------------
def test_metrics_hold_each_epoch_once_after_a_kill_between_record_and_checkpoint(
    zygote, idx_folder, teacher, references, tmp_path
):
    # epoch 2's record is logged, its last.pt never renamed into place (was: epochs [1,2,2,3])
    run_dir = tmp_path / "run"
    fault = {"kind": "replace_before", "file": "last.pt", "at": 2}
    _killed(zygote.run(_argv("kd", idx_folder, teacher, run_dir), fault))
    assert _epochs(run_dir) == [1, 2]
    assert zygote.run(_resume(run_dir)).exit == 0
    assert _epochs(run_dir) == [1, 2, 3]
    steps = [(r["kind"], r["step"]) for r in _records(run_dir)]
    assert len(steps) == len(set(steps))  # no interval of the killed epoch repeated either
    _assert_same_run(run_dir, references("kd"))


def test_kill_between_last_and_best_is_repaired_on_resume(zygote, idx_folder, teacher, tmp_path):
    # a 2-epoch run whose last epoch is its best: killed after epoch 2's last.pt is renamed into
    # place, before its best.pt (was: best.pt stayed at epoch 1, results.json said epoch 2)
    run_dir = tmp_path / "run"
    argv = [*_argv("ce", idx_folder, teacher, run_dir), "epochs=2"]
    _killed(zygote.run(argv, {"kind": "replace_after", "file": "last.pt", "at": 2}))
    history = load_checkpoint(run_dir / "last.pt")["history"]
    assert history[1]["test_top1"] > history[0]["test_top1"], "epoch 2 must be a new best"
    assert load_checkpoint(run_dir / "best.pt")["epoch"] == 1  # one epoch behind last.pt
    assert zygote.run(_resume(run_dir)).exit == 0
    results = json.loads((run_dir / "results.json").read_text())
    best, last = load_checkpoint(run_dir / "best.pt"), load_checkpoint(run_dir / "last.pt")
    assert results["best_epoch"] == best["epoch"] == 2
    _assert_equal_tensors(best["model"], last["model"], "model")
    _assert_equal_tensors(best["optimizer"], last["optimizer"], "optimizer")


def test_kill_inside_a_checkpoint_write_leaves_no_temp_file_after_resume(
    zygote, idx_folder, teacher, references, tmp_path
):
    run_dir = tmp_path / "run"
    fault = {"kind": "save", "file": "last.pt", "at": 2}
    _killed(zygote.run(_argv("ce", idx_folder, teacher, run_dir), fault))
    assert [name.startswith(".last.pt.") for name in _temp_files(run_dir)] == [True]
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1  # the old file, whole
    assert zygote.run(_resume(run_dir)).exit == 0
    assert _temp_files(run_dir) == []
    _assert_same_run(run_dir, references("ce"))


def test_kill_before_the_first_checkpoint_resumes_or_reruns_cleanly(
    zygote, idx_folder, teacher, references, tmp_path
):
    argv = _argv("ce", idx_folder, teacher, tmp_path / "resumed")
    _killed(zygote.run(argv, {"kind": "step", "at": 7}))
    assert not (tmp_path / "resumed" / "last.pt").exists()
    # was: exit 2, "cannot resume: .../last.pt does not exist"
    outcome = zygote.run(_resume(tmp_path / "resumed"))
    assert outcome.exit == 0, outcome.log
    _assert_same_run(tmp_path / "resumed", references("ce"))

    # the natural rerun: the same command again (was: epoch 1 logged twice)
    argv = _argv("ce", idx_folder, teacher, tmp_path / "rerun")
    _killed(zygote.run(argv, {"kind": "step", "at": 7}))
    outcome = zygote.run(argv)
    assert outcome.exit == 0, outcome.log
    _assert_same_run(tmp_path / "rerun", references("ce"))


def test_a_second_process_on_a_run_folder_is_refused_and_a_killed_holder_frees_it(
    zygote, idx_folder, teacher, references, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    argv = _argv("ce", idx_folder, teacher, run_dir)
    marker = tmp_path / "holding"
    holder = zygote.start(argv, {"kind": "pause", "at": 6, "marker": str(marker)})
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the first run never started training"
        before = _snapshot(run_dir)
        assert "metrics.jsonl" in before
        # was: both ran to exit 0, interleaving metrics and reporting each other's numbers
        started = time.monotonic()
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        assert "in use by another mimkd run" in lines[0] and f"pid {holder}" in lines[0]
        assert time.monotonic() - started < 30  # refused at once, before reading any data
        assert _snapshot(run_dir) == before
    finally:
        os.kill(holder, signal.SIGKILL)  # no clean exit: only the kernel releases the lock
    assert zygote.collect(holder).killed
    outcome = zygote.run(_resume(run_dir))
    assert outcome.exit == 0, outcome.log
    _assert_same_run(run_dir, references("ce"))


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_leaves_no_torn_file(
    zygote, idx_folder, teacher, tmp_path
):
    run_dir = tmp_path / "run"
    # every file fits below 20 kB but a checkpoint: its write fails as on a full filesystem
    outcome = zygote.run(
        _argv("ce", idx_folder, teacher, run_dir), {"kind": "fsize", "limit": 20_000}
    )
    # was: exit 1 and torch's "unexpected pos 704 vs 598" traceback
    assert outcome.exit == 2, outcome.log
    assert "Traceback" not in outcome.log
    (line,) = outcome.stderr_lines
    assert f"cannot write {run_dir / 'last.pt'}" in line and "File too large" in line
    assert "--resume" in line
    assert not (run_dir / "last.pt").exists() and _temp_files(run_dir) == []


def test_ctrl_c_names_the_folder_to_resume(zygote, idx_folder, teacher, references, tmp_path):
    run_dir = tmp_path / "run"
    outcome = zygote.run(_argv("ce", idx_folder, teacher, run_dir), {"kind": "sigint", "at": 20})
    assert outcome.exit == 130, outcome.log
    # was: "resume with --resume RUN_DIR", the placeholder printed as is
    assert outcome.stderr_lines == [
        f"mimkd: interrupted; continue with: mimkd distill --resume {run_dir}"
    ]
    assert zygote.run(_resume(run_dir)).exit == 0
    _assert_same_run(run_dir, references("ce"))
