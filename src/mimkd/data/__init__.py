"""Datasets in their real on-disk formats, and the loaders that feed the trainer.

A dataset builder returns a `DatasetBundle`: uint8 image tensors (or a file-streamed dataset for
collections too large for memory), labels, class names and normalisation statistics. The loaders in
`loader.py` turn them into normalised batches on the training device.
"""

from __future__ import annotations

import importlib
import pkgutil

from mimkd.data.base import (
    PAD_OR_RESIZE,
    RESIZE_CENTER_CROP,
    DatasetBundle,
    ImageTensors,
    load_dataset,
    prepare_images,
)
from mimkd.data.loader import DeviceLoader, make_loader
from mimkd.data.registry import DATASETS, register_dataset


def list_datasets():
    return DATASETS.entries()


def _import_all_readers() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name not in ("base", "loader", "registry", "augment"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_all_readers()

__all__ = [
    "DATASETS",
    "PAD_OR_RESIZE",
    "RESIZE_CENTER_CROP",
    "DatasetBundle",
    "DeviceLoader",
    "ImageTensors",
    "list_datasets",
    "load_dataset",
    "make_loader",
    "prepare_images",
    "register_dataset",
]
