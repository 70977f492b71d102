"""`sync_batchnorm=true`'s conversion keeps what a distiller relies on: the same parameter and
buffer tensors (an optimizer built before still steps them), the taps' hooks, the checkpoint keys,
and BatchNorm's values where there is one process (the cross-process statistics are checked by
test_ddp_equivalence.py under torchrun)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from mimkd.engine.distributed import CrossRankBatchNorm, convert_sync_batchnorm
from mimkd.models import create_model


def test_conversion_keeps_tensors_hooks_keys_and_values():
    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=10, in_channels=1)
    original = copy.deepcopy(model)
    norm = model.stage2[0][1]
    seen = []
    handle = norm.register_forward_hook(lambda module, inputs, output: seen.append(output))
    tensors = {name: tensor for name, tensor in model.state_dict(keep_vars=True).items()}

    assert convert_sync_batchnorm(model) == 3
    assert isinstance(model.stage2[0][1], CrossRankBatchNorm)
    after = model.state_dict(keep_vars=True)
    assert after.keys() == tensors.keys()
    assert all(after[name] is tensors[name] for name in tensors)

    images = torch.randn(8, 1, 28, 28)
    for mode in (True, False):  # training (batch statistics) and eval (running statistics)
        model.train(mode)
        original.train(mode)
        assert torch.allclose(model(images), original(images), atol=1e-6)
    assert len(seen) == 2  # the tap's hook moved with the module
    handle.remove()
    model(images)
    assert len(seen) == 2  # and its handle still removes it
    # the running statistics were updated as BatchNorm updates them
    assert torch.allclose(model.stage2[0][1].running_var, original.stage2[0][1].running_var)


def test_a_module_used_twice_stays_one_module():
    shared = nn.BatchNorm1d(4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    convert_sync_batchnorm(model)
    assert model[0] is model[2] and isinstance(model[0], CrossRankBatchNorm)
