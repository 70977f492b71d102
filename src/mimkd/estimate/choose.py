"""What `--estimator auto` runs, and the critic sized to the data.

The rule (re-checked on other draws and tasks, so it uses only the shape of the data):

- dim_x + dim_y <= `KSG_MAX_DIMS`: KSG on the copula-transformed rows. At low dimension it is the
  most accurate estimator here (about 0.01 nats from the truth on 10,000 rows of the 1-D and 2x1
  benchmark tasks, no training, a second), and it needs no split, so every row counts.
- otherwise: InfoNCE with a critic sized to the data (`auto_critic`). KSG's bias grows quickly with
  dimension (it assumes the density is flat inside each neighbourhood: -0.04 nats on a 3x3 sparse
  Gaussian, -0.2 on a 5x5 one), while a critic learns which coordinates carry the dependence.
  InfoNCE has the lowest variance of the bounds; its ceiling log(K + 1) is 8.3 nats at the default
  4096 negatives, above what 10,000 rows can certify anyway.

Either way `estimate_mi` then compares with the Gaussian-copula closed form (`gaussian`) on the
same rows and reports it when KSG's or the critic's excess over it is within 3 standard errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from mimkd.estimate.neural import CriticOptions

KSG_MAX_DIMS = 4


@dataclass(frozen=True)
class Choice:
    estimator: str
    reason: str


def scipy_available() -> bool:
    try:
        import scipy.spatial  # noqa: F401
    except ImportError:
        return False
    return True


def choose_estimator(dim_x: int, dim_y: int) -> Choice:
    total = dim_x + dim_y
    if total <= KSG_MAX_DIMS:
        if scipy_available():
            return Choice(
                "ksg",
                f"dim_x + dim_y = {total} <= {KSG_MAX_DIMS}: KSG (Kraskov et al. 2004) on all rows",
            )
        return Choice(
            "infonce",
            f"dim_x + dim_y = {total} <= {KSG_MAX_DIMS} would use KSG, but scipy is not installed "
            "(pip install scipy): InfoNCE instead",
        )
    return Choice(
        "infonce",
        f"dim_x + dim_y = {total} > {KSG_MAX_DIMS}: InfoNCE with a critic sized to the data "
        "(KSG is biased at this dimension)",
    )


def auto_critic(n_fit: int, dim_x: int, dim_y: int) -> CriticOptions:
    """The critic `auto` trains: a Gaussian start plus a small separable residual, cross-fitted.

    - Start: the Gaussian critic fitted in closed form (canonical correlations, rank chosen on
      validation rows, `critics.CanonicalCritic`). After the copula transform it is already the
      optimal critic whenever the dependence is Gaussian up to monotone maps of the coordinates.
    - Residual: separable, small (a 256-wide critic on 4,000 rows memorises them: train bound
      4.5-4.8 nats, held-out below 0), width ~ rows / 125 (32 to 256), weight decay 0.01, fed
      [x, x^2 - 1] (`critics.SquaredFeatures`: shared-scale dependence such as Student-t's lives in
      the squares; on the 5x5 Student-t task this took the error from -0.26 to -0.09 nats); a
      second residual sees only each side's pooled scale log mean x^2 (`critics.EnergyFeatures`),
      and validation keeps the better of the two.
    - Early stopping: validation picks the step (step 0, the Gaussian critic alone, competes) and
      stops after 5 checks without gain; lr 3e-3 and at most 1000 steps of 256 rows (as accurate
      as 2000 steps at 1e-3 on the 5x5 tasks, half the time).
    - Cross-fitting: a second critic trains on the held-out half and is scored on the first, so
      every row is evaluated once (evaluation noise / sqrt(2)).
    """
    return CriticOptions(
        kind="separable",
        hidden=int(min(256, max(32, n_fit // 125))),
        steps=1000,
        batch_size=256,
        lr=3e-3,
        weight_decay=1e-2,
        patience=5,
        gaussian_base=True,
        inputs=("squares", "energy"),
        crossfit=True,
    )


__all__ = ["KSG_MAX_DIMS", "Choice", "auto_critic", "choose_estimator", "scipy_available"]
