"""Paired samples for the MI tool: files in, two float32 matrices [N, Dx], [N, Dy] out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mimkd.errors import DataError


def load_pairs(
    path: str | Path, x_key: str | None = None, y_key: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read paired samples (x_i, y_i) as two float32 tensors [N, D_x], [N, D_y].

    Accepted forms (keys default to "x" and "y"):
    - `data.npz`: arrays under `x_key` / `y_key`;
    - `data.pt` / `data.pth`: a dict of tensors or arrays, loaded with `weights_only=True`;
    - `a.npy,b.npy`: two .npy files, x first;
    - a directory holding `<x_key>.npy` and `<y_key>.npy`.
    Rows beyond the first dimension are flattened ([N, C, H, W] -> [N, C*H*W]); 1-D arrays are one
    feature. Missing or unreadable files, missing keys, non-numeric or non-finite values and
    different row counts raise DataError.
    """
    x_key = x_key or "x"
    y_key = y_key or "y"
    text = str(path)
    if "," in text:
        parts = [part.strip() for part in text.split(",")]
        if len(parts) != 2 or not all(parts):
            raise DataError(f"expected two .npy files as 'x.npy,y.npy', got {text!r}.")
        x, y = _load_npy(Path(parts[0])), _load_npy(Path(parts[1]))
        return as_pair(x, y, parts[0], parts[1])
    path = Path(text)
    if not path.exists():
        raise DataError(
            f"{path} does not exist. Pass an .npz or .pt file with arrays {x_key!r} and {y_key!r}, "
            "two .npy files as 'x.npy,y.npy', or a directory holding x.npy and y.npy."
        )
    if path.is_dir():
        x_path, y_path = path / f"{x_key}.npy", path / f"{y_key}.npy"
        return as_pair(_load_npy(x_path), _load_npy(y_path), str(x_path), str(y_path))
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = _load_npz(path)
    elif suffix in (".pt", ".pth"):
        arrays = _load_torch(path)
    elif suffix == ".npy":
        raise DataError(
            f"{path} is a single array; MI needs pairs: pass 'x.npy,y.npy' or a directory with "
            "x.npy and y.npy."
        )
    else:
        raise DataError(f"{path}: unknown format {suffix!r}; use .npz, .pt, or 'x.npy,y.npy'.")
    missing = [key for key in (x_key, y_key) if key not in arrays]
    if missing:
        raise DataError(
            f"{path} has no {' or '.join(map(repr, missing))}; it holds {sorted(arrays)}. "
            "Name the arrays with --x/--y (Python: x_key=, y_key=)."
        )
    return as_pair(arrays[x_key], arrays[y_key], f"{path}[{x_key}]", f"{path}[{y_key}]")


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected a .npy array of shape [N, ...].")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path} is not a readable .npy file ({error}); re-save it.") from None


def _load_npz(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path} is not a readable .npz file ({error}); re-save it.") from None


def _load_torch(path: Path) -> dict[str, Any]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle/zip/runtime errors for corrupt files
        raise DataError(
            f"{path} is not a readable tensor file ({type(error).__name__}); save a dict of "
            "tensors with torch.save({'x': x, 'y': y}, path)."
        ) from None
    if not isinstance(loaded, dict):
        raise DataError(
            f"{path} holds a {type(loaded).__name__}, not a dict; save "
            "torch.save({'x': x, 'y': y}, path)."
        )
    return loaded


def _as_matrix(values: Any, name: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(values) if not torch.is_tensor(values) else values)
    except (TypeError, ValueError) as error:
        raise DataError(f"{name} is not a numeric array ({error}).") from None
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise DataError(f"{name} has dtype {tensor.dtype}; expected numbers.")
    if tensor.dim() == 0:
        raise DataError(f"{name} is a scalar; expected one row per sample.")
    if tensor.shape[0] == 0 or tensor.numel() == 0:
        raise DataError(f"{name} has no values (shape {tuple(tensor.shape)}); expected [N, ...].")
    tensor = tensor.detach().to(torch.float32)
    tensor = tensor[:, None] if tensor.dim() == 1 else tensor.reshape(tensor.shape[0], -1)
    if not torch.isfinite(tensor).all():
        raise DataError(f"{name} contains NaN or Inf; clean the data first.")
    return tensor


def as_pair(
    x: Any, y: Any, x_name: str = "x", y_name: str = "y"
) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_matrix(x, x_name), _as_matrix(y, y_name)
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"{x_name} has {x.shape[0]} rows but {y_name} has {y.shape[0]}; row i of each must be "
            "the same sample."
        )
    return x, y


__all__ = ["as_pair", "load_pairs"]
