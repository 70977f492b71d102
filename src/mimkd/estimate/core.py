"""Estimate mutual information in nats: a fresh critic, a train/held-out split, a bootstrap CI.

This is the measuring tool, not the training loss. A critic is trained on one split of the pairs
and the bound is evaluated on the other (a bound evaluated on the critic's own training pairs
over-estimates by memorisation). The interval resamples held-out rows: each row contributes its
positive score and its scores against every negative column, so a resample recomputes the bound
without re-scoring. Estimators (`ESTIMATORS`, names are public API):

- "infonce": trained and evaluated with InfoNCE; low variance, but never above log(K + 1) for K
  negatives per row (about log(eval_negatives + 1)): it saturates on high MI.
- "nwj", "dv": trained and evaluated with that bound (DV with the plain, biased minibatch gradient).
- "mine": DV with MINE's moving-average gradient correction (Belghazi et al. 2018).
- "smile": critic trained with the JSD gradient, evaluated with clipped DV, tau = `smile_clip`
  (Song & Ermon 2020).
- "jsd-dv" / "jsd-nwj": critic trained with the JSD objective (as MIMKD's critics are), evaluated
  with DV / NWJ (NWJ needs the score shifted by +1: the JSD-optimal critic is log p/(p_x p_y)).

Inputs are standardised with the train split's statistics (MI is invariant to invertible maps).
The critic evaluated is the one with the best bound on a validation part of the train split (early
stopping): a critic trained on finite data memorises its pairs and its held-out bound then falls.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mimkd.errors import ConfigError, DataError, ShapeError
from mimkd.features import FeatureExtractor, TapSet, as_locations, discover_taps, flatten_vector
from mimkd.mi import bounds
from mimkd.mi.critics import build_critic
from mimkd.registry import Registry


@dataclass(frozen=True)
class EstimatorSpec:
    """How an estimator trains its critic (`train`) and which bound it reports (`evaluate`)."""

    name: str
    train: str  # "infonce" | "nwj" | "dv" | "mine" | "jsd"
    evaluate: str  # "infonce" | "nwj" | "dv" | "smile"
    score_shift: float = 0.0


ESTIMATORS: Registry[EstimatorSpec] = Registry("MI estimator", "mimkd mi estimate --help")


def _register(name: str, train: str, evaluate: str, description: str, shift: float = 0.0) -> None:
    spec = EstimatorSpec(name, train, evaluate, shift)
    ESTIMATORS.register(name, description=description)(lambda: spec)


_register("infonce", "infonce", "infonce", "InfoNCE (van den Oord et al. 2018); <= log(K+1)")
_register("nwj", "nwj", "nwj", "NWJ f-divergence bound (Nguyen, Wainwright, Jordan 2010)")
_register("dv", "dv", "dv", "Donsker-Varadhan bound, plain minibatch gradient")
_register("mine", "mine", "dv", "MINE: DV with the moving-average gradient (Belghazi et al. 2018)")
_register("smile", "jsd", "smile", "SMILE: JSD-trained critic, clipped DV (Song & Ermon 2020)")
_register("jsd-dv", "jsd", "dv", "critic trained with JSD (Deep InfoMax), evaluated with DV")
_register("jsd-nwj", "jsd", "nwj", "critic trained with JSD, evaluated with NWJ (score + 1)", 1.0)


def estimator_names() -> list[str]:
    return ESTIMATORS.names()


@dataclass
class MIEstimate:
    """An MI estimate in nats with its bootstrap interval and the critic's training curve."""

    mi_nats: float
    ci_low: float
    ci_high: float
    estimator: str
    n: int
    seconds: float
    n_heldout: int = 0
    negatives_per_row: int = 0
    best_step: int = 0  # the step whose critic (best validation bound) was evaluated
    # (step, bound on the training batches since the last point, bound on held-out rows)
    history: list[tuple[int, float, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The fields `mi.json` holds."""
        keys = ("mi_nats", "ci_low", "ci_high", "estimator", "n", "seconds")
        return {key: asdict(self)[key] for key in keys}


# ---- loading pairs ------------------------------------------------------------------------------


def load_pairs(
    path: str | Path, x_key: str | None = None, y_key: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read paired samples (x_i, y_i) as two float32 tensors [N, D_x], [N, D_y].

    Accepted forms (keys default to "x" and "y"):
    - `data.npz`: arrays under `x_key` / `y_key`;
    - `data.pt` / `data.pth`: a dict of tensors or arrays, loaded with `weights_only=True`;
    - `a.npy,b.npy`: two .npy files, x first;
    - a directory holding `<x_key>.npy` and `<y_key>.npy`.
    Rows beyond the first dimension are flattened ([N, C, H, W] -> [N, C*H*W]); 1-D arrays are one
    feature. Missing or unreadable files, missing keys, non-numeric or non-finite values and
    different row counts raise DataError.
    """
    x_key = x_key or "x"
    y_key = y_key or "y"
    text = str(path)
    if "," in text:
        parts = [part.strip() for part in text.split(",")]
        if len(parts) != 2 or not all(parts):
            raise DataError(f"expected two .npy files as 'x.npy,y.npy', got {text!r}.")
        x, y = _load_npy(Path(parts[0])), _load_npy(Path(parts[1]))
        return _as_pair(x, y, parts[0], parts[1])
    path = Path(text)
    if not path.exists():
        raise DataError(
            f"{path} does not exist. Pass an .npz or .pt file with arrays {x_key!r} and {y_key!r}, "
            "two .npy files as 'x.npy,y.npy', or a directory holding x.npy and y.npy."
        )
    if path.is_dir():
        x_path, y_path = path / f"{x_key}.npy", path / f"{y_key}.npy"
        return _as_pair(_load_npy(x_path), _load_npy(y_path), str(x_path), str(y_path))
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = _load_npz(path)
    elif suffix in (".pt", ".pth"):
        arrays = _load_torch(path)
    elif suffix == ".npy":
        raise DataError(
            f"{path} is a single array; MI needs pairs: pass 'x.npy,y.npy' or a directory with "
            "x.npy and y.npy."
        )
    else:
        raise DataError(f"{path}: unknown format {suffix!r}; use .npz, .pt, or 'x.npy,y.npy'.")
    missing = [key for key in (x_key, y_key) if key not in arrays]
    if missing:
        raise DataError(
            f"{path} has no {' or '.join(map(repr, missing))}; it holds {sorted(arrays)}. "
            "Choose the arrays with --x-key/--y-key."
        )
    return _as_pair(arrays[x_key], arrays[y_key], f"{path}[{x_key}]", f"{path}[{y_key}]")


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected a .npy array of shape [N, ...].")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path} is not a readable .npy file ({error}); re-save it.") from None


def _load_npz(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path} is not a readable .npz file ({error}); re-save it.") from None


def _load_torch(path: Path) -> dict[str, Any]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle/zip/runtime errors for corrupt files
        raise DataError(
            f"{path} is not a readable tensor file ({type(error).__name__}); save a dict of "
            "tensors with torch.save({'x': x, 'y': y}, path)."
        ) from None
    if not isinstance(loaded, dict):
        raise DataError(
            f"{path} holds a {type(loaded).__name__}, not a dict; save "
            "torch.save({'x': x, 'y': y}, path)."
        )
    return loaded


def _as_matrix(values: Any, name: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(values) if not torch.is_tensor(values) else values)
    except (TypeError, ValueError) as error:
        raise DataError(f"{name} is not a numeric array ({error}).") from None
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise DataError(f"{name} has dtype {tensor.dtype}; expected numbers.")
    if tensor.dim() == 0:
        raise DataError(f"{name} is a scalar; expected one row per sample.")
    tensor = tensor.detach().to(torch.float32)
    tensor = tensor[:, None] if tensor.dim() == 1 else tensor.reshape(tensor.shape[0], -1)
    if not torch.isfinite(tensor).all():
        raise DataError(f"{name} contains NaN or Inf; clean the data first.")
    return tensor


def _as_pair(
    x: Any, y: Any, x_name: str = "x", y_name: str = "y"
) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_matrix(x, x_name), _as_matrix(y, y_name)
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"{x_name} has {x.shape[0]} rows but {y_name} has {y.shape[0]}; row i of each must be "
            "the same sample."
        )
    return x, y


