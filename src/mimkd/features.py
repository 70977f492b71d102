"""Feature taps: read any submodule's output (or input) by dotted path, without editing forward().

A tap path is a module path as in `model.named_modules()` ("layer3", "features.12", "blocks.3"),
optionally suffixed with ":input" to read what the module receives (e.g. "fc:input" is the pooled
penultimate vector). Hooks store into a dict that the extractor returns next to the logits, so taps
work in train and eval mode, under torch.compile (hooks registered before compiling are traced) and
under DDP (the hooks live on the wrapped module).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from mimkd.errors import ShapeError, did_you_mean

INPUT_SUFFIX = ":input"
_POOLING_TYPES = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.Flatten,
)


@dataclass
class TapSet:
    """Which layers a method reads from a model.

    `last_map` is the last spatial map (or token sequence) before global pooling, `penultimate` the
    vector the classifier reads, `stages` the outputs of the network's stages (coarse to fine order
    of execution). Zoo models declare theirs; unknown models get them by discovery.
    """

    last_map: str
    penultimate: str
    stages: list[str] = field(default_factory=list)


def _split(path: str) -> tuple[str, bool]:
    if path.endswith(INPUT_SUFFIX):
        return path[: -len(INPUT_SUFFIX)], True
    return path, False


def resolve_module(model: nn.Module, module_path: str) -> nn.Module:
    modules = dict(model.named_modules())
    if module_path not in modules:
        raise ShapeError(
            f"model {type(model).__name__} has no submodule {module_path!r}."
            f"{did_you_mean(module_path, [n for n in modules if n])} "
            "Tap paths are names from model.named_modules(), optionally ending in ':input'."
        )
    return modules[module_path]


class FeatureExtractor(nn.Module):
    """Wraps a model so that calling it returns `(logits, {path: tensor})`.

    The wrapped model is a registered submodule, so `.to()`, `state_dict()` and `parameters()` see
    it; `remove()` detaches the hooks and leaves the model as it was.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str]):
        super().__init__()
        self.model = model
        self.paths = list(dict.fromkeys(paths))
        self._captured: dict[str, torch.Tensor] = {}
        self._handles = []
        for path in self.paths:
            module_path, read_input = _split(path)
            module = resolve_module(model, module_path)
            if read_input:
                handle = module.register_forward_pre_hook(self._make_input_hook(path))
            else:
                handle = module.register_forward_hook(self._make_output_hook(path))
            self._handles.append(handle)

    def _make_output_hook(self, path: str):
        def hook(module, inputs, output):
            self._captured[path] = output

        return hook

    def _make_input_hook(self, path: str):
        def hook(module, inputs):
            self._captured[path] = inputs[0]

        return hook

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._captured = {}
        logits = self.model(images)
        missing = [p for p in self.paths if p not in self._captured]
        if missing:
            raise ShapeError(
                f"taps {missing} were not reached by {type(self.model).__name__}.forward(); "
                "choose modules that run on every forward."
            )
        features = {path: self._captured[path] for path in self.paths}
        self._captured = {}
        return logits, features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def flatten_vector(tensor: torch.Tensor) -> torch.Tensor:
    """A pooled feature as [B, D] whatever its layout ([B, D], [B, D, 1, 1], ...)."""
    return tensor.reshape(tensor.shape[0], -1)


def as_locations(tensor: torch.Tensor) -> torch.Tensor:
    """A local feature as [B, L, C]: maps [B, C, H, W] give H*W locations, tokens [B, N, C] N."""
    if tensor.dim() == 4:
        return tensor.flatten(2).transpose(1, 2)
    if tensor.dim() == 3:
        return tensor
    raise ShapeError(
        f"expected a feature map [B, C, H, W] or tokens [B, N, C], got {tuple(tensor.shape)}"
    )


@torch.no_grad()
def probe_shapes(
    model: nn.Module, paths: Iterable[str], sample: torch.Tensor
) -> dict[str, torch.Size]:
    """Shapes of the taps for one dummy batch, in eval mode so BatchNorm statistics are untouched."""
    was_training = model.training
    model.eval()
    extractor = FeatureExtractor(model, paths)
    try:
        logits, features = extractor(sample)
    finally:
        extractor.remove()
        model.train(was_training)
    shapes = {path: tensor.shape for path, tensor in features.items()}
    shapes["logits"] = logits.shape
    return shapes


@torch.no_grad()
def discover_taps(model: nn.Module, sample: torch.Tensor) -> TapSet:
    """Find the last map before pooling and the classifier's input by one dummy forward.

    The classifier is the innermost nn.Linear whose output *is* the model's output (or, failing that,
    the last Linear called); the last map is the last 4-D (or token 3-D) output produced before the
    classifier ran, skipping pooling layers; stages are the outermost top-level children producing
    maps (blocks, not single layers), in order.
    """
    declared = getattr(model, "default_taps", None)
    if isinstance(declared, TapSet):
        return declared

    calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor | None]] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, inputs, output, name=name):
            first_input = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if isinstance(output, torch.Tensor):
                calls.append((name, mod, output, first_input))

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        logits = model(sample)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not isinstance(logits, torch.Tensor):
        raise ShapeError(
            f"{type(model).__name__}.forward() must return a logits tensor; got {type(logits).__name__}."
        )

    linear_calls = [i for i, c in enumerate(calls) if isinstance(c[1], nn.Linear)]
    exact = [i for i in linear_calls if calls[i][2] is logits]
    if exact:
        # the innermost linear that returned the logits object (a head inside a Sequential)
        classifier_index = max(exact, key=lambda i: (calls[i][0].count("."), i))
    elif linear_calls:
        classifier_index = linear_calls[-1]
    else:
        raise ShapeError(
            f"could not find the classifier of {type(model).__name__} (no nn.Linear); "
            "name the taps explicitly (e.g. penultimate='head:input')."
        )
    classifier_name = calls[classifier_index][0]
    penultimate = f"{classifier_name}{INPUT_SUFFIX}"

    last_map = None
    for name, module, output, _ in calls[:classifier_index]:
        if isinstance(module, _POOLING_TYPES):
            continue
        spatial = output.dim() == 4 or (output.dim() == 3 and output.shape[1] > 1)
        if spatial and not classifier_name.startswith(name + "."):
            last_map = name
    if last_map is None:
        raise ShapeError(
            f"could not find a feature map or token sequence in {type(model).__name__}; "
            "name the local tap explicitly (e.g. last_map='layer4')."
        )
    stages = []
    for name, module, output, _ in calls[:classifier_index]:
        is_block = any(True for _ in module.children())
        if "." in name or not is_block or output.dim() not in (3, 4):
            continue
        stages.append(name)
    return TapSet(last_map=last_map, penultimate=penultimate, stages=list(dict.fromkeys(stages)))
