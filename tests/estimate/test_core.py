"""`estimate_mi`: error bounds on data with closed-form MI, what `auto` chooses, honest fields."""

import math

import numpy as np
import pytest
from known_mi import gaussian_pairs, student_t_mi, student_t_pairs

from mimkd.errors import ConfigError, DataError, UnknownNameError
from mimkd.estimate import MIN_PAIRS, estimate_mi, estimator_names
from mimkd.estimate.core import MIEstimate, _warnings

# short critic training that still converges on low-dimensional data (~1-3 s each)
FAST = {"hidden": 64, "steps": 500, "batch_size": 128, "lr": 2e-3, "bootstrap": 100}


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- auto: error bounds against closed-form MI ------------------------------------------------


def test_auto_on_a_gaussian_pair_is_the_closed_form_after_ksg_and_close():
    x, y = gaussian_pairs(1, 0.5, 2000)
    result = estimate_mi(x, y, progress=False)
    assert result.estimator == "gaussian" and result.requested == "auto"
    assert "dim_x + dim_y = 2" in result.reason and "KSG" in result.reason
    assert abs(result.mi_nats - 0.5) < 0.05
    assert result.ci_low < result.mi_nats < result.ci_high
    assert result.n == result.n_eval == 2000 and result.n_train == 0


def test_auto_on_a_heavy_tailed_student_t_pair_is_close_and_never_negative():
    true_mi = student_t_mi(1, 1, dof=1)  # Cauchy-like tails: rows at |x| in the thousands
    for seed in range(3):
        x, y = student_t_pairs(1, 1, 1, 2000, seed=seed)
        assert np.abs(x).max() > 100  # the tails this test is about
        result = estimate_mi(x, y, seed=seed, progress=False)
        assert 0.0 < result.mi_nats < 2 * true_mi
        assert abs(result.mi_nats - true_mi) < 0.06
        assert result.estimator == "ksg"  # uncorrelated: the closed form would say 0


def test_auto_on_an_invertible_transform_of_a_gaussian_pair():
    x, y = gaussian_pairs(1, 0.5, 2000)
    transformed_x, transformed_y = np.sinh(3 * x), np.exp(y) + y**3  # both strictly increasing
    plain = estimate_mi(x, y, progress=False)
    transformed = estimate_mi(transformed_x, transformed_y, progress=False)
    # the copula transform sees only ranks, which increasing maps keep: the same number exactly
    assert transformed.mi_nats == plain.mi_nats
    assert abs(transformed.mi_nats - 0.5) < 0.05


def test_auto_on_heavy_tailed_higher_dimensions_trains_a_bounded_critic():
    true_mi = student_t_mi(2, 3, dof=1)
    x, y = student_t_pairs(2, 3, 1, 3000)
    result = estimate_mi(x, y, progress=False, steps=400)
    assert result.estimator == "infonce" and "> 4" in result.reason
    assert set(result.details["inputs"]) <= {"squares", "energy"}
    # a lower bound: below the truth (plus held-out noise), and neither negative nor exploding
    assert 0.5 * true_mi < result.mi_nats < true_mi + 0.05
    # cross-fitted: each half trains a critic (1200 fit + 300 validation) scored on the other half
    assert (result.n_train, result.n_validation, result.n_eval) == (1200, 300, 3000)
    assert result.details["folds"] == 2


def test_auto_on_a_higher_dimensional_gaussian():
    x, y = gaussian_pairs(3, 0.6, 3000)
    result = estimate_mi(x, y, progress=False, steps=400)
    assert result.estimator == "gaussian"  # the critic found nothing beyond the closed form
    assert abs(result.mi_nats - 0.6) < 0.04


# ---- neural estimators (explicit) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("estimator", "dims", "true_mi", "tolerance"),
    [
        ("infonce", 1, 0.5, 0.1),
        ("infonce", 2, 1.0, 0.15),
        ("mine", 1, 0.5, 0.15),
        ("smile", 2, 1.0, 0.25),
    ],
)
def test_neural_estimators_recover_known_gaussian_mi(estimator, dims, true_mi, tolerance):
    x, y = gaussian_pairs(dims, true_mi, 4000)
    result = estimate_mi(x, y, estimator, progress=False, **FAST)
    # lower bounds: allow a small overshoot from held-out sampling noise, the stated tolerance below
    assert true_mi - tolerance < result.mi_nats < true_mi + 0.05
    assert result.ci_low <= result.mi_nats <= result.ci_high
    # cross-fitted halves: 1600 fit + 400 validation rows per critic, every row evaluated once
    assert result.n == result.n_eval == 4000
    assert result.n_train == 1600 and result.n_validation == 400
    assert "evaluation noise only" in result.interval


