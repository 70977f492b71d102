"""Bad input and faults through the CLI, one checkout against another: what a user sees.

Each case runs `python -m mimkd ...` from a checkout (`PYTHONPATH=<checkout>/src`) in a fresh
temp folder, with tiny runs (cnn_tiny, 200 training / 100 test Fashion-MNIST images, batch 32,
CPU, one thread), and reports the exit code, the output's last meaningful line (a traceback as
`traceback: <ExceptionType: message>`) and the output's line count, plus what the case checks
afterwards (metrics.jsonl epochs, whether a FIFO survived, whether a poisoned pickle ran code).
Setup steps (a finished run, a checkpoint) use the same checkout as the case.

    python benchmarks/fault_cases.py --before /work/wt/before --after /work/main \\
        --out results/fault_cases-2026-12-01.md
    python benchmarks/fault_cases.py --checkout /work/main        # one checkout, printed only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import random
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from machine import cpu_name

TINY = [
    "model.name=cnn_tiny",
    "data.train_subset=200",
    "data.test_subset=100",
    "data.batch_size=32",
    "progress=false",
    "device=cpu",
]
# two runs on one folder only meet while the first trains longer than the second takes to start
OVERLAP_SUBSET = 12000
FASHION_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
# a folder that root cannot create files in (sysfs answers EACCES); /proc answers ENOENT
UNWRITABLE_DIR = Path("/sys")
FIFO_TIMEOUT = 60
TRACEBACK = "Traceback (most recent call last):"
WARNING = re.compile(r"(\w+Warning: |^\s*warnings\.warn\()")


@dataclass
class Result:
    rc: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float
    timeout: float

    @property
    def text(self) -> str:
        return self.stderr + self.stdout

    @property
    def lines(self) -> int:
        return len(self.stdout.splitlines()) + len(self.stderr.splitlines())


class SetupError(RuntimeError):
    """A setup step failed: the case's table cell would describe the harness, not mimkd."""


