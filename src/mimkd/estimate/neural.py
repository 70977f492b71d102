"""Neural MI estimates: a fresh critic trained on one split, its bound evaluated on another.

A critic trained on finitely many pairs memorises them and its held-out bound then falls (even
below 0), so the rows are split three ways: *fit* rows train the critic, *validation* rows choose
the step whose critic is kept (early stopping, with patience), *held-out* rows give the reported
bound. The interval resamples held-out rows: each row contributes its positive score and its scores
against every negative column, so a resample recomputes the bound without re-scoring; it covers
the evaluation noise of that one fixed critic, not the noise of training it.

Estimators (`ESTIMATORS`, names are public API):

- "infonce": trained and evaluated with InfoNCE; low variance, but never above log(K + 1) for K
  negatives per row (about log(eval_negatives + 1)): it saturates on high MI.
- "nwj", "dv": trained and evaluated with that bound (DV with the plain, biased minibatch gradient).
- "mine": DV with MINE's moving-average gradient correction (Belghazi et al. 2018).
- "smile": critic trained with the JSD gradient, evaluated with clipped DV, tau = `smile_clip`
  (Song & Ermon 2020).
- "jsd-dv" / "jsd-nwj": critic trained with the JSD objective (as MIMKD's critics are), evaluated
  with DV / NWJ (NWJ needs the score shifted by +1: the JSD-optimal critic is log p/(p_x p_y)).

`ensemble` > 1 trains that many critics (different seeds, same rows) and scores with their mean:
an average of critics is itself a critic, so the bound stays a bound, and averaging cancels part
of each critic's fitting noise.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from mimkd.errors import ConfigError
from mimkd.estimate.critics import (
    INPUT_MAPS,
    CanonicalCritic,
    ResidualCritic,
    canonical_pairs,
    fit_canonical_critic,
)
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


@dataclass(frozen=True)
class CriticOptions:
    """The critic and how it is trained."""

    kind: str = "separable"  # "separable" | "concat" (mimkd.mi.critics)
    hidden: int = 256
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0  # AdamW's decoupled decay
    # negatives per row in a training batch; None: every other row of the batch (B - 1). A concat
    # critic pays an MLP per pair, so it trains on a few sampled negatives instead
    train_negatives: int | None = None
    ensemble: int = 1
    patience: int | None = None  # stop after this many validation checks without improvement
    # start from the Gaussian critic fitted in closed form (`critics.CanonicalCritic`) and train a
    # gated residual on top: exact for Gaussian copulas, a head start otherwise
    gaussian_base: bool = False
    crossfit: bool = False  # also train on the held-out rows and evaluate on the train rows
    # what the trained critic sees (`critics.INPUT_MAPS`: "plain", "squares" = [x, x^2 - 1],
    # "energy" = log mean x^2); with several, one critic trains on each and the better validation
    # bound is kept (per fold and ensemble member)
    inputs: tuple[str, ...] = ("plain",)


@dataclass
class NeuralResult:
    mi_nats: float
    ci_low: float
    ci_high: float
    n_fit: int
    n_validation: int
    n_heldout: int
    negatives_per_row: int
    best_steps: list[int]
    inputs: list[str] = field(default_factory=list)  # the inputs validation chose, per critic
    folds: int = 1
    # (step, bound on the training batches since the last point, bound on held-out rows), member 0
    history: list[tuple[int, float, float]] = field(default_factory=list)
    # with a Gaussian base and the InfoNCE bound: what the trained critic adds to the Gaussian
    # critic alone, both scored on the same rows against the same negatives, and its standard error
    excess_over_gaussian: float | None = None
    excess_standard_error: float | None = None


# ---- scoring ------------------------------------------------------------------------------------


def _candidate_scores(
    critic: nn.Module, x: torch.Tensor, y: torch.Tensor, negatives: int | None, generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive scores [B] and negative scores [B, K] of a training batch.

    Every other row of the batch (K = B - 1, one matrix product for a separable critic), or K rows
    chosen by distinct cyclic offsets (row i meets rows i + o_1, ..., i + o_K): each row is a
    negative exactly K times and never its own positive.
    """
    encoded_x, encoded_y = critic.encode_a(x), critic.encode_b(y)
    batch = x.shape[0]
    if negatives is None or negatives >= batch - 1:
        scores = critic.matrix_scores(encoded_x, encoded_y)
        off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=scores.device)
        return scores.diagonal(), scores[off_diagonal].view(batch, batch - 1)
    offsets = 1 + torch.randperm(batch - 1, generator=generator)[:negatives].to(x.device)
    partners = (torch.arange(batch, device=x.device)[:, None] + offsets[None, :]) % batch
    candidates = torch.cat([torch.arange(batch, device=x.device)[:, None], partners], dim=1)
    scores = critic.pair_scores(encoded_x[:, None, :], encoded_y[candidates])
    return scores[:, 0], scores[:, 1:]


