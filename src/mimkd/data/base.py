"""What every reader returns, and the preprocessing done once at load time."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mimkd.data.registry import DATASETS
from mimkd.errors import ConfigError
from mimkd.serialization import sha256_of


@dataclass
class ImageTensors:
    """A split held in memory: uint8 images [N, C, H, W] and int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class DatasetBundle:
    name: str
    num_classes: int
    train: ImageTensors | Dataset
    test: ImageTensors | Dataset
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] = field(default_factory=list)
    source: str = ""  # the folder the files were read from
    # the files read: {"path", "bytes", "sha256"} each (`describe_files`); results.json keeps them
    files: list[dict] = field(default_factory=list)
    # the images' shape as the files hold them, before `prepare_images` (None: file-streamed)
    native_shape: tuple[int, int, int] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        split = self.train
        if isinstance(split, ImageTensors):
            return tuple(split.images.shape[1:])
        return split.image_shape  # file-streamed datasets declare theirs

    def input_facts(self) -> dict[str, Any]:
        """How an image becomes what the model reads, recorded with every run and export so a
        model file alone can be fed a new image exactly as evaluation feeds it (`mimkd predict`)."""
        in_memory = isinstance(self.test, ImageTensors)
        return {
            "input_shape": list(self.image_shape),
            "native_shape": list(self.native_shape) if self.native_shape else None,
            "resize": PAD_OR_RESIZE if in_memory else RESIZE_CENTER_CROP,
            "mean": [float(value) for value in self.mean],
            "std": [float(value) for value in self.std],
            "class_names": [str(name) for name in self.classes],
            "dataset": self.name,
        }


# how images reach the model's size: in-memory sets pad (grow) or resize (shrink) once at load
# (`prepare_images`); file-streamed sets resize the shorter side and centre-crop
PAD_OR_RESIZE = "pad_or_resize"
RESIZE_CENTER_CROP = "resize_center_crop"


def candidate_roots(explicit: str | None, *system_paths: str) -> list[Path]:
    """Where to look for files: an explicit data.root alone, else $MIMKD_DATA, then system
    locations. An explicit root is used or refused, never replaced by a copy found elsewhere:
    the user named those files."""
    if explicit:
        return [Path(explicit).expanduser()]
    roots = []
    if os.environ.get("MIMKD_DATA"):
        roots.append(Path(os.environ["MIMKD_DATA"]).expanduser())
    roots.extend(Path(p).expanduser() for p in system_paths)
    return roots


def describe_files(paths: list[Path]) -> list[dict]:
    """What a run records about the data files it read: path, size and SHA-256."""
    return [
        {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_of(path)}
        for path in paths
    ]


def default_download_root(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("MIMKD_DATA"):
        return Path(os.environ["MIMKD_DATA"]).expanduser()
    return Path("~/.cache/mimkd/data").expanduser()


def balanced_subset(split: ImageTensors, count: int, num_classes: int) -> ImageTensors:
    """The first `count` images taking the same number from each class (so a subset stays fair)."""
    if count <= 0 or count >= len(split):
        return split
    per_class = count // num_classes
    chosen = []
    for cls in range(num_classes):
        chosen.append(torch.nonzero(split.labels == cls).flatten()[:per_class])
    index = torch.sort(torch.cat(chosen)).values
    remainder = count - index.numel()
    if remainder > 0:
        rest = torch.ones(len(split), dtype=torch.bool)
        rest[index] = False
        index = torch.sort(torch.cat([index, torch.nonzero(rest).flatten()[:remainder]])).values
    return ImageTensors(split.images[index].clone(), split.labels[index].clone())


def prepare_images(images: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """Bring uint8 [N, C, H, W] to the requested size and channels once, at load time.

    Growing is zero padding around the centre (exact pixels; Fashion-MNIST's background is 0, so
    28 -> 32 is what CIFAR-zoo runs on it expect); shrinking is antialiased resizing.
    """
    if channels and images.shape[1] != channels:
        if images.shape[1] == 1:
            images = images.expand(-1, channels, -1, -1).contiguous()
        else:
            raise ConfigError(
                f"data.channels={channels} cannot be made from this dataset's "
                f"{images.shape[1]}-channel images; use data.channels=0 (native)."
            )
    height, width = images.shape[-2:]
    if image_size and (height, width) != (image_size, image_size):
        if image_size >= max(height, width):
            pad_h, pad_w = image_size - height, image_size - width
            images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        else:
            resized = F.interpolate(
                images.float(), size=(image_size, image_size), mode="bilinear", antialias=True
            )
            images = resized.round().clamp(0, 255).to(torch.uint8)
    return images


def load_dataset(
    name: str,
    root: str | None = None,
    download: bool = True,
    image_size: int = 0,
    channels: int = 0,
    train_subset: int = 0,
    test_subset: int = 0,
    **options: Any,
) -> DatasetBundle:
    """Read a dataset by name and apply size/channel conversion and subsetting."""
    entry = DATASETS.get(name)
    bundle: DatasetBundle = entry.builder(
        root=root, download=download, image_size=image_size, channels=channels, **options
    )
    if isinstance(bundle.test, ImageTensors):
        bundle.native_shape = tuple(int(d) for d in bundle.test.images.shape[1:])
    if isinstance(bundle.train, ImageTensors):
        bundle.train = balanced_subset(bundle.train, train_subset, bundle.num_classes)
        bundle.train.images = prepare_images(bundle.train.images, image_size, channels)
    if isinstance(bundle.test, ImageTensors):
        if test_subset and test_subset < len(bundle.test):
            bundle.test = ImageTensors(
                bundle.test.images[:test_subset].clone(), bundle.test.labels[:test_subset].clone()
            )
        bundle.test.images = prepare_images(bundle.test.images, image_size, channels)
    if channels and len(bundle.mean) != channels:
        bundle.mean = bundle.mean * channels if len(bundle.mean) == 1 else bundle.mean
        bundle.std = bundle.std * channels if len(bundle.std) == 1 else bundle.std
    return bundle
