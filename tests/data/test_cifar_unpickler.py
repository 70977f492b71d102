"""CIFAR's pickles are read by an unpickler that resolves only what the format holds."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import write_cifar

from mimkd.cli import main
from mimkd.data import load_dataset
from mimkd.errors import DataError, MimkdError


class _Payload:
    """What an attacker puts in a batch file: unpickling it calls eval on their code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close() or 0",))


def _poison(folder, marker) -> None:
    record = {b"data": _Payload(marker), b"labels": [0], b"batch_label": b"x"}
    (folder / "data_batch_1").write_bytes(pickle.dumps(record))


def test_a_poisoned_batch_file_is_refused_before_its_code_runs(tmp_path):
    folder = write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "code-ran"
    _poison(folder, marker)
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", root=str(tmp_path), download=False)
    # was: the payload ran (the marker existed), then a "data of shape ()" error
    assert not marker.exists()
    message = str(error.value)
    assert "\n" not in message
    assert "not a CIFAR batch" in message and "builtins.eval" in message


def test_the_poisoned_file_at_the_command_line_is_one_line(tmp_path, capsys):
    folder = write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "code-ran"
    _poison(folder, marker)
    argv = ["train", "data.name=cifar10", f"data.root={tmp_path}", "data.download=false"]
    assert main([*argv, f"run_dir={tmp_path / 'run'}", "progress=false"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "data_batch_1 is not a CIFAR batch" in lines[0]
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_of_real_cifar_content_loads(tmp_path, protocol):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(protocol)
    for split, count in (("train", 20), ("test", 10)):
        record = {
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            b"fine_labels": list(range(count)),
            b"coarse_labels": [0] * count,
            b"filenames": [f"img_{i}.png".encode() for i in range(count)],
            b"batch_label": "training batch 1 of 1",
        }
        (folder / split).write_bytes(pickle.dumps(record, protocol=protocol))
    names = {b"fine_label_names": [f"class_{i}" for i in range(100)]}
    (folder / "meta").write_bytes(pickle.dumps(names, protocol=protocol))
    bundle = load_dataset("cifar100", root=str(tmp_path), download=False)
    assert bundle.train.images.shape == (20, 3, 32, 32)
    assert bundle.test.labels.tolist() == list(range(10))
    assert bundle.classes[:2] == ["class_0", "class_1"]


def test_rgb_images_asked_to_be_grey_is_one_line(tmp_path):
    write_cifar(tmp_path, "cifar10")
    # was: ValueError traceback from the image preparation
    with pytest.raises(MimkdError, match=r"data.channels=1 cannot be made") as error:
        load_dataset("cifar10", root=str(tmp_path), download=False, channels=1)
    assert "\n" not in str(error.value)
