"""Training state beyond the weights, and the durable writes that put it in a run folder.

Every RNG is captured and restored for exact resume. Every file a run writes goes through
`atomic_write`: a temp file `.<name>.<random>.tmp` in the same folder, fsync, rename, fsync of the
folder, so a kill or a full disk leaves the old file or the new one, never half of one. Loading
(`weights_only`, one-line errors) lives in `mimkd.serialization`, below every package.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch


def capture_rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses: store it as a tensor
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- durable writes --------------------------------------------------------------------------
def temp_prefix(name: str) -> str:
    """Our temp files for `name` start with this: `.last.pt.` for last.pt."""
    return f".{name}."


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """`write(file)` into a temp file beside `path`, fsync, rename over `path`, fsync the folder.

    A failed write (ENOSPC, EFBIG, EACCES) raises its OSError after removing the temp file; the
    previous `path`, if any, is untouched.
    """
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(
        prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda file: file.write(text.encode()))


class _KeepWriteError:
    """A file that remembers the OSError of a failed write.

    torch's zip writer swallows the OSError of its file and raises "unexpected pos N vs M"
    instead; we want the reason (no space left on device) in the user's one-line message.
    """

    def __init__(self, file: IO[bytes]):
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def write_checkpoint(state: dict, path: str | Path) -> None:
    """`torch.save(state)` to `path` atomically; a failed write raises the OS's own error."""

    def save(file: IO[bytes]) -> None:
        recording = _KeepWriteError(file)
        try:
            torch.save(state, recording)
        except RuntimeError:
            if recording.error is not None:
                raise recording.error from None
            raise

    atomic_write(path, save)


def remove_temp_files(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temp files a killed writer left for `names` in `folder`; return them.

    Only files of our own naming (`.<name>.*.tmp`), and only while the folder's lock is held: then
    no writer of ours is alive to own them.
    """
    removed = []
    for name in names:
        for temp in Path(folder).glob(f"{temp_prefix(name)}*.tmp"):
            temp.unlink(missing_ok=True)
            removed.append(temp)
    return removed
