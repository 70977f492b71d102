"""CIFAR-10/100 from torchvision's python-pickle folders (cifar-10-batches-py, cifar-100-python).

We parse the pickles ourselves instead of using torchvision's dataset classes, whose md5 checks
reject any file but the official ones; torchvision still does the downloading. A pickle can carry
code (`pickle.load` runs any callable the file names), so ours resolves only the globals CIFAR's
format needs (`CifarUnpickler`): a poisoned batch file is refused before anything in it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from mimkd.data.base import (
    DatasetBundle,
    ImageTensors,
    candidate_roots,
    default_download_root,
    describe_files,
)
from mimkd.data.registry import register_dataset
from mimkd.errors import DataError

LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "labels": "labels",
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
        "num_classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "labels": "fine_labels",
        # RepDistiller / CRD normalisation (REFERENCE.md)
        "mean": (0.5071, 0.4867, 0.4408),
        "std": (0.2675, 0.2565, 0.2761),
        "num_classes": 100,
    },
}


def _hint(name: str) -> str:
    folder = LAYOUT[name]["folder"]
    return (
        f"put torchvision's {folder}/ folder under data.root or $MIMKD_DATA, "
        "or allow download (data.download=true) when online"
    )


# What a CIFAR batch holds: dicts, lists, bytes, str, ints and numpy uint8 arrays. Arrays unpickle
# through numpy's reconstruction and dtype (numpy 1 and 2 module names; `_frombuffer` at pickle
# protocol 5), and bytes through `_codecs.encode` at protocols 0-2. Any other global is a call the
# file asks for, i.e. code: refused before it runs.
ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualified_name = f"{module}.{name}"


class CifarUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only `ALLOWED_GLOBALS`: loading a file never runs code."""

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise RefusedGlobal(module, name)


def _unpickle(path: Path, name: str) -> dict:
    try:
        with open(path, "rb") as handle:
            record = CifarUnpickler(handle, encoding="latin1").load()
    except RefusedGlobal as refused:
        raise DataError(
            f"{path} is not a CIFAR batch: its pickle calls {refused.qualified_name}, which CIFAR "
            f"data never does (it was not run); delete the file and {_hint(name)}."
        ) from None
    except Exception as error:  # a damaged pickle fails in many ways (EOF, memo keys, values)
        raise DataError(
            f"{path} is truncated or corrupt ({str(error).strip() or type(error).__name__}); "
            f"delete it and {_hint(name)}."
        ) from None
    if not isinstance(record, dict):
        raise DataError(f"{path} is not a CIFAR batch (expected a dict); {_hint(name)}.")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in record.items()}


def read_split(folder: Path, name: str, files: list[str]) -> ImageTensors:
    layout = LAYOUT[name]
    images, labels = [], []
    for file in files:
        record = _unpickle(folder / file, name)
        if "data" not in record or layout["labels"] not in record:
            raise DataError(f"{folder / file} lacks 'data'/{layout['labels']!r}; {_hint(name)}.")
        try:
            data = np.asarray(record["data"], dtype=np.uint8)
            file_labels = np.asarray(record[layout["labels"]], dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            data = file_labels = np.zeros(())  # reported below as the wrong shape
        if (
            data.ndim != 2
            or data.shape[1] != 3 * 32 * 32
            or file_labels.ndim != 1
            or data.shape[0] != file_labels.shape[0]
        ):
            raise DataError(
                f"{folder / file} has data of shape {data.shape}; expected [N, 3072]. {_hint(name)}."
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(file_labels)
    return ImageTensors(
        torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
    )


def _not_found(name: str, root: str | None) -> str:
    layout = LAYOUT[name]
    if not root:
        return f"{name} files not found in $MIMKD_DATA or ~/.cache/mimkd/data"
    folder = Path(root).expanduser() / layout["folder"]
    missing = [f for f in layout["train"] + layout["test"] if not (folder / f).is_file()]
    return f"{name} files not found in data.root={root}: {folder} lacks {', '.join(missing)}"


def _load(name: str, root: str | None, download: bool) -> DatasetBundle:
    layout = LAYOUT[name]
    needed = layout["train"] + layout["test"]
    folder = None
    for candidate in candidate_roots(root, "~/.cache/mimkd/data"):
        if all((candidate / layout["folder"] / f).is_file() for f in needed):
            folder = candidate / layout["folder"]
            break
    if folder is None:
        if not download:
            raise DataError(f"{_not_found(name, root)}; {_hint(name)}.")
        target = default_download_root(root)
        try:
            from torchvision import datasets

            dataset_class = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            dataset_class(str(target), train=True, download=True)
        except Exception as error:  # network failures come in many types
            raise DataError(
                f"{_not_found(name, root)} and downloading failed ({error}); {_hint(name)}."
            ) from None
        folder = target / layout["folder"]
    classes: list[str] = []
    meta_file, meta_key = layout["meta"]
    read = [folder / f for f in needed]
    if (folder / meta_file).is_file():
        classes = list(_unpickle(folder / meta_file, name).get(meta_key, []))
        read.append(folder / meta_file)
    return DatasetBundle(
        name=name,
        num_classes=layout["num_classes"],
        train=read_split(folder, name, layout["train"]),
        test=read_split(folder, name, layout["test"]),
        mean=layout["mean"],
        std=layout["std"],
        classes=classes,
        source=str(folder),
        files=describe_files(read),
    )


@register_dataset("cifar10", num_classes=10, image_size=32)
def cifar10(root=None, download=True, **_) -> DatasetBundle:
    """CIFAR-10: 50k/10k 32x32 colour images, 10 classes (torchvision pickle format)."""
    return _load("cifar10", root, download)


@register_dataset("cifar100", num_classes=100, image_size=32)
def cifar100(root=None, download=True, **_) -> DatasetBundle:
    """CIFAR-100: 50k/10k 32x32 colour images, 100 classes (torchvision pickle format)."""
    return _load("cifar100", root, download)
