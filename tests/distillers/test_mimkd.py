"""MIMKD: derangements, the loss wiring, gradients, switches, and arbitrary teacher-student pairs."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from scipy import stats

from mimkd.distillers import DistillerContext, create_distiller, method_info
from mimkd.distillers.mimkd import MIMKDConfig, random_derangement, same_class_negatives
from mimkd.errors import ConfigError, ShapeError
from mimkd.models import MODELS, create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def cnn_pair():
    torch.manual_seed(0)
    student = create_model("cnn_tiny", num_classes=10, in_channels=1)
    teacher = create_model("cnn_small", num_classes=10, in_channels=1)
    context = DistillerContext(num_classes=10, sample_input=torch.randn(2, 1, 28, 28))
    return student, teacher, context


def build(config=None, pair=None):
    student, teacher, context = pair or cnn_pair()
    return create_distiller("mimkd", student, teacher, context, config or MIMKDConfig(hidden=32))


def batch(size=8, channels=1, side=28, seed=1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, channels, side, side, generator=generator)
    labels = torch.arange(size) % 10
    return images, labels


# ---- derangements -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 7, 128])
def test_derangement_is_a_permutation_without_fixed_points(n):
    generator = torch.Generator().manual_seed(n)
    for _ in range(200):
        permutation = random_derangement(n, generator)
        assert sorted(permutation.tolist()) == list(range(n))
        assert all(permutation[i].item() != i for i in range(n))


def test_derangement_is_uniform_over_the_nine_derangements_of_four():
    derangements = [p for p in itertools.permutations(range(4)) if all(p[i] != i for i in range(4))]
    assert len(derangements) == 9
    generator = torch.Generator().manual_seed(0)
    draws = 9000
    counts = dict.fromkeys(derangements, 0)
    for _ in range(draws):
        counts[tuple(random_derangement(4, generator).tolist())] += 1
    assert all(count > 0 for count in counts.values())
    # chi-square goodness of fit against 1000 each; 8 degrees of freedom
    result = stats.chisquare(list(counts.values()))
    assert result.pvalue > 0.001
    statistic = sum((count - 1000) ** 2 / 1000 for count in counts.values())
    assert statistic < 26.12  # the 0.999 quantile of chi-square with 8 d.o.f.


def test_derangement_is_deterministic_under_a_seed():
    first = random_derangement(16, torch.Generator().manual_seed(7))
    second = random_derangement(16, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


def test_derangement_of_one_is_an_error():
    with pytest.raises(ShapeError):
        random_derangement(1)


def test_same_class_negatives_share_the_label_and_are_never_self():
    labels = torch.tensor([0, 1, 0, 1, 2, 0])
    for seed in range(20):
        negatives = same_class_negatives(labels, torch.Generator().manual_seed(seed))
        for i, j in enumerate(negatives.tolist()):
            assert j != i
            if labels[i].item() != 2:  # label 2 is alone: any other sample
                assert labels[j].item() == labels[i].item()


# ---- registration, switches, wiring -------------------------------------------------------------


def test_registered_with_min_batch_two():
    info = method_info("mimkd")
    assert info.min_batch_size == 2 and info.config_class is MIMKDConfig
    assert "2110.15946" in info.paper


@pytest.mark.parametrize(
    ("beta_global", "beta_local", "terms"),
    [(0.1, 0.0, {"mi_global"}), (0.0, 0.1, {"mi_local"}), (0.1, 0.1, {"mi_global", "mi_local"})],
)
def test_beta_zero_switches_a_term_and_its_critic_off(beta_global, beta_local, terms):
    distiller = build(MIMKDConfig(hidden=32, beta_global=beta_global, beta_local=beta_local))
    output = distiller.forward_train(*batch())
    assert {key for key in output.losses if key.startswith("mi_")} == terms
    assert ("global" in distiller.critics) == (beta_global > 0)
    assert any(name.startswith("local") for name in distiller.critics) == (beta_local > 0)
    for group in ("global", "local"):
        present = f"mi_{group}" in terms
        assert (f"bound_{group}" in output.metrics) == present
        assert (f"critic_acc_pos_{group}" in output.metrics) == present


def test_kd_term_only_when_its_weight_is_positive():
    assert "kd" in build(MIMKDConfig(hidden=32, kd_weight=0.9)).forward_train(*batch()).losses
    assert "kd" not in build(MIMKDConfig(hidden=32, kd_weight=0.0)).forward_train(*batch()).losses


def test_mi_loss_is_two_log_two_when_the_critic_scores_zero():
    distiller = build(MIMKDConfig(hidden=32, beta_global=0.3, beta_local=0.0))
    with torch.no_grad():
        encoder = distiller.critics["global"].encoder_b
        encoder.shortcut.weight.zero_()
        encoder.mlp[-1].weight.zero_()
        encoder.mlp[-1].bias.zero_()
    output = distiller.forward_train(*batch())
    assert output.metrics["mi_loss_global"].item() == pytest.approx(2 * math.log(2), rel=1e-6)
    assert output.losses["mi_global"].item() == pytest.approx(0.3 * 2 * math.log(2), rel=1e-6)
    assert output.metrics["bound_global"].item() == pytest.approx(-2 * math.log(2), rel=1e-6)


def test_global_loss_matches_a_direct_computation():
    config = MIMKDConfig(hidden=16, beta_global=1.0, beta_local=0.0, ce_weight=1.0, kd_weight=0.0)
    distiller = build(config)
    images, labels = batch(6)
    torch.manual_seed(11)
    output = distiller.forward_train(images, labels)
    torch.manual_seed(11)
    negatives = random_derangement(6)  # the same draw as inside the step
    with torch.no_grad():
        student, teacher, critic = distiller.student, distiller.teacher, distiller.critics["global"]
        student_vector = student.pool(student.stage3(student.stage2(student.stage1(images))))
        teacher_vector = teacher.pool(teacher.stage3(teacher.stage2(teacher.stage1(images))))
        encoded_t = critic.encoder_a(teacher_vector.flatten(1))
        encoded_s = critic.encoder_b(student_vector.flatten(1))
        scale = 1 / math.sqrt(16)
        positive = [(encoded_t[i] * encoded_s[i]).sum().item() * scale for i in range(6)]
        negative = [(encoded_t[i] * encoded_s[negatives[i]]).sum().item() * scale for i in range(6)]

    def softplus(v):
        return math.log1p(math.exp(v))

    expected = sum(softplus(-t) for t in positive) / 6 + sum(softplus(t) for t in negative) / 6
    assert output.losses["mi_global"].item() == pytest.approx(expected, rel=1e-4)
    expected_ce = F.cross_entropy(output.logits, labels).item()
    assert output.losses["ce"].item() == pytest.approx(expected_ce, rel=1e-5)
    accuracy = (sum(t > 0 for t in positive) / 6, sum(t < 0 for t in negative) / 6)
    assert output.metrics["critic_acc_pos_global"].item() == pytest.approx(accuracy[0])
    assert output.metrics["critic_acc_neg_global"].item() == pytest.approx(accuracy[1])


def test_gradient_reaches_student_and_critics_but_never_the_teacher():
    distiller = build()
    output = distiller.forward_train(*batch())
    output.total_loss.backward()
    assert all(p.grad is not None for p in distiller.student.parameters())
    for name, critic in distiller.critics.items():
        grads = [p.grad for p in critic.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None and not p.requires_grad for p in distiller.teacher.parameters())
    assert not distiller.teacher.training
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert all(id(p) in trainable for p in distiller.critics.parameters())
    assert not any(id(p) in trainable for p in distiller.teacher.parameters())


def test_metrics_are_detached_tensors_and_inference_is_the_student_alone():
    distiller = build()
    images, labels = batch()
    output = distiller.forward_train(images, labels)
    assert output.metrics
    for key, value in output.metrics.items():
        assert isinstance(value, torch.Tensor) and not value.requires_grad, key
    distiller.eval()
    assert torch.allclose(distiller(images), distiller.student(images))
    assert distiller.extra_parameter_count() > 0


def test_batch_of_one_is_an_error():
    distiller = build()
    images, labels = batch(1)
    with pytest.raises(ShapeError, match="at least 2"):
        distiller.forward_train(images, labels)


def test_bad_switch_values_are_config_errors():
    with pytest.raises(ConfigError, match="local_mode"):
        MIMKDConfig(local_mode="everywhere")
    with pytest.raises(ConfigError, match="negatives"):
        MIMKDConfig(negatives="many")
    with pytest.raises(ConfigError, match="local_local"):
        build(MIMKDConfig(hidden=8, local_mode="local_local", student_layers=["stages"]))


@pytest.mark.parametrize(
    "config",
    [
        MIMKDConfig(hidden=16, negatives="all"),
        MIMKDConfig(hidden=16, negatives="same_class"),
        MIMKDConfig(hidden=16, local_mode="student_global_teacher_local"),
        MIMKDConfig(hidden=16, local_mode="local_local"),
        MIMKDConfig(hidden=16, local_mode="local_local", negatives="all"),
        MIMKDConfig(hidden=16, critic="concat"),
        MIMKDConfig(hidden=16, critic="concat", negatives="all"),
        MIMKDConfig(hidden=16, student_projection="linear", normalize=True),
        MIMKDConfig(hidden=16, score_scale="none"),
        MIMKDConfig(hidden=16, student_layers=["stages"]),
    ],
    ids=lambda c: f"{c.local_mode}-{c.negatives}-{c.critic}-{c.student_projection}",
)
def test_every_switch_runs_a_step_with_finite_losses(config):
    distiller = build(config)
    output = distiller.forward_train(*batch())
    output.total_loss.backward()
    assert all(torch.isfinite(v) for v in output.losses.values())
    assert all(torch.isfinite(v) for v in output.metrics.values())


def test_stage_layers_sum_one_local_term_per_stage():
    distiller = build(MIMKDConfig(hidden=16, beta_global=0.0, student_layers=["stages"]))
    assert sorted(distiller.critics) == ["local_0", "local_1", "local_2"]
    output = distiller.forward_train(*batch())
    # three terms, each near 2 log 2 at initialisation: the sum is about three times that
    assert 3.0 < output.metrics["mi_loss_local"].item() < 6.0
    assert output.metrics["bound_local"].item() > -2.0  # a mean over layers, not a sum


def test_step_is_float32_under_bf16_autocast():
    distiller = build()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = distiller.forward_train(*batch())
    for key in ("mi_global", "mi_local"):
        assert output.losses[key].dtype == torch.float32
        assert torch.isfinite(output.losses[key])


# ---- arbitrary pairs ----------------------------------------------------------------------------


def tiny_vit():
    return torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )


def run_pair(student, teacher, channels=3, side=32, **options):
    context = DistillerContext(num_classes=10, sample_input=torch.randn(2, channels, side, side))
    config = MIMKDConfig(hidden=32, **options)
    distiller = create_distiller("mimkd", student, teacher, context, config)
    output = distiller.forward_train(*batch(4, channels, side))
    output.total_loss.backward()
    assert output.logits.shape == (4, 10)
    assert {"ce", "kd", "mi_global", "mi_local"} <= set(output.losses)
    assert all(torch.isfinite(v) for v in output.losses.values())
    assert all(p.grad is None for p in teacher.parameters())
    return distiller


def test_small_cnns_of_different_widths():
    torch.manual_seed(0)
    distiller = run_pair(
        create_model("cnn_tiny", num_classes=10, in_channels=1),
        create_model("cnn_small", num_classes=10, in_channels=1),
        channels=1,
        side=28,
    )
    assert distiller.student_tap_paths == ["fc:input", "stage3"]


def test_torchvision_resnet_teacher_and_small_student():
    torch.manual_seed(0)
    for mode in ("teacher_global_student_local", "local_local"):
        run_pair(
            create_model("cnn_tiny", num_classes=10, in_channels=3),
            torchvision.models.resnet18(num_classes=10),
            local_mode=mode,
        )


def test_token_features_as_teacher_and_as_student():
    torch.manual_seed(0)
    cnn = create_model("cnn_tiny", num_classes=10, in_channels=3)
    distiller = run_pair(cnn, tiny_vit(), local_mode="student_global_teacher_local")
    assert distiller.teacher_tap_paths[-1] == "encoder"
    run_pair(tiny_vit(), create_model("cnn_small", num_classes=10, in_channels=3))
    run_pair(tiny_vit(), tiny_vit(), local_mode="local_local")
    run_pair(
        tiny_vit(),
        create_model("cnn_small", num_classes=10, in_channels=3),
        local_mode="local_local",
    )


@pytest.mark.skipif("resnet8x4" not in MODELS, reason="CIFAR zoo not present")
@pytest.mark.parametrize(
    ("teacher_name", "student_name"), [("resnet32x4", "resnet8x4"), ("wrn_40_2", "shufflenetv2")]
)
def test_cifar_zoo_pairs(teacher_name, student_name):
    torch.manual_seed(0)
    run_pair(create_model(student_name, num_classes=10), create_model(teacher_name, num_classes=10))
