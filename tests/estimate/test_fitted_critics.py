"""The fitted critics: the canonical (Gaussian) critic is the Gaussian log density ratio."""

import math

import numpy as np
import pytest
import torch
from known_mi import gaussian_pairs
from scipy.stats import multivariate_normal

from mimkd.estimate.critics import (
    CanonicalCritic,
    EnergyFeatures,
    ResidualCritic,
    SquaredFeatures,
    canonical_pairs,
    fit_canonical_critic,
)
from mimkd.mi.critics import build_critic


def _gaussian_log_ratio(x: np.ndarray, y: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """log p(x_i, y_j) - log p(x_i) - log p(y_j) for all i, j, from scipy's densities."""
    dx = x.shape[1]
    joint = multivariate_normal(np.zeros(len(covariance)), covariance)
    marginal_x = multivariate_normal(np.zeros(dx), covariance[:dx, :dx])
    marginal_y = multivariate_normal(np.zeros(len(covariance) - dx), covariance[dx:, dx:])
    pairs = np.concatenate(
        [np.repeat(x, len(y), axis=0), np.tile(y, (len(x), 1))], axis=1
    )  # row i * len(y) + j is (x_i, y_j)
    log_joint = joint.logpdf(pairs).reshape(len(x), len(y))
    return log_joint - marginal_x.logpdf(x)[:, None] - marginal_y.logpdf(y)[None, :]


def test_canonical_critic_is_the_gaussian_log_density_ratio():
    x, y = gaussian_pairs(3, 0.8, 20_000, seed=0)
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
    x = x @ rotation  # correlated coordinates inside X: CCA has to undo this
    covariance = np.cov(np.hstack([x, y]).T)
    critic = CanonicalCritic(*canonical_pairs(torch.tensor(x), torch.tensor(y)))
    probe_x, probe_y = x[:7], y[:5]
    with torch.no_grad():
        scores = critic.matrix_scores(
            critic.encode_a(torch.tensor(probe_x)), critic.encode_b(torch.tensor(probe_y))
        )
    # the sample means are ~0; the fitted critic and scipy's densities share the covariance
    expected = _gaussian_log_ratio(probe_x, probe_y, covariance)
    assert np.allclose(scores.numpy(), expected, atol=0.02)
    # E[log ratio] over the pairs is the MI: the canonical correlations carry it
    rho = canonical_pairs(torch.tensor(x), torch.tensor(y))[4].double()
    assert float(-0.5 * torch.log1p(-(rho**2)).sum()) == pytest.approx(0.8, abs=0.03)


def test_fit_keeps_only_the_canonical_pairs_that_carry_information():
    rng = np.random.default_rng(0)
    x, y = gaussian_pairs(1, 1.0, 3000, seed=2)
    x = np.hstack([x, rng.normal(size=(3000, 7))])  # 7 noise columns beside one informative
    y = np.hstack([y, rng.normal(size=(3000, 7))])
    x_fit, y_fit = torch.tensor(x[:2000]).float(), torch.tensor(y[:2000]).float()
    x_val, y_val = torch.tensor(x[2000:]).float(), torch.tensor(y[2000:]).float()

    def validation_bound(critic):
        with torch.no_grad():
            scores = critic.matrix_scores(critic.encode_a(x_val), critic.encode_b(y_val))
        return float(scores.log_softmax(1).diagonal().mean() + math.log(len(x_val)))

    critic, bound = fit_canonical_critic(x_fit, y_fit, validation_bound)
    assert critic.rank in (1, 2)  # the noise pairs are dropped (a second one may tie on noise)
    assert bound == pytest.approx(1.0, abs=0.1)


def test_residual_critic_starts_as_its_base_and_squared_features_widen_the_input():
    torch.manual_seed(0)
    x, y = torch.randn(6, 2), torch.randn(6, 3)
    base = CanonicalCritic(*canonical_pairs(torch.randn(50, 2), torch.randn(50, 3)))
    residual = SquaredFeatures(build_critic("separable", 4, 6, 8))
    combined = ResidualCritic(base, residual, base.width).eval()
    with torch.no_grad():
        expected = base.matrix_scores(base.encode_a(x), base.encode_b(y))
        scores = combined.matrix_scores(combined.encode_a(x), combined.encode_b(y))
        assert torch.allclose(scores, expected, atol=1e-6)  # gate 0: the base alone
        combined.gate.fill_(1.0)
        inner = residual.inner
        squared_x = torch.cat([x, x**2 - 1], dim=1)
        squared_y = torch.cat([y, y**2 - 1], dim=1)
        extra = inner.matrix_scores(inner.encode_a(squared_x), inner.encode_b(squared_y))
        scores = combined.matrix_scores(combined.encode_a(x), combined.encode_b(y))
        assert torch.allclose(scores, expected + extra, atol=1e-5)


def test_energy_features_are_each_row_s_log_mean_square():
    rows = torch.tensor([[1.0, 3.0], [0.5, -0.5]])
    expected = torch.log(torch.tensor([[5.0], [0.25]]))
    assert torch.allclose(EnergyFeatures.expand(rows), expected)
    assert EnergyFeatures.width(7) == 1 and SquaredFeatures.width(7) == 14
    critic = EnergyFeatures(build_critic("separable", 1, 1, 8))
    assert critic.matrix_scores(critic.encode_a(rows), critic.encode_b(rows)).shape == (2, 2)
