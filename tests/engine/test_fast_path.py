"""The fast path (folded teacher, channels_last, bf16, compile fallback, packing) must compute what
the plain toolbox loop computes: speed is only worth having if the numbers do not move."""

import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimkd.config import OptimConfig, RunConfig
from mimkd.distillers import DistillerContext, create_distiller
from mimkd.distillers.kd import KDConfig
from mimkd.engine import fast
from mimkd.engine.fast import (
    CompiledOrEager,
    CompileFallbackWarning,
    FoldedBatchNorm,
    fold_batchnorms,
    prepare_frozen_teacher,
    resolve_compile,
    resolve_precision,
)
from mimkd.engine.trainer import RunParts, Trainer
from mimkd.errors import ShapeError
from mimkd.features import FeatureExtractor
from mimkd.models import create_model


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorms with the non-trivial statistics and affine terms a trained network has."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)
    return model.eval()


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-5) -> bool:
    return torch.allclose(a, b, atol=atol, rtol=rtol)


# ---- BatchNorm folding --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet8x4", "cnn_small"])
def test_folded_teacher_gives_the_same_logits_and_tap_features(name):
    torch.manual_seed(0)
    reference = trained_like(create_model(name, num_classes=100))
    teacher = copy.deepcopy(reference)
    taps = reference.default_taps
    paths = [*taps.stages, taps.last_map, taps.penultimate]
    # the taps exist before the fold, as a distiller registers them before run() prepares it
    extractor = FeatureExtractor(teacher, paths)
    prepare_frozen_teacher(teacher)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        logits, features = FeatureExtractor(reference, paths)(images)
        folded_logits, folded_features = extractor(images)
    assert _close(folded_logits, logits)
    for path in paths:
        assert _close(folded_features[path], features[path]), path


def test_fold_keeps_every_hooked_value_and_tap_path():
    torch.manual_seed(0)
    reference = trained_like(create_model("resnet8x4", num_classes=10))
    teacher = copy.deepcopy(reference)
    # a BN output (moves to its replacement), a conv output and a BN input (both block the fold)
    paths = ["layer1.0.bn2", "layer2.0.conv1", "layer3.0.bn1:input", "fc:input"]
    extractor = FeatureExtractor(teacher, paths)
    folded = fold_batchnorms(teacher)
    assert "layer1.0.bn2" in folded
    assert "layer2.0.bn1" not in folded and "layer3.0.bn1" not in folded
    modules = dict(teacher.named_modules())
    assert isinstance(modules["layer1.0.bn2"], FoldedBatchNorm)
    assert isinstance(modules["layer2.0.bn1"], nn.BatchNorm2d)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        _, expected = FeatureExtractor(reference, paths)(images)
        _, got = extractor(images)
    for path in paths:
        assert _close(got[path], expected[path]), path
    extractor.remove()  # the moved hooks are still removable through their handles
    assert not modules["layer1.0.bn2"]._forward_hooks


def test_keep_paths_protect_values_read_later():
    teacher = trained_like(create_model("resnet8x4", num_classes=10))
    folded = fold_batchnorms(teacher, keep=["conv1", "layer1.0.bn1:input"])
    assert "bn1" not in folded and "layer1.0.bn1" not in folded
    assert "layer1.0.bn2" in folded


def test_untraceable_model_folds_only_sequential_pairs():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            x = self.stem(x)
            if x.sum() > 0:  # data-dependent: FX cannot trace it
                x = self.bn(self.conv(x))
            return x.mean((2, 3))

    model = trained_like(Branchy())
    reference = copy.deepcopy(model)
    assert fold_batchnorms(model) == ["stem.1"]
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert _close(model(images), reference(images))


# ---- one fast step equals the reference loop's step ---------------------------------------------


