"""Batched augmentation as tensor ops on the device (airbench-style, no per-sample Python).

`random_crop_flip` draws, per sample, a crop offset uniform in [0, 2*padding] on each axis of the
zero-padded image and a flip with probability 1/2: the same distribution as torchvision's
RandomCrop(size, padding) + RandomHorizontalFlip(), for a whole batch in a few kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def draw_crop_flip(
    batch_size: int, padding: int, generator: torch.Generator, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (row offset, column offset, flip) drawn from `generator`."""
    offsets = torch.randint(0, 2 * padding + 1, (2, batch_size), generator=generator, device=device)
    flips = torch.randint(0, 2, (batch_size,), generator=generator, device=device).bool()
    return offsets[0], offsets[1], flips


def crop_flip(
    images: torch.Tensor, padding: int, rows: torch.Tensor, cols: torch.Tensor, flips: torch.Tensor
) -> torch.Tensor:
    """Apply given offsets/flips to [B, C, H, W] images (zero padding, as RandomCrop's default)."""
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    row_index = rows[:, None] + torch.arange(height, device=images.device)  # [B, H]
    col_index = cols[:, None] + torch.arange(width, device=images.device)  # [B, W]
    # a flipped crop reads its columns right to left
    col_index = torch.where(flips[:, None], col_index.flip(1), col_index)
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    # advanced indexing around the channel slice puts the indexed dims first: [B, H, W, C]
    cropped = padded[batch_index, :, row_index[:, :, None], col_index[:, None, :]]
    return cropped.permute(0, 3, 1, 2)


def random_crop_flip(
    images: torch.Tensor, padding: int, generator: torch.Generator
) -> torch.Tensor:
    rows, cols, flips = draw_crop_flip(images.shape[0], padding, generator, images.device)
    return crop_flip(images, padding, rows, cols, flips)
