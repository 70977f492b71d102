"""The batched crop+flip must be RandomCrop(32, 4) + RandomHorizontalFlip in distribution and in
pixels: the fast path may only change where augmentation runs, never what the student sees."""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.stats import chisquare

from mimkd.data.augment import crop_flip, draw_crop_flip, random_crop_flip

PADDING = 4


def _draws(count: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    rows, cols, flips = [], [], []
    for _ in range(count // 1000):
        r, c, f = draw_crop_flip(1000, PADDING, generator, "cpu")
        rows.append(r)
        cols.append(c)
        flips.append(f)
    return torch.cat(rows), torch.cat(cols), torch.cat(flips).long()


def test_offsets_and_flips_are_uniform_over_their_ranges():
    rows, cols, flips = _draws(90_000)
    offsets = 2 * PADDING + 1
    assert rows.min() == 0 and rows.max() == offsets - 1
    assert cols.min() == 0 and cols.max() == offsets - 1
    assert set(flips.unique().tolist()) == {0, 1}
    for values, bins in ((rows, offsets), (cols, offsets), (flips, 2)):
        counts = torch.bincount(values, minlength=bins).numpy()
        assert chisquare(counts).pvalue > 1e-3, counts
    # jointly uniform too: offsets and flip are drawn independently, as torchvision draws them
    joint = (rows * offsets + cols) * 2 + flips
    counts = torch.bincount(joint, minlength=offsets * offsets * 2).numpy()
    assert chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize(
    "row, col, flip", [(0, 0, False), (8, 8, True), (0, 8, True), (3, 5, False), (4, 4, True)]
)
def test_batched_crop_equals_torchvision_functional_crop_and_flip(row, col, flip):
    rng = np.random.default_rng(row * 100 + col)
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    # torchvision on a PIL image, as RandomCrop(32, padding=4) + RandomHorizontalFlip apply it
    pil = TF.pad(Image.fromarray(image), PADDING)
    pil = TF.crop(pil, row, col, 32, 32)
    if flip:
        pil = TF.hflip(pil)
    expected = TF.pil_to_tensor(pil)
    batch = torch.from_numpy(image).permute(2, 0, 1)[None]
    got = crop_flip(batch, PADDING, torch.tensor([row]), torch.tensor([col]), torch.tensor([flip]))[
        0
    ]
    assert torch.equal(got, expected)
    # and torchvision's tensor path agrees
    tensor = TF.crop(TF.pad(batch[0], PADDING), row, col, 32, 32)
    assert torch.equal(got, TF.hflip(tensor) if flip else tensor)


def test_each_sample_gets_its_own_offsets_and_a_seeded_generator_repeats_them():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    first = random_crop_flip(images, PADDING, torch.Generator().manual_seed(3))
    again = random_crop_flip(images, PADDING, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    rows, cols, flips = draw_crop_flip(64, PADDING, torch.Generator().manual_seed(3), "cpu")
    for index in (0, 17, 63):
        expected = TF.crop(
            TF.pad(images[index], PADDING), int(rows[index]), int(cols[index]), 32, 32
        )
        if flips[index]:
            expected = TF.hflip(expected)
        assert torch.equal(first[index], expected)
