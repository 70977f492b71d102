"""Mutual information in nats, as a tool of its own (`mimkd mi estimate|layers`).

Data flows in the order of the modules: `pairs` reads paired rows, `preprocess` maps each variable
by a transform MI permits (the copula transform by default), `choose` picks the estimator for
"auto", `ksg` (k-nearest neighbours, low dimension), `gaussian` (the Gaussian-copula closed form)
or `neural` (a fresh critic from `mimkd.mi`'s critics and bounds, trained on one split, evaluated
on another) produces the number (`subsets` gives the first two their standard errors), `core`
ties them into `estimate_mi` and has `auto` report the closed form when neither KSG nor a critic
finds anything beyond it, `report` prints and writes it, `layers` applies it between two networks,
and `command` is the CLI's side of it.
"""

from mimkd.estimate.core import (
    MIN_PAIRS,
    MIEstimate,
    estimate_mi,
    estimator_descriptions,
    estimator_names,
)
from mimkd.estimate.layers import LayerMIRow, format_layer_table, layer_mi, pair_by_depth
from mimkd.estimate.neural import ESTIMATORS
from mimkd.estimate.pairs import load_pairs
from mimkd.estimate.report import format_estimate, write_estimate

__all__ = [
    "ESTIMATORS",
    "MIN_PAIRS",
    "LayerMIRow",
    "MIEstimate",
    "estimate_mi",
    "estimator_descriptions",
    "estimator_names",
    "format_estimate",
    "format_layer_table",
    "layer_mi",
    "load_pairs",
    "pair_by_depth",
    "write_estimate",
]
