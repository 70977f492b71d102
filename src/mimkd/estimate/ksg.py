"""The Kraskov-Stögbauer-Grassberger k-nearest-neighbour estimator (KSG, estimator 1).

Kraskov, Stögbauer, Grassberger, "Estimating mutual information", Phys. Rev. E 69, 066138 (2004),
eq. 8: with eps_i the max-norm distance from z_i = (x_i, y_i) to its k-th nearest neighbour in the
joint space, and n_x(i), n_y(i) the numbers of other points strictly closer than eps_i in the x and
y spaces,

    I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >.

No training and no split: every row is used. Its bias grows with dimension (it assumes the density
is constant inside each k-neighbourhood), so `auto` uses it only for low total dimension. Needs
scipy (cKDTree, digamma).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mimkd.errors import ConfigError

DEFAULT_NEIGHBOURS = 3  # Kraskov et al. recommend k = 2-4; larger k trades variance for bias
INTERVAL_SUBSETS = 10


@dataclass(frozen=True)
class KSGResult:
    mi_nats: float
    standard_error: float  # from disjoint subsets, see `ksg_interval`
    neighbours: int
    subsets: int


def _require_scipy():
    try:
        from scipy.spatial import cKDTree
        from scipy.special import digamma
    except ImportError:  # scipy is optional for the neural estimators
        raise ConfigError(
            "the KSG estimator needs scipy: pip install scipy (or choose a neural estimator, "
            "e.g. --estimator infonce)."
        ) from None
    return cKDTree, digamma


def ksg_mi(x: np.ndarray, y: np.ndarray, neighbours: int = DEFAULT_NEIGHBOURS) -> float:
    """KSG estimator 1 of I(X; Y) in nats from x [N, Dx], y [N, Dy] (N > neighbours)."""
    tree_type, digamma = _require_scipy()
    n = x.shape[0]
    if not 1 <= neighbours < n:
        raise ConfigError(f"KSG needs 1 <= k < number of rows ({n}); got k = {neighbours}.")
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    joint = np.hstack([x, y])
    # k + 1: the query point is its own nearest neighbour
    distances, _ = tree_type(joint).query(joint, k=neighbours + 1, p=np.inf)
    # "strictly closer than eps": shrink the radius by one ulp, since query_ball_point counts <= r
    radius = np.nextafter(distances[:, -1], 0.0)
    # the counts include the point itself, so they are n_x + 1 and n_y + 1 already
    count_x = tree_type(x).query_ball_point(x, radius, p=np.inf, return_length=True)
    count_y = tree_type(y).query_ball_point(y, radius, p=np.inf, return_length=True)
    marginal_terms = digamma(count_x).mean() + digamma(count_y).mean()
    return float(digamma(neighbours) + digamma(n) - marginal_terms)


def ksg_with_interval(
    x: np.ndarray,
    y: np.ndarray,
    neighbours: int = DEFAULT_NEIGHBOURS,
    subsets: int = INTERVAL_SUBSETS,
    rng: np.random.Generator | None = None,
) -> KSGResult:
    """The estimate on every row, and its standard error from `subsets` disjoint random subsets.

    A bootstrap would be wrong here: a resampled row is its own neighbour at distance 0. KSG's
    variance falls as 1/N, so the spread s of the estimates on m disjoint subsets of N/m rows gives
    the full estimate's standard error as s / sqrt(m). This covers sampling noise only, not the
    estimator's bias (which grows with dimension and with MI).
    """
    estimate = ksg_mi(x, y, neighbours)
    n = x.shape[0]
    subsets = min(subsets, n // (2 * (neighbours + 1)))
    if subsets < 2:
        return KSGResult(estimate, math.nan, neighbours, 0)
    rng = rng or np.random.default_rng(0)
    parts = np.array_split(rng.permutation(n), subsets)
    values = np.array([ksg_mi(x[part], y[part], neighbours) for part in parts])
    return KSGResult(estimate, float(values.std(ddof=1) / math.sqrt(subsets)), neighbours, subsets)


__all__ = ["DEFAULT_NEIGHBOURS", "KSGResult", "ksg_mi", "ksg_with_interval"]
