"""What the DDP tests launch under `torchrun`: real runs, with faults injected at torch's boundary.

    torchrun --standalone --nproc_per_node=N ddp_worker.py cli FAULT_JSON ARGV...
        one `mimkd` command (`mimkd.cli.main(ARGV)`, its exit code), with FAULT_JSON armed;
    torchrun --standalone --nproc_per_node=N ddp_worker.py jobs JOBS_JSON
        several runs in the same processes (one torchrun start for many runs): each job is
        {"overrides": [...], "fault": ..., "dump": PATH}; the run is `Trainer(build_run(...)).fit()`
        (what `mimkd distill` runs) and each rank writes its distiller's state to
        PATH-rank<r>.pt and how the run ended to PATH-rank<r>.json.

A fault fires after this process's `at`-th optimizer step (torch's global step hook) on `rank`:
`sigterm` sends SIGTERM to the process itself (what a scheduler does before preempting a job),
`sigterm_launcher` to its parent, torchrun (which passes it on to every process), `raise` raises
RuntimeError(`message`) (a rank that fails).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

WORKER = Path(__file__)


# ---- the test's side ---------------------------------------------------------------------------
@dataclass
class Launch:
    returncode: int
    output: str  # stdout and stderr of torchrun and its workers, interleaved
    seconds: float

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if "mimkd: " in line]


def torchrun(args: list[str], nproc: int = 2, timeout: float = 600) -> Launch:
    """`torchrun --standalone --nproc_per_node=nproc ARGS` on gloo, one thread per process."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", *args,
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout,
    )  # fmt: skip
    return Launch(result.returncode, result.stdout, time.monotonic() - started)


def launch_jobs(jobs: list[dict], folder: Path, nproc: int = 2) -> Launch:
    spec = folder / "jobs.json"
    spec.write_text(json.dumps(jobs))
    launch = torchrun([str(WORKER), "jobs", str(spec)], nproc)
    assert launch.returncode == 0, launch.output[-4000:]
    return launch


def launch_cli(argv: list[str], fault: dict | None = None, nproc: int = 2, timeout=600) -> Launch:
    return torchrun([str(WORKER), "cli", json.dumps(fault), *argv], nproc, timeout)


# ---- the workers' side -------------------------------------------------------------------------
def arm(fault: dict | None):
    """Install `fault` in this process; returns the hook's handle (None: nothing armed)."""
    if not fault or int(os.environ.get("RANK", "0")) != fault.get("rank", 0):
        return None
    steps = {"done": 0}

    def after_step(optimizer, args, kwargs) -> None:
        steps["done"] += 1
        if steps["done"] != fault["at"]:
            return
        if fault["kind"] == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif fault["kind"] == "sigterm_launcher":  # as srun or a user stopping torchrun
            os.kill(os.getppid(), signal.SIGTERM)
        elif fault["kind"] == "raise":
            raise RuntimeError(fault["message"])

    return register_optimizer_step_post_hook(after_step)


def run_cli(fault: dict | None, argv: list[str]) -> int:
    from mimkd.cli import main

    arm(fault)
    return main(argv)


def run_jobs(jobs: list[dict]) -> None:
    from mimkd.config import load_config
    from mimkd.engine.build import build_run
    from mimkd.engine.preemption import RunPreempted
    from mimkd.engine.trainer import Trainer

    rank = int(os.environ.get("RANK", "0"))
    for job in jobs:
        handle = arm(job.get("fault"))
        config, method_config = load_config(None, job["overrides"])
        trainer = Trainer(build_run(config, method_config), log_line=lambda _: None)
        outcome = {"finished": True, "step": None}
        try:
            trainer.fit()
        except RunPreempted as stopped:
            outcome = {"finished": False, "step": stopped.step, "signal": stopped.signal_name}
        finally:
            if handle is not None:
                handle.remove()
        dump = Path(job["dump"])
        torch.save(trainer.distiller.state_dict(), f"{dump}-rank{rank}.pt")
        # compile=true: every stage step ran compiled (none fell back to eager)
        steps = trainer.distiller._steps.values()
        compiled = bool(steps) and all(not getattr(step, "failed", True) for step in steps)
        # what DDP leaves out of its per-step broadcast of buffers from rank 0
        ignored = sorted(getattr(trainer.step_model, "parameters_to_ignore", ()))
        outcome.update(at=trainer.step, compiled=compiled, ddp_ignored=ignored)
        Path(f"{dump}-rank{rank}.json").write_text(json.dumps(outcome))
    from mimkd.engine.distributed import shutdown_distributed

    shutdown_distributed()


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, spec, *rest = sys.argv[1:]
    if mode == "cli":
        sys.exit(run_cli(json.loads(spec), rest))
    run_jobs(json.loads(Path(spec).read_text()))
