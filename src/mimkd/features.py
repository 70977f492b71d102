"""Feature taps: read any submodule's output (or input) by dotted path, without editing forward().

A tap path is a module path as in `model.named_modules()` ("layer3", "features.12", "blocks.3"),
optionally suffixed with ":input" to read what the module receives (e.g. "fc:input" is the pooled
penultimate vector). Hooks store into a dict that the extractor returns next to the logits, so taps
work in train and eval mode, under torch.compile (hooks registered before compiling are traced) and
under DDP (the hooks live on the wrapped module).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from mimkd.errors import ShapeError, did_you_mean

INPUT_SUFFIX = ":input"
_GLOBAL_POOL_TYPES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
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


def split_tap(path: str) -> tuple[str, bool]:
    """A tap path as (module path, reads the module's input)."""
    if path.endswith(INPUT_SUFFIX):
        return path[: -len(INPUT_SUFFIX)], True
    return path, False


def input_tap(module_path: str) -> str:
    """The tap path that reads what `module_path` receives (e.g. the classifier's input)."""
    return f"{module_path}{INPUT_SUFFIX}"


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

    The model is held as a plain reference, not a submodule: its owner moves and saves it, and an
    extractor adds nothing to anyone's `state_dict()` or `parameters()`. It is an `nn.Module` only
    so that `torch.compile` accepts it. `remove()` detaches the hooks and leaves the model as it was.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str]):
        super().__init__()
        object.__setattr__(self, "model", model)  # not registered: see the class docstring
        self.paths = list(dict.fromkeys(paths))
        self._captured: dict[str, torch.Tensor] = {}
        self._handles = []
        for path in self.paths:
            module_path, read_input = split_tap(path)
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


def token_grid(model: nn.Module, num_tokens: int) -> tuple[int, tuple[int, int]]:
    """(prefix tokens, (rows, columns)) of a token sequence of `num_tokens` a model produces.

    timm's ViTs say both (`num_prefix_tokens`: class and register tokens; `patch_embed.grid_size`);
    for other models the prefix is the smallest count (0-8) that leaves a square number of patch
    tokens, which is how torchvision's and most ViTs lay them out (one class token, a square grid).
    """
    prefix = getattr(model, "num_prefix_tokens", None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if isinstance(prefix, int) and grid is not None and prefix + grid[0] * grid[1] == num_tokens:
        return prefix, (int(grid[0]), int(grid[1]))
    candidates = [prefix] if isinstance(prefix, int) else range(9)
    for count in candidates:
        side = math.isqrt(max(num_tokens - count, 0))
        if side > 0 and side * side == num_tokens - count:
            return count, (side, side)
    raise ShapeError(
        f"cannot lay {num_tokens} tokens of {type(model).__name__} out on a grid (no square "
        "number of patch tokens after 0-8 prefix tokens); tap a layer with a feature map."
    )


def tokens_to_map(tokens: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens [B, N, C] -> a feature map [B, C, rows, columns], prefix tokens dropped.

    The class/register tokens summarise the image rather than a location, so a spatial method
    reads the patch tokens only, in the row-major order patch embeddings use.
    """
    patches = tokens[:, prefix:, :]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


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
    penultimate = input_tap(classifier_name)

    # the global pool is the last adaptive pool to finish before the classifier with a 1x1 output
    # (pools inside squeeze-excitation blocks finish earlier); maps after it are vectors in map
    # form (ConvNeXt's head norm), so the last map is looked for before it
    search_end = classifier_index
    for index in range(classifier_index - 1, -1, -1):
        _, module, output, _ = calls[index]
        if isinstance(module, _GLOBAL_POOL_TYPES) and output.shape[-2:].numel() == 1:
            search_end = index
            break
    last_map = None
    for name, module, output, _ in calls[:search_end]:
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
    before_classifier = calls[:classifier_index]
    stages = _feature_info_stages(model) or _top_level_stages(before_classifier)
    if len(stages) < 2:
        stages = _resolution_stages(before_classifier) or stages
    return TapSet(last_map=last_map, penultimate=penultimate, stages=stages)


def _feature_info_stages(model: nn.Module) -> list[str]:
    """Stages from timm's `feature_info` (the modules its `features_only` mode returns).

    The stem (reduction 2) is dropped, as RepDistiller's feat[1:-1] drops it; a ViT lists every
    block at one reduction, so four evenly spaced blocks ending at the last stand for its stages.
    """
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not all(isinstance(i, dict) for i in info):
        return []
    names = set(dict(model.named_modules()))
    entries = [i for i in info if i.get("module") in names]
    if len(entries) >= 3 and entries[0].get("reduction", 0) <= 2:
        entries = entries[1:]
    if len({i.get("reduction") for i in entries}) == 1 and len(entries) > 4:
        count = len(entries)
        entries = [entries[(count * (k + 1)) // 4 - 1] for k in range(4)]
    return list(dict.fromkeys(i["module"] for i in entries))


def _top_level_stages(calls) -> list[str]:
    """Top-level blocks (children with children) that produce maps or tokens, in order."""
    stages = []
    for name, module, output, _ in calls:
        is_block = any(True for _ in module.children())
        if "." in name or not is_block or output.dim() not in (3, 4):
            continue
        stages.append(name)
    return list(dict.fromkeys(stages))


def _resolution_stages(calls) -> list[str]:
    """Stages of a model whose top level is one container (torchvision's MobileNets and
    EfficientNets keep every stage inside `features`): the last child at each resolution.

    The container is the shallowest one whose children's maps span three or more resolutions; its children are
    grouped by output H x W in order, and the last child of each group ends a stage. A lone stem
    (the first group, one child) is dropped, as RepDistiller's feat[1:-1] drops it.
    """
    children: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for name, module, output, _ in calls:
        if output.dim() == 4 and not isinstance(module, _POOLING_TYPES):
            parent = name.rpartition(".")[0]
            children.setdefault(parent, []).append((name, tuple(output.shape[-2:])))

    def groups_of(members: list[tuple[str, tuple[int, ...]]]) -> list[list[str]]:
        groups: list[list[str]] = []
        previous = None
        for name, size in members:
            if size == previous:
                groups[-1].append(name)
            else:
                groups.append([name])
            previous = size
        return groups

    if not children:
        return []
    # the shallowest container spanning three or more resolutions is the network's trunk; deeper
    # ones can look like it when a block permutes its layout (ConvNeXt's channels-last blocks)
    spans = {c: len(groups_of(members)) for c, members in children.items()}
    trunks = [c for c in spans if spans[c] >= 3] or list(spans)
    container = min(trunks, key=lambda c: (c.count(".") if c else -1, -spans[c]))
    groups = groups_of(list(dict.fromkeys(children[container])))
    if len(groups) >= 3 and len(groups[0]) == 1:
        groups = groups[1:]
    return [group[-1] for group in groups] if len(groups) >= 2 else []
