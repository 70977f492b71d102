"""Taps across layouts: stage discovery for models that declare none, tokens laid out as maps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mimkd.errors import ShapeError
from mimkd.features import FeatureExtractor, discover_taps, token_grid, tokens_to_map
from mimkd.models import create_model


def test_torchvision_mobilenet_stages_are_found_where_the_resolution_changes():
    model = create_model("tv:mobilenet_v3_small", num_classes=10).eval()
    images = torch.randn(2, 3, 64, 64)
    taps = discover_taps(model, images)
    assert taps.last_map == "features" and taps.penultimate == "classifier.3:input"
    # the last block at each resolution inside `features` (the stem, features.0, is dropped)
    sizes = []
    _, features = FeatureExtractor(model, taps.stages)(images)
    for stage in taps.stages:
        sizes.append(tuple(features[stage].shape[-2:]))
    assert taps.stages == ["features.1", "features.3", "features.8", "features.12"]
    assert sizes == sorted(set(sizes), reverse=True)  # one stage per resolution, coarser each time
    with torch.no_grad():
        after = model.features[: int(taps.stages[1].split(".")[1]) + 1](images)
    torch.testing.assert_close(features["features.3"], after)


def test_top_level_stages_are_kept_when_a_model_has_them():
    model = create_model("tv:resnet18", num_classes=10)
    assert discover_taps(model, torch.zeros(2, 3, 32, 32)).stages == [
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]


def test_timm_vit_stages_come_from_feature_info():
    pytest.importorskip("timm")
    model = create_model(
        "timm:vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4, depth=8
    )
    taps = discover_taps(model, torch.zeros(2, 3, 32, 32))
    # eight blocks at one reduction: four evenly spaced ones ending at the last stand for stages
    assert taps.stages == ["blocks.1", "blocks.3", "blocks.5", "blocks.7"]
    assert taps.penultimate == "head:input"


def test_vit_tokens_become_the_patch_grid_without_the_class_token():
    pytest.importorskip("timm")
    model = create_model(
        "timm:vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=2
    ).eval()
    images = torch.randn(3, 3, 32, 32)
    _, features = FeatureExtractor(model, ["blocks.1"])(images)
    tokens = features["blocks.1"]  # [B, 1 + 16, C]
    prefix, grid = token_grid(model, tokens.shape[1])
    assert (prefix, grid) == (1, (4, 4))
    feature_map = tokens_to_map(tokens, prefix, grid)
    assert feature_map.shape == (3, tokens.shape[2], 4, 4)
    # location (row r, column c) of the map is patch token 1 + 4r + c (row-major patch order)
    for row, column in [(0, 0), (1, 2), (3, 3)]:
        torch.testing.assert_close(feature_map[:, :, row, column], tokens[:, 1 + 4 * row + column])


def test_token_grid_of_models_that_do_not_say():
    bare = nn.Linear(1, 1)
    assert token_grid(bare, 65) == (1, (8, 8))  # one class token and an 8x8 grid
    assert token_grid(bare, 49) == (0, (7, 7))  # no prefix token
    with pytest.raises(ShapeError, match="grid"):
        token_grid(bare, 2 + 9 * 10 + 1)  # nothing square within 8 prefix tokens
