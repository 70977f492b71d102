"""The training engine: run assembly, the loop, precision, compile, DDP, checkpoints, reports."""

from mimkd.engine.build import build_run
from mimkd.engine.trainer import RunParts, Trainer, TrainResult

__all__ = ["RunParts", "TrainResult", "Trainer", "build_run"]
