"""Packing: several independent runs (seeds, or methods of one pair) sharing one device.

Why: at the CIFAR protocol's batch of 64 one run cannot fill a large GPU: its kernels are small and
between them the Python step loop launches the next ones, so the device idles. Running N runs at
once fills those gaps, and N seeds are what a result table needs anyway.

Design: one process per run, all on the same device (the default `device`), started with the
"spawn" method (a CUDA context cannot be forked). Each process is an ordinary `run()`: its own
data copy on the device (CIFAR-100 is 150 MB as uint8), its own CUDA context, compile cache, RNG and
run folder, so a packed run is bit-for-bit the run it would be alone (same seed, same thread
count). Processes rather than CUDA streams in one process: no shared Python interpreter (the step
loop's launch overhead runs in parallel across cores), no cross-run state to get wrong, and a
crash stays in its run. Without MPS the GPU time-slices between processes rather than overlapping
their kernels, which still fills the idle gaps that launch overhead leaves; with MPS enabled on the
machine the kernels overlap too. CPU threads are split evenly between the runs.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import traceback
from dataclasses import replace
from typing import Any

from mimkd.config import RunConfig, load_config
from mimkd.errors import MimkdError

Job = tuple[RunConfig, Any]  # (run config, the method's config), as load_config returns them


def _run_one(index: int, job: Job, threads: int, results) -> None:
    """A packed run's process: one ordinary run(), its outcome sent back on `results`."""
    try:
        import torch

        from mimkd.engine.run import run

        torch.set_num_threads(threads)
        config, method_config = job
        results.put((index, run(config, method_config), None))
    except BaseException as error:  # the parent reports it; a traceback object cannot travel
        last = traceback.format_exc().strip().splitlines()[-1]
        results.put((index, None, f"{type(error).__name__}: {error}" if str(error) else last))


def default_threads_per_run(num_parallel: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, num_parallel))


def run_packed(
    jobs: list[Job], *, max_parallel: int | None = None, threads_per_run: int | None = None
) -> list[dict]:
    """Run every job in its own process, at most `max_parallel` at a time (default: all).

    Returns each run's results (results.json's content) in the order of `jobs`. A failed run does
    not stop the others; after all finish, the first failure is raised naming its run. (Plain
    processes rather than a ProcessPoolExecutor: one fresh process per run, and a worker that
    exits after its run is never mistaken for a crashed one.)
    """
    if not jobs:
        return []
    parallel = max(1, min(max_parallel or len(jobs), len(jobs)))
    threads = threads_per_run or default_threads_per_run(parallel)
    context = multiprocessing.get_context("spawn")
    outcomes = context.Queue()
    waiting = list(enumerate(jobs))
    running: dict[int, multiprocessing.process.BaseProcess] = {}
    results: list[dict | None] = [None] * len(jobs)
    failures: dict[int, str] = {}
    while waiting or running:
        while waiting and len(running) < parallel:
            index, job = waiting.pop(0)
            process = context.Process(target=_run_one, args=(index, job, threads, outcomes))
            process.start()
            running[index] = process
        try:
            index, result, error = outcomes.get(timeout=1.0)
        except queue.Empty:
            # a process killed before it could report (out of memory, a signal) never will
            for index, process in list(running.items()):
                if not process.is_alive() and process.exitcode != 0:
                    failures[index] = f"its process exited with code {process.exitcode}"
                    del running[index]
            continue
        running.pop(index).join()
        if error is None:
            results[index] = result
        else:
            failures[index] = error
    if failures:
        index = min(failures)
        config = jobs[index][0]
        raise MimkdError(
            f"packed run {index} ({config.method}, seed {config.seed}) failed: {failures[index]}"
        )
    return results  # type: ignore[return-value]


def packed_jobs(
    config_file: str | None,
    overrides: list[str],
    *,
    seeds: list[int],
    methods: list[str] | None = None,
) -> list[Job]:
    """One job per (method, seed). An override whose first key names a method (`kd.temperature=2`)
    applies to that method only; every other override applies to all. Runs get distinct names
    (`<name or method_model>_seed<k>`) so their folders never collide."""
    base, _ = load_config(config_file, overrides=[o for o in overrides if _owner(o) is None])
    jobs = []
    for method in methods or [base.method]:
        own = [o for o in overrides if _owner(o) in (None, method)]
        for seed in seeds:
            config, method_config = load_config(
                config_file, overrides=[*own, f"method={method}", f"seed={seed}"]
            )
            stem = config.name or f"{method}_{config.model.name.replace(':', '-')}"
            jobs.append((replace(config, name=f"{stem}_seed{seed}", progress=False), method_config))
    return jobs


def _owner(override: str) -> str | None:
    """The method an override belongs to (`kd.temperature=2` -> kd), None for run keys."""
    from mimkd.distillers import DISTILLERS

    key = override.split("=", 1)[0].strip().lstrip("-")
    head = key.split(".", 1)[0]
    return head if "." in key and head in DISTILLERS else None
