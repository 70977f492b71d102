"""The grid's outputs: results.csv (one row per run), report.md (mean ± std per pair and method),
one PNG per pair and an overview PNG. Rebuilt from run folders alone by `mimkd report`.

Rows come from a grid's plan (`rows_from_plan`: labels from the grid, only the runs of that grid)
or from any folders holding run folders (`rows_from_folders`: labels from each results.json).
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import statistics
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mimkd.engine.report import markdown_table  # noqa: E402
from mimkd.reproduce.identity import read_results, slug  # noqa: E402
from mimkd.reproduce.plan import Plan, teacher_finished  # noqa: E402


@dataclass
class RunRow:
    """One run in the table; the first 14 columns are the ones the CSV promises."""

    grid: str
    pair: str
    teacher: str
    student: str
    method: str
    seed: int
    best_accuracy: float
    last_accuracy: float
    best_epoch: int
    epochs: int
    wall_seconds: float
    teacher_sha256: str
    teacher_accuracy: float | None
    run_dir: str
    run_id: str = ""
    method_name: str = ""
    device: str = ""
    torch: str = ""
    dataset: str = ""
    student_parameters: int | None = None
    extra_parameters: int | None = None


CSV_COLUMNS = [f.name for f in fields(RunRow)]


@dataclass
class Summary:
    """One pair and method over its seeds."""

    pair: str
    method: str
    rows: list[RunRow] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.rows)

    def values(self, key: str) -> list[float]:
        return [getattr(row, key) for row in self.rows]

    def mean(self, key: str) -> float:
        return statistics.mean(self.values(key))

    def std(self, key: str) -> float | None:
        """Sample standard deviation (n - 1), as papers report over seeds; None for one run."""
        return statistics.stdev(self.values(key)) if self.n > 1 else None

    def text(self, key: str) -> str:
        std = self.std(key)
        return f"{self.mean(key):.4f}" + ("" if std is None else f" ± {std:.4f}")

    def to_dict(self) -> dict:
        return {
            "pair": self.pair,
            "method": self.method,
            "n": self.n,
            "best_mean": self.mean("best_accuracy"),
            "best_std": self.std("best_accuracy"),
            "last_mean": self.mean("last_accuracy"),
            "last_std": self.std("last_accuracy"),
            "wall_seconds_mean": self.mean("wall_seconds"),
            "seeds": [row.seed for row in self.rows],
        }


def _row(grid: str, pair: str, teacher: str, method: str, results: dict, **extra) -> RunRow:
    return RunRow(
        grid=grid,
        pair=pair,
        teacher=teacher,
        student=results["student"],
        method=method,
        seed=results["seed"],
        best_accuracy=results["best_accuracy"],
        last_accuracy=results["last_accuracy"],
        best_epoch=results["best_epoch"],
        epochs=results["epochs"],
        wall_seconds=results["wall_seconds"],
        teacher_sha256=extra.pop("teacher_sha256", None) or results.get("teacher_sha256") or "",
        teacher_accuracy=extra.pop("teacher_accuracy", None) or results.get("teacher_accuracy"),
        run_dir=str(results.get("run_dir", "")),
        method_name=results["method"],
        device=str(results.get("device", "")),
        torch=str(results.get("torch", "")),
        dataset=str(results.get("dataset", "")),
        student_parameters=results.get("student_parameters"),
        extra_parameters=results.get("extra_parameters"),
        **extra,
    )


def teacher_accuracy(plan: Plan, key: str) -> float | None:
    """A recipe teacher's best test top-1 (its best.pt is what students load); for a checkpoint
    teacher, what the students' runs measured or read from it."""
    teacher = plan.teachers[key]
    results = teacher_finished(teacher)
    if results is not None:
        return results["best_accuracy"]
    for unit in plan.units:
        if unit.teacher == key:
            found = plan.unit_results(unit)
            if found is not None and found.get("teacher_accuracy") is not None:
                return found["teacher_accuracy"]
    return None


def rows_from_plan(plan: Plan) -> tuple[list[RunRow], int]:
    """Rows of the grid's finished runs, in the grid's order, and how many cells are missing."""
    rows, missing = [], 0
    accuracies = {key: teacher_accuracy(plan, key) for key in plan.teachers}
    for cell in plan.cells:
        unit = plan.units[cell.unit]
        results = plan.unit_results(unit)
        if results is None:
            missing += 1
            continue
        folder = plan.unit_folder(unit)
        rows.append(
            _row(
                plan.name,
                cell.pair,
                cell.teacher,
                cell.method,
                {**results, "run_dir": str(folder)},
                # the pair's teacher, also on rows of runs that train without one (ce)
                teacher_sha256=plan.teacher_sha256(cell.teacher),
                teacher_accuracy=accuracies[cell.teacher],
                run_id=folder.name.rsplit("-", 1)[-1],
            )
        )
    return rows, missing


