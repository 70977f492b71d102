"""Running a plan: teachers first (each trained once), then the unfinished student runs.

A unit's status comes from its folder: finished (a complete results.json of this run: skipped),
resumable (a last.pt: continued with `resume=true`), or new. A folder with files but no last.pt
was stopped before its first epoch ended; nothing in it is worth keeping, so it is cleared and the
run starts over (a stale metrics.jsonl would otherwise be appended to).

`jobs` > 1 runs that many at once on the one device through `mimkd.engine.pack.run_packed` (one
process each); `jobs` = 1 runs them here, one after another. Shards share teachers: the first
shard to need one claims it with a file created atomically beside its folder, trains it and
removes the claim; a shard that finds the claim waits for the teacher to finish.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mimkd.engine.pack import run_packed
from mimkd.engine.run import run
from mimkd.errors import MimkdError
from mimkd.reproduce.identity import read_results
from mimkd.reproduce.plan import Job, Plan, TeacherPlan, UnitPlan, teacher_finished

Log = Callable[[str], None]
CLAIM_POLL_SECONDS = 10.0
PACKED = "packed runs"  # run_packed reports its first failure, not which run it was


@dataclass
class UnitStatus:
    unit: UnitPlan
    state: str  # finished | resume | new | waits (its teacher is not trained yet)
    folder: Path | None


@dataclass
class GridOutcome:
    statuses: list[UnitStatus]
    teachers_trained: list[str] = field(default_factory=list)
    ran: list[UnitPlan] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    wall_seconds: float = 0.0


def unit_status(plan: Plan, unit: UnitPlan) -> UnitStatus:
    folder = plan.unit_folder(unit)
    if folder is None:
        return UnitStatus(unit, "waits", None)
    if plan.unit_results(unit) is not None:
        return UnitStatus(unit, "finished", folder)
    if (folder / "last.pt").is_file():
        return UnitStatus(unit, "resume", folder)
    return UnitStatus(unit, "new", folder)


def describe(plan: Plan, unit: UnitPlan) -> str:
    cells = [cell for cell in plan.cells if cell.unit == unit.index]
    pairs = ", ".join(dict.fromkeys(cell.pair for cell in cells))
    labels = "/".join(dict.fromkeys(cell.method for cell in cells))
    return f"{labels} seed {unit.seed} ({pairs})"


# ---- jobs ----------------------------------------------------------------------------------


def _job_for(job: Job, folder: Path, resume: bool) -> Job:
    config, method_config = job
    if not resume and folder.exists():
        shutil.rmtree(folder)  # no last.pt: stopped before its first epoch ended
    return dataclasses.replace(config, run_dir=str(folder), resume=resume), method_config


def _execute(jobs: list[tuple[str, Job]], parallel: int, log: Log) -> list[tuple[str, str]]:
    """Run (label, job) pairs; returns (label, error) for each failure. The others still run."""
    failures: list[tuple[str, str]] = []
    if parallel > 1 and len(jobs) > 1:
        log(f"running {len(jobs)} runs, {min(parallel, len(jobs))} at a time")
        try:
            run_packed([job for _, job in jobs], max_parallel=parallel)
        except MimkdError as error:
            # run_packed names the first failure; the caller finds every one from the folders
            failures.append((PACKED, str(error)))
        return failures
    for position, (label, job) in enumerate(jobs, start=1):
        start = time.perf_counter()
        try:
            results = run(*job)
        except Exception as error:  # one broken run must not stop the grid (as in packing)
            why = (
                str(error) if isinstance(error, MimkdError) else f"{type(error).__name__}: {error}"
            )
            log(f"[{position}/{len(jobs)}] {label}: failed: {why}")
            failures.append((label, why))
            continue
        log(
            f"[{position}/{len(jobs)}] {label}: best {results['best_accuracy']:.4f}, last "
            f"{results['last_accuracy']:.4f} ({time.perf_counter() - start:.0f} s)"
        )
    return failures


# ---- teachers ------------------------------------------------------------------------------


def _claim_path(teacher: TeacherPlan) -> Path:
    return Path(f"{teacher.folder}.claim")


def _claim(teacher: TeacherPlan) -> bool:
    """Create the claim file atomically; False when another process holds a live claim."""
    path = _claim_path(teacher)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not _stale(path):
                return False
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w") as file:
            file.write(owner + "\n")
        return True
    return False


def _stale(path: Path) -> bool:
    """A claim left by a process of this host that no longer exists (other hosts: trusted)."""
    try:
        host, pid = path.read_text().split()
    except (OSError, ValueError):
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def ensure_teachers(plan: Plan, keys: list[str], jobs: int, log: Log) -> tuple[list[str], list]:
    """Train (or wait for) the recipe teachers in `keys` that are not trained yet.

    Returns (keys trained here, [(what, why)] for each teacher still not trained)."""
    claimed: list[TeacherPlan] = []
    waiting: list[TeacherPlan] = []
    for key in keys:
        teacher = plan.teachers[key]
        if teacher.kind != "recipe" or teacher_finished(teacher):
            continue
        (claimed if _claim(teacher) else waiting).append(teacher)
    errors: dict[str, str] = {}
    try:
        if claimed:
            names = ", ".join(teacher.key for teacher in claimed)
            log(f"training teacher(s) {names} (each once; later runs reuse them)")
            work = []
            for teacher in claimed:
                folder = Path(teacher.folder)
                # a finished run whose best.pt is gone has nothing to resume: train it again
                resume = (folder / "last.pt").is_file() and read_results(folder) is None
                work.append((f"teacher {teacher.key}", _job_for(teacher.job, folder, resume)))
            errors = dict(_execute(work, jobs, log))
    finally:
        for teacher in claimed:
            _claim_path(teacher).unlink(missing_ok=True)
    for teacher in waiting:
        log(
            f"waiting for teacher {teacher.key}: another process claimed it "
            f"({_claim_path(teacher)}; delete that file if its process is gone)"
        )
        # the claim disappears when its owner ends, finished or not
        while _claim_path(teacher).exists() and not teacher_finished(teacher):
            time.sleep(CLAIM_POLL_SECONDS)
    trained = [teacher.key for teacher in claimed if teacher_finished(teacher)]
    failures = []
    for key in keys:
        teacher = plan.teachers[key]
        if teacher.kind == "recipe" and not teacher_finished(teacher):
            label = f"teacher {key}"
            why = errors.get(label) or errors.get(PACKED) or "its training did not finish"
            failures.append((label, why))
    return trained, failures


# ---- the grid ------------------------------------------------------------------------------


def reproduce(
    plan: Plan,
    units: list[UnitPlan],
    *,
    jobs: int = 1,
    dry_run: bool = False,
    log: Log = print,
) -> GridOutcome:
    """Train what `units` (a shard of the plan) still lack: their teachers, then themselves."""
    start = time.perf_counter()
    teacher_keys = list(dict.fromkeys(unit.teacher for unit in units if unit.teacher))
    outcome = GridOutcome(statuses=[])
    if not dry_run:
        outcome.teachers_trained, outcome.failures = ensure_teachers(plan, teacher_keys, jobs, log)
    outcome.statuses = [unit_status(plan, unit) for unit in units]
    if dry_run:
        outcome.wall_seconds = time.perf_counter() - start
        return outcome
    pending = [status for status in outcome.statuses if status.state in ("new", "resume")]
    work = [
        (
            describe(plan, status.unit),
            _job_for(status.unit.job, status.folder, status.state == "resume"),
        )
        for status in pending
    ]
    outcome.ran = [status.unit for status in pending]
    errors = dict(_execute(work, jobs, log)) if work else {}
    # what finished is read back from the folders, whichever way the runs were started
    outcome.statuses = [unit_status(plan, unit) for unit in units]
    for status in outcome.statuses:
        label = describe(plan, status.unit)
        if status.state == "waits":
            outcome.failures.append((label, f"teacher {status.unit.teacher} is not trained"))
        elif status.state != "finished" and status.unit in outcome.ran:
            outcome.failures.append(
                (label, errors.get(label) or errors.get(PACKED) or "did not finish")
            )
    outcome.wall_seconds = time.perf_counter() - start
    return outcome
