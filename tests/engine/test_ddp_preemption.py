"""Preemption (1 process): SIGTERM/SIGUSR1 mid-epoch writes last.pt at that step and exits 75;
a SIGKILL loses at most the steps since the last step checkpoint; either way the resumed run
ends bit-identical to an uninterrupted one, for the device-resident and the streamed loader."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from reliability_zygote import Zygote
from test_ddp_loader import _image_folder
from torch.optim.optimizer import register_optimizer_step_post_hook

from mimkd.cli import main
from mimkd.serialization import load_checkpoint

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="signals, fork")

PREEMPTED = 75  # EX_TEMPFAIL: what the CLI returns after a stop signal
TIMING = ("images_per_second", "epoch_seconds")


@pytest.fixture(scope="module")
def teacher(idx_folder, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    argv = ["train", "model=cnn_small", f"data.root={idx_folder}", "data.download=false",
            "max_steps=4", "epochs=1", "progress=false", f"run_dir={run_dir}"]  # fmt: skip
    assert main(argv) == 0
    return run_dir / "best.pt"


def _argv(data: str, idx_folder, teacher, image_folder, run_dir: Path) -> list[str]:
    common = [
        "model=cnn_tiny", "data.augment=crop_flip", "optim.schedule=cosine", "epochs=2",
        "log_every=3", "device=cpu", "progress=false", f"run_dir={run_dir}",
    ]  # fmt: skip
    if data == "idx":  # 13 steps an epoch; MIMKD draws negatives from the torch RNG each step
        return ["distill", "method=mimkd", f"teacher={teacher}", *common,
                f"data.root={idx_folder}", "data.download=false", "data.batch_size=32"]  # fmt: skip
    # 30 files streamed by the DataLoader, random resized crops: 4 steps an epoch
    return ["train", *common, "data.name=imagefolder", f"data.root={image_folder}",
            "data.image_size=16", "data.num_workers=0", "data.batch_size=8"]  # fmt: skip


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _assert_same_run(resumed: Path, reference: Path) -> None:
    """The same records (each once), and last.pt/best.pt equal to the last bit."""
    assert _records(resumed) == _records(reference)
    for name in ("last.pt", "best.pt"):
        mine, theirs = load_checkpoint(resumed / name), load_checkpoint(reference / name)
        for key in ("model", "distiller", "optimizer", "scheduler", "loader", "rng", "step"):
            assert _equal(mine[key], theirs[key]), f"{name}:{key}"
    results = json.loads((resumed / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    assert results["best_accuracy"] == expected["best_accuracy"]


class _SignalAfterStep:
    """Sends `number` to this process after its `at`-th optimizer step (a scheduler's signal)."""

    def __init__(self, number: int, at: int):
        self.number, self.at, self.steps = number, at, 0
        self.handle = register_optimizer_step_post_hook(self)

    def __call__(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        if self.steps == self.at:
            os.kill(os.getpid(), self.number)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.mark.parametrize(
    "data, stop, at",
    [("idx", signal.SIGTERM, 17), ("imagefolder", signal.SIGUSR1, 6)],
    ids=["device-loader-sigterm", "stream-loader-sigusr1"],
)
def test_a_stop_signal_checkpoints_the_current_step_and_the_resumed_run_is_identical(
    data, stop, at, idx_folder, teacher, tmp_path, capsys
):
    images = _image_folder(tmp_path / "images") if data == "imagefolder" else None
    reference = tmp_path / "reference"
    assert main(_argv(data, idx_folder, teacher, images, reference)) == 0

    run_dir = tmp_path / "stopped"
    capsys.readouterr()
    with _SignalAfterStep(stop, at):
        assert main(_argv(data, idx_folder, teacher, images, run_dir)) == PREEMPTED
    command = "distill" if data == "idx" else "train"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mimkd: stopped by {stop.name} at step {at}, checkpoint saved; continue with: "
        f"mimkd {command} --resume {run_dir}"
    ]
    checkpoint = load_checkpoint(run_dir / "last.pt")
    steps_per_epoch = 13 if data == "idx" else 4
    assert (checkpoint["step"], checkpoint["epoch"]) == (at, 1)
    assert checkpoint["epoch_step"] == at - steps_per_epoch
    assert not (run_dir / "results.json").exists()

    assert main([command, "--resume", str(run_dir)]) == 0
    _assert_same_run(run_dir, reference)


def test_a_sigkill_after_a_step_checkpoint_loses_only_the_steps_since(
    idx_folder, teacher, tmp_path
):
    """Killed (SIGKILL, nothing to catch) at step 8 with checkpoint_every=5: last.pt holds step 5
    of epoch 1, and resuming redoes steps 6-8 exactly."""
    (tmp_path / "zygote").mkdir()
    zygote = Zygote(tmp_path / "zygote")
    try:
        argv = _argv("idx", idx_folder, teacher, None, tmp_path / "reference")
        assert zygote.run(argv).exit == 0
        run_dir = tmp_path / "killed"
        argv = [*_argv("idx", idx_folder, teacher, None, run_dir), "checkpoint_every=5"]
        outcome = zygote.run(argv, {"kind": "step", "at": 8})
        assert outcome.killed, outcome.log
        checkpoint = load_checkpoint(run_dir / "last.pt")
        assert (checkpoint["step"], checkpoint["epoch"], checkpoint["epoch_step"]) == (5, 0, 5)
        assert max(r["step"] for r in _records(run_dir)) == 6  # an interval past the checkpoint
        outcome = zygote.run(["distill", "--resume", str(run_dir)])
        assert outcome.exit == 0, outcome.log
    finally:
        zygote.close()
    _assert_same_run(run_dir, tmp_path / "reference")
