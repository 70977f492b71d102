"""Stopping a run from outside: Ctrl-C, and the signals schedulers send before they preempt.

SIGTERM or SIGUSR1 (Kubernetes, SLURM's `--signal`) only sets a flag while a run trains
(`StopSignals.watching`); the trainer reads it at the next step, every rank agrees, rank 0 writes
last.pt at that step and every rank raises `RunPreempted` (the CLI exits with 75).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

# EX_TEMPFAIL (sysexits.h): stopped by a scheduler's signal, checkpointed; run again to continue
PREEMPTED_EXIT_CODE = 75
# what schedulers send before they preempt or time out a job (SIGUSR1: SLURM's --signal)
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during `fit`: still a KeyboardInterrupt, carrying the folder to resume."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = str(run_dir)


class RunPreempted(RunInterrupted):
    """SIGTERM/SIGUSR1 during `fit`: last.pt holds the step the run stopped at (every rank
    raises it; `quiet` on all but rank 0, so the CLI prints one line)."""

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, run_dir: Path, signal_name: str, step: int, *, quiet: bool = False):
        super().__init__(run_dir)
        self.signal_name = signal_name
        self.step = step
        self.quiet = quiet


class StopSignals:
    """While `watching`, SIGTERM/SIGUSR1 set `received` (the first one's number) for the loop to
    read at the next step. Python runs handlers in the main thread only: a run elsewhere keeps the
    default handlers."""

    def __init__(self) -> None:
        self.received: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def note(signum, _frame) -> None:
            if self.received is None:
                self.received = signum

        previous = {number: signal.signal(number, note) for number in STOP_SIGNALS}
        stopping = False
        try:
            yield
        except RunPreempted:
            stopping = True
            raise
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            if stopping:
                ignore_stop_signals()


def ignore_stop_signals() -> None:
    """For a process that is stopping with its own exit code (preempted, or a rank that agreed to
    stop): torchrun sends SIGTERM to the processes still running once one has exited, which
    would turn a slower process's exit into a death by signal (-15). Main thread only, as Python
    requires."""
    if threading.current_thread() is threading.main_thread():
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
