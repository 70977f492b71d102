"""Files that hold tensors: atomic writes, loading that never runs code, fingerprints.

The bottom layer: every package that reads or writes a model file (models, engine, deploy, the
tools) uses these, so none of them has to reach into another's internals. A checkpoint is plain data
(tensors, numbers, strings, lists, dicts) and loads with `torch.load(weights_only=True)`: opening a
file never runs code from it. The one class allowed besides plain data is `argparse.Namespace`,
which RepDistiller's `*_last.pth` teacher files carry as their `opt` entry; it is restored as an
attribute bag, never by running code.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import stat
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from mimkd.errors import CheckpointError, MimkdError

# what `Trainer` writes into every checkpoint's "format" field
CHECKPOINT_FORMAT = "mimkd-checkpoint-v1"

# classes a checkpoint may hold besides tensors and plain data (RepDistiller's `opt`)
SAFE_CLASSES = [argparse.Namespace]


class OutputPathError(MimkdError):
    """A file mimkd is asked to write whose place is wrong: no folder, a device, a full disk.

    `os_error` is the operating system's error behind it, when there is one (a caller that knows
    more, e.g. a run folder, words its own advice from it).
    """

    def __init__(self, message: str, os_error: OSError | None = None):
        super().__init__(message)
        self.os_error = os_error


# ---- reading -----------------------------------------------------------------------------------


def check_readable_file(
    path: str | Path, what: str = "model file", missing_hint: str = "check the path"
) -> Path:
    """The path as a Path, or a one-line error that says whether it is missing, a folder or empty."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(
            f"{what} {str(path)!r} is a folder, not a file; pass a file inside it (a run keeps "
            "best.pt and last.pt)."
        )
    if not path.exists():
        raise CheckpointError(f"{what} {str(path)!r} does not exist; {missing_hint}.")
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} is not a regular file; pass a model file.")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{what} {str(path)!r} is empty (0 bytes), probably an interrupted copy; copy it again."
        )
    return path


