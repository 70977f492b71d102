"""A run folder belongs to one run: a lock while it trains, and rules for what it may start in.

The lock is `fcntl.flock` on `<run_dir>/.mimkd.lock`. The kernel releases it when the holder's
file descriptor closes, on every exit, SIGKILL included, so a lock is never stale and no pid
liveness check is needed; the file records pid and host only for the message a second process
prints. The lock file is never deleted while a run may use the folder: deleting it would let two
processes lock two different files of the same name.

What a run may do in a folder, decided before anything in it is written:

| the folder holds                         | a new run                    | resume=true        |
|------------------------------------------|------------------------------|--------------------|
| nothing (or does not exist)              | starts                       | refused            |
| config.yaml, no last.pt (killed before   | restarts if the config is    | restarts, with the |
| the first checkpoint)                    | the same, else refused       | overrides given    |
| last.pt (a finished or unfinished run)   | refused: resume it           | resumes            |
| anything else                            | refused                      | refused            |
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from mimkd.errors import MimkdError
from mimkd.serialization import OutputPathError, atomic_write_text, is_temp_file

LOCK_NAME = ".mimkd.lock"
# every file a run writes at the top of its folder (tensorboard/ is a folder of its own)
RUN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "last.pt",
    "best.pt",
    "curves.png",
    "report.md",
    "results.json",
)
REPORT_FILES = ("curves.png", "report.md", "results.json")
# keys that change how a run is watched or where it is written, not what it computes
_NOT_COMPARED = (
    "resume",
    "run_dir",
    "out_dir",
    "progress",
    "tensorboard",
    "log_every",
    "checkpoint_every",
    "dist_timeout",
)

NEW, RESTART, RESUME = "new", "restart", "resume"


@dataclass
class RunFolder:
    """A claimed run folder: its lock (held until `release`) and what the run does in it."""

    path: Path
    plan: str  # NEW, RESTART (no checkpoint yet: start over) or RESUME (from last.pt)
    created: Path | None  # the outermost folder this claim created (None: path existed)
    lock_file: IO[str] | None

    @property
    def held(self) -> bool:
        return self.lock_file is not None

    def release(self) -> None:
        """Unlock (closing the descriptor is what unlocks; the kernel does it on any exit too)."""
        if self.lock_file is not None:
            self.lock_file.close()
            self.lock_file = None

    def abandon(self) -> None:
        """Release after a run that failed before writing anything: a folder this claim created
        and that holds only the lock file is removed, so a failed start leaves nothing behind."""
        if self.lock_file is not None and self.created is not None:
            leftovers = [p.name for p in self.path.iterdir() if p.name != LOCK_NAME]
            if not leftovers:
                (self.path / LOCK_NAME).unlink(missing_ok=True)
                folder = self.path
                with contextlib.suppress(OSError):  # a folder not empty (any more) stays
                    while True:
                        folder.rmdir()
                        if folder == self.created:
                            break
                        folder = folder.parent
        self.release()


def claim_run_folder(path: str | Path, *, resume: bool, config: dict | None) -> RunFolder:
    """Lock `path` (creating it) and decide the run's plan there; refuse with one line if the
    folder is another process's, or holds something this run must not overwrite.

    `config` is the run's config as config.yaml records it (None: not compared).
    """
    path = Path(path)
    if path.is_dir() and not _has_run(path):
        _refuse_strangers(path)  # before the lock file: a foreign folder is left untouched
    created = _make_folder(path)
    lock_file = _lock(path)
    folder = RunFolder(path=path, plan=NEW, created=created, lock_file=lock_file)
    try:
        folder.plan = _plan(path, resume, config)
    except BaseException:
        folder.abandon()
        raise
    return folder


@contextlib.contextmanager
def run_folder_writes(run_dir: Path, target: Path | None = None) -> Iterator[None]:
    """Turn an OSError of a write into the run folder (disk full, quota, permissions) into one
    line saying what to do; the atomic writes have left every file whole."""
    try:
        yield
    except (OSError, OutputPathError) as failure:
        error = failure.os_error if isinstance(failure, OutputPathError) else failure
        if error is None:
            raise
        where = error.filename or target or run_dir
        reason = error.strerror or str(error)
        raise MimkdError(
            f"cannot write {where}: {reason}; free space or fix permissions there (or choose "
            f"another run_dir), then resume with --resume {run_dir}."
        ) from None


# ---- the folder ------------------------------------------------------------------------------
def _make_folder(path: Path) -> Path | None:
    """Create `path` and missing parents; return the outermost folder created (None: none)."""
    if path.is_dir():
        return None
    if path.exists():
        raise MimkdError(f"run_dir {path} is a file, not a folder; choose another run_dir.")
    outermost = path
    while not outermost.parent.exists() and outermost.parent != outermost:
        outermost = outermost.parent
    try:
        path.mkdir(parents=True)
    except FileExistsError:  # created meanwhile by another process: the lock decides
        return None
    except OSError as error:
        raise MimkdError(
            f"cannot create run_dir {path}: {error.strerror}; choose a writable run_dir."
        ) from None
    return outermost


def _lock(path: Path) -> IO[str]:
    """flock the folder's lock file without waiting; a held lock is refused naming its holder."""
    lock_path = path / LOCK_NAME
    while True:
        try:
            # no `with`: the open file is the lock, held until the run releases it
            lock_file = open(lock_path, "a+")  # noqa: SIM115
        except OSError as error:
            raise MimkdError(
                f"cannot write in run_dir {path}: {error.strerror}; choose a writable run_dir."
            ) from None
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(lock_file)
            lock_file.close()
            raise MimkdError(
                f"run_dir {path} is in use by another mimkd run ({holder}); wait for it to end "
                "or choose another run_dir."
            ) from None
        # a folder removed and made again between open and flock: lock the file now at the path
        if _same_file(lock_file, lock_path):
            break
        lock_file.close()
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(
        json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.datetime.now().isoformat(timespec="seconds"),
            }
        )
        + "\n"
    )
    lock_file.flush()
    return lock_file


