"""Loaders that yield normalised (images, labels, indices) batches on the training device.

`DeviceLoader` keeps a whole in-memory split as uint8 on the device and shuffles, crops and flips
it with batched tensor ops: no workers, no per-sample Python, no host syncs. `StreamLoader` wraps a
torch DataLoader for file-streamed datasets (image folders). Both draw from a `torch.Generator`
whose state goes into checkpoints.

Sharding (DDP): each epoch's permutation is drawn alike on every rank and rank r takes positions
`r::world`, so the global batch (every rank's batch together) is the batch one process would take
at world times the batch size: one-process position i is rank `i % world`'s position `i // world`.
Training shards are even (a remainder below `world` samples is dropped, so every rank takes as many
steps); evaluation shards hold every sample once (`even_shards=False`). Random augmentation is drawn
for the global batch on every rank and sliced likewise (`DeviceLoader`), or seeded per sample by
(seed, epoch, index) (`StreamLoader`), so it does not depend on the number of processes either.

Mid-epoch resume: `state_dict()` records the generator state the epoch's permutation was drawn
from, the current one and `position` (batches handed out this epoch). After `load_state_dict` the
next iteration continues that epoch at `position`, with the same remaining batches in the same
order and the same augmentation as an uninterrupted run.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mimkd.data.augment import crop_flip, draw_crop_flip
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


class _EpochOrder:
    """The part both loaders share: the epoch's permutation, its shard, and the resume point."""

    def __init__(
        self,
        total: int,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        rank: int,
        world_size: int,
        even_shards: bool,
        generator: torch.Generator,
    ):
        self.total = total
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.even_shards = even_shards
        self.generator = generator
        self.position = 0  # batches of the current epoch handed out
        self.epoch_start = generator.get_state()  # the state this epoch's permutation came from
        self.resume_at = 0  # set by load_state_dict: the next epoch continues there

    @property
    def num_samples(self) -> int:
        """This rank's samples per epoch."""
        if self.world_size == 1:
            return self.total
        if self.even_shards:
            return self.total // self.world_size
        return len(range(self.rank, self.total, self.world_size))

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def batch_sizes(self) -> list[int]:
        """The size of each of this rank's batches in an epoch."""
        return [
            min(self.batch_size, self.num_samples - step * self.batch_size)
            for step in range(len(self))
        ]

    def begin(self) -> tuple[torch.Tensor, int]:
        """(this rank's sample order for the epoch, the first batch to yield)."""
        start, self.resume_at = self.resume_at, 0
        if start:  # the interrupted epoch's permutation, then the generator where it was
            current = self.generator.get_state()
            self.generator.set_state(self.epoch_start)
            order = self._draw()
            self.generator.set_state(current)
        else:
            self.epoch_start = self.generator.get_state()
            order = self._draw()
        self.position = start
        return order, start

    def _draw(self) -> torch.Tensor:
        device = self.generator.device
        if self.shuffle:
            order = torch.randperm(self.total, generator=self.generator, device=device)
        else:
            order = torch.arange(self.total, device=device)
        if self.world_size > 1:
            if self.even_shards:
                order = order[: self.num_samples * self.world_size]
            # every rank draws the same permutation (same seed) and takes a disjoint stride of it
            order = order[self.rank :: self.world_size]
        return order

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "epoch_start": self.epoch_start,
            "position": self.position,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch_start = state.get("epoch_start", self.epoch_start)
        self.resume_at = int(state.get("position", 0))


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
        even_shards: bool = True,
        channels_last: bool = False,
    ):
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.batch_size = batch_size
        self.augment = augment
        self.padding = padding
        self.rank = rank
        self.world_size = world_size
        self.normalize = Normalizer(mean, std, self.device, channels_last)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.order = _EpochOrder(
            int(self.labels.shape[0]),
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
            even_shards=even_shards,
            generator=self.generator,
        )

    @property
    def num_samples(self) -> int:
        return self.order.num_samples

    def __len__(self) -> int:
        return len(self.order)

    def batch_sizes(self) -> list[int]:
        return self.order.batch_sizes()

    def __iter__(self) -> Iterator[Batch]:
        order, start = self.order.begin()
        try:
            for step in range(start, len(self)):
                index = order[step * self.batch_size : (step + 1) * self.batch_size]
                images = self.images[index]
                if self.augment == "crop_flip":
                    images = self._crop_flip(images)
                self.order.position = step + 1
                yield self.normalize(images), self.labels[index], index
        finally:  # exhausted or closed: the next iteration is a new epoch
            self.order.position = 0

    def _crop_flip(self, images: torch.Tensor) -> torch.Tensor:
        """Offsets and flips drawn for the global batch (the one-process draw), this rank's kept."""
        drawn = draw_crop_flip(
            images.shape[0] * self.world_size, self.padding, self.generator, self.device
        )
        if self.world_size > 1:
            drawn = tuple(values[self.rank :: self.world_size] for values in drawn)
        return crop_flip(images, self.padding, *drawn)

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)


