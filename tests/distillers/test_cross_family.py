"""KD and MIMKD steps for the cross-family pairs of the CRD tables and the ImageNet protocol."""

import pytest
import torch

from mimkd.cli import main
from mimkd.distillers import DistillerContext, create_distiller, method_config_class
from mimkd.models import create_model

PAIRS = [
    ("resnet32x4", "shufflenetv2"),
    ("vgg13", "mobilenetv2"),
    ("resnet50", "shufflenetv2"),  # the paper's headline pair
    ("tv:resnet34", "tv:resnet18"),  # the ImageNet pair, here at 32x32 and 100 classes
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", ["kd", "mimkd"])
@pytest.mark.parametrize("teacher_name,student_name", PAIRS)
def test_one_step_changes_the_student_but_not_the_teacher(method, teacher_name, student_name):
    torch.manual_seed(0)
    teacher = create_model(teacher_name, num_classes=100)
    student = create_model(student_name, num_classes=100)
    context = DistillerContext(num_classes=100, sample_input=torch.zeros(2, 3, 32, 32))
    distiller = create_distiller(method, student, teacher, context, method_config_class(method)())
    distiller.train()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05)
    output = distiller.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert output.logits.shape == (4, 100)
    assert all(torch.isfinite(v) for v in output.losses.values())
    output.total_loss.backward()
    optimizer.step()
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())


def test_train_a_cifar_zoo_model_on_fashion_mnist_as_32x32(idx_folder, tmp_path):
    argv = ["train", "model=resnet8", f"data.root={idx_folder}", "data.download=false"]
    argv += [
        "data.image_size=32",
        "data.channels=3",
        "epochs=1",
        "progress=false",
        f"run_dir={tmp_path}",
    ]
    assert main(argv) == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["image_shape"] == [3, 32, 32] and state["num_classes"] == 10
