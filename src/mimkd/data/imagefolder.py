"""ImageNet-style folders: <root>/train/<class>/*.jpg and <root>/val/<class>/*.jpg.

Too large to hold in memory, so images stream from files: decoded with torchvision.io, cropped
and resized per sample in DataLoader workers to uint8, normalised on the device by the loader.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from mimkd.data.base import DatasetBundle
from mimkd.data.registry import register_dataset
from mimkd.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFiles(Dataset):
    """One split of an image folder, yielding (uint8 [3, S, S], label, index)."""

    def __init__(self, folder: Path, classes: list[str], image_size: int, train_augment: bool):
        class_to_index = {name: index for index, name in enumerate(classes)}
        try:
            self.samples = make_dataset(str(folder), class_to_index, extensions=IMG_EXTENSIONS)
        except (FileNotFoundError, OSError) as error:
            raise DataError(f"{folder}: {error}. Each class needs a folder with images.") from None
        self.image_size = image_size
        if train_augment:
            self.transform = v2.Compose(
                [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
            )
        else:
            # the standard 0.875 centre crop (256 -> 224)
            self.transform = v2.Compose(
                [v2.Resize(round(image_size / 0.875), antialias=True), v2.CenterCrop(image_size)]
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = decode_image(read_file(path), mode=ImageReadMode.RGB)
        except (RuntimeError, OSError) as error:
            raise DataError(
                f"image {path} is corrupt or unreadable ({error}); replace or delete it."
            ) from None
        return self.transform(image), label, index


@register_dataset("imagefolder", num_classes=0, image_size=224)
def imagefolder(root=None, download=False, image_size=0, augment="crop_flip", **_) -> DatasetBundle:
    """Your own images, ImageNet layout: root/train/<class>/ and root/val/<class>/ (streamed)."""
    if not root:
        raise DataError(
            "imagefolder needs data.root=PATH, a folder with train/ and val/ class folders."
        )
    base = Path(root).expanduser()
    for split in ("train", "val"):
        if not (base / split).is_dir():
            raise DataError(
                f"{base / split} is missing; imagefolder expects {base}/train/<class>/ and {base}/val/<class>/."
            )
    classes, _ = find_classes(str(base / "train"))
    val_classes, _ = find_classes(str(base / "val"))
    if val_classes != classes:
        raise DataError(
            f"{base}: train/ and val/ have different class folders; make them the same."
        )
    size = image_size or 224
    return DatasetBundle(
        name="imagefolder",
        num_classes=len(classes),
        train=ImageFiles(base / "train", classes, size, train_augment=augment != "none"),
        test=ImageFiles(base / "val", classes, size, train_augment=False),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        classes=classes,
        source=str(base),
    )
