"""The method contract, for every registered method: a method is covered the moment its file exists.

Each method trains through the real `Trainer` with its step compiled by dynamo (`aot_eager`:
autograd is traced and functionalised as inductor would, without generating C++), over three
epochs with every epoch- or stage-dependent behaviour switched on (init stages end after epoch 1,
DKD ramps), and must neither recompile after its first epoch nor fall back to eager.
"""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch

from mimkd.config import load_config
from mimkd.distillers import DISTILLERS, DistillConfig, method_info
from mimkd.engine import Trainer, build_run
from mimkd.engine.fast import CompiledOrEager, CompileFallbackWarning
from mimkd.models import create_model

METHODS = DISTILLERS.names()

# what makes each method's step change during a short run, and what keeps it small
PER_METHOD = {
    "ab": ["ab.init_epochs=1"],
    "ft": ["ft.init_epochs=1"],
    "fsp": ["fsp.init_epochs=1", "fsp.distill_weight=1.0"],
    "dkd": ["dkd.warmup_epochs=3"],
    "crd": ["crd.num_negatives=64"],
    "mimkd": ["mimkd.hidden=16"],
}


class RecompileLog(logging.Handler):
    """Collects dynamo's recompile messages (what TORCH_LOGS=recompiles prints)."""

    def __init__(self, events: list[str]):
        super().__init__()
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(f"recompile: {record.getMessage().splitlines()[0]}")


@pytest.fixture
def recompile_events():
    events: list[str] = []
    handler = RecompileLog(events)
    logger = logging.getLogger("torch._dynamo.guards.__recompiles")
    torch._logging.set_logs(recompiles=True)
    logger.addHandler(handler)
    torch._dynamo.reset()
    try:
        yield events
    finally:
        logger.removeHandler(handler)
        torch._logging.set_logs()
        torch._dynamo.reset()


def _parts(method: str, idx_folder, run_dir, extra: list[str]):
    # fsp matches Gram matrices between stages, so its student needs the teacher's widths
    student = "cnn_small" if method == "fsp" else "cnn_tiny"
    overrides = [
        f"method={method}",
        f"model.name={student}",
        f"data.root={idx_folder}",
        "data.download=false",
        "data.train_subset=64",
        "data.test_subset=32",
        "data.batch_size=32",
        "epochs=3",
        "optim.lr=0.01",
        "progress=false",
        "log_every=1000",
        f"run_dir={run_dir}",
        *PER_METHOD.get(method, []),
        *extra,
    ]
    config, method_config = load_config(None, overrides)
    torch.manual_seed(0)
    teacher = create_model("cnn_small", num_classes=10, in_channels=1)
    needs = method_info(method).needs_teacher
    return build_run(config, method_config, teacher=teacher if needs else None)


@pytest.mark.parametrize("method", METHODS)
def test_compiled_step_never_recompiles_after_the_first_epoch(
    method, idx_folder, tmp_path, recompile_events
):
    parts = _parts(method, idx_folder, tmp_path, ["compile=true", "compile_backend=aot_eager"])
    trainer = Trainer(parts, log_line=lambda text: recompile_events.append(f"end of {text[:9]}"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)  # eager fallback is a failure
        result = trainer.fit()
    first_epoch_end = recompile_events.index(next(e for e in recompile_events if "end of" in e))
    late = [e for e in recompile_events[first_epoch_end:] if e.startswith("recompile")]
    assert not late, late
    steps = trainer.distiller._steps
    assert steps and all(isinstance(s, CompiledOrEager) and not s.failed for s in steps.values())
    stages = {trainer.distiller.stage(epoch).name for epoch in range(3)}
    inference = {"teacher inference"} if trainer.distiller._uses_teacher else set()
    if any(not trainer.distiller.stage(epoch).student_trains for epoch in range(3)):
        inference.add("student inference")  # FT's init stage runs the frozen student as inference
    assert set(steps) == stages | inference  # one compiled callable per stage and frozen network
    assert len(result.history) == 3
    assert all(math.isfinite(r["train_loss"]) for r in result.history)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_declares_a_config_and_documents_its_pairs(method):
    cls = DISTILLERS.get(method).builder
    assert issubclass(cls.Config, DistillConfig)
    assert cls.Config.method_name == method
    config = cls.Config()  # defaults are valid: __post_init__ checks choices and ranges
    assert config.ce_weight >= 0 and config.kd_weight >= 0
    module_doc = __import__(cls.__module__, fromlist=["_"]).__doc__ or ""
    assert "Pairs:" in module_doc, f"{method}'s docstring must say what it pairs"
    info = method_info(method)
    assert info.paper and info.taps and info.description


@pytest.mark.parametrize("method", METHODS)
def test_eager_and_compiled_steps_agree(method, idx_folder, tmp_path):
    """The compiled step computes the eager step's losses (the first step, same weights)."""
    losses = {}
    for mode in ("eager", "compiled"):
        extra = ["compile=true", "compile_backend=aot_eager"] if mode == "compiled" else []
        torch._dynamo.reset()
        parts = _parts(method, idx_folder, tmp_path / mode, [*extra, "compile_mode=default"])
        trainer = Trainer(parts, log_line=lambda _: None)
        trainer.distiller.train()
        trainer.distiller.on_epoch_start(0)
        torch.manual_seed(1)  # the same negatives (MIMKD, CRD) in both modes
        images, labels, indices = next(iter(trainer.train_loader))
        losses[mode] = {
            k: v.item() for k, v in trainer.train_step(images, labels, indices).losses.items()
        }
    torch._dynamo.reset()
    assert losses["eager"].keys() == losses["compiled"].keys()
    for key, value in losses["eager"].items():
        assert losses["compiled"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_inductor_keeps_the_gradient_of_a_term_also_reported_as_a_metric(idx_folder, tmp_path):
    """FT's init term is 1.0 x the reconstruction error it also reports: inductor folds the
    product, and a graph returning that one buffer with and without gradient used to lose the
    gradient ("element 0 of tensors does not require grad" at backward)."""
    torch._dynamo.reset()
    parts = _parts("ft", idx_folder, tmp_path, ["compile=true", "compile_backend=inductor"])
    trainer = Trainer(parts, log_line=lambda _: None)
    trainer.distiller.train()
    trainer.distiller.on_epoch_start(0)
    before = [p.detach().clone() for p in trainer.distiller.paraphraser.parameters()]
    images, labels, indices = next(iter(trainer.train_loader))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        output = trainer.train_step(images, labels, indices)
    torch._dynamo.reset()
    assert output.losses["ft_init"].requires_grad
    assert not output.metrics["paraphraser_mse"].requires_grad
    after = list(trainer.distiller.paraphraser.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
