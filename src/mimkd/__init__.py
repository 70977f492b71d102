"""mimkd: knowledge distillation for PyTorch, headlined by MIMKD.

Public API: `distill`, `train` (runs), `create_model`/`list_models` (models), `load_dataset`
(data), `create_distiller`/`list_distillers` (methods), `Trainer` (the loop itself).
"""

from mimkd.api import distill, train
from mimkd.data import load_dataset
from mimkd.distillers import create_distiller, list_distillers
from mimkd.engine import Trainer
from mimkd.errors import MimkdError
from mimkd.models import create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "MimkdError",
    "Trainer",
    "create_distiller",
    "create_model",
    "distill",
    "list_distillers",
    "list_models",
    "load_dataset",
    "train",
]
