"""Shared fixtures: small files in the real on-disk formats, generated per test session."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

# MIMKD_TEST_THREADS lets several test runs share a small machine without oversubscribing it
torch.set_num_threads(
    int(os.environ.get("MIMKD_TEST_THREADS", max(1, min(2, os.cpu_count() or 1))))
)

FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: magic (0x0000 08 ndim), big-endian dims, then the uint8 data; gzipped."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def synthetic_images(count: int, num_classes: int, size: int, channels: int, seed: int):
    """Learnable images: each class lights a different block of the image, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % num_classes
    images = rng.integers(0, 60, size=(count, channels, size, size)).astype(np.uint8)
    block = size // 4
    for index, label in enumerate(labels):
        row, col = divmod(int(label) % 16, 4)
        images[index, :, row * block : (row + 1) * block, col * block : (col + 1) * block] = 220
    return images, labels.astype(np.int64)


@pytest.fixture(scope="session")
def idx_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fashion")
    for split, count, seed in (("train", 400, 0), ("t10k", 200, 1)):
        images, labels = synthetic_images(count, 10, 28, 1, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images[:, 0])
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after: small matmuls (critic steps, small-batch
    distiller steps) where a second OpenMP thread only spins on a busy 2-core machine. Use it
    with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def train_run(idx_folder):
    """`train_run(folder, *settings, data_root=None) -> best.pt`: one epoch of `mimkd train` on
    the generated Fashion-MNIST files (or `data_root`), through the CLI, compile off."""
    from mimkd.cli import main

    def train(folder: Path, *settings: str, data_root: Path | None = None) -> Path:
        code = main(
            [
                "train",
                "model=cnn_tiny",
                f"data.root={data_root or idx_folder}",
                "data.download=false",
                "epochs=1",
                "progress=false",
                "compile=false",
                f"run_dir={folder}",
                *settings,
            ]
        )
        assert code == 0
        return folder / "best.pt"

    return train


def write_cifar(root: Path, name: str, train_count: int = 60, test_count: int = 20) -> Path:
    """torchvision's pickle layout: dicts with bytes keys, data as [N, 3072] uint8 rows."""
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        per_batch = train_count // 5
        for index in range(1, 6):
            images, labels = synthetic_images(per_batch, 10, 32, 3, index)
            record = {
                b"data": images.reshape(per_batch, -1),
                b"labels": labels.tolist(),
                b"batch_label": b"x",
            }
            (folder / f"data_batch_{index}").write_bytes(pickle.dumps(record))
        images, labels = synthetic_images(test_count, 10, 32, 3, 9)
        (folder / "test_batch").write_bytes(
            pickle.dumps({b"data": images.reshape(test_count, -1), b"labels": labels.tolist()})
        )
        (folder / "batches.meta").write_bytes(
            pickle.dumps({b"label_names": [f"c{i}" for i in range(10)]})
        )
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for split, count, seed in (("train", train_count, 0), ("test", test_count, 1)):
            images, labels = synthetic_images(count, 100, 32, 3, seed)
            record = {
                b"data": images.reshape(count, -1),
                b"fine_labels": labels.tolist(),
                b"coarse_labels": (labels // 5).tolist(),
            }
            (folder / split).write_bytes(pickle.dumps(record))
        (folder / "meta").write_bytes(
            pickle.dumps({b"fine_label_names": [f"c{i}" for i in range(100)]})
        )
    return folder


@pytest.fixture(scope="session")
def fashion_available() -> Path:
    if not FASHION_DEBIAN.is_dir():
        pytest.fail(
            "the Fashion-MNIST files are missing: run `apt-get install dataset-fashion-mnist` (.ci/run does)"
        )
    return FASHION_DEBIAN
