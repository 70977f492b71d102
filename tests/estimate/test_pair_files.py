"""`load_pairs`: the file formats the MI tool reads and the errors it gives for bad files."""

import numpy as np
import pytest
import torch

from mimkd.errors import DataError
from mimkd.estimate import load_pairs


def arrays():
    rng = np.random.default_rng(0)
    return rng.normal(size=(20, 3)).astype(np.float32), rng.normal(size=(20, 2, 2))


def test_load_pairs_reads_npz_with_default_and_custom_keys(tmp_path):
    x, y = arrays()
    np.savez(tmp_path / "pairs.npz", x=x, y=y, teacher=y)
    loaded_x, loaded_y = load_pairs(tmp_path / "pairs.npz")
    assert loaded_x.shape == (20, 3) and loaded_y.shape == (20, 4)
    assert loaded_x.dtype == torch.float32
    assert np.allclose(loaded_y.numpy(), y.reshape(20, 4))
    _, custom = load_pairs(tmp_path / "pairs.npz", x_key="x", y_key="teacher")
    assert np.allclose(custom.numpy(), y.reshape(20, 4))


def test_load_pairs_reads_pt_npy_pair_and_directory(tmp_path):
    x, y = arrays()
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "pairs.pt")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    for source in (
        tmp_path / "pairs.pt",
        f"{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}",
        tmp_path,
    ):
        loaded_x, loaded_y = load_pairs(source)
        assert np.allclose(loaded_x.numpy(), x)
        assert loaded_y.shape == (20, 4)


def test_load_pairs_one_dimensional_arrays_are_one_feature(tmp_path):
    np.savez(tmp_path / "pairs.npz", x=np.arange(5.0), y=np.arange(5.0))
    x, _ = load_pairs(tmp_path / "pairs.npz")
    assert x.shape == (5, 1)


def test_load_pairs_errors_say_what_to_do(tmp_path):
    x, y = arrays()
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path / "missing.npz")
    np.savez(tmp_path / "short.npz", x=x, y=y[:7])
    with pytest.raises(DataError, match="20 rows.*7"):
        load_pairs(tmp_path / "short.npz")
    np.savez(tmp_path / "keys.npz", a=x, b=y)
    with pytest.raises(DataError, match=r"\['a', 'b'\]"):
        load_pairs(tmp_path / "keys.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="re-save"):
        load_pairs(tmp_path / "corrupt.npz")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="torch.save"):
        load_pairs(tmp_path / "corrupt.pt")
    np.save(tmp_path / "single.npy", x)
    with pytest.raises(DataError, match="pairs"):
        load_pairs(tmp_path / "single.npy")
    (tmp_path / "pairs.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="unknown format"):
        load_pairs(tmp_path / "pairs.csv")
    np.savez(tmp_path / "nan.npz", x=np.full((3, 1), np.nan), y=np.zeros((3, 1)))
    with pytest.raises(DataError, match="NaN"):
        load_pairs(tmp_path / "nan.npz")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(DataError, match="dict"):
        load_pairs(tmp_path / "list.pt")

    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 3)), y=np.zeros((0, 3)))
    with pytest.raises(DataError, match="no values"):
        load_pairs(tmp_path / "empty.npz")


def test_missing_key_names_the_cli_flags(tmp_path):
    x, y = arrays()
    np.savez(tmp_path / "keys.npz", a=x, b=y)
    with pytest.raises(DataError, match="--x/--y"):
        load_pairs(tmp_path / "keys.npz")
