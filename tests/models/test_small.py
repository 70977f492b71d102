import pytest
import torch

from mimkd.features import FeatureExtractor
from mimkd.models import create_model

# conv weights + BN (2 per channel) per stage, then the linear head; counted by hand:
# cnn_tiny: 9*8 + 16 | 72*16 + 32 | 144*16 + 32 | 16*10 + 10 = 88 + 1184 + 2336 + 170 = 3,778
# cnn_small: 9*32 + 64 | 288*64 + 128 | 576*64 + 128 | 64*10 + 10 = 352 + 18560 + 36992 + 650
EXPECTED = {"cnn_tiny": (3_778, 16), "cnn_small": (56_554, 64)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_small_cnn_parameters_and_tap_shapes(name):
    parameters, width = EXPECTED[name]
    model = create_model(name, num_classes=10, in_channels=1)
    assert sum(p.numel() for p in model.parameters()) == parameters
    taps = model.default_taps
    extractor = FeatureExtractor(model, [*taps.stages, taps.penultimate])
    logits, features = extractor(torch.zeros(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    assert features["stage1"].shape == (2, width // 2, 14, 14)
    assert features["stage2"].shape == (2, width, 7, 7)
    assert features["stage3"].shape == (2, width, 7, 7)
    assert features["fc:input"].shape == (2, width)
    extractor.remove()