class _Keys(Sampler):
    """The epoch's (epoch, sample index) keys, set by `StreamLoader` before each epoch."""

    def __init__(self):
        self.keys: list[tuple[int, int]] = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class _SeededSamples(Dataset):
    """`dataset[index]` with its random augmentation seeded by (seed, epoch, index): the same
    crop of a sample whichever worker decodes it, however many processes share the epoch, and
    whether or not the epoch was resumed midway."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        # the caller's RNG is restored after: with num_workers=0 this runs in the training process
        with torch.random.fork_rng(devices=[]):
            # hash of a tuple of ints: the same in every process (only str hashes are salted)
            torch.manual_seed(hash((self.seed, epoch, index)) % 2**63)
            return self.dataset[index]


def _ignore_stop_signals(_worker_id: int) -> None:
    """Decoding workers leave SIGTERM/SIGUSR1 to the training process, which checkpoints and
    stops them (a scheduler may signal every process of a job; a dead worker would end the run
    before it saved)."""
    for stop_signal in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(stop_signal, signal.SIG_IGN)


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
        even_shards: bool = True,
        channels_last: bool = False,
    ):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        self.order = _EpochOrder(
            len(dataset),
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
            even_shards=even_shards,
            generator=self.generator,
        )
        self.epoch = 0  # epochs begun
        self.keys = _Keys()
        self.loader = DataLoader(
            _SeededSamples(dataset, seed),
            batch_size=batch_size,
            sampler=self.keys,
            num_workers=num_workers,
            drop_last=drop_last,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
            worker_init_fn=_ignore_stop_signals if num_workers > 0 else None,
            # its workers' base seed comes from here, not from the global RNG, which would then
            # advance once per epoch begun (twice for an epoch resumed midway); the samples'
            # randomness is `_SeededSamples`'s, so this generator's draws never matter
            generator=torch.Generator().manual_seed(seed),
        )
        self.normalize = Normalizer(mean, std, self.device, channels_last)

    def __len__(self) -> int:
        return len(self.order)

    def batch_sizes(self) -> list[int]:
        return self.order.batch_sizes()

    def __iter__(self) -> Iterator[Batch]:
        order, start = self.order.begin()
        if start == 0:
            self.epoch += 1
        epoch = self.epoch - 1  # the epoch this iteration runs (the resumed one continues)
        self.keys.keys = [(epoch, index) for index in order[start * self.batch_size :].tolist()]
        try:
            for images, labels, indices in self.loader:
                self.order.position += 1
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
        finally:  # exhausted or closed: the next iteration is a new epoch
            self.order.position = 0

    def state_dict(self) -> dict:
        return {**self.order.state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)
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
    """A loader suited to the split: device-resident for tensors, streamed for file datasets.

    Sharded over `world_size` ranks: evenly for training, every sample once for evaluation."""
    common = dict(
        mean=mean,
        std=std,
        device=device,
        shuffle=train,
        seed=seed,
        drop_last=drop_last,
        rank=rank,
        world_size=world_size,
        even_shards=train,
        channels_last=channels_last,
    )
    if isinstance(split, ImageTensors):
        return DeviceLoader(split, batch_size, augment=augment if train else "none", **common)
    return StreamLoader(split, batch_size, num_workers=num_workers, **common)
