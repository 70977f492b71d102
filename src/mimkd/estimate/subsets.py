"""Standard errors from disjoint subsets, for the estimators that train nothing (KSG, Gaussian).

A bootstrap would be wrong for KSG: a resampled row is its own nearest neighbour at distance 0.
These estimators' variance falls as 1/N, so the spread s of the estimates on m disjoint random
subsets of N/m rows gives the full estimate's standard error as s / sqrt(m). Computing two
estimators on the same subsets gives the standard error of their difference (`auto` tests KSG's
excess over the Gaussian-copula value this way). Sampling noise only, never an estimator's bias.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

INTERVAL_SUBSETS = 10

Estimator = Callable[[np.ndarray, np.ndarray], float]


def disjoint_subsets(
    n: int, min_rows: int, rng: np.random.Generator, subsets: int = INTERVAL_SUBSETS
) -> list[np.ndarray]:
    """Up to `subsets` disjoint random row sets of at least `min_rows` each; [] if fewer than 2."""
    count = min(subsets, n // max(min_rows, 1))
    if count < 2:
        return []
    return np.array_split(rng.permutation(n), count)


def values_on(estimator: Estimator, x: np.ndarray, y: np.ndarray, parts) -> np.ndarray:
    return np.array([estimator(x[part], y[part]) for part in parts], dtype=np.float64)


def standard_error(values: np.ndarray) -> float:
    """The standard error of the full-data estimate from its values on m disjoint subsets."""
    if len(values) < 2 or not np.isfinite(values).all():
        return math.nan
    return float(values.std(ddof=1) / math.sqrt(len(values)))


__all__ = ["INTERVAL_SUBSETS", "disjoint_subsets", "standard_error", "values_on"]