class Checkout:
    """One checkout's CLI, run as a child process in its own session (killed whole at timeout)."""

    def __init__(self, path: Path, python: str, timeout: float) -> None:
        self.path = path
        self.python = python
        self.timeout = timeout
        self.env = dict(os.environ, PYTHONPATH=str(path / "src"), OMP_NUM_THREADS="1")
        self.env["MKL_NUM_THREADS"] = "1"
        self.env["MPLBACKEND"] = "Agg"
        self._base: Path | None = None
        self.work = Path(tempfile.mkdtemp(prefix="mimkd-faults-"))

    def spawn(self, args: list[str], cwd: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [self.python, "-m", "mimkd", *args],
            cwd=cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def wait(self, proc: subprocess.Popen, start: float, timeout: float | None = None) -> Result:
        limit = timeout or self.timeout
        try:
            stdout, stderr = proc.communicate(timeout=max(1.0, limit - (time.monotonic() - start)))
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own child's session, nothing else
            stdout, stderr = proc.communicate()
            rc = None
        return Result(rc, stdout, stderr, time.monotonic() - start, limit)

    def mimkd(self, args: list[str], cwd: Path, timeout: float | None = None) -> Result:
        start = time.monotonic()
        return self.wait(self.spawn(args, cwd), start, timeout)

    def setup(self, args: list[str], cwd: Path) -> Result:
        result = self.mimkd(args, cwd)
        if result.rc != 0:
            raise SetupError(f"setup `mimkd {shlex.join(args)}` failed: {describe(result)}")
        return result

    def base(self) -> Path:
        """A finished one-epoch run (its best.pt/last.pt serve eval, export and resume cases)."""
        if self._base is None:
            run = self.work / "base"
            self.setup(["train", *TINY, "epochs=1", f"run_dir={run}"], self.work)
            self._base = run
        return self._base

    def steps_per_epoch(self) -> int:
        return epoch_records(self.base() / "metrics.jsonl")[0]["step"]


# ---- reading results -------------------------------------------------------------------------
def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def last_line(text: str) -> str | None:
    for line in reversed(text.splitlines()):
        if line.strip() and not WARNING.search(line):
            return line.strip()
    return None


def message(result: Result) -> str:
    for stream in (result.stderr, result.stdout):
        if TRACEBACK in stream:
            tail = stream.split(TRACEBACK)[-1].splitlines()
            # frames are indented; the exception's own line is the first one that is not
            error = next((x for x in tail if x.strip() and not x[0].isspace()), "?")
            return f"traceback: {shorten(error.strip(), 100)}"
    streams = (result.stderr, result.stdout) if result.rc else (result.stdout, result.stderr)
    for stream in streams:
        line = last_line(stream)
        if line is not None:
            return shorten(line, 200)
    return "(no output)"


def describe(result: Result) -> str:
    code = f"killed after {result.timeout:.0f} s (hung)" if result.rc is None else result.rc
    lines = f"{result.lines} line" + ("" if result.lines == 1 else "s")
    return f"rc={code}: {message(result)} ({lines})"


def epoch_records(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            records.append({"kind": "epoch", "epoch": "<torn line>", "step": None})
            continue
        if record.get("kind") == "epoch":
            records.append(record)
    return records


def epochs_after(run: Path) -> str:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return "no metrics.jsonl"
    records = epoch_records(path)
    epochs = ", ".join(str(r["epoch"]) for r in records)
    steps = ", ".join(str(r["step"]) for r in records)
    return f"metrics.jsonl epochs [{epochs}] (steps [{steps}])"


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


# ---- the cases -------------------------------------------------------------------------------
Case = Callable[[Checkout, Path], str]
CASES: list[tuple[str, Case]] = []


def case(label: str) -> Callable[[Case], Case]:
    def register(function: Case) -> Case:
        CASES.append((label, function))
        return function

    return register


@case("`run_dir=<a finished run>` (train, then the same command again)")
def finished_run_dir(ck: Checkout, work: Path) -> str:
    args = ["train", *TINY, "epochs=1", f"run_dir={work / 'run'}"]
    ck.setup(args, work)
    return f"{describe(ck.mimkd(args, work))}; {epochs_after(work / 'run')}"


@case("resume after `max_steps=<1 epoch + 2 steps> epochs=2` (`train --resume RUN`)")
def resume_metrics(ck: Checkout, work: Path) -> str:
    run = work / "run"
    stop = ck.steps_per_epoch() + 2
    ck.setup(["train", *TINY, "epochs=2", f"max_steps={stop}", f"run_dir={run}"], work)
    result = ck.mimkd(["train", "--resume", str(run)], work)
    return f"{describe(result)}; first run stopped at step {stop}; {epochs_after(run)}"


@case(
    f"two processes on one `run_dir`, 1 s apart (epochs=2, data.train_subset={OVERLAP_SUBSET}"
    " so that they overlap)"
)
def concurrent(ck: Checkout, work: Path) -> str:
    run = work / "run"
    args = ["train", *TINY, f"data.train_subset={OVERLAP_SUBSET}", "epochs=2", f"run_dir={run}"]
    start_a = time.monotonic()
    first = ck.spawn(args, work)
    time.sleep(1.0)
    start_b = time.monotonic()
    second = ck.spawn(args, work)
    b = ck.wait(second, start_b)
    a = ck.wait(first, start_a)
    overlap = "B ended before A" if b.seconds + 1.0 < a.seconds else "B ended after A"
    return f"A rc={a.rc} ({a.seconds:.0f} s); B {describe(b)} ({overlap}); {epochs_after(run)}"


def bad_value(override: str) -> Case:
    def run(ck: Checkout, work: Path) -> str:
        return describe(ck.mimkd(["train", *TINY, "epochs=1", override], work))

    return run


for _override in [
    "epochs=0",
    "epochs=-3",
    "data.train_subset=-5",
    "optim.lr=-1",
    "data.eval_batch_size=0",
]:
    case(f"`{_override}`")(bad_value(_override))


def fashion_source() -> Path:
    places = [os.environ.get("MIMKD_DATA"), "/usr/share/datasets/fashion-mnist"]
    for place in filter(None, places):
        for folder in (Path(place), Path(place) / "FashionMNIST" / "raw"):
            if all((folder / name).is_file() for name in FASHION_FILES):
                return folder
    raise SetupError("no Fashion-MNIST IDX files found ($MIMKD_DATA or the Debian path)")


@case("explicit `data.root=<empty folder>`")
def empty_root(ck: Checkout, work: Path) -> str:
    root = work / "empty"
    root.mkdir()
    args = ["train", *TINY, "epochs=1", f"data.root={root}", f"run_dir={work / 'run'}"]
    return describe(ck.mimkd(args, work))


@case("explicit `data.root=<3 of the 4 Fashion-MNIST .gz files>` (t10k labels missing)")
def partial_root(ck: Checkout, work: Path) -> str:
    root = work / "partial"
    root.mkdir()
    for name in FASHION_FILES[:3]:
        shutil.copy(fashion_source() / name, root / name)
    args = ["train", *TINY, "epochs=1", f"data.root={root}", f"run_dir={work / 'run'}"]
    return describe(ck.mimkd(args, work))


@case("`mimkd eval RUN/best.pt data.test_subset=abc`")
def eval_bad_subset(ck: Checkout, work: Path) -> str:
    return describe(ck.mimkd(["eval", str(ck.base() / "best.pt"), "data.test_subset=abc"], work))


@case("`mimkd eval RUN/best.pt data.download=false`")
def eval_no_download(ck: Checkout, work: Path) -> str:
    return describe(ck.mimkd(["eval", str(ck.base() / "best.pt"), "data.download=false"], work))


def export(ck: Checkout, work: Path, target: Path, timeout: float | None = None) -> Result:
    args = ["export", str(ck.base() / "best.pt"), "--format", "onnx", "--out", str(target)]
    return ck.mimkd(args, work, timeout)


@case("`mimkd export --out <missing folder>/model.onnx`")
def export_missing(ck: Checkout, work: Path) -> str:
    target = work / "x" / "missing" / "dir" / "model.onnx"
    result = export(ck, work, target)
    return f"{describe(result)}; folders created: {yes((work / 'x').exists())}"


@case("`mimkd export --out <a file>/model.onnx` (parent is a regular file)")
def export_parent_file(ck: Checkout, work: Path) -> str:
    parent = work / "file.txt"
    parent.write_text("not a folder\n")
    result = export(ck, work, parent / "model.onnx")
    return f"{describe(result)}; parent still a file: {yes(parent.is_file())}"


@case(f"`mimkd export --out {UNWRITABLE_DIR}/mimkd_fault_model.onnx` (root cannot write /sys)")
def export_unwritable(ck: Checkout, work: Path) -> str:
    target = UNWRITABLE_DIR / "mimkd_fault_model.onnx"
    try:  # the harness's own check that root really cannot create a file there
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError as error:
        why = error.strerror
    else:
        os.unlink(target)
        raise SetupError(f"{UNWRITABLE_DIR} is writable here; pick another unwritable folder")
    return f"{describe(export(ck, work, target))}; a probe's create there: {why}"


@case(f"`mimkd export --out <FIFO>` (mkfifo in a temp folder; killed after {FIFO_TIMEOUT} s)")
def export_fifo(ck: Checkout, work: Path) -> str:
    fifo = work / "model.onnx"
    os.mkfifo(fifo)
    result = export(ck, work, fifo, timeout=min(FIFO_TIMEOUT, ck.timeout))
    still = fifo.exists() and stat.S_ISFIFO(fifo.lstat().st_mode)
    return f"{describe(result)}; still a FIFO: {yes(still)}"


def corrupt_bytes() -> bytes:
    return random.Random(0).randbytes(4096)


# literally, or in torch's own words: "Re-running `torch.load` with `weights_only` set to `False`"
WEIGHTS_ONLY_FALSE = re.compile(r"weights_only`?\s*(=|set to)\s*`?False")


def corrupt_extra(result: Result) -> str:
    text = result.text.strip()
    advises = yes(WEIGHTS_ONLY_FALSE.search(text) is not None)
    return f"{len(text)} chars; mentions weights_only=False: {advises}"


@case("corrupt `last.pt` (4096 random bytes) to `train --resume RUN`")
def corrupt_resume(ck: Checkout, work: Path) -> str:
    run = work / "run"
    shutil.copytree(ck.base(), run)
    (run / "last.pt").write_bytes(corrupt_bytes())
    result = ck.mimkd(["train", "--resume", str(run)], work)
    return f"{describe(result)}; {corrupt_extra(result)}"


@case("corrupt `last.pt` (4096 random bytes) to `mimkd eval`")
def corrupt_eval(ck: Checkout, work: Path) -> str:
    path = work / "last.pt"
    path.write_bytes(corrupt_bytes())
    result = ck.mimkd(["eval", str(path)], work)
    return f"{describe(result)}; {corrupt_extra(result)}"


@case("`distill method=kd teacher.checkpoint=<a folder>`")
def teacher_folder(ck: Checkout, work: Path) -> str:
    folder = work / "teacher"
    folder.mkdir()
    args = ["distill", *TINY, "epochs=1", "method=kd", f"teacher.checkpoint={folder}"]
    return describe(ck.mimkd([*args, f"run_dir={work / 'run'}"], work))


@case("`mimkd list model` (typo of `models`)")
def list_typo(ck: Checkout, work: Path) -> str:
    return describe(ck.mimkd(["list", "model"], work))


@case("`mimkd distill --resumee` (typo of `--resume`)")
def flag_typo(ck: Checkout, work: Path) -> str:
    return describe(ck.mimkd(["distill", "--resumee"], work))


class Poison:
    """Unpickled, it calls `open(marker, "w")`: the file appearing proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@case("poisoned CIFAR-100 `train` pickle (`__reduce__` creates a marker file)")
def poisoned_cifar(ck: Checkout, work: Path) -> str:
    folder = work / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    marker_dir = Path(tempfile.mkdtemp(prefix="mimkd-pwn-"))
    marker = marker_dir / "pwned"
    meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"] * 20}
    test = {
        "data": [[0] * 3072 for _ in range(100)],
        "fine_labels": list(range(100)),
        "coarse_labels": [0] * 100,
    }
    for name, record in [("meta", meta), ("test", test), ("train", Poison(marker))]:
        (folder / name).write_bytes(pickle.dumps(record, protocol=2))
    args = ["distill", *TINY, "epochs=1", "data.name=cifar100", f"data.root={work / 'data'}"]
    result = ck.mimkd([*args, "data.download=false", f"run_dir={work / 'run'}"], work)
    ran = marker.exists()
    shutil.rmtree(marker_dir)  # the next checkout starts without a marker
    return f"{describe(result)}; marker file created: {yes(ran)}"


def pairs(path: Path, rows: int) -> Path:
    import numpy as np

    generator = np.random.default_rng(0)
    x = generator.normal(size=(rows, 2)).astype(np.float32)
    y = (x + 0.5 * generator.normal(size=(rows, 2))).astype(np.float32)
    np.savez(path, x=x, y=y)
    return path


@case(f"`mimkd mi estimate pairs.npz --out {UNWRITABLE_DIR}/mimkd_fault_mi` (500 rows)")
def mi_unwritable(ck: Checkout, work: Path) -> str:
    data = pairs(work / "pairs.npz", 500)
    out = UNWRITABLE_DIR / "mimkd_fault_mi"
    return describe(ck.mimkd(["mi", "estimate", str(data), "--out", str(out)], work))


@case("`mimkd mi estimate pairs.npz` with 10 rows")
def mi_ten_rows(ck: Checkout, work: Path) -> str:
    data = pairs(work / "pairs.npz", 10)
    return describe(ck.mimkd(["mi", "estimate", str(data), "--out", str(work / "mi")], work))


# ---- the table -------------------------------------------------------------------------------
def run_cases(ck: Checkout) -> tuple[list[str], float]:
    start = time.monotonic()
    cells = []
    for number, (label, function) in enumerate(CASES, 1):
        work = ck.work / f"case{number:02d}"
        work.mkdir()
        began = time.monotonic()
        try:
            cell = function(ck, work)
        except SetupError as error:
            cell = f"SETUP FAILED: {error}"
        cells.append(cell.replace(str(ck.work), "$TMP"))
        print(f"[{ck.path}] {number}/{len(CASES)} {time.monotonic() - began:5.1f} s  {label}")
        print(f"    {cell}", flush=True)
    return cells, time.monotonic() - start


def cell_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def commit(path: Path) -> str:
    try:
        found = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return found.stdout.strip() or "?"


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes 0600; the result is an ordinary file
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="checkout for the `before` column")
    parser.add_argument("--after", type=Path, help="checkout for the `after` column")
    parser.add_argument("--checkout", type=Path, help="run one checkout alone")
    parser.add_argument("--out", type=Path, help="Markdown file to write (atomically)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per command [300]")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the CLI")
    parser.add_argument("--keep", action="store_true", help="keep the temp folders")
    parser.add_argument("--only", help="comma-separated case numbers (1-based), for checks")
    args = parser.parse_args()
    if args.checkout:
        columns = {"result": args.checkout}
    elif args.before and args.after:
        columns = {"before": args.before, "after": args.after}
    else:
        parser.error("give --before and --after, or --checkout")
    if args.only:
        chosen = {int(x) for x in args.only.split(",")}
        CASES[:] = [c for number, c in enumerate(CASES, 1) if number in chosen]

    commits = {name: commit(path) for name, path in columns.items()}
    started = datetime.datetime.now().astimezone()
    load_start, clock = load(), time.monotonic()
    results, seconds, folders = {}, {}, []
    for name, path in columns.items():
        ck = Checkout(path.resolve(), args.python, args.timeout)
        folders.append(ck.work)
        results[name], seconds[name] = run_cases(ck)
    total, load_end = time.monotonic() - clock, load()
    if not args.keep:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)

    command = shlex.join(["python", *sys.argv])
    per = ", ".join(f"{name} {seconds[name]:.0f} s" for name in columns)
    checkouts = ", ".join(f"{name}: `{path}` ({commits[name]})" for name, path in columns.items())
    lines = [
        "# Fault cases through the CLI" + (": before vs after" if len(columns) == 2 else ""),
        "",
        f"- Command: `{command}`",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {os.cpu_count()} cores ({cpu_name()}), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; load average "
        f"(1/5/15 min) {load_start} at start, {load_end} at end; other jobs share the cores",
        f"- Total wall time: {total:.0f} s ({per})",
        f"- Checkouts: {checkouts}; `$TMP` in a cell: that checkout's temp folder",
        f"- Runs: `{' '.join(TINY)}` plus the case's keys, one thread, `--timeout {args.timeout:.0f}`"
        " s per command; each case in a fresh temp folder; setup steps with the same checkout",
        "- Cell: `rc=<exit code>: <last meaningful output line>` (stderr first when the code is "
        "not 0; a traceback as `traceback: <ExceptionType: message>`), the output's line count "
        "(stdout + stderr), then what the case checks afterwards",
        "",
        "| case | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for number, (label, _) in enumerate(CASES):
        row = [label, *(cell_text(results[name][number]) for name in columns)]
        lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_atomically(args.out, text)


if __name__ == "__main__":
    main()
