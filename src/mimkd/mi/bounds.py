"""Variational lower bounds on mutual information, as plain functions of critic scores.

A critic T(x, y) scores a pair; *positives* are pairs drawn from the joint p(x, y), *negatives* from
the product of marginals p(x)p(y) (in practice: x_i paired with y_j of another row). Every bound
here takes either

- the paired form: `positive_scores` (any shape) and `negative_scores` (any shape), each averaged
  over its own pairs, or
- the score-matrix form: `scores[i, j, ...] = T(x_i, y_j)` with positives on the diagonal; split it
  with `diagonal_split(scores)` (trailing dims, e.g. locations, are kept as extra pairs).

Bounds return the *bound* (higher is better, nats except JSD); a training loss is its negation.
References: Poole et al., "On Variational Bounds of Mutual Information", ICML 2019 (the common
frame and the names used here); Hjelm et al., "Deep InfoMax", ICLR 2019; Belghazi et al.,
"MINE", ICML 2018; Song & Ermon, "Understanding the Limitations of Variational Mutual Information
Estimators", ICLR 2020.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mimkd.errors import ShapeError


def diagonal_split(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a score matrix [N, N, ...] into positives [N, ...] and negatives [N * (N - 1), ...]."""
    if scores.dim() < 2 or scores.shape[0] != scores.shape[1]:
        raise ShapeError(f"expected a square score matrix [N, N, ...], got {tuple(scores.shape)}")
    n = scores.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=scores.device)
    return torch.diagonal(scores, dim1=0, dim2=1).movedim(-1, 0), scores[off_diagonal]


def log_mean_exp(values: torch.Tensor) -> torch.Tensor:
    """log E[e^v] over every element, computed stably (logsumexp minus log count)."""
    flat = values.reshape(-1)
    return torch.logsumexp(flat, dim=0) - math.log(flat.numel())


def jsd_bound(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon bound of Deep InfoMax (Hjelm et al. 2019, eq. 4; Nowozin et al. 2016).

    I_JSD = E_pos[-softplus(-T)] - E_neg[softplus(T)]. It is binary cross-entropy with logits
    (positives labelled 1, negatives 0) negated, each side averaged over its own pairs; it is not in
    nats and saturates at 0 (perfect separation); at T = 0 everywhere it is -2 log 2.
    """
    positive_term = -F.softplus(-positive_scores.float()).mean()
    negative_term = F.softplus(negative_scores.float()).mean()
    return positive_term - negative_term


def jsd_loss(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """L_MI = -I_JSD = E_pos[sp(-T)] + E_neg[sp(T)] (MIMKD.md); 2 log 2 at chance."""
    return -jsd_bound(positive_scores, negative_scores)


def infonce_bound(scores: torch.Tensor) -> torch.Tensor:
    """InfoNCE (van den Oord et al. 2018; Poole et al. section 2.3) from scores [N, N].

    I_NCE = log N + mean_i [T_ii - log sum_j e^{T_ij}]. Each row's term is a log-softmax, so the
    bound never exceeds log N however large the positive scores are.
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ShapeError(f"InfoNCE needs a square score matrix [N, N], got {tuple(scores.shape)}")
    scores = scores.float()
    log_softmax = scores - torch.logsumexp(scores, dim=1, keepdim=True)
    return torch.diagonal(log_softmax).mean() + math.log(scores.shape[0])


def infonce_bound_from_candidates(
    positive_scores: torch.Tensor, negative_scores: torch.Tensor
) -> torch.Tensor:
    """InfoNCE with K negatives per anchor: positives [N], negatives [N, K]; <= log(K + 1)."""
    candidates = torch.cat([positive_scores.float()[:, None], negative_scores.float()], dim=1)
    log_softmax = candidates[:, 0] - torch.logsumexp(candidates, dim=1)
    return log_softmax.mean() + math.log(candidates.shape[1])


def nwj_bound(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """NWJ / f-GAN KL bound (Nguyen, Wainwright, Jordan 2010; Poole et al. section 2.2, with
    the f-divergence form e^{T-1}).

    I_NWJ = E_pos[T] - E_neg[e^{T - 1}]; tight at T* = 1 + log p(x,y)/(p(x)p(y)).
    """
    negative_term = torch.exp(log_mean_exp(negative_scores.float() - 1.0))
    return positive_scores.float().mean() - negative_term


def dv_bound(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """Donsker-Varadhan bound (MINE's estimate, Belghazi et al. 2018 section 3.1).

    I_DV = E_pos[T] - log E_neg[e^T]; invariant to shifting T by a constant. Its minibatch gradient
    is biased (the log of a mean): train with `DVMovingAverage` for MINE's correction.
    """
    return positive_scores.float().mean() - log_mean_exp(negative_scores.float())


def smile_bound(
    positive_scores: torch.Tensor, negative_scores: torch.Tensor, clip: float = 5.0
) -> torch.Tensor:
    """SMILE (Song & Ermon 2020, section 5): DV with e^T clipped to [e^-tau, e^tau] in log E_neg.

    I_SMILE = E_pos[T] - log E_neg[clip(e^T, e^-tau, e^tau)]. Clipping bounds the variance of the
    partition estimate (tau -> inf recovers DV). As a training objective it is unbounded above
    (positives can rise while clipped negatives give no gradient), so Song & Ermon train the critic
    with the JSD gradient: see `with_gradient_of` and the "smile" estimator.
    """
    clipped = negative_scores.float().clamp(-clip, clip)
    return positive_scores.float().mean() - log_mean_exp(clipped)


def with_gradient_of(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """A tensor whose value is `value` and whose gradient is `surrogate`'s.

    Song & Ermon's SMILE code and the "jsd-dv" estimator report one bound while training the critic
    with another (the JSD gradient is low-variance; the DV value is in nats).
    """
    return surrogate + (value - surrogate).detach()


class DVMovingAverage(nn.Module):
    """MINE's bias-corrected DV gradient (Belghazi et al. 2018, section 3.2).

    The gradient of log E_neg[e^T] is E_neg[grad e^T] / E_neg[e^T]; on a minibatch the denominator
    is noisy and the gradient biased, so MINE replaces it by an exponential moving average over
    steps. The average is kept in log space (no overflow for large scores) as a buffer, updated
    in place (no host sync). Calling the module returns a surrogate *bound* whose value is the
    minibatch DV bound and whose gradient uses the moving-average denominator; minimise its
    negation.
    """

    def __init__(self, momentum: float = 0.99):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("log_average", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
        batch_log_mean = log_mean_exp(negative_scores.float())
        if self.training:
            with torch.no_grad():
                blended = torch.logaddexp(
                    self.log_average + math.log(self.momentum),
                    batch_log_mean.detach() + math.log1p(-self.momentum),
                )
                updated = torch.where(self.initialized, blended, batch_log_mean.detach())
                self.log_average.copy_(updated)
                self.initialized.fill_(True)
        # exp(lme - log_avg) has gradient grad(E e^T) / avg: the corrected denominator
        ratio = torch.exp(batch_log_mean - self.log_average)
        partition = batch_log_mean.detach() + (ratio - ratio.detach())
        return positive_scores.float().mean() - partition


__all__ = [
    "DVMovingAverage",
    "diagonal_split",
    "dv_bound",
    "infonce_bound",
    "infonce_bound_from_candidates",
    "jsd_bound",
    "jsd_loss",
    "log_mean_exp",
    "nwj_bound",
    "smile_bound",
    "with_gradient_of",
]
