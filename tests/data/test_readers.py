import gzip
import pickle

import numpy as np
import pytest
import torch
from conftest import synthetic_images, write_cifar, write_idx
from torchvision.io import encode_jpeg, write_png

from mimkd.data import load_dataset
from mimkd.data.idx import read_idx
from mimkd.errors import DataError


def test_idx_reader_loads_generated_fashion_mnist(idx_folder):
    bundle = load_dataset("fashion_mnist", root=str(idx_folder), download=False)
    assert bundle.train.images.shape == (400, 1, 28, 28)
    assert bundle.test.images.shape == (200, 1, 28, 28)
    assert bundle.train.images.dtype == torch.uint8
    expected, labels = synthetic_images(400, 10, 28, 1, 0)
    assert torch.equal(bundle.train.images, torch.from_numpy(expected))
    assert torch.equal(bundle.train.labels, torch.from_numpy(labels))
    assert bundle.num_classes == 10 and len(bundle.classes) == 10


def test_idx_as_cifar_shaped_and_balanced_subset(idx_folder):
    bundle = load_dataset(
        "fashion_mnist",
        root=str(idx_folder),
        download=False,
        image_size=32,
        channels=3,
        train_subset=100,
    )
    assert bundle.train.images.shape == (100, 3, 32, 32)
    # 28 -> 32 is zero padding by 2 on each side, the original pixels unchanged
    original = load_dataset("fashion_mnist", root=str(idx_folder), download=False, train_subset=100)
    assert torch.equal(bundle.train.images[:, 0, 2:30, 2:30], original.train.images[:, 0])
    assert bundle.train.images[:, :, :2].sum() == 0
    assert torch.bincount(bundle.train.labels).tolist() == [10] * 10
    assert len(bundle.mean) == 3


def test_truncated_idx_is_a_clear_error(tmp_path, idx_folder):
    for file in idx_folder.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    data = (tmp_path / "train-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("fashion_mnist", root=str(tmp_path), download=False)


def test_idx_with_short_payload_is_a_clear_error(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    write_idx(path, np.zeros((3, 4, 4)))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(DataError, match="header promises 48"):
        read_idx(path)


def test_missing_fashion_mnist_without_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("mimkd.data.idx.DEBIAN_PATH", str(tmp_path / "nowhere"))
    monkeypatch.delenv("MIMKD_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", root=str(tmp_path / "empty"), download=False)


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_reader_loads_the_pickle_format(tmp_path, name, classes):
    write_cifar(tmp_path, name, train_count=100 if name == "cifar10" else 200, test_count=20)
    bundle = load_dataset(name, root=str(tmp_path), download=False)
    assert bundle.num_classes == classes
    assert bundle.train.images.shape[1:] == (3, 32, 32)
    assert bundle.test.images.shape == (20, 3, 32, 32)
    expected, labels = synthetic_images(20, classes, 32, 3, 9 if name == "cifar10" else 1)
    assert torch.equal(bundle.test.images, torch.from_numpy(expected))
    assert torch.equal(bundle.test.labels, torch.from_numpy(labels))
    assert len(bundle.classes) == classes


def test_corrupt_cifar_pickle_is_a_clear_error(tmp_path):
    folder = write_cifar(tmp_path, "cifar100")
    data = (folder / "train").read_bytes()
    (folder / "train").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("cifar100", root=str(tmp_path), download=False)


def test_cifar_with_wrong_row_length_is_a_clear_error(tmp_path):
    folder = write_cifar(tmp_path, "cifar100")
    (folder / "test").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"fine_labels": [0, 1]})
    )
    with pytest.raises(DataError, match="expected \\[N, 3072\\]"):
        load_dataset("cifar100", root=str(tmp_path), download=False)


def _image_folder(root, corrupt=False):
    images, labels = synthetic_images(12, 3, 40, 3, 0)
    for split in ("train", "val"):
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            tensor = torch.from_numpy(image)
            if index % 2:
                write_png(tensor, str(folder / f"{index}.png"))
            else:
                (folder / f"{index}.jpg").write_bytes(
                    encode_jpeg(tensor, quality=95).numpy().tobytes()
                )
    if corrupt:
        (root / "train" / "class_0" / "0.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_imagefolder_reads_jpeg_and_png(tmp_path):
    from mimkd.data import make_loader

    bundle = load_dataset(
        "imagefolder", root=str(_image_folder(tmp_path)), image_size=32, augment="none"
    )
    assert bundle.num_classes == 3 and bundle.classes == ["class_0", "class_1", "class_2"]
    assert len(bundle.train) == 12
    image, label, index = bundle.test[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    loader = make_loader(
        bundle.train, 5, mean=bundle.mean, std=bundle.std, device="cpu", train=True, num_workers=0
    )
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [5, 5, 2]
    assert sorted(torch.cat([b[2] for b in batches]).tolist()) == list(range(12))


def test_imagefolder_corrupt_image_is_a_clear_error(tmp_path):
    from mimkd.data import make_loader

    bundle = load_dataset(
        "imagefolder", root=str(_image_folder(tmp_path, corrupt=True)), image_size=32
    )
    loader = make_loader(
        bundle.train, 4, mean=bundle.mean, std=bundle.std, device="cpu", train=False, num_workers=0
    )
    with pytest.raises(DataError, match="0.jpg is corrupt"):
        list(loader)


def test_imagefolder_missing_split_is_a_clear_error(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="val is missing"):
        load_dataset("imagefolder", root=str(tmp_path))
