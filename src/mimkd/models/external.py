"""Models from other libraries by name: `tv:<name>` (torchvision) and `timm:<name>` (timm).

No wrapper class: the library's own module comes back, and feature taps address its submodules by
their usual paths ("layer4", "encoder", "blocks.11"). `weights` is only used when given, so nothing
is downloaded unless asked for.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mimkd.errors import MimkdError, UnknownNameError, closest

TORCHVISION_PREFIX = "tv:"
TIMM_PREFIX = "timm:"


def create_external(
    name: str, num_classes: int, in_channels: int, weights: Any = None, **kwargs: Any
) -> nn.Module:
    """Build `tv:<name>` or `timm:<name>` with `num_classes` outputs; other kwargs pass through."""
    if name.startswith(TORCHVISION_PREFIX):
        return create_torchvision(
            name[len(TORCHVISION_PREFIX) :], num_classes, in_channels, weights, **kwargs
        )
    if name.startswith(TIMM_PREFIX):
        return create_timm(name[len(TIMM_PREFIX) :], num_classes, in_channels, weights, **kwargs)
    raise UnknownNameError(
        f"unknown model {name!r}: external models are named 'tv:<name>' or 'timm:<name>'. "
        "Run `mimkd list models` to see the zoo."
    )


def _suggest(prefix: str, name: str, candidates: list[str]) -> str:
    # compare bare names: the shared prefix would make every candidate look close
    best = closest(name, candidates)
    return f" Did you mean {prefix + best!r}?" if best else ""


def torchvision_classification_models() -> list[str]:
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def create_torchvision(
    model_name: str, num_classes: int, in_channels: int, weights: Any = None, **kwargs: Any
) -> nn.Module:
    import torchvision.models

    known = torchvision_classification_models()
    if model_name not in known:
        raise UnknownNameError(
            f"unknown torchvision classification model {model_name!r}."
            f"{_suggest(TORCHVISION_PREFIX, model_name, known)} "
            "Run `mimkd list models` to see the zoo; any name in "
            "torchvision.models.list_models(module=torchvision.models) works after 'tv:'."
        )
    if in_channels != 3:
        raise MimkdError(
            f"torchvision models read 3-channel images, but the data has {in_channels}; "
            "set data.channels=3 (grayscale images are then repeated over RGB)."
        )
    if weights is not None:
        kwargs["weights"] = weights
    try:
        return torchvision.models.get_model(model_name, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as error:
        # torchvision refuses e.g. num_classes=10 with ImageNet weights, or unknown arguments
        hint = (
            " Pretrained weights fix the number of classes: drop the weights or build for theirs."
            if weights is not None and "num_classes" in str(error)
            else ""
        )
        raise MimkdError(
            f"torchvision could not build {model_name!r}: {str(error).rstrip('.')}.{hint}"
        ) from None


def create_timm(
    model_name: str, num_classes: int, in_channels: int, weights: Any = None, **kwargs: Any
) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise MimkdError(
            f"model 'timm:{model_name}' needs timm, which is not installed: "
            'pip install "mimkd[timm]"'
        ) from None
    if not timm.is_model(model_name):
        suggestion = _suggest(TIMM_PREFIX, model_name, timm.list_models())
        raise UnknownNameError(
            f"unknown timm model {model_name!r}.{suggestion} Run `mimkd list models` to see the "
            "zoo; any name in timm.list_models() works after 'timm:'."
        )
    return timm.create_model(
        model_name,
        pretrained=bool(weights),
        num_classes=num_classes,
        in_chans=in_channels,
        **kwargs,
    )
