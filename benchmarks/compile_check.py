"""Every method under torch.compile, as a user runs it: `mimkd distill ... compile=true`.

For each registered method one real run (cnn_small teacher -> cnn_tiny student on Fashion-MNIST,
3 epochs, init stages ending after epoch 1, DKD ramping) is started through the CLI with
`TORCH_LOGS=recompiles`, and its merged output is read: did it finish, did compile fall back to
eager, how many recompiles dynamo logged after the first epoch ended, and how long it took.
Prints a Markdown table (method, ok, fallback, recompiles after epoch 1, recompiles in all,
seconds). The default backend is inductor (full code generation: minutes per method on a small
CPU); `--backend aot_eager` traces autograd without code generation, as the tests do.

    python benchmarks/compile_check.py                      # every method, inductor
    python benchmarks/compile_check.py --methods kd dkd ab --backend aot_eager
    python benchmarks/compile_check.py --src /path/to/other/checkout/src   # another version

`--src` runs another checkout's code with the same commands (how the before/after figures of the
method-contract change were measured); such a checkout may not know `compile_backend`, so it is
only passed when it is not inductor.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PER_METHOD = {
    "ab": ["ab.init_epochs=1"],
    "ft": ["ft.init_epochs=1"],
    "fsp": ["fsp.init_epochs=1", "fsp.distill_weight=1.0"],
    "dkd": ["dkd.warmup_epochs=3"],
    "crd": ["crd.num_negatives=256"],
}
RECOMPILE = re.compile(r"Recompiling function")
FALLBACK = re.compile(r"torch\.compile failed")


def registered_methods(env: dict) -> list[str]:
    code = "from mimkd.distillers import DISTILLERS; print(' '.join(DISTILLERS.names()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return out.stdout.split()


def common(args, run_dir: Path) -> list[str]:
    data = [f"data.root={args.root}"] if args.root else []
    return [
        *data,
        "data.download=false",
        f"data.train_subset={args.train_subset}",
        f"data.test_subset={args.test_subset}",
        f"data.batch_size={args.batch_size}",
        "progress=false",
        "optim.lr=0.01",
        f"run_dir={run_dir}",
    ]


def check_method(method: str, teacher: Path, args, env: dict, work: Path) -> dict:
    student = "cnn_small" if method == "fsp" else "cnn_tiny"  # FSP needs equal stage widths
    backend = [] if args.backend == "inductor" else [f"compile_backend={args.backend}"]
    command = [
        sys.executable, "-m", "mimkd", "distill", f"method={method}", f"model.name={student}",
        f"teacher.checkpoint={teacher}", f"epochs={args.epochs}", "compile=true", *backend,
        *PER_METHOD.get(method, []), *common(args, work / method),
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(
        command,
        env={**env, "TORCH_LOGS": "recompiles", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=args.timeout,
    )
    seconds = time.perf_counter() - start
    lines = result.stdout.splitlines()
    first_epoch = next((i for i, line in enumerate(lines) if line.startswith("epoch 1/")), None)
    after = lines[first_epoch:] if first_epoch is not None else []
    error = next((line for line in reversed(lines) if "Error" in line or "error:" in line), "")
    return {
        "method": method,
        "ok": result.returncode == 0,
        "fallback": any(FALLBACK.search(line) for line in lines),
        "recompiles_after_first_epoch": sum(bool(RECOMPILE.search(line)) for line in after),
        "recompiles": sum(bool(RECOMPILE.search(line)) for line in lines),
        "seconds": seconds,
        "error": "" if result.returncode == 0 else error[:120],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", default=None, help="[every registered method]")
    parser.add_argument("--backend", default="inductor", help="inductor | aot_eager [inductor]")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--root", default=None, help="Fashion-MNIST folder [mimkd's default]")
    parser.add_argument("--train-subset", type=int, default=256)
    parser.add_argument("--test-subset", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--src", default=str(REPO / "src"), help="the checkout's src to run")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per method")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": args.src}
    methods = args.methods or registered_methods(env)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        teacher_dir = work / "teacher"
        subprocess.run(
            [sys.executable, "-m", "mimkd", "train", "model.name=cnn_small", "epochs=1",
             *common(args, teacher_dir)],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        rows = []
        for method in methods:
            row = check_method(method, teacher_dir / "best.pt", args, env, work)
            rows.append(row)
            print(f"{method}: {row}", file=sys.stderr, flush=True)
    print(f"\nbackend {args.backend}, {args.epochs} epochs, code: {args.src}\n")
    print("| method | ok | eager fallback | recompiles after epoch 1 | recompiles | seconds |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ok = "yes" if row["ok"] else f"no ({row['error']})"
        print(
            f"| {row['method']} | {ok} | {'yes' if row['fallback'] else 'no'} | "
            f"{row['recompiles_after_first_epoch']} | {row['recompiles']} | {row['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