# ---- scoring ------------------------------------------------------------------------------------


def _train_objective(
    spec: EstimatorSpec, scores: torch.Tensor, dv_average: bounds.DVMovingAverage
) -> torch.Tensor:
    """The bound whose gradient trains the critic, from a batch score matrix [B, B]."""
    if spec.train == "infonce":
        return bounds.infonce_bound(scores)
    positives, negatives = bounds.diagonal_split(scores)
    if spec.train == "nwj":
        return bounds.nwj_bound(positives, negatives)
    if spec.train == "dv":
        return bounds.dv_bound(positives, negatives)
    if spec.train == "mine":
        return dv_average(positives, negatives)
    return bounds.jsd_bound(positives, negatives)


@dataclass
class _RowStatistics:
    """Per held-out row: its positive score and summaries of its scores against negatives."""

    positive: torch.Tensor  # [n]
    negative_logsumexp: torch.Tensor  # [n]
    clipped_logsumexp: torch.Tensor  # [n]
    negative_count: torch.Tensor  # [n]


def _bound_from_rows(
    spec: EstimatorSpec, rows: _RowStatistics, index: torch.Tensor
) -> torch.Tensor:
    """The evaluation bound over the rows in `index` ([R, n] for R bootstrap resamples)."""
    positive = rows.positive[index]
    negative_lse = rows.negative_logsumexp[index]
    total_negatives = rows.negative_count[index].sum(-1)
    if spec.evaluate == "infonce":
        candidates_lse = torch.logaddexp(positive, negative_lse)
        per_row = positive - candidates_lse + torch.log(rows.negative_count[index] + 1)
        return per_row.mean(-1)
    if spec.evaluate == "nwj":
        log_partition = torch.logsumexp(negative_lse - 1.0, dim=-1) - torch.log(total_negatives)
        return positive.mean(-1) - torch.exp(log_partition)
    lse = negative_lse if spec.evaluate == "dv" else rows.clipped_logsumexp[index]
    return positive.mean(-1) - (torch.logsumexp(lse, dim=-1) - torch.log(total_negatives))


