"""Both loaders: N ranks' batches together are one process's batches at N times the size, and an
epoch resumed midway from `state_dict()` yields the remaining batches in the same order, with the
same augmentation (the device-resident loader and the streamed image-folder one)."""

from __future__ import annotations

import pytest
import torch
from conftest import synthetic_images
from torchvision.io import write_png

from mimkd.data import load_dataset, make_loader


def _image_folder(root):
    images, labels = synthetic_images(30, 3, 20, 3, 0)
    for split in ("train", "val"):
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            write_png(torch.from_numpy(image), str(folder / f"{index}.png"))
    return root


@pytest.fixture(params=["device", "stream", "stream-2-workers"])
def split(request, idx_folder, tmp_path):
    """(training split, mean, std, workers): IDX tensors (DeviceLoader, no workers) or an image
    folder whose random resized crops are drawn in the process or in 2 decoding workers
    (StreamLoader)."""
    if request.param == "device":
        data = load_dataset("fashion_mnist", root=str(idx_folder), download=False)
        return data.train, data.mean, data.std, 0
    data = load_dataset("imagefolder", root=str(_image_folder(tmp_path)), image_size=16)
    return data.train, data.mean, data.std, 2 if request.param.endswith("workers") else 0


def _loader(split, batch_size, rank=0, world_size=1):
    data, mean, std, workers = split
    return make_loader(
        data, batch_size, mean=mean, std=std, device="cpu", train=True, augment="crop_flip",
        seed=7, num_workers=workers, rank=rank, world_size=world_size,
    )  # fmt: skip


def _as_one(batches: list[tuple]) -> tuple:
    """Rank batches [world] of (images, labels, indices) -> the one-process batch."""
    return tuple(
        torch.stack([batch[part] for batch in batches], 1).flatten(0, 1) for part in range(3)
    )


def _equal(a: tuple, b: tuple) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_two_ranks_together_take_the_one_process_batches(split):
    one = _loader(split, 8)
    ranks = [_loader(split, 4, rank, 2) for rank in (0, 1)]
    for _ in range(2):  # two epochs: the generators stay in step too
        expected = list(one)
        shards = [list(loader) for loader in ranks]
        assert len(expected) == len(shards[0]) == len(shards[1])
        for position, batch in enumerate(expected):
            assert _equal(_as_one([shard[position] for shard in shards]), batch)


def test_an_epoch_resumed_midway_yields_the_rest_in_order(split):
    straight = _loader(split, 4)
    list(straight)  # epoch 1
    expected = list(straight) + list(straight)  # epochs 2 and 3

    stopped = _loader(split, 4)
    list(stopped)
    batches = iter(stopped)
    taken = [next(batches) for _ in range(3)]
    state = stopped.state_dict()
    assert state["position"] == 3
    batches.close()

    resumed = _loader(split, 4)
    resumed.load_state_dict(state)
    rest = list(resumed) + list(resumed)
    assert len(taken + rest) == len(expected)
    assert all(_equal(a, b) for a, b in zip(taken + rest, expected))


def test_evaluation_shards_hold_every_sample_once(idx_folder):
    data = load_dataset("fashion_mnist", root=str(idx_folder), download=False, test_subset=199)
    seen = []
    for rank in (0, 1):
        loader = make_loader(
            data.test, 64, mean=data.mean, std=data.std, device="cpu", train=False,
            rank=rank, world_size=2,
        )  # fmt: skip
        seen.extend(index for _, _, indices in loader for index in indices.tolist())
    assert sorted(seen) == list(range(199))
