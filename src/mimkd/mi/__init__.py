"""Mutual-information bounds and critic networks: what the MIMKD loss is made of.

`bounds` holds the variational lower bounds as functions of critic scores (JSD, InfoNCE, NWJ,
DV/MINE, SMILE); `critics` the separable and concat critics. The estimation tool that reports MI
in nats (`mimkd mi estimate`) is built on these and lives beside the CLI, in `mimkd.estimate`.
"""

from mimkd.mi.bounds import (
    DVMovingAverage,
    diagonal_split,
    dv_bound,
    infonce_bound,
    infonce_bound_from_candidates,
    jsd_bound,
    jsd_loss,
    nwj_bound,
    smile_bound,
    with_gradient_of,
)
from mimkd.mi.critics import ConcatCritic, Encoder, SeparableCritic, build_critic

__all__ = [
    "ConcatCritic",
    "DVMovingAverage",
    "Encoder",
    "SeparableCritic",
    "build_critic",
    "diagonal_split",
    "dv_bound",
    "infonce_bound",
    "infonce_bound_from_candidates",
    "jsd_bound",
    "jsd_loss",
    "nwj_bound",
    "smile_bound",
    "with_gradient_of",
]
