"""Loaders that yield normalised (images, labels, indices) batches on the training device.

`DeviceLoader` keeps a whole in-memory split as uint8 on the device and shuffles, crops and flips
it with batched tensor ops: no workers, no per-sample Python, no host syncs. Its RNG is a
`torch.Generator` whose state goes into checkpoints, so a resumed run sees the same batches.
`StreamLoader` wraps a torch DataLoader for file-streamed datasets (image folders).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from mimkd.data.augment import random_crop_flip
from mimkd.data.base import ImageTensors
from mimkd.errors import MimkdError

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Normalizer:
    def __init__(self, mean, std, device, channels_last: bool):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.inverse_std = 1.0 / (torch.tensor(std, device=device).view(1, -1, 1, 1) * 255)
        self.channels_last = channels_last

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        images = (images_uint8.float() - self.mean) * self.inverse_std
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images


class DeviceLoader:
    def __init__(
        self,
        split: ImageTensors,
        batch_size: int,
        *,
        mean,
        std,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: str = "none",
        padding: int = 4,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ):
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.padding = padding
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.normalize = Normalizer(mean, std, self.device, channels_last)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @property
    def num_samples(self) -> int:
        total = int(self.labels.shape[0])
        return total // self.world_size if self.world_size > 1 else total

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[Batch]:
        total = int(self.labels.shape[0])
        if self.shuffle:
            order = torch.randperm(total, generator=self.generator, device=self.device)
        else:
            order = torch.arange(total, device=self.device)
        if self.world_size > 1:
            # every rank draws the same permutation (same seed) and takes a disjoint stride of it
            order = order[: self.num_samples * self.world_size][self.rank :: self.world_size]
        for step in range(len(self)):
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            images = self.images[index]
            if self.augment == "crop_flip":
                images = random_crop_flip(images, self.padding, self.generator)
            yield self.normalize(images), self.labels[index], index

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class StreamLoader:
    """File-streamed batches: workers decode uint8 images, the device normalises them."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        mean,
        std,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        seed: int = 0,
        num_workers: int = 2,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ):
        self.device = torch.device(device)
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        sampler = None
        if world_size > 1:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(dataset, world_size, rank, shuffle=shuffle, seed=seed)
        self.sampler = sampler
        self.epoch = 0
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=num_workers,
            drop_last=drop_last,
            generator=self.generator,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
        )
        self.normalize = Normalizer(mean, std, self.device, channels_last)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        try:
            for images, labels, indices in self.loader:
                images = images.to(self.device, non_blocking=True)
                yield (
                    self.normalize(images),
                    labels.to(self.device, non_blocking=True),
                    indices.to(self.device, non_blocking=True),
                )
        except MimkdError as error:
            # a worker's error arrives wrapped in its traceback; keep the one line that matters
            last_line = str(error).strip().splitlines()[-1]
            raise type(error)(last_line.split("Error: ", 1)[-1]) from None

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch = state["epoch"]


def make_loader(
    split,
    batch_size: int,
    *,
    mean,
    std,
    device,
    train: bool,
    augment: str = "none",
    seed: int = 0,
    num_workers: int = 2,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
):
    """A loader suited to the split: device-resident for tensors, streamed for file datasets."""
    common = dict(
        mean=mean,
        std=std,
        device=device,
        shuffle=train,
        seed=seed,
        drop_last=drop_last,
        rank=rank,
        world_size=world_size,
        channels_last=channels_last,
    )
    if isinstance(split, ImageTensors):
        return DeviceLoader(split, batch_size, augment=augment if train else "none", **common)
    return StreamLoader(split, batch_size, num_workers=num_workers, **common)
