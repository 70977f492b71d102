"""Mutual information in nats, as a tool of its own (`mimkd mi estimate|layers`).

Built on `mimkd.mi`'s bounds and critics: a fresh critic is trained on one split and the bound is
evaluated on another. `core` estimates MI between paired arrays and layer by layer between two
networks; `command` is the CLI's side of it (files, tables, plots).
"""

from mimkd.estimate.core import (
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
    "LayerMIRow",
    "MIEstimate",
    "estimate_mi",
    "estimator_names",
    "layer_mi",
    "load_pairs",
    "write_estimate",
]