def _train_objective(
    spec: EstimatorSpec,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    dv_average: bounds.DVMovingAverage,
) -> torch.Tensor:
    """The bound whose gradient trains the critic."""
    if spec.train == "infonce":
        return bounds.infonce_bound_from_candidates(positives, negatives)
    if spec.train == "nwj":
        return bounds.nwj_bound(positives, negatives)
    if spec.train == "dv":
        return bounds.dv_bound(positives, negatives)
    if spec.train == "mine":
        return dv_average(positives, negatives)
    return bounds.jsd_bound(positives, negatives)


def _batch_bound(
    spec: EstimatorSpec, positives: torch.Tensor, negatives: torch.Tensor, smile_clip: float
) -> torch.Tensor:
    """The evaluation bound on a training batch (for the curve)."""
    positives = positives + spec.score_shift
    negatives = negatives + spec.score_shift
    if spec.evaluate == "infonce":
        return bounds.infonce_bound_from_candidates(positives, negatives)
    if spec.evaluate == "nwj":
        return bounds.nwj_bound(positives, negatives)
    if spec.evaluate == "dv":
        return bounds.dv_bound(positives, negatives)
    return bounds.smile_bound(positives, negatives, clip=smile_clip)


@dataclass
class _RowStatistics:
    """Per held-out row: its positive score and summaries of its scores against negatives."""

    positive: torch.Tensor  # [n]
    negative_logsumexp: torch.Tensor  # [n]
    clipped_logsumexp: torch.Tensor  # [n]
    negative_count: torch.Tensor  # [n]


def _infonce_per_row(rows: _RowStatistics) -> torch.Tensor:
    """Each row's InfoNCE term: log (K + 1) + T(x, y) - log sum over its K + 1 candidates."""
    candidates_lse = torch.logaddexp(rows.positive, rows.negative_logsumexp)
    return rows.positive - candidates_lse + torch.log(rows.negative_count + 1)


def _bound_from_rows(
    spec: EstimatorSpec, rows: _RowStatistics, index: torch.Tensor
) -> torch.Tensor:
    """The evaluation bound over the rows in `index` ([R, n] for R bootstrap resamples)."""
    if spec.evaluate == "infonce":
        return _infonce_per_row(rows)[index].mean(-1)
    positive = rows.positive[index]
    negative_lse = rows.negative_logsumexp[index]
    total_negatives = rows.negative_count[index].sum(-1)
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


