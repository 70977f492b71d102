"""What makes two runs the same run, and when a run counts as finished.

A run's identity is the hash of its resolved config and of its teacher's SHA-256. Keys that say
where a run happens or how it is watched (device, data.root, progress, the folder itself) are left
out, so a grid moved to another machine or folder still recognises its finished runs; the
teacher's path is left out too, replaced by the file's SHA-256: a retrained teacher is a new
teacher, a copied one the same.

"Finished" is read from the run's own files only: a results.json that parses, holds every field a
table needs, and records the method, seed, epochs, student and teacher SHA-256 that the grid asked
for. Anything less (no file, a file cut short by a kill, another run's results) is unfinished.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

IDENTITY_FORMAT = "mimkd-grid-run-v1"
ID_LENGTH = 12  # hex digits: 48 bits, collisions out of reach for any grid

# where and how a run is watched: never part of what it computes
RUNTIME_KEYS = (
    "device",
    "progress",
    "log_every",
    "tensorboard",
    "out_dir",
    "name",
    "run_dir",
    "resume",
    "data.root",
    "data.download",
    "data.num_workers",
)
# the teacher enters the identity as its file's SHA-256, not its path
NOT_IN_IDENTITY = (*RUNTIME_KEYS, "teacher.checkpoint")

# what results.json must hold for a run to be finished (and to fill a row of the table)
RESULT_FIELDS = (
    "method",
    "student",
    "seed",
    "epochs",
    "best_accuracy",
    "last_accuracy",
    "best_epoch",
    "wall_seconds",
)


def is_runtime_key(key: str) -> bool:
    return key in RUNTIME_KEYS


def identity_config(config: dict) -> dict:
    """The config (`config_to_dict`'s plain data) without the keys that do not change results."""
    result = copy.deepcopy(config)
    for dotted in NOT_IN_IDENTITY:
        node = result
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return result


def digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def run_id(identity: dict, teacher_sha256: str | None) -> str:
    return digest({"format": IDENTITY_FORMAT, "config": identity, "teacher_sha256": teacher_sha256})


def slug(*parts: Any) -> str:
    """A folder-name-safe label (`tv:resnet18` -> `tv-resnet18`)."""
    text = "-".join(str(part) for part in parts if part not in (None, ""))
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-")


def read_results(folder: str | Path) -> dict | None:
    """results.json's content when it is complete, else None (missing, cut short, not a run)."""
    path = Path(folder) / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or any(key not in results for key in RESULT_FIELDS):
        return None
    return results


def finished_results(folder: str | Path, expected: dict[str, Any]) -> dict | None:
    """The run's results if it finished as `expected` (method, seed, epochs, student,
    teacher_sha256); None when it has not, or when the folder holds a different run."""
    results = read_results(folder)
    if results is None:
        return None
    for key, value in expected.items():
        if results.get(key) != value:
            return None
    return results
