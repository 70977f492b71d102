"""mimkd: knowledge distillation for PyTorch, headlined by MIMKD.

Public API: `distill`, `train` (runs), `create_model`/`list_models` (models), `load_dataset`
(data), `create_distiller`/`list_distillers` (methods), `build_run`/`Trainer` (the loop itself),
`estimate_mi` (mutual information in nats).

Names are imported on first use (PEP 562), so `import mimkd.models` loads the models and nothing
above them: the package root never drags the engine into a lower layer.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "MimkdError": "mimkd.errors",
    "Trainer": "mimkd.engine",
    "build_run": "mimkd.engine",
    "create_distiller": "mimkd.distillers",
    "create_model": "mimkd.models",
    "distill": "mimkd.api",
    "estimate_mi": "mimkd.estimate",
    "list_distillers": "mimkd.distillers",
    "list_models": "mimkd.models",
    "load_dataset": "mimkd.data",
    "train": "mimkd.api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mimkd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
