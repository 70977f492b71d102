"""`torchrun -m mimkd` (gloo on CPU): the CLI under two processes, end to end.

What the two processes compute (one process's trajectory), resuming across world sizes,
preemption and failures are the test_ddp_* files; here: the command itself, its run folder
written once by rank 0, and a folder rank 0 refuses stopping both ranks with one line.
"""

import json
import re

import torch
from ddp_worker import torchrun

from mimkd.serialization import load_checkpoint


def test_torchrun_two_processes_and_a_refused_folder(idx_folder, tmp_path):
    run_dir = tmp_path / "ddp"
    command = [
        "-m", "mimkd", "train", "model=cnn_tiny", f"data.root={idx_folder}", "data.download=false",
        "data.batch_size=16", "epochs=1", "progress=false", f"run_dir={run_dir}",
    ]  # fmt: skip
    launch = torchrun(command)
    print(f"\ntorchrun -m mimkd train, 2 processes, 1 epoch: {launch.seconds:.1f} s")
    assert launch.returncode == 0, launch.output[-3000:]
    checkpoint = load_checkpoint(run_dir / "last.pt")
    # 400 images sharded over 2 ranks at 16 per step: 13 steps per rank (200 / 16, rounded up)
    assert checkpoint["step"] == 13
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.0 <= results["best_accuracy"] <= 1.0
    assert results["world_size"] == 2 and results["global_batch_size"] == 32
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]  # one run folder, not one per rank
    assert all(
        torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point()
    )
    assert launch.output.count("ce: best") == 1  # the results line, from rank 0 only

    # the same command again: rank 0 refuses the finished run's folder; both ranks stop with
    # exit 2 before reading any data, and the refusal is printed once
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != ".mimkd.lock"}
    launch = torchrun(command)
    exits = re.findall(r"^\s*exitcode\s+:\s*(-?\d+)", launch.output, re.M)
    assert sorted(exits) == ["2", "2"], launch.output[-3000:]
    assert launch.error_lines == [
        f"mimkd: error: run_dir {run_dir} already holds a finished run; resume it with "
        f"--resume {run_dir} (add epochs=N to train longer), or choose another run_dir."
    ], launch.output[-3000:]
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != ".mimkd.lock"}
    assert after == before