def _same_file(lock_file: IO[str], lock_path: Path) -> bool:
    try:
        on_disk = os.stat(lock_path)
    except FileNotFoundError:
        return False
    opened = os.fstat(lock_file.fileno())
    return (opened.st_dev, opened.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _holder(lock_file: IO[str]) -> str:
    lock_file.seek(0)
    try:
        record = json.loads(lock_file.read() or "{}")
        return f"pid {record['pid']} on {record['host']}, since {record['since']}"
    except (ValueError, KeyError, TypeError):
        return "it has just started"


def _plan(path: Path, resume: bool, config: dict | None) -> str:
    has_checkpoint = (path / "last.pt").is_file()
    has_config = (path / "config.yaml").is_file()
    if resume:
        if has_checkpoint:
            return RESUME
        if has_config:
            return RESTART  # killed before its first checkpoint: nothing to resume, start over
        raise MimkdError(
            f"cannot resume: {path} holds no run (no last.pt or config.yaml); pass the folder of "
            "an earlier run, or drop resume to start a new one."
        )
    if has_checkpoint:
        finished = (path / "results.json").is_file()
        longer = " (add epochs=N to train longer)" if finished else ""
        raise MimkdError(
            f"run_dir {path} already holds a{' finished' if finished else 'n unfinished'} run; "
            f"resume it with --resume {path}{longer}, or choose another run_dir."
        )
    if has_config:
        difference = _config_difference(path / "config.yaml", config)
        if difference:
            raise MimkdError(
                f"run_dir {path} holds another run that stopped before its first checkpoint "
                f"({difference}); rerun it with its own config, restart it with yours "
                f"(--resume {path} key=value), or choose another run_dir."
            )
        return RESTART
    _refuse_strangers(path)
    return NEW


def _has_run(path: Path) -> bool:
    return (path / "last.pt").is_file() or (path / "config.yaml").is_file()


def _refuse_strangers(path: Path) -> None:
    strangers = _foreign_entries(path)
    if strangers:
        shown = ", ".join(strangers[:3]) + (", ..." if len(strangers) > 3 else "")
        raise MimkdError(
            f"run_dir {path} is not empty and holds no mimkd run ({shown}); choose a new or "
            "empty folder."
        )


def _foreign_entries(path: Path) -> list[str]:
    """What the folder holds besides our lock and our temp files."""
    return sorted(
        entry.name
        for entry in path.iterdir()
        if entry.name != LOCK_NAME and not is_temp_file(entry.name, RUN_FILES)
    )


def _config_difference(recorded_file: Path, config: dict | None) -> str:
    """'' when `config` is the run recorded in config.yaml, else the first key that differs."""
    if config is None:
        return ""
    try:
        recorded = yaml.safe_load(recorded_file.read_text())
    except (OSError, yaml.YAMLError):
        return "its config.yaml is unreadable"
    # a YAML round trip gives both sides the same types (tuples, floats written as 5e-4)
    current = yaml.safe_load(yaml.safe_dump(config, sort_keys=False))
    found = _first_difference(recorded, current)
    if found is None:
        return ""
    key, theirs, ours = found
    return f"its {key} is {theirs!r}, this run's {ours!r}"


def _first_difference(recorded: Any, current: Any, prefix: str = "") -> tuple | None:
    if isinstance(recorded, dict) and isinstance(current, dict):
        for key in list(dict.fromkeys([*recorded, *current])):
            if not prefix and key in _NOT_COMPARED:
                continue
            found = _first_difference(recorded.get(key), current.get(key), f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    if recorded != current:
        return prefix.rstrip("."), recorded, current
    return None


# ---- metrics ---------------------------------------------------------------------------------
def trim_metrics(path: Path, step: int) -> int:
    """Keep the records of steps <= `step` (the checkpoint's); return how many were dropped.

    A run logs an epoch before checkpointing it, and logs intervals between checkpoints: after a
    kill, records past the checkpoint describe work that resuming does again and logs again.
    A line cut short by the kill is dropped too. The file is rewritten atomically.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return dropped


__all__ = [
    "LOCK_NAME",
    "NEW",
    "REPORT_FILES",
    "RESTART",
    "RESUME",
    "RUN_FILES",
    "RunFolder",
    "claim_run_folder",
    "run_folder_writes",
    "trim_metrics",
]
