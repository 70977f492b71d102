"""Methods (or MIMKD variants) on the quickstart's pair: a thin call of `mimkd reproduce`.

    python benchmarks/compare_methods.py --seeds 2 --epochs 30            # every method
    python benchmarks/compare_methods.py --preset mimkd-sweep --seeds 3   # the MIMKD default sweep
    python benchmarks/compare_methods.py --runs kd mimkd "g03:mimkd:mimkd.beta_global=0.3"

It writes the grid these arguments describe to OUT/grid.yaml (teacher: the quickstart's cnn_small
recipe, configs/fashion_mnist/teacher.yaml; students: cnn_tiny on `--images` labelled images,
configs/fashion_mnist/student.yaml) and runs it with `--workers` runs at a time. Everything else
is `mimkd reproduce`'s: one folder per run named by its identity, finished runs skipped, stopped
ones resumed, OUT/results.csv, OUT/report.md and the PNGs. The same table from the shell:
`mimkd reproduce OUT/grid.yaml --jobs 2`. Per-step cost of each method: benchmarks/overhead.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

try:
    import mimkd  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mimkd.distillers import DISTILLERS
from mimkd.reproduce import run_grid

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {
    "mimkd-sweep": [
        "ce",
        "kd",
        "mimkd",  # default: global + local 0.1 with KD (0.1 CE + 0.9 KD), h 128
        "mimkd-alone:mimkd:mimkd.kd_weight=0,mimkd.ce_weight=1",
        "global-only:mimkd:mimkd.beta_local=0",
        "g+l-0.3:mimkd:mimkd.beta_global=0.3,mimkd.beta_local=0.3",
        "h512:mimkd:mimkd.hidden=512",
        "all-negatives:mimkd:mimkd.negatives=all",
        "linear-proj:mimkd:mimkd.student_projection=linear",
    ],
}


def method_entry(text: str) -> dict:
    """'label:method:key=v,key=v' (or just a method name) -> a grid's method entry."""
    parts = text.split(":", 2)
    if len(parts) == 1:
        return {"name": text}
    overrides = {}
    for item in parts[2].split(",") if len(parts) == 3 and parts[2] else []:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    return {"name": parts[1], "label": parts[0], "overrides": overrides}


def grid_document(entries: list[str], *, seeds: int, epochs: int, images: int, out: Path) -> dict:
    return {
        "name": out.name,
        "out": str(out),
        "config": str(ROOT / "configs/fashion_mnist/student.yaml"),
        "overrides": {"epochs": epochs, "data.train_subset": images},
        "teachers": {"cnn_small": {"config": str(ROOT / "configs/fashion_mnist/teacher.yaml")}},
        "pairs": [{"teacher": "cnn_small", "student": "cnn_tiny"}],
        "methods": [method_entry(text) for text in entries],
        "seeds": list(range(seeds)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", nargs="*", default=None, help="methods or label:method:overrides [every method]"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--images", type=int, default=2000, help="labelled student images [2000]")
    parser.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--out", default="runs/compare")
    args = parser.parse_args()
    entries = PRESETS[args.preset] if args.preset else args.runs or DISTILLERS.names()
    out = Path(args.out)
    document = grid_document(
        entries, seeds=args.seeds, epochs=args.epochs, images=args.images, out=out
    )
    out.mkdir(parents=True, exist_ok=True)
    grid = out / "grid.yaml"
    grid.write_text(yaml.safe_dump(document, sort_keys=False))
    result = run_grid(grid, jobs=args.workers, command=" ".join(["python", *sys.argv]))
    print(result.report.read_text())
    for what, why in result.outcome.failures:  # e.g. FSP on a pair of unequal widths
        print(f"not in the table: {what}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