def sniff_format(path: str | Path) -> str:
    """What a file is by its content: `torch` (torch.save), `pt2` (torch.export.save),
    `safetensors`, `onnx` (by suffix: protobuf has no magic number) or `unknown`."""
    path = Path(path)
    with open(path, "rb") as file:
        head = file.read(16)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        # torch.save writes <name>/data.pkl; torch.export.save writes <name>/archive_format
        if any(name.endswith("/archive_format") or name == "archive_format" for name in names):
            return "pt2"
        if any(name.endswith("data.pkl") for name in names):
            return "torch"
        return "unknown"
    if head[:1] == b"\x80":  # a pickle protocol opcode: torch.save's legacy (pre-1.6) format
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        # safetensors: a little-endian u64 header length, then the JSON header
        header_length = struct.unpack("<Q", head[:8])[0]
        if 0 < header_length <= path.stat().st_size - 8:
            return "safetensors"
    if path.suffix.lower() == ".onnx":
        return "onnx"
    return "unknown"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)` with one-line errors for missing, damaged and code files."""
    path = check_readable_file(
        path, "checkpoint", "check the path (runs keep theirs in <run_dir>/last.pt and best.pt)"
    )
    try:
        with torch.serialization.safe_globals(SAFE_CLASSES):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged zip/pickle
        raise _load_error(path, error) from None


def _load_error(path: Path, error: Exception) -> CheckpointError:
    # torch's own text advises retrying with weights_only=False, which must never be the advice
    if re.search(r"GLOBAL ([\w.]+)", str(error)):
        return pickled_objects_error(path, error)
    return CheckpointError(
        f"{str(path)!r} is corrupt or not a model file ({type(error).__name__}); pass a checkpoint, "
        "state_dict, .safetensors, .onnx or .pt2 file, or copy the file again."
    )


def pickled_objects_error(path: Path, error: Exception) -> CheckpointError:
    """The refusal of a file whose pickle names Python objects (code) beyond plain data."""
    blocked = re.search(r"GLOBAL ([\w.]+)", str(error))
    named = f" ({blocked.group(1)})" if blocked else ""
    return CheckpointError(
        f"{str(path)!r} holds pickled Python objects{named}, which mimkd never loads because "
        "unpickling them can run code; save a state_dict instead "
        "(torch.save(model.state_dict(), PATH)) and pass that."
    )


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the string metadata of a .safetensors file (a format that holds no code)."""
    from safetensors import SafetensorError, safe_open

    path = check_readable_file(path, "model file")
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = dict(file.metadata() or {})
            state = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0][:80] if str(error).strip() else ""
        raise CheckpointError(
            f"{str(path)!r} is a corrupt safetensors file ({first or type(error).__name__}); "
            "export it again."
        ) from None
    return state, metadata


def read_json_metadata(metadata: dict[str, str], key: str = "mimkd") -> dict[str, Any]:
    """The JSON document an export keeps under `key` in its string metadata ({} when absent)."""
    text = metadata.get(key)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- writing -----------------------------------------------------------------------------------


def check_output_target(path: str | Path, what: str = "output") -> Path:
    """Refuse, before any work, a target mimkd must not write: one whose folder is missing or is a
    file, one that exists but is not a regular file (a device node, a folder, a socket)."""
    path = Path(path).expanduser()
    parent = path.parent
    if path.is_dir():
        raise OutputPathError(f"{what} {str(path)!r} is a folder; pass a file name inside it.")
    if os.path.lexists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise OutputPathError(
            f"{what} {str(path)!r} exists and is not a regular file (a device or special file); "
            "choose a new file name."
        )
    if not parent.exists():
        raise OutputPathError(
            f"the folder of {what} {str(path)!r} does not exist; create it (mkdir -p "
            f"{str(parent)!r}) or choose another path."
        )
    if not parent.is_dir():
        raise OutputPathError(
            f"{what} {str(path)!r} is inside {str(parent)!r}, which is a file, not a folder; "
            "choose another path."
        )
    return path


def atomic_write(
    path: str | Path,
    write: Callable[[BinaryIO], None],
    what: str = "output",
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Have `write(file)` fill a temp file beside `path`, fsync it, let `check(temp_path)` inspect
    it, then rename it over `path`.

    A crash, a full disk, a failing writer or a failing check leaves the old file (or nothing) and
    no temp file: a half-written file never replaces a good one. Writers write to a Python file
    object, so disk errors surface as OSError and become one-line `OutputPathError`s.
    """
    path = check_output_target(path, what)
    try:
        handle, temp_name = tempfile.mkstemp(
            prefix=temp_prefix(path.name), suffix=temp_suffix(path.name), dir=path.parent
        )
    except OSError as error:
        raise _write_error(path, error, what) from None
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, _file_mode(path))
        if check is not None:
            check(temp)
        # checked again: the target may have become a special file while we wrote
        check_output_target(path, what)
        os.replace(temp, path)
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise _write_error(path, error, what) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def temp_prefix(name: str) -> str:
    """`atomic_write`'s temp files for `name` are `.<name>.<random>.tmp<suffix>`
    (`.last.pt.x1y2.tmp.pt`): hidden, recognisable, and with the target's own suffix, so a check
    that goes by suffix (an ONNX model) reads the temp file as what it will become."""
    return f".{name}."


def temp_suffix(name: str) -> str:
    return f".tmp{Path(name).suffix}"


def is_temp_file(entry: str, names) -> bool:
    """Whether a folder entry is a temp file `atomic_write` left for one of `names`."""
    return any(
        entry.startswith(temp_prefix(name)) and entry.endswith(temp_suffix(name)) for name in names
    )


def remove_temp_files(folder: str | Path, names) -> list[Path]:
    """Delete the temp files a killed writer left for `names` in `folder`; return them.

    Only files of `atomic_write`'s own naming, and only call this while no writer of ours can be
    alive (a run folder's lock held): then nobody owns them.
    """
    removed = []
    for entry in Path(folder).iterdir():
        if is_temp_file(entry.name, names):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return sorted(removed)


def atomic_write_text(path: str | Path, text: str, what: str = "output") -> Path:
    return atomic_write(path, lambda file: file.write(text.encode()), what)


def _file_mode(path: Path) -> int:
    """The replaced file's permissions, or a new file's (mkstemp's are 0600, owner-only)."""
    if path.exists():
        return stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_error(path: Path, error: OSError, what: str) -> OutputPathError:
    failure = _write_error_text(path, error, what)
    return OutputPathError(failure, error)


def _write_error_text(path: Path, error: OSError, what: str) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        reason = "the disk is full" if error.errno != errno.EFBIG else "the file is too large"
        return (
            f"could not write {what} {str(path)!r}: {reason} ({os.strerror(error.errno)}); free "
            "space or choose another folder. Nothing was replaced."
        )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"could not write {what} {str(path)!r}: the folder is not writable "
            f"({os.strerror(error.errno)}); choose another folder."
        )
    reason = os.strerror(error.errno) if error.errno else str(error).splitlines()[0][:80]
    return f"could not write {what} {str(path)!r} ({reason}); choose another path. Nothing was replaced."


def _fsync_folder(folder: Path) -> None:
    # the rename is durable only once the folder entry is on disk
    try:
        directory = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)


class _KeepWriteError:
    """A file that remembers the OSError of a failed write.

    torch's zip writer swallows the OSError of its file and raises "unexpected pos N vs M"
    instead; the user's one-line message should say why (no space left on device).
    """

    def __init__(self, file: BinaryIO):
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


def atomic_save(obj: Any, path: str | Path, what: str = "checkpoint") -> Path:
    """`torch.save` through `atomic_write` (creating the folder: runs own theirs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(file: BinaryIO) -> None:
        recording = _KeepWriteError(file)
        try:
            torch.save(obj, recording)
        except RuntimeError:
            if recording.error is not None:
                raise recording.error from None
            raise

    return atomic_write(path, save, what)


__all__ = [
    "CHECKPOINT_FORMAT",
    "SAFE_CLASSES",
    "OutputPathError",
    "atomic_save",
    "atomic_write_text",
    "is_temp_file",
    "remove_temp_files",
    "temp_prefix",
    "atomic_write",
    "check_output_target",
    "check_readable_file",
    "load_checkpoint",
    "pickled_objects_error",
    "read_json_metadata",
    "read_safetensors",
    "sha256_of",
    "sniff_format",
]
