"""AB, FT, FSP, NST and CRD: losses against formulas written out here, stage switching, one SGD step
per method on small and CIFAR pairs, and CRD's memory (momentum update, checkpoint round trip,
queue size)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimkd.distillers import DistillerContext, create_distiller, method_config_class, method_info
from mimkd.distillers.ab import AB_LOSS_SCALE, activation_boundary_loss
from mimkd.distillers.crd import ContrastBank, ContrastQueue, nce_loss
from mimkd.distillers.fsp import fsp_loss, fsp_matrix
from mimkd.distillers.ft import factor_transfer_loss
from mimkd.distillers.nst import nst_loss
from mimkd.errors import MimkdError, ShapeError
from mimkd.models import create_model

METHODS = ["ab", "ft", "fsp", "nst", "crd"]


def block_mean(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average pooling by an integer factor, written out (the reference for adaptive pooling)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // factor, factor, w // factor, factor).mean((3, 5))


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / math.sqrt(float((v * v).sum()))


# ---- published defaults ---------------------------------------------------------------------


def test_defaults_are_repdistillers_cifar100_settings():
    ab, ft, fsp, nst, crd = (method_config_class(m)() for m in METHODS)
    assert (ab.init_epochs, ab.margin, ab.distill_weight, ab.ce_weight, ab.kd_weight) == (
        30,
        1.0,
        0.0,
        1.0,
        0.0,
    )
    assert (ft.init_epochs, ft.paraphrase_rate, ft.distill_weight) == (30, 0.5, 200.0)
    assert (fsp.init_epochs, fsp.distill_weight, fsp.ce_weight) == (30, 0.0, 1.0)
    assert (nst.distill_weight, nst.ce_weight, nst.kd_weight) == (50.0, 1.0, 0.0)
    assert (crd.distill_weight, crd.embed_dim, crd.num_negatives) == (0.8, 128, 16384)
    assert (crd.nce_temperature, crd.memory_momentum, crd.memory, crd.queue_size) == (
        0.07,
        0.5,
        "bank",
        16384,
    )
    info = method_info("crd")
    assert info.needs_indices and info.min_batch_size == 2


# ---- losses against independent computations ------------------------------------------------


def test_nst_loss_is_the_polynomial_kernel_mmd():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 4, 4, generator=g)
    teacher = torch.randn(2, 5, 2, 2, generator=g)
    pooled = block_mean(student, 2)

    def k(x, y):
        return float((x * y).sum()) ** 2

    expected = 0.0
    for b in range(2):
        s = [unit(pooled[b, i].flatten()) for i in range(3)]
        t = [unit(teacher[b, j].flatten()) for j in range(5)]
        tt = sum(k(a, c) for a in t for c in t) / 25
        ss = sum(k(a, c) for a in s for c in s) / 9
        st = sum(k(a, c) for a in s for c in t) / 15
        expected += (tt + ss - 2 * st) / 2
    assert nst_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_activation_boundary_loss_elementwise():
    source = torch.tensor([[2.0, 0.5, -0.5, -2.0], [0.3, -1.5, 1.0, -1.0]])
    target = torch.tensor([[1.0, 1.0, -1.0, 0.0], [-1.0, 2.0, 0.0, 3.0]])
    margin = 1.0
    expected = 0.0
    for s, t in zip(source.flatten().tolist(), target.flatten().tolist()):
        if t > 0 and s <= margin:
            expected += (s - margin) ** 2
        elif t <= 0 and s > -margin:
            expected += (s + margin) ** 2
    expected /= 2  # per sample
    assert expected == pytest.approx(8.22)
    assert activation_boundary_loss(source, target, margin).item() == pytest.approx(expected)


def test_fsp_matrix_and_loss_by_loops():
    g = torch.Generator().manual_seed(1)
    bottom, top = torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    pooled = block_mean(bottom, 2)
    gram = torch.zeros(2, 3, 2)
    for b in range(2):
        for j in range(3):
            for i in range(2):
                gram[b, j, i] = (top[b, j] * pooled[b, i]).sum() / 4
    torch.testing.assert_close(fsp_matrix(bottom, top), gram)

    student = [torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)]
    student.append(torch.randn(2, 3, 2, 2, generator=g))
    teacher = [torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)]
    teacher.append(torch.randn(2, 3, 2, 2, generator=g))

    def gram_einsum(x, y):  # x the bottom, y the top, equal sizes
        return torch.einsum("bihw,bjhw->bji", x, y) / (x.shape[2] * x.shape[3])

    expected = 0.0
    for maps_s, maps_t in [(student[:2], teacher[:2]), (student[1:], teacher[1:])]:
        s_bot, s_top = maps_s
        t_bot, t_top = maps_t
        if s_bot.shape[-1] != s_top.shape[-1]:
            s_bot, t_bot = block_mean(s_bot, 2), block_mean(t_bot, 2)
        diff = gram_einsum(s_bot, s_top) - gram_einsum(t_bot, t_top)
        expected += float((diff**2).mean())
    assert fsp_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("collapse", [True, False])
def test_factor_transfer_loss(collapse):
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    pooled = block_mean(student, 2)
    expected = 0.0
    for b in range(2):
        if collapse:
            s = (pooled[b] ** 2).mean(0).flatten()
            t = (teacher[b] ** 2).mean(0).flatten()
        else:
            s, t = pooled[b].flatten(), teacher[b].flatten()
        expected += float((unit(s) - unit(t)).abs().sum())
    expected /= 2 * s.numel()
    got = factor_transfer_loss(student, teacher, collapse_channels=collapse)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def _nce_by_hand(anchors, memory, draws, temperature, n_data):
    """CRD's NCE loss for one anchor side, Z from this batch, in plain Python."""
    exps = [
        [math.exp(float(memory[j] @ anchors[b]) / temperature) for j in row]
        for b, row in enumerate(draws)
    ]
    z = sum(map(sum, exps)) / sum(map(len, exps)) * n_data
    noise = (len(draws[0]) - 1) / n_data
    total = 0.0
    for row in exps:
        p = [e / z for e in row]
        total += math.log(p[0] / (p[0] + noise + 1e-7))
        total += sum(math.log(noise / (q + noise + 1e-7)) for q in p[1:])
    return -total / len(draws), z


