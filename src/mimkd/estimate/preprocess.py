"""Maps of each variable that MI permits: I(f(X); g(Y)) = I(X; Y) for invertible f, g.

Every estimator here sees the pairs after one of these maps, applied to each column on its own:

- "copula" (the default): each column is replaced by its normal scores, Phi^-1(rank / (n + 1)).
  The map is increasing, so MI is unchanged, and it removes whatever the marginals carry: heavy
  tails (a Student-t row at |z| = 300 becomes |z| < 4), skew, monotone distortions (wiggly,
  half-cube, asinh, normal-CDF maps are undone exactly). What is left is the copula, the only part
  of the joint distribution that MI depends on. Ties are broken at random (seeded): with ties
  broken, a discrete column becomes continuous without losing its MI, and KSG never meets a zero
  distance.
- "robust": centre on the median, divide by 1.4826 x the median absolute deviation and clip to
  +-`ROBUST_CLIP` (clipping is not invertible, so this is for data known to be tail-free).
- "standardize": subtract the mean, divide by the standard deviation (the previous default; a
  single outlier sets the scale of everything else).
- "none": the values as given.

Ranks use every row at once. The map of a column depends only on that column's values, never on
the pairing, so a critic trained on some rows and scored on others still sees held-out pairs.
"""

from __future__ import annotations

import torch

from mimkd.errors import ConfigError

PREPROCESSORS = ("copula", "robust", "standardize", "none")
ROBUST_CLIP = 5.0


def preprocess_pairs(
    x: torch.Tensor, y: torch.Tensor, method: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `method` to each column of x [N, Dx] and y [N, Dy]; float32 out."""
    return preprocess(x, method, generator), preprocess(y, method, generator)


def preprocess(values: torch.Tensor, method: str, generator: torch.Generator) -> torch.Tensor:
    if method == "copula":
        return normal_scores(values, generator)
    if method == "robust":
        return robust_scale(values)
    if method == "standardize":
        centred = values - values.mean(0)
        return centred / values.std(0).clamp_min(1e-8)
    if method == "none":
        return values
    raise ConfigError(f"preprocess must be one of {', '.join(PREPROCESSORS)}; got {method!r}.")


def normal_scores(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Phi^-1(rank / (n + 1)) per column, ties in random order (the Gaussian copula transform)."""
    n = values.shape[0]
    columns = values.to(torch.float64)
    # a random permutation first, then a stable sort: tied values keep the random order
    shuffle = torch.randperm(n, generator=generator)
    order = shuffle[torch.argsort(columns[shuffle], dim=0, stable=True)]
    ranks = torch.empty_like(columns)
    positions = torch.arange(1, n + 1, dtype=torch.float64)[:, None].expand_as(columns)
    ranks.scatter_(0, order, positions.contiguous())
    return torch.special.ndtri(ranks / (n + 1)).to(torch.float32)


def robust_scale(values: torch.Tensor) -> torch.Tensor:
    median = values.median(0).values
    spread = (values - median).abs().median(0).values * 1.4826  # MAD -> sigma for a Gaussian
    scale = torch.where(spread > 0, spread, values.std(0)).clamp_min(1e-8)
    return ((values - median) / scale).clamp(-ROBUST_CLIP, ROBUST_CLIP)


__all__ = ["PREPROCESSORS", "normal_scores", "preprocess", "preprocess_pairs", "robust_scale"]