class MeanCritic(nn.Module):
    """The mean score of several critics, with the critic interface (encodings side by side)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def encode_a(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([member.encode_a(features) for member in self.members], dim=-1)

    def encode_b(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([member.encode_b(features) for member in self.members], dim=-1)

    def _mean(self, method: str, encoded_a: torch.Tensor, encoded_b: torch.Tensor):
        parts_a = encoded_a.chunk(len(self.members), dim=-1)
        parts_b = encoded_b.chunk(len(self.members), dim=-1)
        scores = [
            getattr(member, method)(part_a, part_b)
            for member, part_a, part_b in zip(self.members, parts_a, parts_b)
        ]
        return torch.stack(scores).mean(0)

    def pair_scores(self, encoded_a: torch.Tensor, encoded_b: torch.Tensor) -> torch.Tensor:
        return self._mean("pair_scores", encoded_a, encoded_b)

    def matrix_scores(self, encoded_a: torch.Tensor, encoded_b: torch.Tensor) -> torch.Tensor:
        return self._mean("matrix_scores", encoded_a, encoded_b)


# ---- training -----------------------------------------------------------------------------------


def columns_for(n_rows: int, eval_negatives: int, generator: torch.Generator) -> torch.Tensor:
    """The candidate negatives of an evaluation: every row, or a fixed random subset."""
    if n_rows <= eval_negatives + 1:
        return torch.arange(n_rows)
    return torch.randperm(n_rows, generator=generator)[:eval_negatives].sort().values


@dataclass
class _Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


def _bound_on(spec, critic, part: _Split, rows, columns, smile_clip) -> float:
    statistics = _row_statistics(spec, critic, part.x, part.y, rows, columns, smile_clip)
    everything = torch.arange(len(rows), device=part.x.device)
    return float(_bound_from_rows(spec, statistics, everything))


def _make_critic(
    options: CriticOptions,
    inputs: str,
    fit: _Split,
    validation_bound,
    seed: int,
    has_validation: bool,
) -> nn.Module:
    """The critic to train: one from `mimkd.mi.critics`, seeing `inputs` (`INPUT_MAPS`),
    optionally as a gated residual on the Gaussian critic fitted to `fit`."""
    input_map = INPUT_MAPS[inputs]
    dim_x, dim_y = fit.x.shape[1], fit.y.shape[1]
    if input_map is not None:
        dim_x, dim_y = input_map.width(dim_x), input_map.width(dim_y)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic = build_critic(options.kind, dim_x, dim_y, options.hidden)
    if input_map is not None:
        critic = input_map(critic)
    critic = critic.to(fit.x.device)
    if not options.gaussian_base:
        return critic
    if has_validation:
        base, _ = fit_canonical_critic(fit.x, fit.y, validation_bound)
    else:
        base = CanonicalCritic(*canonical_pairs(fit.x, fit.y)).to(fit.x.device)
    return ResidualCritic(base, critic, base.width)


@dataclass
class _EarlyStopping:
    """Keeps the critic state with the best validation bound; says when patience has run out."""

    patience: int | None
    best_bound: float = -math.inf
    best_step: int = 0
    best_state: dict | None = None
    checks_since_best: int = 0

    def check(self, step: int, bound: float, critic: nn.Module) -> bool:
        """Record a validation bound; True when training should stop."""
        if bound > self.best_bound:  # NaN (a diverged critic) never counts as best
            self.best_bound, self.best_step = bound, step
            self.best_state = copy.deepcopy(critic.state_dict())
            self.checks_since_best = 0
        else:
            self.checks_since_best += 1
        return self.patience is not None and self.checks_since_best >= self.patience


def _train_critic(
    spec: EstimatorSpec,
    options: CriticOptions,
    inputs: str,
    fit: _Split,
    validation: _Split,
    heldout: _Split | None,
    seed: int,
    generator: torch.Generator,
    eval_every: int,
    eval_negatives: int,
    smile_clip: float,
    bar,
) -> tuple[nn.Module, int, list[tuple[int, float, float]], float]:
    """Train one critic; return the state with the best validation bound, its step, the curve
    and that bound (-inf without validation rows)."""
    device = fit.x.device
    validation_rows = torch.arange(min(len(validation), 1024), device=device)
    validation_columns = columns_for(len(validation), eval_negatives, generator).to(device)

    def validation_bound(candidate: nn.Module) -> float:
        return _bound_on(
            spec, candidate, validation, validation_rows, validation_columns, smile_clip
        )

    critic = _make_critic(options, inputs, fit, validation_bound, seed, len(validation) > 0)
    dv_average = bounds.DVMovingAverage().to(device)
    # foreach: one fused update for all the small parameter tensors (the per-tensor loop was a
    # sixth of the step time on CPU)
    optimizer = torch.optim.AdamW(
        critic.parameters(), lr=options.lr, weight_decay=options.weight_decay, foreach=True
    )
    if heldout is not None:  # the held-out curve is only plotted, never used to choose
        curve_rows = torch.arange(min(len(heldout), 512), device=device)
        curve_columns = columns_for(len(heldout), eval_negatives, generator).to(device)
    batch_size = min(options.batch_size, len(fit))
    history: list[tuple[int, float, float]] = []
    stopping = _EarlyStopping(options.patience)
    if len(validation):  # step 0 competes too: an untrained (or fitted) critic may be the best
        stopping.check(0, validation_bound(critic), critic)
    running = torch.zeros((), device=device, dtype=torch.float64)  # on the device: no sync a step
    running_count = 0
    critic.train()
    for step in range(1, options.steps + 1):
        batch = torch.randint(len(fit), (batch_size,), generator=generator).to(device)
        positives, negatives = _candidate_scores(
            critic, fit.x[batch], fit.y[batch], options.train_negatives, generator
        )
        loss = -_train_objective(spec, positives, negatives, dv_average)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            running += _batch_bound(spec, positives.detach(), negatives.detach(), smile_clip)
            running_count += 1
        if bar is not None:
            bar.update(1)
        if step % eval_every and step != options.steps:
            continue
        heldout_bound = math.nan
        if heldout is not None:
            heldout_bound = _bound_on(spec, critic, heldout, curve_rows, curve_columns, smile_clip)
        history.append((step, float(running) / running_count, heldout_bound))
        running.zero_()
        running_count = 0
        if not len(validation):
            continue
        current = validation_bound(critic)
        if bar is not None:
            bar.set_postfix(validation=f"{current:.3f}")
        if stopping.check(step, current, critic):
            if bar is not None:
                bar.update(options.steps - step)
            break
    if stopping.best_state is None:
        return critic, options.steps, history, -math.inf
    critic.load_state_dict(stopping.best_state)
    return critic, stopping.best_step, history, stopping.best_bound


def neural_estimate(
    x: torch.Tensor,
    y: torch.Tensor,
    spec: EstimatorSpec,
    options: CriticOptions,
    *,
    seed: int = 0,
    train_fraction: float = 0.5,
    validation_fraction: float = 0.2,
    bootstrap: int = 200,
    confidence: float = 0.95,
    eval_negatives: int = 4096,
    smile_clip: float = 5.0,
    eval_every: int | None = None,
    progress: bool = True,
    label: str = "mi",
) -> NeuralResult:
    """Split the rows, train `options.ensemble` critic(s), evaluate the bound on held-out rows."""
    check_neural_options(options, train_fraction, validation_fraction, eval_negatives)
    n = x.shape[0]
    n_train = int(round(n * train_fraction))
    n_fit = n_train - _validation_size(n_train, validation_fraction)
    if n_fit < 2 or n - n_train < 2:
        raise ConfigError(
            f"{n} pairs leave {n_fit} to train the critic and {n - n_train} to evaluate; need at "
            "least 2 each: change train_fraction/validation_fraction."
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).to(x.device)
    pool = _Split(x[order[:n_train]], y[order[:n_train]])
    heldout = _Split(x[order[n_train:]], y[order[n_train:]])
    eval_every = eval_every or max(1, options.steps // 20)
    # cross-fitting: a second critic trains on the held-out rows and is scored on the first pool,
    # so every row is evaluated once and the evaluation noise shrinks by about sqrt(2)
    folds = [(pool, heldout), (heldout, pool)] if options.crossfit else [(pool, heldout)]

    trainings = options.ensemble * len(folds) * len(options.inputs)
    bar = _progress_bar(options.steps * trainings, label, progress)
    best_steps, chosen_inputs, history, evaluations, excess_rows = [], [], [], [], []
    try:
        for fold, (train_pool, evaluate_on) in enumerate(folds):
            n_fit_fold = len(train_pool) - _validation_size(len(train_pool), validation_fraction)
            fit = _Split(train_pool.x[:n_fit_fold], train_pool.y[:n_fit_fold])
            validation = _Split(train_pool.x[n_fit_fold:], train_pool.y[n_fit_fold:])
            members = []
            for member in range(options.ensemble):
                candidates = [
                    _train_critic(
                        spec,
                        options,
                        inputs,
                        fit,
                        validation,
                        evaluate_on if member == 0 and fold == 0 else None,  # one curve to plot
                        seed + 1000 * member + 100_000 * fold,
                        generator,
                        eval_every,
                        eval_negatives,
                        smile_clip,
                        bar,
                    )
                    for inputs in options.inputs
                ]
                # validation chooses the inputs (the first wins ties and a missing validation)
                best = max(range(len(candidates)), key=lambda index: candidates[index][3])
                critic, best_step, curve, _ = candidates[best]
                members.append(critic)
                best_steps.append(best_step)
                chosen_inputs.append(options.inputs[best])
                history = history or curve
            critic = members[0] if len(members) == 1 else MeanCritic(members)
            columns = columns_for(len(evaluate_on), eval_negatives, generator).to(x.device)
            everything = torch.arange(len(evaluate_on), device=x.device)
            evaluations.append(
                _row_statistics(
                    spec, critic, evaluate_on.x, evaluate_on.y, everything, columns, smile_clip
                )
            )
            if options.gaussian_base and spec.evaluate == "infonce":
                base = _row_statistics(
                    spec, members[0].base, evaluate_on.x, evaluate_on.y, everything, columns, 0.0
                )
                excess_rows.append(_infonce_per_row(evaluations[-1]) - _infonce_per_row(base))
    finally:
        if bar is not None:
            bar.close()

    weights = [
        len(rows.positive) / sum(len(r.positive) for r in evaluations) for rows in evaluations
    ]
    estimate = sum(
        weight * float(_bound_from_rows(spec, rows, _all_rows(rows)))
        for weight, rows in zip(weights, evaluations)
    )
    ci_low = ci_high = estimate
    if bootstrap > 0:
        values = sum(
            weight
            * _bound_from_rows(
                spec,
                rows,
                torch.randint(
                    len(rows.positive), (bootstrap, len(rows.positive)), generator=generator
                ),
            )
            for weight, rows in zip(weights, evaluations)
        )
        tail = (1.0 - confidence) / 2.0
        levels = torch.tensor([tail, 1.0 - tail], dtype=values.dtype, device=values.device)
        ci_low, ci_high = (float(value) for value in torch.quantile(values, levels))
    excess = excess_error = None
    if excess_rows:  # the bound is the mean over every evaluated row, so is the excess
        per_row = torch.cat(excess_rows).double()
        excess = float(per_row.mean())
        excess_error = float(per_row.std() / math.sqrt(len(per_row)))
    return NeuralResult(
        mi_nats=estimate,
        ci_low=ci_low,
        ci_high=ci_high,
        n_fit=n_fit,
        n_validation=n_train - n_fit,
        n_heldout=sum(len(rows.positive) for rows in evaluations),
        negatives_per_row=int(min(rows.negative_count.min() for rows in evaluations)),
        best_steps=best_steps,
        inputs=chosen_inputs,
        history=history,
        folds=len(folds),
        excess_over_gaussian=excess,
        excess_standard_error=excess_error,
    )


def _all_rows(rows: _RowStatistics) -> torch.Tensor:
    return torch.arange(len(rows.positive), device=rows.positive.device)


def _resampled_rows(rows: _RowStatistics, count: int, generator) -> torch.Tensor:
    n = len(rows.positive)
    return torch.randint(n, (count, n), generator=generator).to(rows.positive.device)


def _validation_size(pool: int, validation_fraction: float) -> int:
    return max(int(round(pool * validation_fraction)), 2) if validation_fraction else 0


def check_neural_options(
    options: CriticOptions, train_fraction: float, validation_fraction: float, eval_negatives: int
) -> None:
    problems = []
    if not 0.0 < train_fraction < 1.0:
        problems.append(f"train_fraction must be in (0, 1), got {train_fraction}")
    if not 0.0 <= validation_fraction < 1.0:
        problems.append(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if options.steps < 1:
        problems.append(f"steps must be at least 1, got {options.steps}")
    if options.batch_size < 2:
        problems.append(
            f"batch_size must be at least 2 (negatives come from the batch), got "
            f"{options.batch_size}"
        )
    if options.hidden < 1:
        problems.append(f"hidden must be at least 1, got {options.hidden}")
    if options.ensemble < 1:
        problems.append(f"ensemble must be at least 1, got {options.ensemble}")
    if options.train_negatives is not None and options.train_negatives < 1:
        problems.append(f"train_negatives must be at least 1, got {options.train_negatives}")
    if options.lr <= 0 or options.weight_decay < 0:
        problems.append(
            f"lr must be > 0 and weight_decay >= 0, got {options.lr}, {options.weight_decay}"
        )
    if eval_negatives < 1:
        problems.append(f"eval_negatives must be at least 1, got {eval_negatives}")
    unknown = [name for name in options.inputs if name not in INPUT_MAPS]
    if unknown or not options.inputs:
        problems.append(
            f"critic inputs must be some of {', '.join(INPUT_MAPS)}, got {list(options.inputs)}"
        )
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def _progress_bar(total: int, description: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, file=sys.stderr, leave=False, dynamic_ncols=True)


__all__ = [
    "ESTIMATORS",
    "CriticOptions",
    "EstimatorSpec",
    "MeanCritic",
    "NeuralResult",
    "columns_for",
    "neural_estimate",
]
