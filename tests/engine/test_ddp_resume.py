"""Checkpoints do not depend on the number of processes: a run stopped mid-epoch (SIGTERM) on 2
processes resumes on 1, and one stopped on 1 resumes on 2, with the same global batch, and ends
where the uninterrupted one-process run ends (within the equivalence tests' 1e-5).

The 2-process stop is the preemption case across ranks: only rank 1 gets SIGTERM, both ranks stop
at the same step and exit 75, rank 0 alone writes last.pt, one line is printed.

8 steps (128 images, 4 steps an epoch, stopped in epoch 2): fp32 rounding differences between
any two summation orders grow along a trajectory; measured here, uninterrupted 2-process and
1-process runs of this setup differ by 6e-7 after 8 steps but by 4e-4 after 26 (full 400 images).
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import torch
from ddp_worker import launch_cli
from test_ddp_equivalence import _max_difference
from test_ddp_preemption import PREEMPTED, _SignalAfterStep

from mimkd.cli import main
from mimkd.serialization import load_checkpoint

TOLERANCE = 1e-5
STOP_AT = 6  # 4 steps an epoch (128 images, global batch 32): the 2nd step of epoch 2


def _argv(idx_folder, teacher: Path, run_dir: Path, batch: int) -> list[str]:
    return [
        "distill", "method=mimkd", f"teacher={teacher}", "model=cnn_tiny",
        f"data.root={idx_folder}", "data.download=false", f"data.batch_size={batch}",
        "data.augment=crop_flip", "data.image_size=16", "data.train_subset=128", "epochs=2",
        "sync_batchnorm=true",
        "precision=fp32", "device=cpu", "progress=false", f"run_dir={run_dir}",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def teacher(idx_folder, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    argv = ["train", "model=cnn_small", f"data.root={idx_folder}", "data.download=false",
            "data.image_size=16", "max_steps=4", "epochs=1", "progress=false",
            f"run_dir={run_dir}"]  # fmt: skip
    assert main(argv) == 0
    return run_dir / "best.pt"


@pytest.fixture(scope="module")
def reference(idx_folder, teacher, tmp_path_factory) -> dict:
    """The uninterrupted one-process run's final state (one thread, as the workers)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_argv(idx_folder, teacher, run_dir, 32)) == 0
    finally:
        torch.set_num_threads(threads)
    return _final_state(run_dir)


def _final_state(run_dir: Path) -> dict:
    checkpoint = load_checkpoint(run_dir / "last.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == 8
    state = {f"student.{key}": value for key, value in checkpoint["model"].items()}
    return {**state, **checkpoint["distiller"]}


def _exit_codes(output: str) -> list[int]:
    """The workers' exit codes, from torchrun's failure summary."""
    return [int(code) for code in re.findall(r"^\s*exitcode\s+:\s*(-?\d+)", output, re.M)]


def test_stopped_on_two_processes_resumes_on_one(idx_folder, teacher, reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    fault = {"kind": "sigterm", "rank": 1, "at": STOP_AT}
    launch = launch_cli(_argv(idx_folder, teacher, run_dir, 16), fault)
    print(f"\n2 processes, stopped by SIGTERM at step {STOP_AT}: {launch.seconds:.1f} s")
    assert sorted(_exit_codes(launch.output)) == [PREEMPTED, PREEMPTED], launch.output[-3000:]
    assert launch.error_lines == [
        f"mimkd: stopped by SIGTERM at step {STOP_AT}, checkpoint saved; continue with: "
        f"mimkd distill --resume {run_dir}"
    ], launch.output[-3000:]
    checkpoint = load_checkpoint(run_dir / "last.pt")
    assert (checkpoint["step"], checkpoint["epoch_step"], checkpoint["world_size"]) == (6, 2, 2)

    # the same global batch is asked for, with what to pass
    capsys.readouterr()
    assert main(["distill", "--resume", str(run_dir)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "global batch of 32" in line and "data.batch_size=32" in line

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["distill", "--resume", str(run_dir), "data.batch_size=32"]) == 0
    finally:
        torch.set_num_threads(threads)
    difference = _max_difference(_final_state(run_dir), reference)
    print(f"2 -> 1 processes: max |resumed - uninterrupted one process| = {difference:.3g}")
    assert difference <= TOLERANCE


def test_stopped_on_one_process_resumes_on_two(idx_folder, teacher, reference, tmp_path):
    run_dir = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _SignalAfterStep(signal.SIGTERM, STOP_AT):
            assert main(_argv(idx_folder, teacher, run_dir, 32)) == PREEMPTED
    finally:
        torch.set_num_threads(threads)
    assert load_checkpoint(run_dir / "last.pt")["world_size"] == 1

    launch = launch_cli(["distill", "--resume", str(run_dir), "data.batch_size=16"])
    print(f"\n2 processes, resumed at step {STOP_AT} to the end: {launch.seconds:.1f} s")
    assert launch.returncode == 0, launch.output[-3000:]
    difference = _max_difference(_final_state(run_dir), reference)
    print(f"1 -> 2 processes: max |resumed - uninterrupted one process| = {difference:.3g}")
    assert difference <= TOLERANCE


def test_sigterm_to_torchrun_stops_every_process_with_a_checkpoint(idx_folder, teacher, tmp_path):
    """What srun does to its task on preemption: torchrun passes SIGTERM to both processes, which
    agree on a step, checkpoint it and exit; the run then resumes (here on 1 process)."""
    run_dir = tmp_path / "run"
    fault = {"kind": "sigterm_launcher", "rank": 1, "at": 3}
    launch = launch_cli(_argv(idx_folder, teacher, run_dir, 16), fault)
    print(f"\n2 processes, torchrun stopped by SIGTERM after step 3: {launch.seconds:.1f} s")
    assert launch.returncode != 0
    assert [line for line in launch.error_lines if "stopped by SIGTERM" in line] == [
        line for line in launch.error_lines
    ], launch.output[-3000:]
    assert len(launch.error_lines) == 1 and "]: Traceback" not in launch.output
    checkpoint = load_checkpoint(run_dir / "last.pt")
    # the step the processes agreed on (when the signal reached them), mid-epoch or at its end
    assert checkpoint["step"] >= 3 and checkpoint["epoch_step"] == checkpoint["step"] % 4
    assert f"at step {checkpoint['step']}," in launch.error_lines[0]
    assert main(["distill", "--resume", str(run_dir), "data.batch_size=32"]) == 0
    assert load_checkpoint(run_dir / "last.pt")["step"] == 8
