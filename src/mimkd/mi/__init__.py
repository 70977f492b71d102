"""Mutual-information bounds, critic networks and the standalone MI estimation tool.

`bounds` holds the variational lower bounds as functions of critic scores (JSD, InfoNCE, NWJ,
DV/MINE, SMILE); `critics` the separable and concat critics; `estimate` trains a fresh critic to
report MI in nats with a bootstrap interval, for pairs of arrays or layer by layer between two
networks.
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
from mimkd.mi.estimate import (
    ESTIMATORS,
    LayerMIRow,
    MIEstimate,
    estimate_mi,
    estimator_names,
    layer_mi,
    load_pairs,
    write_estimate,
)

__all__ = [
    "ESTIMATORS",
    "ConcatCritic",
    "DVMovingAverage",
    "Encoder",
    "LayerMIRow",
    "MIEstimate",
    "SeparableCritic",
    "build_critic",
    "diagonal_split",
    "dv_bound",
    "estimate_mi",
    "estimator_names",
    "infonce_bound",
    "infonce_bound_from_candidates",
    "jsd_bound",
    "jsd_loss",
    "layer_mi",
    "load_pairs",
    "nwj_bound",
    "smile_bound",
    "with_gradient_of",
    "write_estimate",
]
