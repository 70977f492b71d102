"""Baselines fitnet, at, sp, cc, vid, rkd, pkt, dkd, dist: losses against direct formulas, one step.

Each loss is checked against a reference written here in float64 NumPy from the papers' formulas (as
RepDistiller / mdistiller / the DIST authors compute them), never by calling the implementation.
Each method then takes one SGD step on small and on CIFAR-zoo pairs: the student and the adapters
move, the teacher does not, and it stays in eval mode without gradients.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from mimkd.distillers import DistillerContext, create_distiller, method_info
from mimkd.distillers.adapters import (
    ConvRegressor,
    LinearEmbed,
    make_regressor,
    pair_taps,
    pool_to_common_size,
)
from mimkd.distillers.at import attention_transfer_loss
from mimkd.distillers.cc import correlation_congruence_loss
from mimkd.distillers.dist import dist_parts
from mimkd.distillers.dkd import dkd_parts, warmup_factor
from mimkd.distillers.fitnet import hint_loss
from mimkd.distillers.losses import kd_loss
from mimkd.distillers.pkt import pkt_loss
from mimkd.distillers.rkd import rkd_angle_loss, rkd_distance_loss
from mimkd.distillers.sp import similarity_preserving_loss
from mimkd.distillers.vid import GaussianRegressor, vid_loss
from mimkd.errors import ConfigError, ShapeError
from mimkd.features import FeatureExtractor
from mimkd.models import create_model

METHODS = ["fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "dkd", "dist"]
WITH_ADAPTERS = {"fitnet": "regressors", "cc": "teacher_embeds", "vid": "regressors"}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Batches of four are far too small to gain from intra-op threads; on a shared machine the
    thread synchronisation alone costs 10-100x, so this module runs single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator)


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _huber(a: np.ndarray, b: np.ndarray) -> float:
    gap = np.abs(a - b)
    return float(np.where(gap < 1, 0.5 * gap**2, gap - 0.5).mean())


def _close(value: torch.Tensor, expected: float, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert float(torch.as_tensor(value).detach()) == pytest.approx(expected, rel=rtol, abs=atol)


# ---- losses against direct formulas ---------------------------------------------------------


def test_fitnet_hint_is_mean_squared_error():
    regressed, teacher = _random(2, 3, 4, 4, seed=1), _random(2, 3, 4, 4, seed=2)
    expected = ((_np(regressed) - _np(teacher)) ** 2).sum() / regressed.numel()
    _close(hint_loss(regressed, teacher), expected)


def _attention(feature: np.ndarray) -> np.ndarray:
    maps = (feature**2).mean(axis=1).reshape(len(feature), -1)
    return maps / np.linalg.norm(maps, axis=1, keepdims=True)


def test_at_matches_normalised_channel_mean_of_squares():
    student, teacher = _random(2, 3, 4, 4, seed=1), _random(2, 5, 4, 4, seed=2)
    expected = ((_attention(_np(student)) - _attention(_np(teacher))) ** 2).mean()
    _close(attention_transfer_loss(student, teacher), expected)


def test_at_pools_the_larger_map_to_the_smaller():
    student, teacher = _random(2, 3, 4, 4, seed=1), _random(2, 5, 8, 8, seed=2)
    # 8x8 -> 4x4 average pooling written as the mean of each 2x2 block
    pooled = _np(teacher).reshape(2, 5, 4, 2, 4, 2).mean(axis=(3, 5))
    expected = ((_attention(_np(student)) - _attention(pooled)) ** 2).mean()
    _close(attention_transfer_loss(student, teacher), expected)
    _close(attention_transfer_loss(teacher, student), expected)


def test_sp_matches_row_normalised_gram_difference():
    student, teacher = _random(4, 3, 2, 2, seed=1), _random(4, 6, 3, 3, seed=2)

    def gram(feature):
        flat = _np(feature).reshape(4, -1)
        product = flat @ flat.T
        return product / np.linalg.norm(product, axis=1, keepdims=True)

    expected = ((gram(teacher) - gram(student)) ** 2).sum() / 16
    _close(similarity_preserving_loss(student, teacher), expected)


def test_cc_matches_consecutive_sample_products():
    student, teacher = _random(5, 7, seed=1), _random(5, 7, seed=2)
    delta = np.abs(_np(student) - _np(teacher))
    expected = np.mean([np.dot(delta[i], delta[i + 1]) for i in range(4)])
    _close(correlation_congruence_loss(student, teacher), expected)


def test_vid_matches_gaussian_negative_log_likelihood():
    mean, target = _random(2, 3, 2, 2, seed=1), _random(2, 3, 2, 2, seed=2)
    log_scale = _random(3, seed=3)
    variance_np = np.log1p(np.exp(_np(log_scale))) + 1e-5
    variance_map = variance_np.reshape(1, 3, 1, 1)
    expected = (0.5 * ((_np(mean) - _np(target)) ** 2 / variance_map + np.log(variance_map))).mean()
    variance = torch.nn.functional.softplus(log_scale) + 1e-5
    _close(vid_loss(mean, variance, target), expected)


def test_vid_regressor_starts_at_the_published_variance():
    regressor = GaussianRegressor(4, 6, initial_variance=5.0, variance_floor=1e-5)
    assert torch.allclose(regressor.variance(), torch.full((6,), 5.0))
    assert regressor(_random(2, 4, 3, 3)).shape == (2, 6, 3, 3)


def _rkd_reference(student: np.ndarray, teacher: np.ndarray) -> tuple[float, float]:
    def distances(e):
        n = len(e)
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        return d / (d.sum() / (n * (n - 1)))

    def angles(e):
        n = len(e)
        out = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, v = e[j] - e[i], e[k] - e[i]
                    if np.linalg.norm(u) > 0 and np.linalg.norm(v) > 0:
                        out[i, j, k] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
        return out

    return (
        _huber(distances(student), distances(teacher)),
        _huber(angles(student), angles(teacher)),
    )


def test_rkd_distance_and_angle_match_direct_loops():
    student, teacher = _random(5, 6, seed=1), 3 * _random(5, 8, seed=2)
    distance, angle = _rkd_reference(_np(student), _np(teacher))
    _close(rkd_distance_loss(student, teacher), distance, rtol=1e-4, atol=1e-6)
    _close(rkd_angle_loss(student, teacher), angle, rtol=1e-4, atol=1e-6)


def test_pkt_matches_kl_of_cosine_similarity_distributions():
    student, teacher = _random(4, 6, seed=1), _random(4, 9, seed=2)
    eps = 1e-7

    def conditional(feature):
        unit = feature / (np.linalg.norm(feature, axis=1, keepdims=True) + eps)
        similarity = (unit @ unit.T + 1) / 2
        return similarity / similarity.sum(axis=1, keepdims=True)

    p_student, p_teacher = conditional(_np(student)), conditional(_np(teacher))
    expected = (p_teacher * np.log((p_teacher + eps) / (p_student + eps))).mean()
    _close(pkt_loss(student, teacher), expected)


def test_dkd_matches_target_and_non_target_kl():
    student, teacher = _random(3, 5, seed=1), 2 * _random(3, 5, seed=2)
    labels = torch.tensor([0, 3, 4])
    temperature = 4.0
    p_student = _softmax(_np(student) / temperature)
    p_teacher = _softmax(_np(teacher) / temperature)
    tckd = nckd = 0.0
    for row, label in enumerate(labels.tolist()):
        b_student = np.array([p_student[row, label], 1 - p_student[row, label]])
        b_teacher = np.array([p_teacher[row, label], 1 - p_teacher[row, label]])
        tckd += (b_teacher * np.log(b_teacher / b_student)).sum()
        rest_student = _softmax(np.delete(_np(student)[row], label)[None] / temperature)[0]
        rest_teacher = _softmax(np.delete(_np(teacher)[row], label)[None] / temperature)[0]
        nckd += (rest_teacher * np.log(rest_teacher / rest_student)).sum()
    got_tckd, got_nckd = dkd_parts(student, teacher, labels, temperature)
    _close(got_tckd, tckd / 3 * temperature**2)
    _close(got_nckd, nckd / 3 * temperature**2)


def test_dkd_parts_recompose_classical_kd():
    """Paper eq. 4, per sample: KD = TCKD + (1 - p_t(target)) * NCKD."""
    student, teacher = _random(3, 6, seed=3), _random(3, 6, seed=4)
    labels = torch.tensor([1, 0, 5])
    for row in range(3):
        s, t, y = student[row : row + 1], teacher[row : row + 1], labels[row : row + 1]
        tckd, nckd = dkd_parts(s, t, y, 2.0)
        teacher_not_target = 1 - torch.softmax(t / 2.0, dim=1)[0, y[0]]
        _close(tckd + teacher_not_target * nckd, float(kd_loss(s, t, 2.0)), rtol=1e-4)


def test_dkd_warmup_is_mdistillers_linear_ramp():
    assert warmup_factor(0, 20) == pytest.approx(1 / 20)  # mdistiller's epoch 1
    assert warmup_factor(9, 20) == pytest.approx(0.5)
    assert warmup_factor(19, 20) == 1.0
    assert warmup_factor(100, 20) == 1.0
    assert warmup_factor(0, 0) == 1.0


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dist_matches_pearson_inter_and_intra_relations(temperature):
    student, teacher = _random(4, 6, seed=1), _random(4, 6, seed=2)
    p_student = _softmax(_np(student) / temperature)
    p_teacher = _softmax(_np(teacher) / temperature)
    inter = 1 - np.mean([np.corrcoef(p_student[i], p_teacher[i])[0, 1] for i in range(4)])
    intra = 1 - np.mean([np.corrcoef(p_student[:, c], p_teacher[:, c])[0, 1] for c in range(6)])
    got_inter, got_intra = dist_parts(student, teacher, temperature)
    _close(got_inter, inter * temperature**2, rtol=1e-4)
    _close(got_intra, intra * temperature**2, rtol=1e-4)


# ---- adapters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("student_hw", "teacher_hw", "layer"),
    [
        (8, 8, nn.Conv2d),  # same size: 1x1 conv
        (16, 8, nn.Conv2d),  # twice the teacher: stride-2 conv
        (4, 8, nn.ConvTranspose2d),  # half: transposed conv
        (10, 8, nn.Conv2d),  # slightly larger: valid conv
        (32, 4, nn.Conv2d),  # other ratios: resize, then conv
        (4, 32, nn.Conv2d),
    ],
)
def test_conv_regressor_reaches_the_teacher_shape(student_hw, teacher_hw, layer):
    regressor = ConvRegressor((2, 3, student_hw, student_hw), (2, 5, teacher_hw, teacher_hw))
    assert type(regressor.conv) is layer
    out = regressor(_random(2, 3, student_hw, student_hw))
    assert out.shape == (2, 5, teacher_hw, teacher_hw)


def test_make_regressor_fits_vectors_and_rejects_mixed_layouts():
    assert make_regressor((2, 7), (2, 3))(_random(2, 7)).shape == (2, 3)
    assert make_regressor((2, 5, 7), (2, 5, 3))(_random(2, 5, 7)).shape == (2, 5, 3)
    with pytest.raises(ShapeError, match="same kind"):
        make_regressor((2, 8, 4, 4), (2, 16))


def test_linear_embed_rows_are_unit_length():
    embedded = LinearEmbed(12, 4)(_random(3, 3, 2, 2))
    assert torch.allclose(embedded.norm(dim=1), torch.ones(3), atol=1e-6)


def test_pool_to_common_size_and_tap_pairing():
    small, large = _random(1, 2, 4, 4), _random(1, 3, 8, 8)
    pooled_small, pooled_large = pool_to_common_size(small, large)
    assert pooled_small is small and pooled_large.shape == (1, 3, 4, 4)
    assert pair_taps([], [], ["a", "b"], ["x", "y", "z"]) == [("a", "y"), ("b", "z")]
    assert pair_taps(["s"], ["t"], ["a"], ["x"]) == [("s", "t")]
    with pytest.raises(ConfigError, match="equal length"):
        pair_taps(["s"], [], ["a"], ["x"])


# ---- distillers ---------------------------------------------------------------------------


def test_defaults_are_the_published_settings():
    def config(name):
        return method_info(name).config_class()

    assert (config("fitnet").distill_weight, config("fitnet").hint_stage) == (100.0, 1)
    assert (config("at").distill_weight, config("at").p) == (1000.0, 2.0)
    assert config("sp").distill_weight == 3000.0
    assert (config("cc").distill_weight, config("cc").embed_dim) == (0.02, 128)
    assert config("vid").distill_weight == 1.0
    rkd = config("rkd")
    assert (rkd.distill_weight, rkd.distance_weight, rkd.angle_weight) == (1.0, 25.0, 50.0)
    assert config("pkt").distill_weight == 30000.0
    for name in ["fitnet", "at", "sp", "cc", "vid", "rkd", "pkt"]:
        cfg = config(name)
        assert (cfg.ce_weight, cfg.kd_weight, cfg.temperature) == (1.0, 0.0, 4.0)
    dkd = config("dkd")
    assert (dkd.ce_weight, dkd.tckd_weight, dkd.nckd_weight, dkd.temperature) == (1, 1, 8, 4)
    assert dkd.warmup_epochs == 20
    dist = config("dist")
    assert (dist.inter_weight, dist.intra_weight, dist.temperature) == (1.0, 1.0, 1.0)
    for name in METHODS:
        assert method_info(name).paper


def _small_pair() -> tuple[nn.Module, nn.Module, DistillerContext, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    student = create_model("cnn_tiny", num_classes=10, in_channels=1)
    teacher = create_model("cnn_small", num_classes=10, in_channels=1)
    images = _random(4, 1, 28, 28, seed=5)
    labels = torch.tensor([0, 3, 7, 9])
    return student, teacher, DistillerContext(10, images[:2]), images, labels


def _one_step(distiller, images, labels) -> None:
    """One SGD step; asserts the student and adapters move and the teacher neither moves nor
    gets gradients and stays in eval mode."""
    teacher_state = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    student_before = [p.detach().clone() for p in distiller.student.parameters()]
    extra_before = [p.detach().clone() for m in distiller.extra_modules() for p in m.parameters()]
    trainable_ids = {id(p) for p in distiller.trainable_parameters()}
    assert all(id(p) in trainable_ids for m in distiller.extra_modules() for p in m.parameters())
    assert not any(id(p) in trainable_ids for p in distiller.teacher.parameters())

    distiller.train()
    assert not distiller.teacher.training
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1)
    output = distiller.forward_train(images, labels)
    assert output.logits.shape == (len(images), distiller.context.num_classes)
    assert all(value.dim() == 0 for value in output.losses.values())
    assert all(not value.requires_grad for value in output.metrics.values())
    assert torch.isfinite(output.total_loss)
    optimizer.zero_grad()
    output.total_loss.backward()
    optimizer.step()

    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert not distiller.teacher.training
    for key, value in distiller.teacher.state_dict().items():
        assert torch.equal(value, teacher_state[key]), f"teacher {key} changed"
    assert any(
        not torch.equal(p, before)
        for p, before in zip(distiller.student.parameters(), student_before)
    )
    extra_after = [p for m in distiller.extra_modules() for p in m.parameters()]
    if extra_before:
        assert any(not torch.equal(p, b) for p, b in zip(extra_after, extra_before))


@pytest.mark.parametrize("name", METHODS)
def test_one_step_on_small_cnns(name):
    student, teacher, context, images, labels = _small_pair()
    distiller = create_distiller(name, student, teacher, context)
    if name in WITH_ADAPTERS:
        adapters = getattr(distiller, WITH_ADAPTERS[name])
        assert any(adapters is module for module in distiller.extra_modules())
        assert distiller.extra_parameter_count() > 0
    _one_step(distiller, images, labels)


@pytest.mark.parametrize("name", ["fitnet", "at", "sp", "vid", "rkd", "pkt", "cc"])
def test_kd_term_only_when_its_weight_is_positive(name):
    student, teacher, context, images, labels = _small_pair()
    config = method_info(name).config_class()
    assert (
        "kd"
        not in create_distiller(name, student, teacher, context)
        .forward_train(images, labels)
        .losses
    )
    config.kd_weight = 0.9
    losses = (
        create_distiller(name, student, teacher, context, config)
        .forward_train(images, labels)
        .losses
    )
    assert set(losses) == {"ce", "kd", name}


def test_at_distiller_weights_the_loss_of_each_stage_pair():
    student, teacher, context, images, labels = _small_pair()
    distiller = create_distiller("at", student, teacher, context).eval()
    output = distiller.forward_train(images, labels)
    with torch.no_grad():
        student_maps, teacher_maps = [], []
        s, t = images, images
        for stage in ("stage1", "stage2", "stage3"):
            s, t = getattr(student, stage)(s), getattr(teacher, stage)(t)
            student_maps.append(_np(s))
            teacher_maps.append(_np(t))
    expected = sum(
        ((_attention(a) - _attention(b)) ** 2).mean() for a, b in zip(student_maps, teacher_maps)
    )
    _close(output.losses["at"], 1000 * expected, rtol=1e-4)


def test_dkd_distiller_ramps_its_term_over_the_warmup():
    student, teacher, context, images, labels = _small_pair()
    distiller = create_distiller("dkd", student, teacher, context).eval()
    distiller.on_epoch_start(0)
    early = distiller.forward_train(images, labels)
    distiller.on_epoch_start(25)
    late = distiller.forward_train(images, labels)
    full = early.metrics["tckd"] + 8 * early.metrics["nckd"]
    _close(early.losses["dkd"], float(full) / 20)
    _close(late.losses["dkd"], float(full))


def test_methods_needing_maps_reject_vectors_with_a_clear_error():
    student, teacher, context, _, _ = _small_pair()
    for name in ("at", "vid"):
        config = method_info(name).config_class()
        config.student_layers, config.teacher_layers = ["fc:input"], ["fc:input"]
        with pytest.raises(ShapeError, match=r"\[B, C, H, W\]"):
            create_distiller(name, copy.deepcopy(student), teacher, context, config)


def test_relational_methods_reject_too_small_batches():
    student, teacher, context, images, labels = _small_pair()
    for name in ("sp", "cc", "rkd", "pkt", "dist"):
        distiller = create_distiller(name, copy.deepcopy(student), teacher, context)
        with pytest.raises(ShapeError, match="at least"):
            distiller.forward_train(images[:1], labels[:1])


# ---- CIFAR zoo pairs ----------------------------------------------------------------------

ZOO_PAIRS = [
    ("resnet32x4", "resnet8x4"),
    ("resnet32x4", "shufflenetv2"),
    ("vgg13", "mobilenetv2"),
]


@pytest.fixture(scope="module")
def zoo():
    # built once: teachers are never modified (the step asserts it) and a student that took a
    # step is still a valid student for the next method
    torch.manual_seed(0)
    names = {name for pair in ZOO_PAIRS for name in pair}
    return {name: create_model(name, num_classes=100).eval() for name in sorted(names)}


@pytest.mark.parametrize(("teacher_name", "student_name"), ZOO_PAIRS)
@pytest.mark.parametrize("name", METHODS)
def test_one_step_on_cifar_zoo_pairs(zoo, name, teacher_name, student_name):
    # every method pairs these architectures: maps are regressed or pooled to a common size and
    # relations are computed within each model, so no pair needs a skip
    images = _random(4, 3, 32, 32, seed=6)
    labels = torch.tensor([0, 17, 42, 99])
    distiller = create_distiller(
        name, zoo[student_name], zoo[teacher_name], DistillerContext(100, images[:1])
    )
    try:
        _one_step(distiller, images, labels)
    finally:
        # the models outlive this distiller: detach its hooks
        for module in distiller.modules():
            if isinstance(module, FeatureExtractor):
                module.remove()
