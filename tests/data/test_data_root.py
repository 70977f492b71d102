"""An explicit data.root is used or refused, never replaced; the files read are recorded."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import write_cifar

from mimkd.cli import main
from mimkd.data import load_dataset
from mimkd.errors import DataError


@pytest.fixture
def another_copy(idx_folder, monkeypatch):
    """A complete copy where the fallbacks look ($MIMKD_DATA): what an explicit root must not use."""
    monkeypatch.setenv("MIMKD_DATA", str(idx_folder))
    return idx_folder


def test_an_empty_explicit_root_is_refused_not_replaced(tmp_path, another_copy):
    (tmp_path / "empty").mkdir()
    # was: read the copy in $MIMKD_DATA (or /usr/share/datasets) and said nowhere which
    with pytest.raises(DataError, match="lacks 4 of the 4 Fashion-MNIST IDX files"):
        load_dataset("fashion_mnist", root=str(tmp_path / "empty"), download=False)


def test_an_explicit_root_with_three_of_four_files_names_the_missing_one(tmp_path, another_copy):
    partial = tmp_path / "partial"
    partial.mkdir()
    for file in sorted(another_copy.iterdir()):
        if file.name != "t10k-labels-idx1-ubyte.gz":
            shutil.copy(file, partial / file.name)
    with pytest.raises(DataError) as error:
        load_dataset("fashion_mnist", root=str(partial), download=False)
    message = str(error.value)
    assert "lacks 1 of the 4" in message and "t10k-labels-idx1-ubyte" in message
    assert "train-images" not in message and "\n" not in message


def test_an_explicit_cifar_root_lists_what_it_lacks(tmp_path, monkeypatch):
    write_cifar(tmp_path / "elsewhere", "cifar100")
    monkeypatch.setenv("MIMKD_DATA", str(tmp_path / "elsewhere"))
    (tmp_path / "mine" / "cifar-100-python").mkdir(parents=True)
    with pytest.raises(DataError, match=r"cifar-100-python lacks train, test"):
        load_dataset("cifar100", root=str(tmp_path / "mine"), download=False)


def test_without_a_root_the_fallbacks_are_searched(another_copy):
    bundle = load_dataset("fashion_mnist", download=False)
    assert bundle.source == str(another_copy)


def test_the_files_read_are_recorded_with_their_sha256(idx_folder, tmp_path):
    bundle = load_dataset("fashion_mnist", root=str(idx_folder), download=False)
    recorded = {entry["path"]: entry for entry in bundle.files}
    assert sorted(recorded) == sorted(str(p) for p in idx_folder.iterdir())
    for path, entry in recorded.items():
        data = Path(path).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()

    run_dir = tmp_path / "run"
    argv = ["train", f"data.root={idx_folder}", "data.download=false", "epochs=1"]
    assert main([*argv, "data.train_subset=64", "progress=false", f"run_dir={run_dir}"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data_files"] == bundle.files
    report = (run_dir / "report.md").read_text()
    for entry in bundle.files:
        assert f"{entry['path']} ({entry['sha256'][:12]})" in report


def test_cifar_files_read_are_recorded(tmp_path):
    folder = write_cifar(tmp_path, "cifar10")
    bundle = load_dataset("cifar10", root=str(tmp_path), download=False)
    names = sorted(entry["path"].rsplit("/", 1)[-1] for entry in bundle.files)
    assert names == sorted(p.name for p in folder.iterdir())
