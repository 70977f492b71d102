"""A picture file -> the tensor the model's evaluation saw for a dataset image.

Evaluation feeds a model dataset images as uint8, converted once (`data.prepare_images`: zero
padding when growing, antialiased resizing when shrinking, grey repeated to RGB) and normalised
on the device (`data.loader.Normalizer`). A user's picture has any size and mode, so it is first
brought to what the dataset's own images are (the native mode and size: Fashion-MNIST's 1x28x28,
CIFAR's 3x32x32), then goes through those same two functions. Image folders are decoded to RGB
and resized/centre-cropped exactly as their evaluation transform does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from mimkd.data import RESIZE_CENTER_CROP, prepare_images
from mimkd.data.loader import Normalizer
from mimkd.deploy.card import ModelCard
from mimkd.errors import DataError
from mimkd.serialization import check_readable_file

# imagefolder's evaluation transform: the standard 0.875 centre crop (256 -> 224)
CENTER_CROP_FRACTION = 0.875


def read_image(path: str | Path, channels: int) -> torch.Tensor:
    """Decode a PNG/JPEG (any mode) with Pillow to uint8 [channels, H, W]; one-line errors."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = check_readable_file(path, "image", "check the path")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)  # as a viewer shows it
            image.load()
            array = _to_uint8(image, channels)
    except UnidentifiedImageError:
        raise DataError(
            f"{str(path)!r} is not an image Pillow can read; pass PNG or JPEG files."
        ) from None
    except (OSError, ValueError, SyntaxError) as error:  # truncated or damaged image data
        raise DataError(f"image {str(path)!r} is damaged ({error}); pass another file.") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _to_uint8(image, channels: int) -> np.ndarray:
    """HxWxC uint8. Pillow's convert clips 16-bit and float greys, so those are scaled here."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = values.max() if values.size else 0.0
        if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
            values = values * (255.0 / 65535.0)
        elif image.mode == "F" and peak <= 1.0:
            values = values * 255.0
        grey = np.clip(np.round(values), 0, 255).astype(np.uint8)[:, :, None]
        return np.repeat(grey, channels, axis=2) if channels == 3 else grey
    converted = image.convert("L" if channels == 1 else "RGB")
    array = np.array(converted, dtype=np.uint8)  # a writable copy for torch
    return array[:, :, None] if array.ndim == 2 else array


def to_native(image: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """uint8 [C, H, W] of any size -> what evaluation starts from for this model's dataset."""
    if card.resize == RESIZE_CENTER_CROP:
        size = card.input_shape[1]
        transform = v2.Compose(
            [
                v2.Resize(round(size / CENTER_CROP_FRACTION), antialias=True),
                v2.CenterCrop(size),
            ]
        )
        return transform(image)
    native = card.native_shape or card.input_shape
    height, width = native[1], native[2]
    if tuple(image.shape[1:]) == (height, width):
        return image
    # shorter side to the native size, then the centre: the picture keeps its proportions
    resized = TF.resize(image, [min(height, width)], antialias=True)
    return TF.center_crop(resized, [height, width])


def native_channels(card: ModelCard) -> int:
    if card.resize == RESIZE_CENTER_CROP:
        return 3  # image folders decode to RGB
    return (card.native_shape or card.input_shape)[0]


def to_model_input(native_images: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """uint8 [N, C, H, W] native images -> the normalised float batch evaluation feeds the model."""
    channels, size, _ = card.input_shape
    prepared = prepare_images(native_images, size, channels)
    return Normalizer(card.mean, card.std, "cpu", channels_last=False)(prepared)


def load_images(paths: Sequence[str | Path], card: ModelCard) -> torch.Tensor:
    """Picture files -> one normalised batch the model reads."""
    channels = native_channels(card)
    natives = [to_native(read_image(path, channels), card) for path in paths]
    return to_model_input(torch.stack(natives), card)
