"""The Gaussian-copula closed form: its value against an independent computation, its bias
correction, the bound it is for other data, and what `auto` does with it."""

import math

import numpy as np
import pytest
from known_mi import gaussian_pairs, student_t_mi, student_t_pairs
from scipy.special import digamma

from mimkd.errors import ConfigError
from mimkd.estimate import estimate_mi
from mimkd.estimate.gaussian import gaussian_copula_mi

pytestmark = pytest.mark.usefixtures("one_thread")


def _canonical_plug_in(x: np.ndarray, y: np.ndarray) -> float:
    """-1/2 sum log(1 - rho_i^2) over the sample canonical correlations (SVD of the whitened
    cross-covariance): the same number as the log-determinants, by another road."""

    def whiten(rows):
        centred = rows - rows.mean(0)
        values, vectors = np.linalg.eigh(centred.T @ centred)
        return centred @ vectors / np.sqrt(values)

    rho = np.linalg.svd(whiten(x).T @ whiten(y), compute_uv=False)
    return float(-0.5 * np.log1p(-(rho**2)).sum())


def _log_det_correction(n: int, dims: int) -> float:
    """E[log det S] - log det Sigma = sum psi((n - i) / 2) - d log((n - 1) / 2), negated."""
    return dims * math.log((n - 1) / 2) - float(digamma((n - np.arange(1, dims + 1)) / 2).sum())


def test_value_is_the_canonical_correlation_formula_plus_the_wishart_correction():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 3))
    y = x[:, :2] @ rng.normal(size=(2, 4)) + rng.normal(size=(500, 4))
    n = 500
    correction = 0.5 * (
        _log_det_correction(n, 3) + _log_det_correction(n, 4) - _log_det_correction(n, 7)
    )
    expected = _canonical_plug_in(x, y) + correction
    assert correction < 0  # the plug-in is high
    assert gaussian_copula_mi(x, y) == pytest.approx(expected, abs=1e-9)


def test_the_correction_removes_the_plug_in_bias_in_higher_dimensions():
    true_mi, n, dims = 0.8, 1000, 10  # plug-in bias about dims^2 / (2 n) = 0.05 nats
    corrected, plug_in = [], []
    for seed in range(12):
        x, y = gaussian_pairs(dims, true_mi, n, seed=seed)
        corrected.append(gaussian_copula_mi(x, y) - true_mi)
        plug_in.append(_canonical_plug_in(x, y) - true_mi)
    assert np.mean(plug_in) > 0.035
    assert abs(np.mean(corrected)) < 0.015


def test_it_is_below_the_true_mi_when_the_dependence_is_not_gaussian():
    x, y = student_t_pairs(1, 1, 1, 4000)  # uncorrelated, dependent through the shared scale
    result = estimate_mi(x, y, "gaussian", progress=False)
    assert abs(result.mi_nats) < 0.01 < student_t_mi(1, 1, 1)
    assert "lower bound" in result.interval and math.isinf(result.ceiling)


def test_too_few_rows_for_the_dimension_is_an_error():
    x, y = gaussian_pairs(30, 1.0, 200)
    with pytest.raises(ConfigError, match="rows per dimension"):
        estimate_mi(x, y, "gaussian", progress=False)


def test_auto_in_low_dimension_reports_the_closed_form_only_when_ksg_finds_nothing_more():
    x, y = gaussian_pairs(1, 0.5, 3000, seed=5)
    gaussian = estimate_mi(x, y, progress=False)
    details = gaussian.details
    assert gaussian.estimator == "gaussian" and "looks Gaussian" in gaussian.reason
    assert details["excess_over_gaussian"] <= 3 * details["excess_standard_error"]
    assert gaussian.mi_nats == pytest.approx(gaussian_copula_mi_on_scores(x, y), abs=1e-6)
    assert abs(gaussian.mi_nats - 0.5) < 0.04
    assert gaussian.ci_low < gaussian.mi_nats < gaussian.ci_high

    x, y = student_t_pairs(1, 1, 1, 3000, seed=5)
    ksg = estimate_mi(x, y, progress=False)
    assert ksg.estimator == "ksg" and "not Gaussian" in ksg.reason
    assert ksg.details["excess_over_gaussian"] > 3 * ksg.details["excess_standard_error"]


def test_auto_in_higher_dimension_keeps_the_critic_only_when_it_adds():
    x, y = gaussian_pairs(3, 0.6, 3000)
    gaussian = estimate_mi(x, y, progress=False, steps=300)
    assert gaussian.estimator == "gaussian" and "trained critic adds" in gaussian.reason
    assert abs(gaussian.mi_nats - 0.6) < 0.04
    assert gaussian.details["neural_estimate"] < gaussian.mi_nats + 0.05
    assert gaussian.history  # the critic's curve is still plotted

    x, y = student_t_pairs(2, 3, 1, 3000)
    neural = estimate_mi(x, y, progress=False, steps=300)
    assert neural.estimator == "infonce" and "its bound is reported" in neural.reason


def test_other_preprocessing_never_switches_to_the_closed_form():
    x, y = gaussian_pairs(1, 0.5, 2000)
    result = estimate_mi(x, y, preprocess="standardize", progress=False)
    assert result.estimator == "ksg" and "Gaussian" not in result.reason


def gaussian_copula_mi_on_scores(x, y):
    """The closed form on the normal scores `auto` sees (ties are impossible here)."""
    from scipy.stats import norm, rankdata

    def scores(values):
        return norm.ppf(rankdata(values, axis=0) / (len(values) + 1))

    return gaussian_copula_mi(scores(x), scores(y))
