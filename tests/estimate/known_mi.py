"""Small samplers with closed-form MI (nats) for the estimation tests, computed independently of
the code under test."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import digamma, gammaln


def gaussian_pairs(dims: int, mi_nats: float, n: int, seed: int = 0):
    """d independent pairs with correlation rho: I = -(d/2) log(1 - rho^2) = mi_nats."""
    rng = np.random.default_rng(seed)
    rho = math.sqrt(-math.expm1(-2 * mi_nats / dims))
    noise_scale = math.exp(-mi_nats / dims)  # sqrt(1 - rho^2) without cancellation
    x = rng.normal(size=(n, dims))
    return x, rho * x + noise_scale * rng.normal(size=(n, dims))


def _t_entropy_part(dims: int, dof: float) -> float:
    half, half_sum = dof / 2, (dof + dims) / 2
    return gammaln(half) - gammaln(half_sum) + half_sum * (digamma(half_sum) - digamma(half))


def student_t_mi(dim_x: int, dim_y: int, dof: float) -> float:
    """I(X; Y) of a multivariate t with identity dispersion (Arellano-Valle et al. 2013): only the
    shared scale couples X and Y."""
    return (
        _t_entropy_part(dim_x, dof)
        + _t_entropy_part(dim_y, dof)
        - _t_entropy_part(dim_x + dim_y, dof)
    )


def student_t_pairs(dim_x: int, dim_y: int, dof: float, n: int, seed: int = 0):
    """(X, Y) = Z / sqrt(W / dof), Z ~ N(0, I), one W ~ chi^2(dof) per row: heavy tails."""
    rng = np.random.default_rng(seed)
    joint = rng.normal(size=(n, dim_x + dim_y)) / np.sqrt(rng.chisquare(dof, (n, 1)) / dof)
    return joint[:, :dim_x], joint[:, dim_x:]
