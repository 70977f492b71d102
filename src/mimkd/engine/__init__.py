"""The training engine: optimisation, precision, checkpoints, logging, progress and reports."""

from mimkd.engine.trainer import Trainer, TrainResult

__all__ = ["TrainResult", "Trainer"]
