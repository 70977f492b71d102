"""The fast path's pieces: a folded, frozen teacher, torch.compile with a fallback, auto flags.

Why fold: the frozen teacher's forward is most of a distillation step on a CPU (resnet32x4 costs
~6x resnet8x4's forward) and in eval mode every BatchNorm is a fixed per-channel affine map, so it
can live inside the preceding convolution's weights and bias at zero cost. The fold is in place:
each folded BatchNorm becomes a `FoldedBatchNorm` (an identity) at the same dotted path, so the
tap paths that distillers read ("layer3", "layer2.0.bn2", "fc:input") still resolve and still see
the values they saw before the fold.

Why a compile fallback: `torch.compile` is lazy, so a model that the compiler cannot handle fails
on its first call, not when it is wrapped; training should then go on eagerly, with one warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from mimkd.errors import MimkdError
from mimkd.features import input_tap

# every per-module hook table a forward runs through (torch 2.x names)
_FORWARD_HOOK_TABLES = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


class FoldedBatchNorm(nn.Identity):
    """A BatchNorm whose eval-mode affine map now lives in the preceding convolution."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def extra_repr(self) -> str:
        return f"{self.num_features}, folded into the previous convolution"


class CompileFallbackWarning(UserWarning):
    """torch.compile could not handle a model; it runs eagerly instead."""


# ---- BatchNorm folding ----------------------------------------------------------------------------


def _has_hooks(module: nn.Module, tables: Iterable[str]) -> bool:
    return any(getattr(module, table, None) for table in tables)


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (
        isinstance(conv, _ConvNd)
        and not isinstance(conv, _ConvTransposeNd)
        and type(norm) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
        and norm.running_mean is not None  # without running stats eval mode uses batch stats
        and norm.num_features == conv.out_channels
    )


def _traced_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv path, norm path) where the norm's only input is the conv's output, read from the
    FX graph; hooks are lifted off during tracing so they never see proxies."""
    saved = []
    for module in model.modules():
        for table in _FORWARD_HOOK_TABLES:
            hooks = getattr(module, table, None)
            if hooks:
                saved.append((module, table, hooks))
                setattr(module, table, type(hooks)())
    try:
        graph = torch.fx.symbolic_trace(model).graph
    finally:
        for module, table, hooks in saved:
            setattr(module, table, hooks)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        producer = node.args[0]
        if not isinstance(producer, torch.fx.Node) or producer.op != "call_module":
            continue
        if len(producer.users) != 1 or calls[producer.target] != 1 or calls[node.target] != 1:
            continue  # a shared convolution or a conv output read elsewhere must stay exact
        if _foldable(modules[producer.target], modules[node.target]):
            pairs.append((producer.target, node.target))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Adjacent (conv, norm) children of plain nn.Sequential containers, whose forward guarantees
    that one feeds the other: the fallback for models that FX cannot trace."""
    uses: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        uses[id(module)] = uses.get(id(module), 0) + 1
    pairs = []
    for path, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        if type(container).forward is not nn.Sequential.forward:
            continue
        children = list(container.named_children())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
            if uses[id(conv)] == 1 and uses[id(norm)] == 1 and _foldable(conv, norm):
                prefix = f"{path}." if path else ""
                pairs.append((prefix + conv_name, prefix + norm_name))
    return pairs


