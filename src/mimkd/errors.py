"""One error family for everything a user can get wrong.

The CLI catches `MimkdError` once and prints its message on one line with exit code 2; every
message says what is wrong *and* what to do about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MimkdError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in mimkd."""


class ConfigError(MimkdError):
    """Unknown key, wrong type or bad value in a config file or override."""


class UnknownNameError(MimkdError):
    """A model, method, dataset or estimator name that no registry knows."""


class DataError(MimkdError):
    """Missing, truncated or corrupt data files."""


class CheckpointError(MimkdError):
    """A checkpoint that is missing, corrupt, or does not fit the model/dataset."""


class ShapeError(MimkdError):
    """Features or logits whose shapes cannot be paired by a method."""


class TrainingDivergedError(MimkdError):
    """The loss became NaN or Inf."""


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to `name`, for 'did you mean' hints."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    candidates = list(candidates)
    best = closest(name, candidates)
    return f" Did you mean {best!r}?" if best else ""
