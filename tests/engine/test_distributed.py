"""torchrun + DDP (gloo on CPU): two processes train one model and agree on its weights."""

import json
import os
import subprocess
import sys

import torch

from mimkd.serialization import load_checkpoint


def test_torchrun_two_processes(idx_folder, tmp_path):
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "mimkd", "train", "model=cnn_tiny", f"data.root={idx_folder}", "data.download=false",
        "data.batch_size=16", "epochs=1", "progress=false", f"run_dir={run_dir}",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = load_checkpoint(run_dir / "last.pt")
    # 400 images sharded over 2 ranks at 16 per step: 13 steps per rank (200 / 16, rounded up)
    assert checkpoint["step"] == 13
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.0 <= results["best_accuracy"] <= 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]  # one run folder, not one per rank
    assert all(
        torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point()
    )
