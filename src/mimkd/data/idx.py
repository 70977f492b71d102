"""Fashion-MNIST (and MNIST) from the standard IDX files, gzipped or not.

An explicit data.root is the only place looked in (the folder itself, <root>/fashion-mnist or
torchvision's <root>/FashionMNIST/raw); without one: $MIMKD_DATA, the Debian package's
/usr/share/datasets/fashion-mnist, ~/.cache/mimkd/data. Downloads through torchvision (into
data.root when given) when allowed. The files read are recorded with their SHA-256.
"""

from __future__ import annotations

import gzip
import struct
import zlib
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

IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
DEBIAN_PATH = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), set $MIMKD_DATA "
    "to a folder with the four IDX .gz files, or allow download (data.download=true) when online"
)


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (big-endian magic, dims, then uint8 data) into an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"{path} is truncated or corrupt ({error}); delete it and {INSTALL_HINT}."
        ) from None
    if len(raw) < 8:
        raise DataError(f"{path} is too short to be an IDX file; delete it and {INSTALL_HINT}.")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic not in (IMAGE_MAGIC, LABEL_MAGIC):
        raise DataError(f"{path} is not an IDX ubyte file (magic {magic:#010x}); {INSTALL_HINT}.")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path} holds {len(raw) - header} bytes of data but its header promises {expected} "
            f"(truncated?); delete it and {INSTALL_HINT}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _layouts(root: Path) -> tuple[Path, ...]:
    return (root, root / "fashion-mnist", root / "FashionMNIST" / "raw")


def _missing(folder: Path) -> list[str]:
    return [
        name
        for name in FILES.values()
        if not ((folder / f"{name}.gz").is_file() or (folder / name).is_file())
    ]


def find_idx_folder(roots: list[Path]) -> Path | None:
    for root in roots:
        for folder in _layouts(root):
            if not _missing(folder):
                return folder
    return None


def _not_in_root(root: str) -> str:
    """What an explicit data.root lacks, for the one-line error."""
    base = Path(root).expanduser()
    if not base.is_dir():
        return f"data.root={root} is not a folder"
    folder = min(_layouts(base), key=lambda candidate: len(_missing(candidate)))
    missing = _missing(folder)
    listed = ", ".join(f"{name}[.gz]" for name in missing)
    return f"data.root={root} lacks {len(missing)} of the 4 Fashion-MNIST IDX files ({listed} in {folder})"


def _file(folder: Path, name: str) -> Path:
    gz = folder / f"{name}.gz"
    return gz if gz.is_file() else folder / name


def read_idx_folder(folder: Path) -> tuple[ImageTensors, ImageTensors]:
    arrays = {key: read_idx(_file(folder, name)) for key, name in FILES.items()}
    splits = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{folder}: {split} images {images.shape} and labels {labels.shape} do not pair up; "
                f"{INSTALL_HINT}."
            )
        splits.append(
            ImageTensors(
                torch.from_numpy(images.copy()).unsqueeze(1),
                torch.from_numpy(labels.astype(np.int64)),
            )
        )
    return splits[0], splits[1]


def _download(root: Path, missing: str, hint: str) -> Path:
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as error:  # network failures come in many types
        raise DataError(
            f"{missing} and downloading failed ({str(error).strip() or type(error).__name__}); "
            f"{hint}."
        ) from None
    return root / "FashionMNIST" / "raw"


@register_dataset("fashion_mnist", num_classes=10, image_size=28)
def fashion_mnist(root=None, download=True, **_) -> DatasetBundle:
    """Fashion-MNIST: 60k/10k 28x28 grey images of clothing, 10 classes (IDX files)."""
    folder = find_idx_folder(candidate_roots(root, DEBIAN_PATH, "~/.cache/mimkd/data"))
    if folder is None:
        if root:
            missing = _not_in_root(root)
            hint = (
                f"put them there, or leave data.root unset to use $MIMKD_DATA or {DEBIAN_PATH} "
                "(apt-get install dataset-fashion-mnist)"
            )
        else:
            missing = f"Fashion-MNIST IDX files not found in $MIMKD_DATA or {DEBIAN_PATH}"
            hint = INSTALL_HINT
        if not download:
            raise DataError(f"{missing}; {hint}.")
        folder = _download(default_download_root(root), missing, hint)
    train, test = read_idx_folder(folder)
    return DatasetBundle(
        name="fashion_mnist",
        num_classes=10,
        train=train,
        test=test,
        mean=(0.2860,),
        std=(0.3530,),
        classes=list(FASHION_CLASSES),
        source=str(folder),
        files=describe_files([_file(folder, name) for name in FILES.values()]),
    )
