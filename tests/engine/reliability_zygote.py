"""Real runs killed at chosen points: a zygote process that forks one child per `mimkd` command.

Why a zygote: the kill tests run dozens of short trainings, each SIGKILLed somewhere; importing
torch for each would cost more than the training. The zygote imports torch and mimkd once with one
intra-op thread and never runs an op itself, so forking it is safe (no thread pool to inherit) and
every child starts from the same state: the uninterrupted reference and the killed runs compute
bit for bit alike.

A fault is injected in the child at the OS/library boundary, never inside mimkd:
- `step`: SIGKILL after the child's `at`-th optimizer step (torch's global step hook);
- `save`: SIGKILL inside the `at`-th `torch.save` into a temp file of `file` (half its bytes
  written and flushed: a torn temp file on disk);
- `replace_before` / `replace_after`: SIGKILL just before / after the `at`-th `os.replace` onto
  `file` (a whole temp file not yet renamed / the rename done, the next write not begun);
- `sigint`: Ctrl-C (SIGINT) after the `at`-th step;
- `pause`: after the `at`-th step, touch `marker` and sleep (a run holding its folder);
- `fsize`: RLIMIT_FSIZE of `limit` bytes (writes past it fail with EFBIG, like a full disk).

Protocol, JSON lines on stdin/stdout: {"argv", "fault", "log", "wait", "timeout"} forks a child
running `mimkd.cli.main(argv)` with stdout and stderr in `log`; the answer is {"pid", "exit",
"signal"} (only {"pid"} when wait is false; {"collect": pid} answers later).
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


# ---- the parent's side -------------------------------------------------------------------------
@dataclass
class Outcome:
    pid: int
    exit: int | None  # exit code, None when killed by a signal
    signal: int | None
    log: str

    @property
    def killed(self) -> bool:
        return self.signal == signal.SIGKILL

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.log.splitlines() if line.startswith("mimkd: ")]


class Zygote:
    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0
        self.logs: dict[int, Path] = {}
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert json.loads(self._read())["ready"]

    def _read(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the zygote died")
        return line

    def _send(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self._read())

    def start(self, argv: list[str], fault: dict | None = None) -> int:
        self.count += 1
        log = self.folder / f"child-{self.count}.log"
        answer = self._send({"argv": argv, "fault": fault, "log": str(log), "wait": False})
        self.logs[answer["pid"]] = log
        return answer["pid"]

    def collect(self, pid: int, timeout: float = 600) -> Outcome:
        answer = self._send({"collect": pid, "timeout": timeout})
        if answer.get("timeout"):
            raise TimeoutError(f"child {pid} ran past {timeout} s:\n{self.logs[pid].read_text()}")
        return Outcome(pid, answer["exit"], answer["signal"], self.logs[pid].read_text())

    def run(self, argv: list[str], fault: dict | None = None, timeout: float = 600) -> Outcome:
        return self.collect(self.start(argv, fault), timeout)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


# ---- the zygote's side -------------------------------------------------------------------------
def _kill_self() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(fault: dict | None) -> None:
    """Arm the fault in this (child) process."""
    if not fault:
        return
    import resource
    import tempfile

    import torch

    kind = fault["kind"]
    if kind == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of a kill
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fault["limit"], hard))
        return
    calls = {"n": 0}

    def counted() -> bool:
        calls["n"] += 1
        return calls["n"] == fault["at"]

    if kind in ("step", "sigint", "pause"):

        def after_step(optimizer, args, kwargs):
            if not counted():
                return
            if kind == "step":
                _kill_self()
            elif kind == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                Path(fault["marker"]).write_text(str(os.getpid()))
                time.sleep(600)

        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(after_step)
    elif kind == "save":
        # which file a temp belongs to: the prefix its writer asked mkstemp for (".best.pt.")
        current = {"prefix": ""}
        original_mkstemp, original_save = tempfile.mkstemp, torch.save

        def mkstemp(*args, **kwargs):
            current["prefix"] = kwargs.get("prefix", "")
            return original_mkstemp(*args, **kwargs)

        def save(obj, file, *args, **kwargs):
            if current["prefix"] != f".{fault['file']}." or not counted():
                return original_save(obj, file, *args, **kwargs)
            import io

            buffer = io.BytesIO()
            original_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            file.write(data[: len(data) // 2])
            file.flush()
            _kill_self()

        tempfile.mkstemp = mkstemp
        torch.save = save
    elif kind in ("replace_before", "replace_after"):
        original_replace = os.replace

        def replace(source, target, *args, **kwargs):
            hit = Path(target).name == fault["file"] and counted()
            if hit and kind == "replace_before":
                _kill_self()
            original_replace(source, target, *args, **kwargs)
            if hit:
                _kill_self()

        os.replace = replace
    else:
        raise ValueError(f"unknown fault {kind!r}")


def _child(request: dict) -> None:
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    code = 99
    try:
        from mimkd.cli import main

        _install(request["fault"])
        code = main(request["argv"])
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {
                "pid": pid,
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            }
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return {"pid": pid, "timeout": True}


def _serve() -> None:
    import torch

    torch.set_num_threads(1)  # before any op: children inherit no thread pool
    import mimkd.cli
    import mimkd.cli.models
    import mimkd.cli.run
    import mimkd.engine.run  # noqa: F401  (everything a run imports, once)

    protocol = sys.stdout
    protocol.write(json.dumps({"ready": True}) + "\n")
    protocol.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if "collect" in request:
            answer = _wait(request["collect"], request["timeout"])
        else:
            protocol.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            answer = {"pid": pid}
        protocol.write(json.dumps(answer) + "\n")
        protocol.flush()


if __name__ == "__main__":
    _serve()
