"""Run reports a person would rather look at than logs: Markdown + PNG curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

import matplotlib

from mimkd.serialization import atomic_write, atomic_write_text

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(
    histories: dict[str, list[dict]], path: str | Path | BinaryIO, title: str = ""
) -> None:
    """Test accuracy, train loss and any MI bounds per epoch, one line per run."""
    has_bounds = any(k.startswith("bound_") for h in histories.values() for r in h for k in r)
    panels = 3 if has_bounds else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    for label, history in histories.items():
        if not history:
            continue
        epochs = [r["epoch"] for r in history]
        (line,) = axes[0].plot(epochs, [r["test_top1"] for r in history], label=f"{label} test")
        axes[0].plot(
            epochs, [r["train_top1"] for r in history], ls="--", color=line.get_color(), alpha=0.6
        )
        axes[1].plot(
            epochs, [r["train_loss"] for r in history], label=label, color=line.get_color()
        )
        if has_bounds:
            for key in sorted({k for r in history for k in r if k.startswith("bound_")}):
                axes[2].plot(
                    epochs,
                    [r.get(key, float("nan")) for r in history],
                    label=f"{label} {key[6:]}",
                    color=line.get_color(),
                    ls="-" if "global" in key else ":",
                )
    axes[0].set(
        xlabel="epoch", ylabel="top-1 accuracy", title="accuracy (solid test, dashed train)"
    )
    axes[1].set(xlabel="epoch", ylabel="training loss", title="loss")
    if has_bounds:
        axes[2].set(
            xlabel="epoch", ylabel="JSD bound (-2 log 2 at chance, 0 best)", title="MI lower bound"
        )
        axes[2].legend(fontsize=7)
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_run_report(run_dir: str | Path, results: dict, history: list[dict]) -> None:
    """curves.png, report.md, then results.json: each written atomically, results.json last, so
    a run whose results.json exists has a whole report (a kill before it: resuming rewrites all)."""
    run_dir = Path(run_dir)
    atomic_write(
        run_dir / "curves.png",
        lambda file: plot_curves({results["method"]: history}, file, title=results["title"]),
    )
    summary = [
        ["method", results["method"]],
        ["student", f"{results['student']} ({results['student_parameters']:,} parameters)"],
        ["extra training parameters (critics/adapters)", f"{results['extra_parameters']:,}"],
        ["teacher", results.get("teacher") or "-"],
        [
            "teacher accuracy",
            results.get("teacher_accuracy") if results.get("teacher_accuracy") is not None else "-",
        ],
        ["teacher SHA-256", results.get("teacher_sha256") or "-"],
        ["dataset", results["dataset"]],
        ["data files", _data_files(results)],
        ["best test top-1 (epoch)", f"{results['best_accuracy']:.4f} ({results['best_epoch']})"],
        ["last test top-1", f"{results['last_accuracy']:.4f}"],
        ["wall time", f"{results['wall_seconds']:.1f} s"],
        ["device", results["device"]],
    ]
    # methods with stages (AB, FT, FSP) log different terms per stage: take keys from every epoch
    metric_keys = list(
        dict.fromkeys(k for r in history for k in r if k.startswith(("loss_", "bound_", "critic_")))
    )
    epoch_rows = [
        [r["epoch"], r["train_loss"], r["train_top1"], r["test_top1"], r["test_top5"]]
        + [r.get(k, "-") for k in metric_keys]
        for r in history
    ]
    text = "\n\n".join(
        [
            f"# {results['title']}",
            markdown_table(["", ""], summary),
            "![curves](curves.png)",
            "## Per epoch",
            markdown_table(
                ["epoch", "train loss", "train top-1", "test top-1", "test top-5", *metric_keys],
                epoch_rows,
            ),
            "Files: `config.yaml` (the exact config), `metrics.jsonl` (every logged value), "
            "`last.pt` / `best.pt` (checkpoints, resumable), `results.json`.",
        ]
    )
    atomic_write_text(run_dir / "report.md", text + "\n")
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))


def _data_files(results: dict) -> str:
    """The files the data came from, with their SHA-256 (first 12 hex digits here)."""
    files = results.get("data_files") or []
    if not files:
        return results.get("data_source") or "-"
    return ", ".join(
        f"{file['path']} ({file['sha256'][:12]})" if file.get("sha256") else str(file["path"])
        for file in files
    )