@torch.no_grad()
def _row_statistics(
    spec: EstimatorSpec,
    critic: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor,
    columns: torch.Tensor,
    smile_clip: float,
    chunk_pairs: int = 2_000_000,
) -> _RowStatistics:
    """Score x[rows] against y[rows] (positives) and against y[columns] except itself (negatives).

    Runs in eval mode (BatchNorm uses its running statistics). The score shift is added after the
    log-sum-exp (it commutes), so the [rows, columns] matrix is touched as few times as possible.
    """
    shift = spec.score_shift
    was_training = critic.training
    critic.eval()
    try:
        encoded_x = critic.encode_a(x[rows])
        positive = critic.pair_scores(encoded_x, critic.encode_b(y[rows])).float()
        encoded_columns = critic.encode_b(y[columns])
        chunk = max(1, chunk_pairs // max(1, len(columns)))
        lse, clipped, counts = [], [], []
        for start in range(0, len(rows), chunk):
            part = slice(start, start + chunk)
            scores = critic.matrix_scores(encoded_x[part], encoded_columns).float()
            is_self = rows[part, None] == columns[None, :]
            counts.append(len(columns) - is_self.sum(1).float())
            if spec.evaluate == "smile":
                clipped_scores = scores.clamp(-smile_clip - shift, smile_clip - shift)
                clipped.append(torch.logsumexp(clipped_scores.masked_fill(is_self, -math.inf), 1))
            lse.append(torch.logsumexp(scores.masked_fill_(is_self, -math.inf), dim=1))
    finally:
        critic.train(was_training)
    negative_lse = torch.cat(lse) + shift
    clipped_lse = torch.cat(clipped) + shift if clipped else negative_lse
    return _RowStatistics(positive + shift, negative_lse, clipped_lse, torch.cat(counts))


# ---- the estimator ------------------------------------------------------------------------------


def estimate_mi(
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    estimator: str = "infonce",
    *,
    critic: str = "separable",
    hidden: int = 256,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    train_fraction: float = 0.5,
    validation_fraction: float = 0.2,
    bootstrap: int = 200,
    confidence: float = 0.95,
    eval_negatives: int = 4096,
    smile_clip: float = 5.0,
    eval_every: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> MIEstimate:
    """Estimate I(X; Y) in nats from paired rows x [N, ...], y [N, ...].

    Trains a fresh critic (`critic` "separable" | "concat", width `hidden`) with Adam for `steps`
    minibatches of `batch_size` train rows, scoring all B x B pairs of a batch. A critic trained on
    finitely many pairs memorises them and its held-out bound then falls (even below 0), so
    `validation_fraction` of the train rows are kept aside and the critic state with the best
    validation bound (checked every `eval_every` steps) is the one evaluated: early stopping.
    The reported bound uses the held-out rows (1 - `train_fraction` of them), each against up to
    `eval_negatives` other held-out rows; [ci_low, ci_high] is the `confidence` percentile
    interval over `bootstrap` resamples of held-out rows (0: the interval collapses to the
    estimate); it covers evaluation noise, not the critic's training noise. `seed` fixes the
    split, the batches and the critic's initialisation.
    """
    spec = ESTIMATORS.create(estimator)
    _check_options(
        train_fraction,
        validation_fraction,
        confidence,
        steps,
        batch_size,
        bootstrap,
        eval_negatives,
    )
    x_rows, y_rows = _as_pair(x, y)
    n = x_rows.shape[0]
    n_train = int(round(n * train_fraction))
    n_validation = int(round(n_train * validation_fraction)) if validation_fraction > 0 else 0
    n_validation = max(n_validation, 2) if validation_fraction > 0 else 0
    n_fit = n_train - n_validation
    if n_fit < 2 or n - n_train < 2:
        raise DataError(
            f"{n} pairs leave {n_fit} to train the critic and {n - n_train} to evaluate; need at "
            "least 2 each (use a few thousand pairs for a useful estimate)."
        )
    device = torch.device(device) if device is not None else x_rows.device
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    fit_index, validation_index = order[:n_fit], order[n_fit:n_train]
    heldout_index = order[n_train:]
    mean_x, std_x = x_rows[fit_index].mean(0), x_rows[fit_index].std(0).clamp_min(1e-8)
    mean_y, std_y = y_rows[fit_index].mean(0), y_rows[fit_index].std(0).clamp_min(1e-8)
    x_rows = ((x_rows - mean_x) / std_x).to(device)
    y_rows = ((y_rows - mean_y) / std_y).to(device)

    def split(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = index.to(device)
        return x_rows[index], y_rows[index]

    x_fit, y_fit = split(fit_index)
    x_validation, y_validation = split(validation_index)
    x_heldout, y_heldout = split(heldout_index)
    n_heldout = x_heldout.shape[0]
    columns = _columns(n_heldout, eval_negatives, generator).to(device)
    curve_rows = torch.arange(min(n_heldout, 512), device=device)
    validation_rows = torch.arange(min(n_validation, 1024), device=device)
    validation_columns = _columns(n_validation, eval_negatives, generator).to(device)
    batch_size = min(batch_size, n_fit)
    eval_every = eval_every or max(1, steps // 20)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic_module = build_critic(critic, x_rows.shape[1], y_rows.shape[1], hidden).to(device)
    dv_average = bounds.DVMovingAverage().to(device)
    optimizer = torch.optim.Adam(critic_module.parameters(), lr=lr)

    def bound_on(x_part, y_part, rows, part_columns) -> float:
        statistics = _row_statistics(
            spec, critic_module, x_part, y_part, rows, part_columns, smile_clip
        )
        everything = torch.arange(len(rows), device=device)
        return float(_bound_from_rows(spec, statistics, everything))

    history: list[tuple[int, float, float]] = []
    best_validation, best_step, best_state = -math.inf, 0, None
    running = torch.zeros((), device=device, dtype=torch.float64)
    running_count = 0
    started = time.perf_counter()
    bar = _progress_bar(steps, f"mi {estimator}", progress)
    critic_module.train()
    for step in range(1, steps + 1):
        batch = torch.randint(n_fit, (batch_size,), generator=generator).to(device)
        encoded_x = critic_module.encode_a(x_fit[batch])
        encoded_y = critic_module.encode_b(y_fit[batch])
        scores = critic_module.matrix_scores(encoded_x, encoded_y)
        loss = -_train_objective(spec, scores, dv_average)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            running += _batch_bound(spec, scores.detach() + spec.score_shift, smile_clip)
            running_count += 1
        if step % eval_every == 0 or step == steps:
            heldout = bound_on(x_heldout, y_heldout, curve_rows, columns)
            history.append((step, float(running) / running_count, heldout))
            running.zero_()
            running_count = 0
            if n_validation:
                validation = bound_on(
                    x_validation, y_validation, validation_rows, validation_columns
                )
                # NaN (a diverged critic) never counts as best
                if validation > best_validation:
                    best_validation, best_step = validation, step
                    best_state = copy.deepcopy(critic_module.state_dict())
            if bar is not None:
                bar.set_postfix(heldout=f"{heldout:.3f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if best_state is not None:
        critic_module.load_state_dict(best_state)
    else:
        best_step = steps

    everything = torch.arange(n_heldout, device=device)
    rows = _row_statistics(
        spec, critic_module, x_heldout, y_heldout, everything, columns, smile_clip
    )
    estimate = float(_bound_from_rows(spec, rows, everything))
    ci_low = ci_high = estimate
    if bootstrap > 0:
        resample = torch.randint(n_heldout, (bootstrap, n_heldout), generator=generator)
        values = _bound_from_rows(spec, rows, resample.to(device))
        tail = (1.0 - confidence) / 2.0
        levels = torch.tensor([tail, 1.0 - tail], dtype=values.dtype, device=values.device)
        ci_low, ci_high = (float(value) for value in torch.quantile(values, levels))
    return MIEstimate(
        mi_nats=estimate,
        ci_low=ci_low,
        ci_high=ci_high,
        estimator=estimator,
        n=n,
        seconds=time.perf_counter() - started,
        n_heldout=n_heldout,
        negatives_per_row=int(rows.negative_count.min()),
        best_step=best_step,
        history=history,
    )


def _columns(n_rows: int, eval_negatives: int, generator: torch.Generator) -> torch.Tensor:
    """The candidate negatives of an evaluation: every row, or a fixed random subset."""
    if n_rows <= eval_negatives + 1:
        return torch.arange(n_rows)
    return torch.randperm(n_rows, generator=generator)[:eval_negatives].sort().values


def _check_options(
    train_fraction: float,
    validation_fraction: float,
    confidence: float,
    steps: int,
    batch_size: int,
    bootstrap: int,
    eval_negatives: int,
) -> None:
    problems = []
    if not 0.0 < train_fraction < 1.0:
        problems.append(f"train_fraction must be in (0, 1), got {train_fraction}")
    if not 0.0 <= validation_fraction < 1.0:
        problems.append(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if not 0.0 < confidence < 1.0:
        problems.append(f"confidence must be in (0, 1), got {confidence}")
    if steps < 1:
        problems.append(f"steps must be at least 1, got {steps}")
    if batch_size < 2:
        problems.append(
            f"batch_size must be at least 2 (negatives come from the batch), got {batch_size}"
        )
    if bootstrap < 0:
        problems.append(f"bootstrap must be 0 or more, got {bootstrap}")
    if eval_negatives < 1:
        problems.append(f"eval_negatives must be at least 1, got {eval_negatives}")
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def _batch_bound(spec: EstimatorSpec, scores: torch.Tensor, smile_clip: float) -> torch.Tensor:
    """The evaluation bound on a training batch's score matrix (for the curve)."""
    if spec.evaluate == "infonce":
        return bounds.infonce_bound(scores)
    positives, negatives = bounds.diagonal_split(scores)
    if spec.evaluate == "nwj":
        return bounds.nwj_bound(positives, negatives)
    if spec.evaluate == "dv":
        return bounds.dv_bound(positives, negatives)
    return bounds.smile_bound(positives, negatives, clip=smile_clip)


def _progress_bar(total: int, description: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, file=sys.stderr, leave=False, dynamic_ncols=True)


def write_estimate(result: MIEstimate, out_dir: str | Path) -> dict[str, Path]:
    """Write `mi.json` (mi_nats, ci_low, ci_high, estimator, n, seconds) and `mi_curve.png`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "mi.json"
    json_path.write_text(json.dumps(result.summary(), indent=2) + "\n")
    curve_path = out_dir / "mi_curve.png"

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    if result.history:
        steps, train_bound, heldout_bound = zip(*result.history)
        axis.plot(steps, train_bound, label="train batches", alpha=0.7)
        axis.plot(steps, heldout_bound, label="held-out", linewidth=2)
    if result.best_step:
        axis.axvline(result.best_step, color="black", linestyle=":", label="critic used")
    axis.axhspan(result.ci_low, result.ci_high, color="grey", alpha=0.2, label="final CI")
    axis.set_xlabel("critic step")
    axis.set_ylabel(f"{result.estimator} bound (nats)")
    axis.set_title(f"I = {result.mi_nats:.3f} nats [{result.ci_low:.3f}, {result.ci_high:.3f}]")
    axis.legend()
    figure.tight_layout()
    figure.savefig(curve_path, dpi=120)
    plt.close(figure)
    return {"json": json_path, "curve": curve_path}


# ---- layer by layer -----------------------------------------------------------------------------


@dataclass
class LayerMIRow:
    """One row of the layer table: which taps were paired and the MI between their features."""

    teacher_layer: str
    student_layer: str
    teacher_dim: int
    student_dim: int
    mi_nats: float
    ci_low: float
    ci_high: float
    estimator: str
    n: int


def pair_by_depth(teacher_stages: Sequence[str], student_stages: Sequence[str]) -> list[tuple]:
    """Pair each student stage with the teacher stage at the nearest relative depth (k+1)/n.

    Depth is relative so a 3-stage student pairs with a 4-stage teacher end to end; ties go to
    the deeper teacher stage.
    """
    pairs = []
    for k, student_stage in enumerate(student_stages):
        depth = (k + 1) / len(student_stages)
        distances = [abs((j + 1) / len(teacher_stages) - depth) for j in range(len(teacher_stages))]
        best = min(range(len(teacher_stages)), key=lambda j: (round(distances[j], 9), -j))
        pairs.append((teacher_stages[best], student_stage))
    return pairs


@torch.no_grad()
def collect_features(
    model: nn.Module,
    paths: Sequence[str],
    batches: Iterable[Any] | torch.Tensor,
    *,
    max_samples: int = 4096,
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Globally pooled features [N, C] per tap over up to `max_samples` images (eval mode)."""
    extractor = FeatureExtractor(model, paths)
    was_training = model.training
    model.eval()
    collected: dict[str, list[torch.Tensor]] = {path: [] for path in paths}
    seen = 0
    try:
        for images in _image_batches(batches):
            if seen >= max_samples:
                break
            images = images[: max_samples - seen]
            if device is not None:
                images = images.to(device)
            _, features = extractor(images)
            for path, tensor in features.items():
                collected[path].append(_pool(tensor).float().cpu())
            seen += images.shape[0]
    finally:
        extractor.remove()
        model.train(was_training)
    if seen == 0:
        raise DataError("no images reached the models; the loader or tensor was empty.")
    return {path: torch.cat(chunks) for path, chunks in collected.items()}


def _pool(tensor: torch.Tensor) -> torch.Tensor:
    """Vectors stay; maps and token sequences are averaged over their locations."""
    if tensor.dim() in (3, 4):
        return as_locations(tensor).mean(1)
    return flatten_vector(tensor)


def _image_batches(batches: Iterable[Any] | torch.Tensor, chunk: int = 256):
    if torch.is_tensor(batches):
        yield from batches.split(chunk)
        return
    for batch in batches:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        elif isinstance(batch, dict):
            batch = batch.get("images", batch.get("image"))
        if not torch.is_tensor(batch):
            raise DataError(
                "layer MI expects batches of image tensors or (images, labels, ...) tuples; got "
                f"{type(batch).__name__}."
            )
        yield batch


def default_layer_pairs(teacher_taps: TapSet, student_taps: TapSet) -> list[tuple[str, str]]:
    """Stages paired by relative depth, then the penultimate vectors."""
    teacher_stages = teacher_taps.stages or [teacher_taps.last_map]
    student_stages = student_taps.stages or [student_taps.last_map]
    pairs = pair_by_depth(teacher_stages, student_stages)
    return [*pairs, (teacher_taps.penultimate, student_taps.penultimate)]


def layer_mi(
    teacher: nn.Module,
    student: nn.Module,
    batches: Iterable[Any] | torch.Tensor,
    *,
    estimator: str = "infonce",
    pairs: Sequence[tuple[str, str]] | None = None,
    max_samples: int = 4096,
    device: str | torch.device | None = None,
    progress: bool = True,
    **estimate_kwargs: Any,
) -> list[LayerMIRow]:
    """MI between teacher and student representations, layer by layer.

    `batches`: an image tensor [N, C, H, W], or an iterable (e.g. a DataLoader) of image tensors or
    (images, labels, ...) tuples; the first `max_samples` images are used. `pairs` lists
    (teacher_tap, student_tap); the default pairs stages by relative depth (global average pooled
    maps) and then the penultimate vectors. Each pair gets its own fresh critic via `estimate_mi`
    (`estimate_kwargs` pass through: steps, hidden, seed, ...).
    """
    first = next(iter(_image_batches(batches)), None)
    if first is None:
        raise DataError("no images reached the models; the loader or tensor was empty.")
    sample = first[:2].to(device) if device is not None else first[:2]
    if pairs is None:
        pairs = default_layer_pairs(discover_taps(teacher, sample), discover_taps(student, sample))
    teacher_paths = list(dict.fromkeys(teacher_path for teacher_path, _ in pairs))
    student_paths = list(dict.fromkeys(student_path for _, student_path in pairs))
    teacher_features = collect_features(
        teacher, teacher_paths, batches, max_samples=max_samples, device=device
    )
    student_features = collect_features(
        student, student_paths, batches, max_samples=max_samples, device=device
    )
    rows = []
    for teacher_path, student_path in pairs:
        x, y = teacher_features[teacher_path], student_features[student_path]
        if x.shape[0] != y.shape[0]:
            raise ShapeError(
                "the teacher and student saw different numbers of images; pass a tensor or a "
                "loader that yields the same images on every pass (shuffle=False)."
            )
        result = estimate_mi(x, y, estimator, device=device, progress=progress, **estimate_kwargs)
        rows.append(
            LayerMIRow(
                teacher_layer=teacher_path,
                student_layer=student_path,
                teacher_dim=x.shape[1],
                student_dim=y.shape[1],
                mi_nats=result.mi_nats,
                ci_low=result.ci_low,
                ci_high=result.ci_high,
                estimator=estimator,
                n=result.n,
            )
        )
    return rows


def format_layer_table(rows: Sequence[LayerMIRow]) -> str:
    """The rows of `layer_mi` as an aligned text table (what `mimkd mi layers` prints)."""
    header = ("teacher layer", "student layer", "dims (T, S)", "MI (nats)", "CI")
    body = [
        (
            row.teacher_layer,
            row.student_layer,
            f"{row.teacher_dim}, {row.student_dim}",
            f"{row.mi_nats:.3f}",
            f"[{row.ci_low:.3f}, {row.ci_high:.3f}]",
        )
        for row in rows
    ]
    widths = [max(len(line[k]) for line in [header, *body]) for k in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in body]
    title = "  ".join(cell.ljust(width) for cell, width in zip(header, widths))
    return "\n".join([title, "-" * len(title), *lines])


__all__ = [
    "ESTIMATORS",
    "EstimatorSpec",
    "LayerMIRow",
    "MIEstimate",
    "collect_features",
    "default_layer_pairs",
    "estimate_mi",
    "estimator_names",
    "format_layer_table",
    "layer_mi",
    "load_pairs",
    "pair_by_depth",
    "write_estimate",
]