def rows_from_folders(folders: list[Path]) -> list[RunRow]:
    """Rows of every finished run under `folders`. A run's pair is its teacher and student; a
    run without a teacher joins every pair of its student on the same dataset (its baseline)."""
    found = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("results.json")):
            results = read_results(path.parent)
            if results is not None:
                found.append({**results, "run_dir": str(path.parent)})
    pairs = {
        (r["student"], r.get("dataset_name"), r["teacher"])
        for r in found
        if r.get("teacher") is not None
    }
    rows = []
    for results in found:
        teacher = results.get("teacher")
        if teacher is not None:
            groups = [teacher]
        else:
            groups = [
                t
                for s, d, t in sorted(pairs)
                if (s, d) == (results["student"], results.get("dataset_name"))
            ] or ["-"]
        for group in groups:
            pair = (
                f"{group} -> {results['student']}"
                if group != "-"
                else f"{results['student']} alone"
            )
            rows.append(
                _row(
                    "",
                    pair,
                    group,
                    results["method"],
                    results,
                    run_id=Path(results["run_dir"]).name,
                )
            )
    return rows


def summarise(rows: list[RunRow]) -> list[Summary]:
    groups: dict[tuple[str, str], Summary] = {}
    for row in rows:
        groups.setdefault((row.pair, row.method), Summary(row.pair, row.method)).rows.append(row)
    return list(groups.values())


# ---- files ---------------------------------------------------------------------------------


def write_csv(rows: list[RunRow], path: Path) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def _pair_png_name(pair: str) -> str:
    return f"pair-{slug(pair.replace('->', 'to'))}.png"


def plot_pair(summaries: list[Summary], teacher_acc: float | None, path: Path, title: str) -> None:
    """Methods x top-1: best and last (mean, error bar = std over seeds), each seed as a dot."""
    figure, axis = plt.subplots(figsize=(max(4.5, 1.1 * len(summaries) + 2), 3.8))
    positions = range(len(summaries))
    lows, highs = [], []
    for offset, key, label in ((-0.18, "best_accuracy", "best"), (0.18, "last_accuracy", "last")):
        means = [s.mean(key) for s in summaries]
        errors = [s.std(key) or 0.0 for s in summaries]
        axis.bar(
            [p + offset for p in positions],
            means,
            width=0.34,
            yerr=errors,
            capsize=3,
            label=f"{label} epoch",
            alpha=0.85,
        )
        for position, summary in zip(positions, summaries):
            axis.scatter(
                [position + offset] * summary.n, summary.values(key), s=9, color="black", zorder=3
            )
        lows += [v for s in summaries for v in s.values(key)]
        highs += [m + e for m, e in zip(means, errors)]
    if teacher_acc is not None:
        axis.axhline(teacher_acc, ls="--", color="grey", label=f"teacher {teacher_acc:.4f}")
        highs.append(teacher_acc)
    low, high = min(lows), max(highs)
    margin = max(0.01, 0.15 * (high - low))
    axis.set_ylim(max(0.0, low - margin), min(1.0, high + margin))
    axis.set_xticks(list(positions), [s.method for s in summaries], rotation=20)
    axis.set(ylabel="test top-1", title=title)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_overview(summaries: list[Summary], path: Path, title: str) -> None:
    """Every pair x method in one figure: best top-1 gain over the pair's CE run where the grid
    has one (pairs of different accuracy then share one axis), else best top-1 itself."""
    pairs = list(dict.fromkeys(s.pair for s in summaries))
    methods = list(dict.fromkeys(s.method for s in summaries))
    cell = {(s.pair, s.method): s for s in summaries}
    baseline = {p: cell[(p, "ce")].mean("best_accuracy") for p in pairs if (p, "ce") in cell}
    relative = len(baseline) == len(pairs)
    shown = [m for m in methods if not (relative and m == "ce")] or methods
    figure, axis = plt.subplots(figsize=(max(5.0, 0.9 * len(pairs) * len(shown) / 2 + 3), 4.0))
    width = 0.8 / max(1, len(shown))
    for index, method in enumerate(shown):
        xs, ys, errors = [], [], []
        for position, pair in enumerate(pairs):
            summary = cell.get((pair, method))
            if summary is None:
                continue
            value = summary.mean("best_accuracy") - (baseline[pair] if relative else 0.0)
            xs.append(position - 0.4 + width * (index + 0.5))
            ys.append(100 * value if relative else value)
            errors.append((100 if relative else 1) * (summary.std("best_accuracy") or 0.0))
        axis.bar(xs, ys, width=width, yerr=errors, capsize=2, label=method)
    if relative:
        axis.axhline(0.0, color="black", lw=0.8)
        axis.set(ylabel="best top-1 minus CE's (points)")
    else:
        values = [s.mean("best_accuracy") for s in summaries]
        axis.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.03))
        axis.set(ylabel="best test top-1")
    axis.set_xticks(range(len(pairs)), pairs, rotation=10)
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=7, ncol=min(4, len(shown)))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _environment(rows: list[RunRow]) -> list[list[str]]:
    import torch

    import mimkd

    devices = Counter(row.device for row in rows)
    versions = Counter(row.torch for row in rows)
    return [
        ["runs' devices", "; ".join(f"{name} ({count} runs)" for name, count in devices.items())],
        ["runs' torch", "; ".join(f"{name} ({count} runs)" for name, count in versions.items())],
        [
            "this report",
            f"mimkd {mimkd.__version__}, torch {torch.__version__}, Python "
            f"{sys.version.split()[0]}, {platform.platform()}",
        ],
    ]