def test_concat_critic_and_an_ensemble_run_and_agree():
    x, y = gaussian_pairs(2, 1.0, 3000)
    options = dict(FAST, steps=300, bootstrap=0, hidden=16, eval_negatives=256, progress=False)
    concat = estimate_mi(x, y, "infonce", critic="concat", train_negatives=16, **options)
    ensemble = estimate_mi(x, y, "infonce", ensemble=2, **options)
    assert concat.details["critic"] == "concat" and not concat.details["gaussian_base"]
    assert ensemble.details["gaussian_base"] and ensemble.details["ensemble"] == 2
    assert len(ensemble.details["best_steps"]) == 2 * ensemble.details["folds"]
    for result in (concat, ensemble):
        assert 0.75 < result.mi_nats < 1.05


def test_independent_variables_have_near_zero_mi():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(3000, 3)), rng.normal(size=(3000, 3))
    result = estimate_mi(x, y, "infonce", progress=False, **FAST)
    assert abs(result.mi_nats) < 0.05
    assert abs(estimate_mi(x[:, :1], y[:, :1], "ksg", progress=False).mi_nats) < 0.03


def test_infonce_is_capped_by_its_ceiling_and_says_so():
    x, y = gaussian_pairs(1, 12.0, 600)  # far more MI than log(32) ~ 3.5 can show
    result = estimate_mi(x, y, "infonce", progress=False, eval_negatives=31, **FAST)
    assert result.negatives_per_row >= 30
    assert result.ceiling == pytest.approx(math.log(result.negatives_per_row + 1))
    assert result.mi_nats <= result.ceiling + 1e-6


def test_same_seed_same_estimate_and_history():
    x, y = gaussian_pairs(1, 0.5, 600)
    options = dict(FAST, steps=60, bootstrap=20)
    first = estimate_mi(x, y, "nwj", seed=3, progress=False, **options)
    second = estimate_mi(x, y, "nwj", seed=3, progress=False, **options)
    assert first.mi_nats == second.mi_nats
    assert first.history == second.history
    assert [step for step, _, _ in first.history][-1] == 60


# ---- warnings ------------------------------------------------------------------------------------


def _estimate(value: float, estimator: str = "infonce", ceiling: float = 8.0) -> MIEstimate:
    return MIEstimate(value, value, value, estimator, 1000, 0.0, ceiling=ceiling)


def test_warnings_below_zero_near_and_above_the_ceiling():
    assert _warnings(_estimate(0.3)) == []
    assert "below 0" in _warnings(_estimate(-0.02))[0]
    assert "near" in _warnings(_estimate(6.5))[0]
    assert "at or above" in _warnings(_estimate(8.0))[0]
    assert "log(K + 1)" in _warnings(_estimate(8.0))[0]
    assert "log N" in _warnings(_estimate(9.0, "smile"))[0]


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 8, 10, MIN_PAIRS - 1])
def test_too_few_pairs_is_a_data_error(n):
    x, y = np.zeros((n, 2)), np.zeros((n, 2))
    with pytest.raises(DataError, match="no values" if n == 0 else f"at least {MIN_PAIRS}"):
        estimate_mi(x, y, progress=False)


def test_unknown_names_and_bad_options_are_errors():
    x, y = gaussian_pairs(1, 0.5, 200)
    with pytest.raises(UnknownNameError, match="infonce"):
        estimate_mi(x, y, "infonse", progress=False)
    assert {"auto", "ksg", "infonce", "nwj", "mine", "dv", "smile", "jsd-dv", "jsd-nwj"} <= set(
        estimator_names()
    )
    with pytest.raises(ConfigError, match="preprocess"):
        estimate_mi(x, y, preprocess="rank", progress=False)
    with pytest.raises(ConfigError, match="critic"):
        estimate_mi(x, y, critic="bilinear", progress=False)
    # neural options are checked whichever estimator runs (auto picks KSG here)
    with pytest.raises(ConfigError, match="train_fraction"):
        estimate_mi(x, y, train_fraction=1.5, progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        estimate_mi(x, y, batch_size=1, progress=False)
    with pytest.raises(ConfigError, match="k must|neighbours"):
        estimate_mi(x, y, neighbours=0, progress=False)


def test_mismatched_rows_are_a_data_error():
    with pytest.raises(DataError, match="rows"):
        estimate_mi(np.zeros((200, 2)), np.zeros((199, 2)), progress=False)


def test_progress_bar_goes_to_stderr(capsys):
    x, y = gaussian_pairs(1, 0.5, 200)
    estimate_mi(x, y, "infonce", steps=5, hidden=8, bootstrap=0, progress=True)
    captured = capsys.readouterr()
    assert "mi infonce" in captured.err
    assert captured.out == ""


def test_summary_holds_what_the_number_means():
    x, y = gaussian_pairs(1, 0.5, 300)
    summary = estimate_mi(x, y, progress=False).summary()
    for key in ("mi_nats", "ci_low", "ci_high", "estimator", "n", "seconds", "requested"):
        assert key in summary
    assert {"reason", "interval", "n_train", "n_validation", "n_eval", "warnings"} <= set(summary)
    assert "history" not in summary
