"""The CIFAR zoo reproduces RepDistiller's architectures and exposes working feature taps."""

from __future__ import annotations

import pytest
import torch

from mimkd.features import FeatureExtractor, discover_taps
from mimkd.models import MODELS, create_model

CIFAR_MODELS = [name for name in MODELS.names() if MODELS.get(name).info["family"] == "cifar"]

# Parameter counts at num_classes=100, each checked equal to RepDistiller's `models/` (same layer
# layout, same state_dict shapes and the same logits for the same weights).
EXPECTED_PARAMETERS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "resnet50": 23_705_252,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobilenetv2": 812_836,
    "shufflenetv1": 949_258,
    "shufflenetv2": 1_355_528,
}

# Per-sample shapes of the default taps for a 32x32 input: (last_map, penultimate dim, stages).
_RESNET = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
_RESNET_X4 = [(64, 32, 32), (128, 16, 16), (256, 8, 8)]
_WRN_2 = [(32, 32, 32), (64, 16, 16), (128, 8, 8)]
_VGG = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]
EXPECTED_TAP_SHAPES = {
    **{name: ((64, 8, 8), 64, _RESNET) for name in ("resnet8", "resnet14", "resnet20")},
    **{name: ((64, 8, 8), 64, _RESNET) for name in ("resnet32", "resnet44", "resnet56")},
    "resnet110": ((64, 8, 8), 64, _RESNET),
    "resnet8x4": ((256, 8, 8), 256, _RESNET_X4),
    "resnet32x4": ((256, 8, 8), 256, _RESNET_X4),
    "resnet50": (
        (2048, 4, 4),
        2048,
        [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)],
    ),
    "wrn_16_1": ((64, 8, 8), 64, _RESNET),
    "wrn_40_1": ((64, 8, 8), 64, _RESNET),
    "wrn_16_2": ((128, 8, 8), 128, _WRN_2),
    "wrn_40_2": ((128, 8, 8), 128, _WRN_2),
    **{name: ((512, 4, 4), 512, _VGG) for name in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},
    "mobilenetv2": (
        (1280, 2, 2),
        1280,
        [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)],
    ),
    "shufflenetv1": ((960, 4, 4), 960, [(240, 16, 16), (480, 8, 8), (960, 4, 4)]),
    "shufflenetv2": ((1024, 4, 4), 1024, [(116, 16, 16), (232, 8, 8), (464, 4, 4)]),
}

_built: dict[str, torch.nn.Module] = {}


def build(name: str) -> torch.nn.Module:
    """Each zoo model once per test session at 100 classes, in eval mode (seeded weights)."""
    if name not in _built:
        torch.manual_seed(0)
        _built[name] = create_model(name, num_classes=100).eval()
    return _built[name]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_zoo_holds_every_crd_architecture():
    assert sorted(CIFAR_MODELS) == sorted(EXPECTED_PARAMETERS)
    assert sorted(EXPECTED_TAP_SHAPES) == sorted(EXPECTED_PARAMETERS)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_registry_entry_describes_a_32px_model(name):
    entry = MODELS.get(name)
    assert entry.info["input_size"] == 32
    assert entry.description and "\n" not in entry.description


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_parameter_count_matches_repdistiller(name):
    model = build(name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMETERS[name]


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_logits_and_default_tap_shapes(name, images):
    model = build(name)
    taps = model.default_taps
    assert discover_taps(model, images) is taps
    module_names = dict(model.named_modules())
    paths = [taps.last_map, taps.penultimate, *taps.stages]
    for path in paths:
        assert path.removesuffix(":input") in module_names
    extractor = FeatureExtractor(model, paths)
    try:
        with torch.no_grad():
            logits, features = extractor(images)
    finally:
        extractor.remove()
    assert type(logits) is torch.Tensor
    assert logits.shape == (2, 100)
    last_map, penultimate_dim, stages = EXPECTED_TAP_SHAPES[name]
    assert features[taps.last_map].shape == (2, *last_map)
    assert features[taps.penultimate].shape == (2, penultimate_dim)
    assert [features[stage].shape[1:] for stage in taps.stages] == stages
    # the last map is exactly what the head pools (no later in-place op changed it)
    pooled = features[taps.last_map].mean(dim=(2, 3))
    torch.testing.assert_close(pooled, features[taps.penultimate])


@pytest.mark.parametrize(
    "name", ["resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"]
)
def test_trains_for_other_class_and_channel_counts(name):
    model = create_model(name, num_classes=10, in_channels=1).train()
    logits = model(torch.randn(4, 1, 32, 32))
    assert logits.shape == (4, 10)
    logits.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
