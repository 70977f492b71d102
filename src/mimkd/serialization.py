"""Files that hold tensors: atomic writes, loading that never runs code, fingerprints.

The bottom layer: every package that reads or writes a model file (models, engine, export, the
tools) uses these, so none of them has to reach into another's internals. A checkpoint is plain data
(tensors, numbers, strings, lists, dicts) and loads with `torch.load(weights_only=True)`: opening a
file never runs code from it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from mimkd.errors import CheckpointError

# what `Trainer` writes into every checkpoint's "format" field
CHECKPOINT_FORMAT = "mimkd-checkpoint-v1"


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash leaves old or new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)` with one-line errors for missing and damaged files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist; check the path (runs keep theirs in "
            "<run_dir>/last.pt and best.pt)."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged zip/pickle
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a PyTorch file ({first_line}); use "
            "another checkpoint or retrain."
        ) from None


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = ["CHECKPOINT_FORMAT", "atomic_save", "load_checkpoint", "sha256_of"]