@torch.no_grad()
def _fold_pair(conv: nn.Module, norm: _BatchNorm) -> None:
    """conv(x) * s + (b - mean) * s + beta with s = gamma / sqrt(var + eps), in float64 so the
    folded layer matches the pair to rounding."""
    scale = norm.running_var.double().add(norm.eps).rsqrt()
    shift = -norm.running_mean.double() * scale
    if norm.affine:
        scale = scale * norm.weight.double()
        shift = shift * norm.weight.double() + norm.bias.double()
    view = (-1,) + (1,) * (conv.weight.dim() - 1)
    conv.weight.copy_((conv.weight.double() * scale.view(view)).to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(
            shift.to(conv.weight.dtype, copy=True), requires_grad=conv.weight.requires_grad
        )
    else:
        conv.bias.copy_((conv.bias.double() * scale + shift).to(conv.bias.dtype))


def fold_batchnorms(model: nn.Module, keep: Iterable[str] = ()) -> list[str]:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it, in place.

    Pairs come from the FX graph (or, for untraceable models, from plain Sequentials). A pair is
    left alone when folding would change a value someone reads: a conv whose output is hooked or
    named in `keep` (tap paths), or a BatchNorm whose input is. Hooks on the BatchNorm's output
    move to its replacement (the same hook tables, so existing handles still remove them).
    Returns the paths of the folded BatchNorms.
    """
    keep = set(keep)
    try:
        pairs = _traced_pairs(model)
    except Exception:  # untraceable forward (data-dependent control flow): stay conservative
        pairs = _sequential_pairs(model)
    modules = dict(model.named_modules())
    folded = []
    for conv_path, norm_path in pairs:
        conv, norm = modules[conv_path], modules[norm_path]
        if conv_path in keep or input_tap(norm_path) in keep:
            continue
        if _has_hooks(conv, ("_forward_hooks", "_forward_hooks_with_kwargs")):
            continue
        if _has_hooks(norm, ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")):
            continue
        _fold_pair(conv, norm)
        replacement = FoldedBatchNorm(norm.num_features).to(conv.weight.device)
        for table in _FORWARD_HOOK_TABLES:
            if hasattr(norm, table):
                setattr(replacement, table, getattr(norm, table))
        parent_path, _, name = norm_path.rpartition(".")
        setattr(modules[parent_path] if parent_path else model, name, replacement)
        folded.append(norm_path)
    return folded


def prepare_frozen_teacher(model: nn.Module, keep: Iterable[str] = ()) -> nn.Module:
    """The teacher as an inference-only module: eval mode, no gradients, BatchNorms folded.

    Returns the same module object (changed in place), so references a distiller holds and the
    hooks its taps registered stay valid. `keep` lists tap paths whose values must not change.
    """
    model.eval()
    model.requires_grad_(False)
    fold_batchnorms(model, keep)
    return model


# ---- torch.compile with an eager fallback ------------------------------------------------------


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


class CompiledOrEager:
    """Calls `torch.compile(module)`; if compiling fails (now or on a later call), calls `module`
    eagerly from then on and warns once. Attribute access (train/eval/training) reaches `module`.

    An error the eager module raises too is the model's own error and propagates; mimkd's own
    errors (shape checks) propagate at once.
    """

    def __init__(
        self,
        module: nn.Module | Callable,
        *,
        mode: str = "default",
        backend: str = "inductor",
        label: str = "model",
        warn: Callable[[str], Any] | None = None,
    ):
        self.module = module
        self.label = label
        self.warn = warn or (lambda text: warnings.warn(text, CompileFallbackWarning, stacklevel=3))
        self.failed = False
        self.compiled: Callable | None = None
        try:
            options = {"mode": None if mode == "default" else mode}
            if backend != "inductor":  # modes are inductor's; other backends take none
                options = {"backend": backend}
            self.compiled = torch.compile(module, **options)
        except Exception as error:  # compilers fail in many ways; training must go on
            self._fall_back(error)

    def _fall_back(self, error: BaseException) -> None:
        self.compiled = None
        self.failed = True
        self.warn(
            f"torch.compile failed for the {self.label} ({_first_line(error)}); running it eagerly"
        )

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except MimkdError:
                raise
            except Exception as error:
                self._fall_back(error)
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str):
        # only called for attributes not found on the wrapper itself
        return getattr(self.__dict__["module"], name)


# ---- auto flags ---------------------------------------------------------------------------------


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions run natively (measured here: a KD step of
    resnet32x4 -> resnet8x4 ~2x faster than fp32); without them bf16 is emulated and slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 autocast (fp32 master weights, no loss scaling needed) where the hardware runs
    it natively: CUDA devices with bf16 and CPUs with AVX512-BF16/AMX; fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def resolve_compile(compile_flag: bool | None, device: torch.device) -> bool:
    """`None` (auto): compile on CUDA, where it removes launch overhead; on a CPU the compile
    time (minutes on few cores) outweighs what it saves in short runs."""
    if compile_flag is None:
        return device.type == "cuda"
    return bool(compile_flag)


def uses_cuda_graphs(mode: str, device: torch.device) -> bool:
    return device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")
