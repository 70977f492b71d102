import math

import pytest
import torch

from mimkd.distillers import DistillerContext, create_distiller
from mimkd.distillers.kd import KDConfig
from mimkd.distillers.losses import kd_loss
from mimkd.models import create_model


def _softmax(row, temperature):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def test_kd_loss_matches_a_hand_computation_on_2x3_logits():
    student = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
    teacher = [[3.0, 2.0, 1.0], [1.0, 0.0, -2.0]]
    temperature = 2.0
    # KL(p_T || p_S) per row, mean over the 2 rows, times T^2
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p_s, p_t = _softmax(s_row, temperature), _softmax(t_row, temperature)
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    expected = total / 2 * temperature**2
    value = kd_loss(torch.tensor(student), torch.tensor(teacher), temperature)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # worked on paper: row KLs 0.3202 and 0.1378, mean 0.2290, times T^2 = 4
    assert expected == pytest.approx(0.916, abs=1e-3)


def test_kd_loss_is_zero_for_identical_logits():
    logits = torch.randn(4, 5)
    assert kd_loss(logits, logits.clone(), 4.0).abs().item() < 1e-6


def _kd_pair():
    torch.manual_seed(0)
    student = create_model("cnn_tiny", num_classes=10, in_channels=1)
    teacher = create_model("cnn_small", num_classes=10, in_channels=1)
    context = DistillerContext(num_classes=10, sample_input=torch.zeros(2, 1, 28, 28))
    return create_distiller("kd", student, teacher, context, KDConfig()), student, teacher


def test_kd_step_weights_its_terms():
    distiller, student, teacher = _kd_pair()
    images, labels = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    output = distiller.forward_train(images, labels)
    with torch.no_grad():
        teacher_logits = teacher(images)
        student_logits = student(images)
    expected_ce = 0.1 * torch.nn.functional.cross_entropy(student_logits, labels)
    expected_kd = 0.9 * kd_loss(student_logits, teacher_logits, 4.0)
    assert torch.allclose(output.losses["ce"], expected_ce, atol=1e-6)
    assert torch.allclose(output.losses["kd"], expected_kd, atol=1e-6)


def test_teacher_gets_no_gradient_and_stays_in_eval_mode():
    distiller, student, teacher = _kd_pair()
    distiller.train()
    assert distiller.training and student.training and not teacher.training
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1)
    output = distiller.forward_train(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    output.total_loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    # running BN statistics too: a teacher in eval mode does not update them
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert not teacher.training
    assert {id(p) for p in distiller.trainable_parameters()} == {
        id(p) for p in student.parameters()
    }
    assert distiller.extra_parameter_count() == 0
