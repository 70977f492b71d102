"""Run benchmark-mi's neural estimators (its defaults) on saved samples; one JSON line per result.

Needs only benchmark-mi and numpy, so it runs in benchmark-mi's own environment (jax 0.4.20 and
friends, see `benchmarks/mi_bmi.py`), called by `mi_bmi.py` as a subprocess:

    .bmi/bin/python benchmarks/mi_bmi_worker.py samples/*.npz > bmi.jsonl

Each .npz holds `x` and `y`; a line is {"file", "estimator", "mi", "seconds"}.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np

ESTIMATORS = ("InfoNCEEstimator", "NWJEstimator", "DonskerVaradhanEstimator", "MINEEstimator")


def main(paths: list[str]) -> None:
    warnings.filterwarnings("ignore")
    import bmi  # imported here: jax start-up is slow and `--help`-style calls should not pay it

    for path in paths:
        with np.load(path) as data:
            x, y = data["x"], data["y"]
        for name in ESTIMATORS:
            estimator = getattr(bmi.estimators, name)(verbose=False)
            started = time.perf_counter()
            value = float(estimator.estimate(x, y))
            seconds = time.perf_counter() - started
            record = {"file": path, "estimator": name, "mi": value, "seconds": seconds}
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
