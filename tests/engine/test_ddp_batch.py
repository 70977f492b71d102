"""The global batch: gradient accumulation follows the larger batch's trajectory (per-sample
losses, no BatchNorm), and the learning rate scales with the global batch only when asked."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mimkd.config import load_config
from mimkd.engine.build import build_run
from mimkd.engine.trainer import Trainer
from mimkd.models import create_model


class PlainConvNet(nn.Module):
    """No BatchNorm: each sample's loss depends on that sample alone, so accumulating the
    gradients of two batches of 16 is one batch of 32, exactly up to rounding."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.features(x))


def _fit(idx_folder, run_dir, overrides: list[str], log: list[str] | None = None) -> Trainer:
    config, method_config = load_config(
        None,
        [
            # no augmentation: crops are drawn per batch, so 2 x 16 would see other crops than 32
            f"data.root={idx_folder}", "data.download=false", "data.augment=none",
            "data.image_size=16", "epochs=1", "precision=fp32", "device=cpu", "progress=false",
            f"run_dir={run_dir}", *overrides,
        ],
    )  # fmt: skip
    torch.manual_seed(0)
    student = PlainConvNet()
    teacher = create_model("cnn_small", num_classes=10, in_channels=1)
    parts = build_run(
        config, method_config, student=student, teacher=teacher if config.method == "kd" else None
    )
    trainer = Trainer(parts, log_line=(log.append if log is not None else lambda _: None))
    trainer.fit()
    return trainer


@pytest.mark.parametrize("method", ["ce", "kd"])
def test_two_accumulated_batches_of_16_train_as_one_batch_of_32(method, idx_folder, tmp_path):
    """A whole epoch: 25 batches of 16 make 13 optimizer steps, the last of a single batch,
    as 12 batches of 32 and a last one of 16."""
    big = _fit(idx_folder, tmp_path / "big", [f"method={method}", "data.batch_size=32"])
    small = _fit(
        idx_folder,
        tmp_path / "small",
        [f"method={method}", "data.batch_size=16", "optim.accumulation_steps=2"],
    )
    assert big.step == small.step == 13
    assert small.global_batch_size == big.global_batch_size == 32
    worst = max(
        (a - b).abs().max().item()
        for a, b in zip(big.distiller.student.parameters(), small.distiller.student.parameters())
    )
    print(f"\n{method}: max |accumulated 2 x 16 - 32| = {worst:.3g}")
    assert worst <= 1e-5
    # the schedule counted optimizer steps: both ended the epoch at the same learning rate
    assert big.history[-1]["lr"] == small.history[-1]["lr"]


def test_linear_lr_scaling_is_asked_for_printed_and_recorded(idx_folder, tmp_path):
    log: list[str] = []
    overrides = [
        "method=ce", "data.batch_size=16", "optim.accumulation_steps=2", "optim.lr=0.1",
        "optim.schedule=constant", "optim.lr_scaling=linear", "optim.reference_batch_size=64",
    ]  # fmt: skip
    trainer = _fit(idx_folder, tmp_path / "scaled", overrides, log)
    assert trainer.history[-1]["lr"] == pytest.approx(0.05)  # 0.1 x 32 / 64
    assert "optim.lr_scaling=linear: lr 0.1 x global batch 32 / 64 = 0.05" in log
    results = json.loads((tmp_path / "scaled" / "results.json").read_text())
    assert results["lr"] == pytest.approx(0.05) and results["lr_scaling"] == "linear"

    # not asked: the learning rate is optim.lr whatever the global batch, and nothing is printed
    log.clear()
    trainer = _fit(idx_folder, tmp_path / "plain", overrides[:-2], log)
    assert trainer.history[-1]["lr"] == pytest.approx(0.1)
    assert not any("lr_scaling" in line for line in log)
