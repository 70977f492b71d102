"""What an estimate looks like to a person (`format_estimate`) and on disk (`write_estimate`).

Output folders are checked before any work starts (`check_output_dir`), and every file is written
to a temporary name in the same folder and renamed over the target: a crash or a full disk never
leaves half a file, and an earlier good `mi.json` is replaced only by a complete new one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import BinaryIO

from mimkd.errors import ConfigError
from mimkd.estimate.core import MIEstimate
from mimkd.serialization import atomic_write, atomic_write_text


def check_output_dir(out_dir: str | Path, flag: str = "--out") -> Path:
    """Create `out_dir` if needed and prove a file can be written there; ConfigError if not."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{flag} {out_dir} is a file, not a folder; choose a folder.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-check-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            f"cannot write to {flag} {out_dir} ({reason}); choose a writable folder with {flag}."
        ) from None
    return out_dir


def write_estimate(result: MIEstimate, out_dir: str | Path) -> dict[str, Path]:
    """Write `mi.json` (`MIEstimate.summary()`) and, for a trained critic, `mi_curve.png`."""
    out_dir = check_output_dir(out_dir)
    files = {
        "json": atomic_write_text(
            out_dir / "mi.json", json.dumps(result.summary(), indent=2) + "\n", "--out file"
        )
    }
    if result.history:
        files["curve"] = atomic_write(
            out_dir / "mi_curve.png", lambda file: _plot_curve(result, file), "--out file"
        )
    return files


def _plot_curve(result: MIEstimate, file: BinaryIO) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    steps, train_bound, heldout_bound = zip(*result.history)
    axis.plot(steps, train_bound, label="train batches", alpha=0.7)
    axis.plot(steps, heldout_bound, label="held-out", linewidth=2)
    if result.best_step:
        axis.axvline(result.best_step, color="black", linestyle=":", label="critic used")
    axis.axhspan(result.ci_low, result.ci_high, color="grey", alpha=0.2, label="final interval")
    axis.set_xlabel("critic step")
    # a curve under the closed form is `auto`'s InfoNCE critic, which found nothing beyond it
    trained = "infonce" if result.estimator == "gaussian" else result.estimator
    axis.set_ylabel(f"{trained} bound (nats)")
    axis.set_title(
        f"I = {result.mi_nats:.3f} nats [{result.ci_low:.3f}, {result.ci_high:.3f}]"
        + (" (Gaussian-copula closed form)" if result.estimator == "gaussian" else "")
    )
    axis.legend()
    figure.tight_layout()
    figure.savefig(file, dpi=120, format="png")
    plt.close(figure)


def format_estimate(result: MIEstimate) -> str:
    """The human-readable report `mimkd mi estimate` prints (warnings go to stderr separately)."""
    chosen = result.estimator
    if result.requested == "auto":
        chosen = f"{result.estimator} (auto: {result.reason})"
    details = result.details
    if result.estimator == "ksg":
        method = f"k = {details.get('neighbours')} neighbours"
        rows = f"{result.n} pairs, all used (KSG trains nothing)"
    elif result.estimator == "gaussian":
        method = "closed form from the correlations of the normal scores (bias-corrected)"
        rows = f"{result.n} pairs, all used (the closed form trains nothing)"
    else:
        method = f"{details.get('critic')} critic, width {details.get('hidden')}"
        if details.get("gaussian_base"):
            method = f"Gaussian (canonical) critic + {method} residual"
        shown = {"squares": "[x, x^2 - 1]", "energy": "log mean x^2"}
        chosen_inputs = [shown[name] for name in details.get("inputs", []) if name in shown]
        if chosen_inputs:
            method += f" on {'/'.join(chosen_inputs)} (validation chose)"
        method += (
            f", weight decay {details.get('weight_decay')}, steps "
            f"{'/'.join(map(str, details.get('best_steps', [])))} of {details.get('steps')} "
            "kept by validation"
        )
        if details.get("ensemble", 1) > 1:
            method += f", mean of {details['ensemble']} critics"
        folds = details.get("folds", 1)
        per_fold = (
            f"{result.n_train} train the critic, {result.n_validation} choose its step, "
            f"{result.n_eval // folds} evaluate (each against {result.negatives_per_row} negatives)"
        )
        if folds > 1:
            rows = (
                f"{result.n} pairs in {folds} halves, each in turn: {per_fold}; all "
                f"{result.n_eval} evaluated once"
            )
        else:
            rows = f"{result.n} pairs: {per_fold}"
    level = f"{100 * result.confidence:g}%"
    lines = [
        f"estimator   {chosen}",
        f"            {method}",
        f"preprocess  {result.preprocess}",
        f"rows        {rows}",
        f"MI          {result.mi_nats:.4f} nats",
        f"{level} interval [{result.ci_low:.4f}, {result.ci_high:.4f}]: {result.interval}",
        f"ceiling     {result.ceiling:.2f} nats (the most this estimator can report here)",
        f"seconds     {result.seconds:.1f}",
    ]
    return "\n".join(lines)


__all__ = [
    "check_output_dir",
    "format_estimate",
    "write_estimate",
]
