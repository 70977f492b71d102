"""Arbitrary pairs for every method: a ViT (tokens) and a CIFAR ResNet (maps) in either role, and
two torchvision families whose stages are discovered, not declared.

A method either trains one step on the pair (finite loss, gradient reaching the student, the
teacher untouched) or refuses with a ShapeError whose reason its docstring states.
"""

from __future__ import annotations

import math

import pytest
import torch

from mimkd.distillers import DISTILLERS, DistillerContext, create_distiller, method_config_class
from mimkd.errors import ShapeError
from mimkd.models import create_model

pytest.importorskip("timm")


def vit():
    # a small timm ViT on 32x32 images: 4x4 patches, an 8x8 grid plus a class token
    return create_model(
        "timm:vit_tiny_patch16_224",
        num_classes=10,
        img_size=32,
        patch_size=4,
        depth=4,
        embed_dim=64,
        num_heads=2,
    )


def resnet8():
    return create_model("resnet8", num_classes=10)


PAIRS = {
    "vit->resnet8": (vit, resnet8),
    "resnet8->vit": (resnet8, vit),
    "mobilenet_v3_small->shufflenet_v2_x0_5": (
        lambda: create_model("tv:mobilenet_v3_small", num_classes=10),
        lambda: create_model("tv:shufflenet_v2_x0_5", num_classes=10),
    ),
}
# what a method cannot pair, and the reason its docstring gives
CANNOT_PAIR = {"fsp": "equal channel counts"}


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("method", DISTILLERS.names())
def test_one_step_on_cross_family_pairs(method, pair):
    make_teacher, make_student = PAIRS[pair]
    torch.manual_seed(0)
    teacher, student = make_teacher().eval(), make_student()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    context = DistillerContext(10, torch.zeros(2, 3, 32, 32), num_train_samples=32)
    overrides = {"num_negatives": 16} if method == "crd" else {}
    config = method_config_class(method)(**overrides)
    if method in CANNOT_PAIR:
        with pytest.raises(ShapeError, match=CANNOT_PAIR[method]):
            create_distiller(method, student, teacher, context, config)
        module_doc = __import__(DISTILLERS.get(method).builder.__module__, fromlist=["_"]).__doc__
        assert "cannot pair" in module_doc
        return
    distiller = create_distiller(method, student, teacher, context, config).train()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (4,), generator=generator)
    output = distiller.forward_train(images, labels, torch.arange(4))
    output.total_loss.backward()
    assert math.isfinite(output.total_loss.item())
    assert output.logits.shape == (4, 10)
    trained = [p for p in distiller.trainable_parameters() if p.grad is not None]
    assert trained, "no gradient reached the student or the method's modules"
    assert all(p.grad is None for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
