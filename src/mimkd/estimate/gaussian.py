"""The Gaussian-copula estimate: MI in closed form from the correlations of the normal scores.

After the copula transform every column is N(0, 1). Of all joint distributions with those
marginals and that covariance S, the Gaussian has the largest joint entropy, so

    I(X; Y) = h(X) + h(Y) - h(X, Y) >= (1/2) log(det S_xx det S_yy / det S) = I_G,

with equality exactly when the dependence is Gaussian after the copula transform, i.e. Gaussian
up to monotone maps of the coordinates (Ince et al., "A statistical framework for neuroimaging data
analysis based on mutual information estimated via a Gaussian copula", Hum. Brain Mapp. 2017).
`auto` reports it when neither KSG nor a trained critic finds anything beyond it: there it is the
lowest-variance estimate there is (no neighbourhoods, no training, every row).

Each log-determinant is corrected for its sampling bias: for n Gaussian rows in d dimensions,
(n - 1) S is Wishart with n - 1 degrees of freedom, so

    E[log det ((n - 1) S)] = log det Sigma + d log 2 + sum_{i=1..d} psi((n - i) / 2).

Without it the plug-in value is high by about dim_x dim_y / (2 n) nats (0.03 on a 25x25 pair
from 10,000 rows). Needs scipy (digamma), like KSG.
"""

from __future__ import annotations

import math

import numpy as np

from mimkd.errors import ConfigError
from mimkd.estimate.ksg import require_scipy

# the covariance must be well determined: fewer rows than this many per dimension and the
# correction itself is larger than the effects it corrects
MIN_ROWS_PER_DIMENSION = 4


def gaussian_min_rows(dim_x: int, dim_y: int) -> int:
    """The fewest rows that determine the joint covariance well enough for `gaussian_copula_mi`."""
    return MIN_ROWS_PER_DIMENSION * (dim_x + dim_y) + 2


def gaussian_defined(n: int, dim_x: int, dim_y: int) -> bool:
    return n >= gaussian_min_rows(dim_x, dim_y)


def _unbiased_log_det(rows: np.ndarray, digamma) -> float:
    """An unbiased estimate of log det Sigma for Gaussian rows [n, d] (see the module docstring)."""
    n, d = rows.shape
    centred = rows - rows.mean(0)
    _, log_det = np.linalg.slogdet(centred.T @ centred)  # (n - 1) S
    half_dofs = (n - np.arange(1, d + 1)) / 2.0
    return float(log_det - d * math.log(2.0) - digamma(half_dofs).sum())


def gaussian_copula_mi(x: np.ndarray, y: np.ndarray) -> float:
    """I_G in nats from x [N, Dx], y [N, Dy] (normal scores; bias-corrected; see the docstring)."""
    _, digamma = require_scipy()
    n, dim_x = x.shape
    dim_y = y.shape[1]
    if not gaussian_defined(n, dim_x, dim_y):
        raise ConfigError(
            f"the Gaussian-copula estimate needs at least {MIN_ROWS_PER_DIMENSION} rows per "
            f"dimension ({gaussian_min_rows(dim_x, dim_y)} here); got {n}: collect "
            "more pairs or choose another estimator (ksg, infonce)."
        )
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    joint = np.hstack([x, y])
    return 0.5 * (
        _unbiased_log_det(x, digamma)
        + _unbiased_log_det(y, digamma)
        - _unbiased_log_det(joint, digamma)
    )


__all__ = [
    "MIN_ROWS_PER_DIMENSION",
    "gaussian_copula_mi",
    "gaussian_defined",
    "gaussian_min_rows",
]
