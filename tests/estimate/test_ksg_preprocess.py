"""KSG against closed-form MI, its interval, and the maps of each variable that MI permits."""

import math

import numpy as np
import pytest
import torch
from known_mi import gaussian_pairs
from scipy.special import ndtri

from mimkd.errors import ConfigError
from mimkd.estimate.ksg import ksg_mi, ksg_with_interval
from mimkd.estimate.preprocess import ROBUST_CLIP, normal_scores, preprocess


@pytest.mark.parametrize(("dims", "true_mi"), [(1, 0.2), (1, 1.0), (2, 1.0)])
def test_ksg_recovers_gaussian_mi(dims, true_mi):
    x, y = gaussian_pairs(dims, true_mi, 3000, seed=dims)
    assert abs(ksg_mi(x, y) - true_mi) < 0.04


def test_ksg_interval_is_a_standard_error_of_the_right_size():
    # the spread of KSG over independent samples, measured, against the subset-based error
    estimates = [ksg_mi(*gaussian_pairs(1, 0.5, 2000, seed=seed)) for seed in range(12)]
    result = ksg_with_interval(*gaussian_pairs(1, 0.5, 2000, seed=99))
    assert result.subsets == 10
    assert 0.4 * np.std(estimates) < result.standard_error < 2.5 * np.std(estimates)


def test_ksg_of_independent_variables_is_near_zero():
    rng = np.random.default_rng(0)
    assert abs(ksg_mi(rng.normal(size=(3000, 2)), rng.normal(size=(3000, 1)))) < 0.03


def test_ksg_needs_more_rows_than_neighbours():
    with pytest.raises(ConfigError, match="k"):
        ksg_mi(np.zeros((3, 1)), np.zeros((3, 1)), neighbours=3)


def test_normal_scores_are_gaussian_quantiles_of_the_ranks():
    generator = torch.Generator().manual_seed(0)
    values = torch.tensor([[3.0, -1.0], [100.0, 2.0], [-7.0, 0.5], [0.0, 9.0]])
    scores = normal_scores(values, generator)
    quantiles = ndtri(np.arange(1, 5) / 5)
    ranks = values.argsort(0).argsort(0).numpy()
    assert np.allclose(scores.numpy(), quantiles[ranks], atol=1e-6)


def test_normal_scores_break_ties_at_random_and_keep_each_value_once():
    generator = torch.Generator().manual_seed(0)
    values = torch.tensor([[1.0], [1.0], [1.0], [0.0]])
    scores = normal_scores(values, generator)[:, 0]
    quantiles = torch.special.ndtri(torch.arange(1, 5, dtype=torch.float64) / 5).float()
    assert torch.allclose(scores.sort().values, quantiles)
    assert scores[3] == quantiles[0]  # the smallest value keeps the lowest score


def test_normal_scores_remove_heavy_tails():
    generator = torch.Generator().manual_seed(0)
    cauchy = torch.distributions.Cauchy(0.0, 1.0).sample((10_000, 3))
    assert cauchy.abs().max() > 1_000
    scores = normal_scores(cauchy, generator)
    assert scores.abs().max() < 4.0  # Phi^-1(N / (N + 1)) = 3.7 at N = 10,000
    assert abs(float(scores.std()) - 1.0) < 0.01


def test_robust_scaling_is_clipped_and_standardize_is_unit_variance():
    generator = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(1000, 2), torch.full((5, 2), 1e6)])
    robust = preprocess(values, "robust", generator)
    assert robust.abs().max() <= ROBUST_CLIP
    assert abs(float(robust[:1000].std()) - 1.0) < 0.1  # the outliers do not set the scale
    standardized = preprocess(values, "standardize", generator)
    assert torch.allclose(standardized.std(0), torch.ones(2), atol=1e-4)
    assert torch.equal(preprocess(values, "none", generator), values)
    with pytest.raises(ConfigError, match="copula"):
        preprocess(values, "ranks", generator)


def test_ksg_on_normal_scores_is_unchanged_by_increasing_maps():
    x, y = gaussian_pairs(1, math.log(2), 1000)
    plain = [normal_scores(torch.tensor(v), torch.Generator().manual_seed(0)) for v in (x, y)]
    mapped = [
        normal_scores(torch.tensor(v), torch.Generator().manual_seed(0))
        for v in (np.arctan(x), np.exp(2 * y))
    ]
    assert ksg_mi(*(v.numpy() for v in plain)) == ksg_mi(*(v.numpy() for v in mapped))
