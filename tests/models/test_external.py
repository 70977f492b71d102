"""torchvision/timm models by name, and feature taps on models mimkd did not write."""

from __future__ import annotations

import sys
import types
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from mimkd.errors import MimkdError, UnknownNameError
from mimkd.features import FeatureExtractor, discover_taps
from mimkd.models import create_model


def extract(model: nn.Module, paths: list[str], images: torch.Tensor):
    extractor = FeatureExtractor(model, paths)
    try:
        with torch.no_grad():
            return extractor(images)
    finally:
        extractor.remove()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ---- tv: / timm: names ----------------------------------------------------------------------
def test_torchvision_model_by_name_takes_num_classes():
    model = create_model("tv:resnet18", num_classes=10)
    assert isinstance(model, torchvision.models.ResNet)
    assert model.fc.out_features == 10


def test_unknown_torchvision_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match=r"Did you mean 'tv:resnet18'\?.*mimkd list models"):
        create_model("tv:resnt18", num_classes=10)


def test_torchvision_needs_three_channels():
    with pytest.raises(MimkdError, match=r"data\.channels=3"):
        create_model("tv:resnet18", num_classes=10, in_channels=1)


def test_torchvision_weights_are_passed_only_when_given(monkeypatch):
    calls = []

    def fake_get_model(name, **kwargs):
        calls.append((name, kwargs))
        return nn.Identity()

    monkeypatch.setattr(torchvision.models, "get_model", fake_get_model)
    create_model("tv:resnet18", num_classes=10)
    create_model("tv:resnet18", num_classes=1000, weights="IMAGENET1K_V1", dropout=0.1)
    assert calls == [
        ("resnet18", {"num_classes": 10}),
        ("resnet18", {"num_classes": 1000, "weights": "IMAGENET1K_V1", "dropout": 0.1}),
    ]


def test_torchvision_refusal_is_a_mimkd_error():
    with pytest.raises(MimkdError, match="could not build 'resnet18'"):
        create_model("tv:resnet18", num_classes=10, not_an_argument=1)


def test_timm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(MimkdError, match=r'pip install "mimkd\[timm\]"'):
        create_model("timm:resnet18", num_classes=10)


def test_timm_model_by_name(monkeypatch):
    calls = []
    fake_timm = types.ModuleType("timm")
    fake_timm.list_models = lambda: ["resnet18", "vit_tiny_patch16_224"]
    fake_timm.is_model = lambda name: name in fake_timm.list_models()

    def create(name, **kwargs):
        calls.append((name, kwargs))
        return nn.Identity()

    fake_timm.create_model = create
    monkeypatch.setitem(sys.modules, "timm", fake_timm)
    create_model("timm:resnet18", num_classes=10)
    create_model("timm:resnet18", num_classes=10, in_channels=1, weights=True)
    assert calls == [
        ("resnet18", {"pretrained": False, "num_classes": 10, "in_chans": 3}),
        ("resnet18", {"pretrained": True, "num_classes": 10, "in_chans": 1}),
    ]
    with pytest.raises(UnknownNameError, match=r"Did you mean 'timm:resnet18'\?"):
        create_model("timm:resnet81", num_classes=10)


# ---- taps on external architectures ---------------------------------------------------------
def test_resnet18_taps_equal_its_layers_run_by_hand(images):
    torch.manual_seed(0)
    model = create_model("tv:resnet18", num_classes=10).eval()
    logits, features = extract(model, ["layer2", "layer4", "fc:input"], images)
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
        layer2 = model.layer2(model.layer1(x))
        layer4 = model.layer4(model.layer3(layer2))
        pooled = model.avgpool(layer4).flatten(1)
    torch.testing.assert_close(features["layer2"], layer2)
    torch.testing.assert_close(features["layer4"], layer4)
    torch.testing.assert_close(features["fc:input"], pooled)
    torch.testing.assert_close(logits, model.fc(pooled))
    taps = discover_taps(model, images)
    assert (taps.last_map, taps.penultimate) == ("layer4", "fc:input")


def test_vit_encoder_tap_equals_the_encoder_run_by_hand(images):
    # torchvision's vit_b_16 builder fixes patch_size/depth, so a small ViT is built directly
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    ).eval()
    logits, features = extract(model, ["encoder", "heads.head:input"], images)
    with torch.no_grad():
        tokens = model._process_input(images)
        class_token = model.class_token.expand(images.shape[0], -1, -1)
        encoded = model.encoder(torch.cat([class_token, tokens], dim=1))
    assert features["encoder"].shape == (2, 1 + 16, 32)
    torch.testing.assert_close(features["encoder"], encoded)
    torch.testing.assert_close(features["heads.head:input"], encoded[:, 0])
    torch.testing.assert_close(logits, model.heads(encoded[:, 0]))


class OddlyNamed(nn.Module):
    """Names a zoo model would never use: digits first, dashes, capitals, non-ASCII."""

    def __init__(self):
        super().__init__()
        self.add_module(
            "Trunk",
            nn.Sequential(
                OrderedDict(
                    [
                        ("0stem", nn.Conv2d(3, 4, 3, padding=1)),
                        ("mixer-1", nn.Tanh()),
                        ("étage_2", nn.Conv2d(4, 6, 3, stride=2, padding=1)),
                    ]
                )
            ),
        )
        self.readout_HEAD = nn.Linear(6, 5)

    def forward(self, x):
        return self.readout_HEAD(self.Trunk(x).amax(dim=(2, 3)))


def test_explicit_paths_on_a_custom_module(images):
    torch.manual_seed(0)
    model = OddlyNamed().eval()
    paths = ["Trunk.mixer-1", "Trunk.étage_2", "readout_HEAD:input"]
    logits, features = extract(model, paths, images)
    with torch.no_grad():
        mixed = torch.tanh(model.Trunk[0](images))
        stage = model.Trunk[2](mixed)
    torch.testing.assert_close(features["Trunk.mixer-1"], mixed)
    torch.testing.assert_close(features["Trunk.étage_2"], stage)
    torch.testing.assert_close(features["readout_HEAD:input"], stage.amax(dim=(2, 3)))
    assert logits.shape == (2, 5)


# ---- torch.compile ----------------------------------------------------------------------------
# aot_eager traces and functionalises like inductor but skips C++ codegen (slow on 2 cores); the
# default inductor backend gives the same tensors too. "traced" records the graphs dynamo hands
# its backend, to prove the forward really was compiled rather than run eagerly.
@pytest.mark.parametrize("backend_name", ["aot_eager", "traced"])
@pytest.mark.parametrize("how", ["compile_extractor", "compile_model_in_place"])
def test_taps_survive_torch_compile(how, backend_name):
    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=10, in_channels=1).eval()
    images = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    paths = ["stage2", "stage3", "fc:input"]
    expected_logits, expected = extract(model, paths, images)
    graphs = []

    def traced(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    backend = traced if backend_name == "traced" else backend_name
    extractor = FeatureExtractor(model, paths)
    if how == "compile_extractor":
        compiled = torch.compile(extractor, backend=backend)
    else:
        model.compile(backend=backend)
        compiled = extractor
    with torch.no_grad():
        logits, features = compiled(images)
    torch.testing.assert_close(logits, expected_logits)
    assert features.keys() == expected.keys()
    for path in paths:
        torch.testing.assert_close(features[path], expected[path])
    if backend_name == "traced":
        assert graphs, "dynamo compiled nothing"