@pytest.mark.parametrize("dense", [True, False])
def test_crd_nce_loss_and_momentum_update_on_a_hand_built_bank(dense):
    n_data, dim, temperature, momentum = 6, 3, 0.5, 0.5
    bank = ContrastBank(n_data, dim, 2, temperature, momentum, dense=dense)
    g = torch.Generator().manual_seed(3)
    bank.student_memory.copy_(F.normalize(torch.randn(n_data, dim, generator=g), dim=1))
    bank.teacher_memory.copy_(F.normalize(torch.randn(n_data, dim, generator=g), dim=1))
    student = F.normalize(torch.randn(2, dim, generator=g), dim=1)
    teacher = F.normalize(torch.randn(2, dim, generator=g), dim=1)
    indices, negatives = torch.tensor([1, 4]), torch.tensor([[0, 5], [2, 2]])
    draws = [[1, 0, 5], [4, 2, 2]]
    old_student, old_teacher = bank.student_memory.clone(), bank.teacher_memory.clone()

    student_p, teacher_p = bank(student, teacher, indices, negatives)
    loss = nce_loss(student_p, n_data) + nce_loss(teacher_p, n_data)
    # student anchors read the teacher memory and vice versa
    loss_s, z_s = _nce_by_hand(student, old_teacher, draws, temperature, n_data)
    loss_t, z_t = _nce_by_hand(teacher, old_student, draws, temperature, n_data)
    assert loss.item() == pytest.approx(loss_s + loss_t, rel=1e-5)
    assert bank.normalizers.tolist() == pytest.approx([z_s, z_t], rel=1e-5)

    # new row = normalize(m * old + (1 - m) * v) for the batch's samples, others untouched
    for row, b in ((1, 0), (4, 1)):
        for memory, old, v in (
            (bank.student_memory, old_student, student),
            (bank.teacher_memory, old_teacher, teacher),
        ):
            mixed = momentum * old[row] + (1 - momentum) * v[b]
            torch.testing.assert_close(memory[row], mixed / mixed.norm())
    for row in (0, 2, 3, 5):
        assert torch.equal(bank.student_memory[row], old_student[row])
        assert torch.equal(bank.teacher_memory[row], old_teacher[row])

    # Z is estimated once: a second batch reuses it
    normalizers = bank.normalizers.clone()
    bank(student.flip(0), teacher, indices, negatives)
    assert torch.equal(bank.normalizers, normalizers)