def write_report(
    rows: list[RunRow],
    out: str | Path,
    *,
    title: str,
    intro: list[str] | None = None,
    teachers: list[list[str]] | None = None,
) -> Path:
    """results.csv, summary.json, report.md and the PNGs into `out`; returns report.md's path."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv")
    summaries = summarise(rows)
    (out / "summary.json").write_text(json.dumps([s.to_dict() for s in summaries], indent=1))
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        f"# {title}",
        *(intro or []),
        f"Written {stamp}. Every figure below is recomputed from the runs' results.json; `results.csv` has one row per run.",
    ]
    if not rows:
        parts.append("No finished runs yet.")
        (out / "report.md").write_text("\n\n".join(parts) + "\n")
        return out / "report.md"
    pairs = list(dict.fromkeys(row.pair for row in rows))
    methods = list(dict.fromkeys(row.method for row in rows))
    by_cell = {(s.pair, s.method): s for s in summaries}
    parts += [
        "## Summary: best top-1 (mean ± std over seeds; n seeds)",
        markdown_table(
            ["method", *pairs],
            [
                [
                    method,
                    *(
                        f"{by_cell[(p, method)].text('best_accuracy')} (n={by_cell[(p, method)].n})"
                        if (p, method) in by_cell
                        else "-"
                        for p in pairs
                    ),
                ]
                for method in methods
            ],
        ),
        "## Summary: last-epoch top-1",
        markdown_table(
            ["method", *pairs],
            [
                [
                    method,
                    *(
                        by_cell[(p, method)].text("last_accuracy")
                        if (p, method) in by_cell
                        else "-"
                        for p in pairs
                    ),
                ]
                for method in methods
            ],
        ),
    ]
    plot_overview(summaries, out / "overview.png", title)
    parts.append("![overview](overview.png)")
    for pair in pairs:
        mine = [s for s in summaries if s.pair == pair]
        first = mine[0].rows[0]
        sha = first.teacher_sha256 or "-"
        acc = first.teacher_accuracy
        parts.append(f"## {pair}")
        parts.append(
            f"Teacher `{first.teacher}`: test top-1 {acc:.4f}, SHA-256 `{sha}`."
            if acc is not None
            else f"Teacher `{first.teacher}`: SHA-256 `{sha}`."
        )
        parts.append(
            markdown_table(
                [
                    "method",
                    "n",
                    "best top-1",
                    "last top-1",
                    "best epoch (mean)",
                    "wall s / run",
                    "runs",
                ],
                [
                    [
                        s.method,
                        s.n,
                        s.text("best_accuracy"),
                        s.text("last_accuracy"),
                        f"{s.mean('best_epoch'):.1f} of {s.rows[0].epochs}",
                        f"{s.mean('wall_seconds'):.0f}",
                        " ".join(f"[s{r.seed}]({_link(r.run_dir, out)})" for r in s.rows),
                    ]
                    for s in mine
                ],
            )
        )
        png = _pair_png_name(pair)
        plot_pair(mine, acc, out / png, pair)
        parts.append(f"![{pair}]({png})")
    if teachers:
        parts += [
            "## Teachers",
            markdown_table(
                ["teacher", "model", "source", "test top-1", "SHA-256", "wall s"], teachers
            ),
        ]
    total = sum(row.wall_seconds for row in {row.run_dir: row for row in rows}.values())
    parts += [
        "## Hardware, versions, time",
        markdown_table(
            ["", ""], [*_environment(rows), ["sum of the runs' wall times", f"{total:.0f} s"]]
        ),
        "Files: `results.csv` (one row per run), `summary.json` (these means and stds, unrounded), "
        "one PNG per pair, `overview.png`; each run's own folder holds its report.md, "
        "metrics.jsonl, config.yaml and checkpoints.",
    ]
    path = out / "report.md"
    path.write_text("\n\n".join(parts) + "\n")
    return path


def _link(run_dir: str, out: Path) -> str:
    return Path(os.path.relpath(Path(run_dir) / "report.md", out)).as_posix()


def teacher_rows(plan: Plan) -> list[list[str]]:
    rows = []
    for teacher in plan.teachers.values():
        results = teacher_finished(teacher)
        sha = plan.teacher_sha256(teacher.key) or "(not trained yet)"
        if teacher.kind == "recipe":
            accuracy = f"{results['best_accuracy']:.4f}" if results else "-"
            wall = f"{results['wall_seconds']:.0f}" if results else "-"
            source = (
                f"recipe `{teacher.source}`, trained in `{_relative(teacher.folder, plan.out)}`"
            )
        else:
            found = teacher_accuracy(plan, teacher.key)
            accuracy, wall = (f"{found:.4f}" if found is not None else "-"), "-"
            source = f"checkpoint `{teacher.source}`"
        rows.append([teacher.key, teacher.model or "-", source, accuracy, sha, wall])
    return rows


def _relative(path: str | None, root: str) -> str:
    return Path(os.path.relpath(path, root)).as_posix() if path else "-"
