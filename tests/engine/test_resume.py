"""Checkpoints hold everything: resuming gives bit-identical weights (CPU, torch.equal)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mimkd.config import load_config
from mimkd.engine.run import run
from mimkd.serialization import load_checkpoint


def _base(idx_folder, run_dir, method, teacher=None):
    overrides = [
        f"method={method}",
        "model.name=cnn_tiny",
        f"data.root={idx_folder}",
        "data.download=false",
        "data.batch_size=32",
        "data.augment=crop_flip",
        "epochs=2",
        "optim.lr=0.05",
        "optim.schedule=cosine",
        "progress=false",
        f"run_dir={run_dir}",
    ]
    if teacher:
        overrides.append(f"teacher.checkpoint={teacher}")
    return overrides


@pytest.fixture(scope="module")
def teacher_checkpoint(idx_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    config, method_config = load_config(
        None, [*_base(idx_folder, folder, "ce"), "model.name=cnn_small", "epochs=1"]
    )
    run(config, method_config)
    return folder / "best.pt"


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("method", ["ce", "kd"])
def test_stop_after_one_epoch_and_resume_matches_two_straight(
    idx_folder, tmp_path, teacher_checkpoint, method
):
    teacher = teacher_checkpoint if method == "kd" else None
    straight = tmp_path / "straight"
    config, method_config = load_config(None, _base(idx_folder, straight, method, teacher))
    run(config, method_config)

    stopped = tmp_path / "stopped"
    steps_per_epoch = 400 // 32 + 1
    config, method_config = load_config(
        None, [*_base(idx_folder, stopped, method, teacher), f"max_steps={steps_per_epoch}"]
    )
    run(config, method_config)
    first_session = load_checkpoint(stopped / "last.pt")
    assert first_session["epoch"] == 1 and first_session["train_seconds"] > 0
    config, method_config = load_config(
        None, [*_base(idx_folder, stopped, method, teacher), "resume=true"]
    )
    resumed = run(config, method_config)
    # the run's wall time counts both sessions, not only the one that finished it
    assert resumed["wall_seconds"] - resumed["session_seconds"] == pytest.approx(
        first_session["train_seconds"], abs=0.05
    )

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(stopped / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    _assert_same_state(a["model"], b["model"])
    _assert_same_state(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
    assert torch.equal(a["loader"]["generator"], b["loader"]["generator"])
    assert [r["test_top1"] for r in a["history"]] == [r["test_top1"] for r in b["history"]]


def test_checkpoint_holds_everything_and_loads_as_data(idx_folder, tmp_path):
    config, method_config = load_config(None, [*_base(idx_folder, tmp_path, "ce"), "epochs=1"])
    run(config, method_config)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in (
        "model",
        "distiller",
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
        "loader",
        "epoch",
        "step",
        "config",
        "teacher_sha256",
        "model_name",
        "num_classes",
    ):
        assert key in state, key
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def _wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(idx_folder, tmp_path):
    common = [
        "method=ce",
        "model.name=cnn_tiny",
        f"data.root={idx_folder}",
        "data.download=false",
        "data.batch_size=4",
        "data.augment=crop_flip",
        "epochs=3",
        "log_every=1",
        "progress=false",
    ]
    command = [sys.executable, "-m", "mimkd", "distill", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run([*command, f"run_dir={straight}"], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [*command, f"run_dir={killed}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = killed / "metrics.jsonl"

    def in_epoch_two():
        if not metrics.is_file():
            return False
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        return sum(r["kind"] == "interval" and r["epoch"] == 2 for r in records) >= 10

    try:
        assert _wait_for(in_epoch_two, 120), "the run never reached epoch 2"
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert load_checkpoint(killed / "last.pt")["epoch"] == 1  # the kill landed mid epoch 2
    subprocess.run(
        [sys.executable, "-m", "mimkd", "distill", "--resume", str(killed)],
        check=True,
        env=env,
        capture_output=True,
    )
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    _assert_same_state(a["model"], b["model"])
    assert Path(killed / "report.md").is_file()


@pytest.mark.parametrize("damage", ["missing", "extra"])
def test_resume_refuses_method_state_that_does_not_fit(
    idx_folder, tmp_path, teacher_checkpoint, damage, capsys
):
    """A checkpoint missing a critic's weights (or carrying a module the run lacks) stops the
    resume with one line; it never resumes with a freshly initialised critic."""
    from mimkd.cli import main

    run_dir = tmp_path / "mimkd"
    overrides = [
        *_base(idx_folder, run_dir, "mimkd", teacher_checkpoint),
        "mimkd.hidden=8",
        f"max_steps={400 // 32 + 1}",
    ]
    config, method_config = load_config(None, overrides)
    run(config, method_config)
    state = torch.load(run_dir / "last.pt", weights_only=True)
    critic_keys = [k for k in state["distiller"] if k.startswith("critics.")]
    assert critic_keys  # MIMKD's critics are checkpointed beside the student
    if damage == "missing":
        del state["distiller"][critic_keys[0]]
    else:
        state["distiller"]["critics.extra.weight"] = torch.zeros(1)
    torch.save(state, run_dir / "last.pt")
    for name in ("results.json", "report.md"):  # a run stopped before its end has none
        (run_dir / name).unlink(missing_ok=True)
    capsys.readouterr()
    assert main(["distill", "--resume", str(run_dir)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    said = {"missing": "missing", "extra": "unexpected"}[damage]
    assert len(error) == 1 and "does not fit" in error[0] and said in error[0], error