def test_crd_queue_scores_and_fifo():
    dim, temperature, size = 2, 0.5, 3
    queue = ContrastQueue(size, dim, temperature)
    queue.teacher_queue.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    queue.student_queue.copy_(torch.tensor([[0.0, -1.0], [0.8, 0.6], [-1.0, 0.0]]))
    student = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0], [0.8, -0.6]])
    old_teacher_queue = queue.teacher_queue.clone()
    student_p, teacher_p = queue(student, teacher)
    # student anchors: positive = current teacher embedding, negatives = teacher queue
    exps = [
        [math.exp(float(student[b] @ k) / temperature) for k in [teacher[b], *old_teacher_queue]]
        for b in range(2)
    ]
    z = sum(map(sum, exps)) / 8 * size
    torch.testing.assert_close(student_p, torch.tensor(exps) / z)
    assert teacher_p.shape == (2, 1 + size)
    # FIFO: the two rows landed at 0 and 1, the next batch wraps around
    torch.testing.assert_close(queue.student_queue[:2], student)
    assert queue.pointer.item() == 2
    queue(student.flip(0), teacher.flip(0))
    torch.testing.assert_close(queue.student_queue[2], student[1])
    torch.testing.assert_close(queue.student_queue[0], student[0])
    assert queue.pointer.item() == 1


# ---- small pairs: a training step per method and stage --------------------------------------


def small_pair(teacher_name, student_name, seed=0):
    torch.manual_seed(seed)
    teacher = create_model(teacher_name, num_classes=10, in_channels=1)
    student = create_model(student_name, num_classes=10, in_channels=1)
    return teacher, student


def small_batch(size=4):
    g = torch.Generator().manual_seed(10)
    images = torch.randn(size, 1, 28, 28, generator=g)
    labels = torch.randint(0, 10, (size,), generator=g)
    return images, labels, torch.arange(size) * 3


def build(method, teacher, student, sample, num_train_samples=32, **overrides):
    config = method_config_class(method)(**overrides)
    context = DistillerContext(
        num_classes=10, sample_input=sample, num_train_samples=num_train_samples, total_epochs=40
    )
    return create_distiller(method, student, teacher, context, config)


def state(module: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in [*module.parameters(), *module.buffers()]]


def changed(before: list[torch.Tensor], module: nn.Module) -> bool:
    after = [*module.parameters(), *module.buffers()]
    return any(not torch.equal(b, a) for b, a in zip(before, after))


def sgd_step(distiller, images, labels, indices):
    distiller.train()
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1)
    out = distiller.forward_train(images, labels, indices)
    optimizer.zero_grad()
    out.total_loss.backward()
    optimizer.step()
    return out


# method, epoch, student, does the student train, adapters trained, adapters left alone
STEP_CASES = [
    ("ab", 0, "cnn_tiny", True, ["connectors"], []),
    ("ab", 30, "cnn_tiny", True, [], ["connectors"]),
    ("ft", 0, "cnn_tiny", False, ["paraphraser"], ["translator"]),
    ("ft", 30, "cnn_tiny", True, ["translator"], ["paraphraser"]),
    ("fsp", 0, "cnn_small", True, [], []),
    ("fsp", 30, "cnn_small", True, [], []),
    ("nst", 0, "cnn_tiny", True, [], []),
    ("crd", 0, "cnn_tiny", True, ["embed_student", "embed_teacher"], []),
]


@pytest.mark.parametrize(
    "method, epoch, student_name, student_trains, trained, idle",
    STEP_CASES,
    ids=[f"{c[0]}-epoch{c[1]}" for c in STEP_CASES],
)
def test_one_sgd_step(method, epoch, student_name, student_trains, trained, idle):
    teacher, student = small_pair("cnn_small", student_name)
    images, labels, indices = small_batch()
    distiller = build(method, teacher, student, images[:2])
    distiller.on_epoch_start(epoch)
    adapters = {name: getattr(distiller, name) for name in trained + idle}
    trainable = {id(p) for p in distiller.trainable_parameters()}
    for module in adapters.values():
        assert all(id(p) in trainable for p in module.parameters())
    before = {name: state(m) for name, m in [("teacher", teacher), ("student", student)]}
    before.update({name: state(m) for name, m in adapters.items()})

    out = sgd_step(distiller, images, labels, indices)

    assert out.logits.shape == (4, 10)
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert not changed(before["teacher"], teacher)
    assert changed(before["student"], student) == student_trains
    for name in trained:
        assert changed(before[name], adapters[name]), name
    for name in idle:
        assert not changed(before[name], adapters[name]), name