class OneBatch:
    """A loader yielding one fixed batch: the trainer's step on exactly the reference's batch."""

    def __init__(self, images, labels):
        self.batch = (images, labels, torch.arange(labels.shape[0]))

    def __len__(self):
        return 1

    def __iter__(self):
        yield self.batch

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def reference_kd_step(student, teacher, images, labels, lr):
    """The toolbox loop (RepDistiller's train_distill): fp32, NCHW, unfolded teacher,
    DistillKL = KL(p_t || p_s) summed * T^2 / batch, loss = 0.1 CE + 0.9 KD."""
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    with torch.no_grad():
        teacher_logits = teacher(images)
    logits = student(images)
    temperature = 4.0
    log_p_student = F.log_softmax(logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    kd = F.kl_div(log_p_student, p_teacher, reduction="sum") * temperature**2 / logits.shape[0]
    loss = 0.1 * F.cross_entropy(logits, labels) + 0.9 * kd
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fast_step_matches_the_reference_step(precision, tmp_path):
    if precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        precision = "fp32"  # CPU autocast without bf16 kernels: the fp32 case covers it
    torch.manual_seed(0)
    teacher = trained_like(create_model("resnet8x4", num_classes=100))
    student = create_model("resnet8", num_classes=100).train()
    reference_student = copy.deepcopy(student)
    initial = copy.deepcopy(student.state_dict())
    images = torch.randn(16, 3, 32, 32)
    labels = torch.randint(0, 100, (16,))
    lr = 0.05
    reference_loss = reference_kd_step(reference_student, teacher, images, labels, lr)

    context = DistillerContext(num_classes=100, sample_input=torch.zeros(2, 3, 32, 32))
    distiller = create_distiller("kd", student, copy.deepcopy(teacher), context, KDConfig())
    prepare_frozen_teacher(distiller.teacher)
    config = RunConfig(
        method="kd",
        epochs=1,
        max_steps=1,
        progress=False,
        precision=precision,
        channels_last=True,
        compile=False,
        optim=OptimConfig(lr=lr, schedule="constant"),
    )
    loader = OneBatch(images.contiguous(memory_format=torch.channels_last), labels)
    parts = RunParts(config, distiller, loader, loader, tmp_path, device=torch.device("cpu"))
    trainer = Trainer(parts, log_line=print)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    fast_loss = next(r["loss"] for r in records if r["kind"] == "interval")

    got_state = distiller.student.state_dict()
    tolerance = 1e-4 if precision == "fp32" else 2e-2
    assert abs(fast_loss - reference_loss) <= tolerance * abs(reference_loss)
    for key, expected in reference_student.state_dict().items():
        got = got_state[key]
        if not expected.is_floating_point():
            assert torch.equal(got, expected), key
            continue
        assert got.is_contiguous(memory_format=torch.channels_last) or got.dim() != 4
        if precision == "fp32":
            assert _close(got, expected, atol=1e-5, rtol=1e-4), key
        else:
            assert _close(got, expected, atol=2e-3, rtol=2e-2), key
    moved = [
        k for k, v in initial.items() if v.is_floating_point() and not torch.equal(v, got_state[k])
    ]
    assert "fc.weight" in moved and "conv1.weight" in moved  # the step really updated the student


# ---- compile fallback ---------------------------------------------------------------------------


def test_a_model_whose_compile_raises_falls_back_with_one_warning(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = nn.Linear(4, 2)
    with pytest.warns(CompileFallbackWarning, match="no compiler here") as record:
        wrapped = CompiledOrEager(model, label="student")
        for _ in range(3):
            out = wrapped(torch.ones(1, 4))
    assert len(record) == 1
    assert torch.equal(out, model(torch.ones(1, 4)))
    wrapped.eval()  # attributes reach the module
    assert not model.training


def test_a_compile_that_fails_on_first_call_falls_back_with_one_warning(monkeypatch):
    calls = []

    def lazy_failure(module, **kwargs):
        def compiled(*args):
            calls.append(1)
            raise RuntimeError("backend compiler failed")

        return compiled

    monkeypatch.setattr(torch, "compile", lazy_failure)
    model = nn.Linear(4, 2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        wrapped = CompiledOrEager(model)
        outputs = [wrapped(torch.ones(1, 4)) for _ in range(3)]
    assert len([w for w in record if w.category is CompileFallbackWarning]) == 1
    assert len(calls) == 1  # never retried once it failed
    assert torch.equal(outputs[-1], model(torch.ones(1, 4)))


def test_mimkd_errors_are_not_mistaken_for_compile_failures(monkeypatch):
    def raises_shape_error(module, **kwargs):
        def compiled(*args):
            raise ShapeError("batch too small")

        return compiled

    monkeypatch.setattr(torch, "compile", raises_shape_error)
    wrapped = CompiledOrEager(nn.Linear(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ShapeError):
            wrapped(torch.ones(1, 4))


def test_trainer_trains_eagerly_when_compile_fails(monkeypatch, tmp_path):
    monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    context = DistillerContext(num_classes=10, sample_input=torch.zeros(2, 1, 28, 28))
    student = create_model("cnn_tiny", num_classes=10, in_channels=1)
    distiller = create_distiller("ce", student, None, context)
    config = RunConfig(epochs=1, progress=False, compile=True)
    loader = OneBatch(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    with pytest.warns(CompileFallbackWarning) as record:
        parts = RunParts(config, distiller, loader, loader, tmp_path, device=torch.device("cpu"))
        trainer = Trainer(parts, log_line=str)
        result = trainer.fit()
    messages = [str(w.message) for w in record]
    assert len(messages) == 2  # one per compiled callable: the training step, the evaluation
    assert any("evaluation student" in m for m in messages)
    assert any("ce main step" in m for m in messages)
    assert result.history and trainer.step == 1


# ---- flags ----------------------------------------------------------------------------------------


def test_auto_flags_resolve_per_device():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if fast.cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_compile(None, cpu) is False
    assert resolve_compile(True, cpu) is True
    assert not fast.uses_cuda_graphs("reduce-overhead", cpu)
    defaults = RunConfig()
    assert defaults.channels_last and defaults.fast_teacher and defaults.compile is None


# ---- packing --------------------------------------------------------------------------------------


def test_packed_runs_equal_the_same_runs_one_at_a_time(idx_folder, tmp_path):
    from mimkd.engine.pack import packed_jobs, run_packed

    def jobs(folder):
        overrides = [
            f"data.root={idx_folder}",
            "data.download=false",
            "model=cnn_tiny",
            "epochs=1",
            "data.batch_size=32",
            f"out_dir={folder}",
            "ce.label_smoothing=0.0",
        ]
        return packed_jobs(None, overrides, seeds=[0, 1], methods=["ce"])

    from mimkd.engine.run import run

    packed = run_packed(jobs(tmp_path / "packed"), max_parallel=2, threads_per_run=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each packed process used: same kernels, same rounding
    try:
        alone = [run(config, method_config) for config, method_config in jobs(tmp_path / "alone")]
    finally:
        torch.set_num_threads(threads)
    assert [r["seed"] for r in packed] == [0, 1]
    assert packed[0]["run_dir"] != packed[1]["run_dir"]
    for together, single in zip(packed, alone):
        assert together["best_accuracy"] == single["best_accuracy"]
        weights = torch.load(f"{together['run_dir']}/last.pt", weights_only=False)["model"]
        reference = torch.load(f"{single['run_dir']}/last.pt", weights_only=False)["model"]
        assert all(torch.equal(weights[k], reference[k]) for k in weights)


def test_distill_folds_a_copy_and_leaves_the_callers_teacher_intact(idx_folder, tmp_path):
    import mimkd

    teacher = create_model("cnn_small", num_classes=10, in_channels=1)
    student = create_model("cnn_tiny", num_classes=10, in_channels=1)
    norms = [name for name, m in teacher.named_modules() if isinstance(m, nn.BatchNorm2d)]
    overrides = {"data.root": str(idx_folder), "data.download": False, "epochs": 1}
    overrides.update({"progress": False, "run_dir": str(tmp_path), "fast_teacher": True})
    mimkd.distill(student, teacher, method="kd", overrides=overrides)
    still = [name for name, m in teacher.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and still == norms
