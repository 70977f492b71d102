"""The model card: what every exported file carries so it runs without the training run.

One JSON document, kept under the key `mimkd` in each format's own metadata (safetensors' string
metadata, ONNX's `metadata_props`, the `.pt2` archive's extra file `mimkd.json`): architecture,
classes and their names, the input the model reads and how a picture becomes that input (the
evaluation transform), accuracy and dataset, the teacher's fingerprint and the mimkd version.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from mimkd.config import DataConfig
from mimkd.data import PAD_OR_RESIZE
from mimkd.engine.evaluate import load_test_set
from mimkd.models.loading import LoadedModel

CARD_KEY = "mimkd"
CARD_FILE = "mimkd.json"  # the .pt2 archive's extra file

# How evaluation brings a dataset image to the model's input (`resize`, see
# `mimkd.deploy.preprocess`): in-memory datasets pad (growing) or resize (shrinking) their native
# images and repeat grey channels (`data.prepare_images`); image folders resize to size/0.875 and
# centre-crop (`data.PAD_OR_RESIZE`, `data.RESIZE_CENTER_CROP`).


@dataclass
class ModelCard:
    architecture: str
    num_classes: int
    input_shape: tuple[int, int, int]  # what the model reads: channels, height, width
    mean: tuple[float, ...]  # per input channel, of [0, 1] pixels
    std: tuple[float, ...]
    resize: str = PAD_OR_RESIZE
    native_shape: tuple[int, int, int] | None = None  # the dataset's own images (1x28x28 ...)
    class_names: list[str] = field(default_factory=list)
    dataset: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # the run's data config: eval's test set
    accuracy: float | None = None  # best test top-1 of the training run
    method: str | None = None
    teacher: str | None = None
    teacher_sha256: str | None = None
    source_sha256: str | None = None  # the checkpoint this was exported from
    precision: str = "fp32"  # fp32, or int8 (static / dynamic) for quantised ONNX
    mimkd_version: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelCard | None:
        """The card in `values`, or None when they are not a complete card (a foreign file)."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {key: value for key, value in values.items() if key in names}
        required = ("architecture", "num_classes", "input_shape", "mean", "std")
        if not all(known.get(key) is not None for key in required):
            return None
        known["input_shape"] = tuple(known["input_shape"])
        known["mean"], known["std"] = tuple(known["mean"]), tuple(known["std"])
        if known.get("native_shape") is not None:
            known["native_shape"] = tuple(known["native_shape"])
        return cls(**known)

    @classmethod
    def from_json(cls, text: str | None) -> ModelCard | None:
        if not text:
            return None
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            return None
        return cls.from_dict(values) if isinstance(values, dict) else None

    def label(self, index: int) -> str | None:
        return self.class_names[index] if index < len(self.class_names) else None


def describe_input(data: DataConfig) -> dict[str, Any]:
    """The input facts of a dataset under a data config (`DatasetBundle.input_facts`), for
    model files that do not record them (RepDistiller teachers, older checkpoints). The files
    must be there; only the test split is needed."""
    return load_test_set(dataclasses.replace(data, test_subset=1)).input_facts()


def card_for_checkpoint(loaded: LoadedModel, data: DataConfig) -> ModelCard:
    """The card of a model loaded from a weights file, completed from its dataset where the file
    does not record everything (mimkd checkpoints record the run, not the dataset's statistics)."""
    from mimkd import __version__

    recorded = ModelCard.from_dict(loaded.metadata) if loaded.format == "safetensors" else None
    if recorded is not None:
        return recorded
    metadata = loaded.metadata
    # a checkpoint may carry its input facts ("input"); otherwise the dataset supplies them
    facts = metadata.get("input") or describe_input(data)
    return ModelCard(
        architecture=loaded.name,
        num_classes=loaded.num_classes,
        input_shape=tuple(facts["input_shape"]),
        mean=tuple(facts["mean"]),
        std=tuple(facts["std"]),
        resize=facts.get("resize", PAD_OR_RESIZE),
        native_shape=tuple(facts["native_shape"]) if facts.get("native_shape") else None,
        class_names=list(facts.get("class_names") or []),
        dataset=facts.get("dataset") or data.name,
        data=dataclasses.asdict(data),
        accuracy=loaded.accuracy,
        method=metadata.get("method"),
        teacher=metadata.get("teacher"),
        teacher_sha256=metadata.get("teacher_sha256"),
        source_sha256=loaded.sha256,
        mimkd_version=__version__,
    )