def test_init_stage_switches_to_labels():
    images, labels, indices = small_batch()
    schedule = {
        ("ab", "cnn_tiny"): [(0, {"ab_init"}), (1, {"ab_init"}), (2, {"ce"})],
        ("ft", "cnn_tiny"): [(0, {"ft_init"}), (1, {"ft_init"}), (2, {"ce", "ft"})],
        ("fsp", "cnn_small"): [(0, {"fsp_init"}), (1, {"fsp_init"}), (2, {"ce"})],
    }
    for (method, student_name), stages in schedule.items():
        teacher, student = small_pair("cnn_small", student_name)
        distiller = build(method, teacher, student, images[:2], init_epochs=2)
        for epoch, keys in stages:
            distiller.on_epoch_start(epoch)
            assert set(distiller.forward_train(images, labels, indices).losses) == keys
    teacher, student = small_pair("cnn_small", "cnn_tiny")
    overrides = {"init_epochs": 0, "distill_weight": 1.0, "kd_weight": 1.0}
    distiller = build("ab", teacher, student, images[:2], **overrides)
    assert set(distiller.forward_train(images, labels, indices).losses) == {"ce", "ab", "kd"}


def test_ft_init_loss_is_the_paraphrasers_reconstruction_error():
    teacher, student = small_pair("cnn_small", "cnn_tiny")
    images, labels, indices = small_batch()
    distiller = build("ft", teacher, student, images[:2])
    assert distiller.paraphraser.encoder[-2].out_channels == 32  # 0.5 x 64 teacher channels
    assert distiller.translator.encoder[-3].out_channels == 32
    out = distiller.forward_train(images, labels, indices)
    with torch.no_grad():
        teacher_map = teacher.stage3(teacher.stage2(teacher.stage1(images)))
        reconstruction = distiller.paraphraser.decoder(distiller.paraphraser.encoder(teacher_map))
    expected = ((reconstruction - teacher_map) ** 2).sum() / teacher_map.numel()
    assert out.losses["ft_init"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_ab_weights_deeper_stages_more():
    teacher, student = small_pair("cnn_small", "cnn_small")
    images, _, _ = small_batch()
    distiller = build("ab", teacher, student, images[:2])
    distiller.connectors = nn.ModuleList(nn.Identity() for _ in range(3))
    with torch.no_grad():
        _, student_features = distiller.student_forward(images)
        _, teacher_features = distiller.teacher_forward(images)
    expected = 0.0
    for i, name in enumerate(["stage1", "stage2", "stage3"]):
        s, t = student_features[name], teacher_features[name]
        on = torch.where((t > 0) & (s <= 1), (s - 1) ** 2, torch.zeros_like(s))
        off = torch.where((t <= 0) & (s > -1), (s + 1) ** 2, torch.zeros_like(s))
        expected += 2.0 ** (i - 2) * float((on + off).sum()) / 4
    got = distiller.boundary_loss(student_features, teacher_features)
    assert got.item() == pytest.approx(expected * AB_LOSS_SCALE, rel=1e-5)


def test_init_stage_longer_than_the_run_warns():
    teacher, student = small_pair("cnn_small", "cnn_tiny")
    context = DistillerContext(num_classes=10, sample_input=torch.zeros(2, 1, 28, 28))
    with pytest.warns(UserWarning, match="init stage"):
        create_distiller("ab", student, teacher, context)


def test_fsp_rejects_stages_of_different_widths():
    teacher, student = small_pair("cnn_small", "cnn_tiny")
    with pytest.raises(ShapeError, match="equal channel counts"):
        build("fsp", teacher, student, torch.zeros(2, 1, 28, 28))


# ---- CRD memory: batch rules, checkpoint round trip, queue size -----------------------------


def test_crd_batch_rules():
    teacher, student = small_pair("cnn_small", "cnn_tiny")
    images, labels, indices = small_batch()
    distiller = build("crd", teacher, student, images[:2], num_negatives=8)
    with pytest.raises(ShapeError, match="at least 2"):
        distiller.forward_train(images[:1], labels[:1], indices[:1])
    with pytest.raises(MimkdError, match="indices"):
        distiller.forward_train(images, labels, None)
    with pytest.raises(MimkdError, match="dataset size"):
        build("crd", teacher, student, images[:2], num_train_samples=0)


@pytest.mark.parametrize("memory", ["bank", "queue"])
def test_crd_memory_survives_state_dict_and_resumes_bit_exactly(memory):
    images, labels, indices = small_batch()
    teacher, student = small_pair("cnn_small", "cnn_tiny", seed=0)
    original = build("crd", teacher, student, images[:2], memory=memory, num_negatives=8)
    optimizer = torch.optim.SGD(original.trainable_parameters(), lr=0.1)
    torch.manual_seed(5)
    for _ in range(2):
        out = original.forward_train(images, labels, indices)
        optimizer.zero_grad()
        out.total_loss.backward()
        optimizer.step()
    saved = copy.deepcopy(original.state_dict())
    rng = torch.get_rng_state()

    teacher2, student2 = small_pair("cnn_small", "cnn_tiny", seed=1)
    restored = build("crd", teacher2, student2, images[:2], memory=memory, num_negatives=8)
    buffers = [n for n, _ in restored.memory.named_buffers()]
    assert not all(
        torch.equal(saved[f"memory.{n}"], restored.memory.get_buffer(n)) for n in buffers
    )
    restored.load_state_dict(saved)
    for name in buffers:
        assert torch.equal(restored.memory.get_buffer(name), saved[f"memory.{name}"])

    torch.set_rng_state(rng)
    continued = original.forward_train(images, labels, indices)
    torch.set_rng_state(rng)
    resumed = restored.forward_train(images, labels, indices)
    assert torch.equal(continued.losses["crd"], resumed.losses["crd"])
    for name in buffers:
        assert torch.equal(original.memory.get_buffer(name), restored.memory.get_buffer(name))


def test_crd_queue_memory_does_not_grow_with_the_dataset():
    teacher, student = small_pair("cnn_small", "cnn_tiny")
    sizes = {}
    for memory in ("bank", "queue"):
        for num_samples in (100, 1000):
            distiller = build(
                "crd", teacher, student, torch.zeros(2, 1, 28, 28), num_samples, memory=memory
            )
            sizes[memory, num_samples] = sum(b.numel() for b in distiller.memory.buffers())
    assert sizes["queue", 100] == sizes["queue", 1000]
    assert sizes["bank", 1000] > sizes["bank", 100]
    assert build("crd", teacher, student, torch.zeros(2, 1, 28, 28), 0, memory="queue")


# ---- CIFAR zoo pairs: one step each ---------------------------------------------------------

CIFAR_NAMES = ["resnet32x4", "resnet8x4", "shufflenetv2", "vgg13", "mobilenetv2"]
CIFAR_CASES = [(m, "resnet32x4", "resnet8x4") for m in METHODS] + [
    (m, t, s)
    for t, s in [("resnet32x4", "shufflenetv2"), ("vgg13", "mobilenetv2")]
    for m in METHODS
]


@pytest.fixture(scope="module")
def cifar_models():
    torch.manual_seed(0)
    return {name: create_model(name, num_classes=100) for name in CIFAR_NAMES}


@pytest.mark.parametrize(
    "method, teacher_name, student_name",
    CIFAR_CASES,
    ids=[f"{m}-{t}-{s}" for m, t, s in CIFAR_CASES],
)
def test_cifar_pairs(cifar_models, method, teacher_name, student_name):
    teacher = copy.deepcopy(cifar_models[teacher_name])
    student = copy.deepcopy(cifar_models[student_name])
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=g)
    labels = torch.randint(0, 100, (4,), generator=g)
    context = DistillerContext(100, images[:2], num_train_samples=64, total_epochs=40)
    if method == "fsp" and student_name != "resnet8x4":
        with pytest.raises(ShapeError, match="equal channel counts"):
            create_distiller(method, student, teacher, context)
        return
    # AB and FSP step their init stage (their main stage is CE alone); FT its main stage
    config = method_config_class(method)(**({"init_epochs": 0} if method == "ft" else {}))
    distiller = create_distiller(method, student, teacher, context, config)
    before = state(student)
    out = sgd_step(distiller, images, labels, torch.arange(4))
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert changed(before, student)
    assert all(p.grad is None for p in teacher.parameters())
