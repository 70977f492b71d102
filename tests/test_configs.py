"""Every shipped recipe parses, builds its models and takes one training step on generated data of
its dataset's shape; every shipped grid resolves every one of its runs."""

from pathlib import Path

import pytest
import torch

from mimkd.config import load_config
from mimkd.data import DatasetBundle, ImageTensors
from mimkd.distillers import method_info
from mimkd.engine import Trainer, build_run
from mimkd.models import create_model
from mimkd.reproduce import load_grid, plan_grid

ROOT = Path(__file__).parent.parent
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
RECIPES = [path for path in CONFIGS if "grids" not in path.relative_to(ROOT).parts]
GRIDS = sorted((ROOT / "configs" / "grids").glob("*.yaml"))
# (classes, channels, size) of each dataset as its files hold it; ImageNet for image folders
NATIVE_SHAPE = {
    "fashion_mnist": (10, 1, 28),
    "cifar10": (10, 3, 32),
    "cifar100": (100, 3, 32),
    "imagefolder": (1000, 3, 224),
}
FASHION_TEACHER = (
    "cnn_small"  # the Fashion-MNIST recipes' teacher (configs/fashion_mnist/teacher.yaml)
)


def generated_dataset(config) -> DatasetBundle:
    classes, channels, size = NATIVE_SHAPE[config.data.name]
    channels = config.data.channels or channels
    size = config.data.image_size or size
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (8, channels, size, size), dtype=torch.uint8, generator=generator
    )
    labels = torch.arange(8) % classes
    return DatasetBundle(
        name=config.data.name,
        num_classes=classes,
        train=ImageTensors(images, labels),
        test=ImageTensors(images[:4], labels[:4]),
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_recipe_builds_its_models_and_takes_a_step(path, tmp_path):
    config, method_config = load_config(
        path,
        [
            "device=cpu",
            "compile=false",
            "precision=fp32",
            "data.batch_size=4",
            "progress=false",
            f"run_dir={tmp_path}",
        ],
    )
    assert config.method and config.model.name and config.epochs > 0
    dataset = generated_dataset(config)
    teacher = None
    if method_info(config.method).needs_teacher or method_config.kd_weight > 0:
        channels = dataset.image_shape[0]
        name = config.teacher.model or FASHION_TEACHER
        teacher = create_model(name, num_classes=dataset.num_classes, in_channels=channels)
    parts = build_run(config, method_config, teacher=teacher, dataset=dataset)
    trainer = Trainer(parts)
    images, labels, indices = next(iter(parts.train_loader))
    output = trainer.train_step(images, labels, indices)
    assert torch.isfinite(output.total_loss)
    assert output.logits.shape == (4, dataset.num_classes)


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_every_grid_resolves_every_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # grids name recipes relative to the repository root
    arguments = [f"out={tmp_path}"]
    if path.stem == "imagenet":  # its teacher is a file the user downloads
        weights = tmp_path / "resnet34.pth"
        weights.write_bytes(b"placeholder")
        arguments.append(f"teachers.resnet34.checkpoint={weights}")
    plan = plan_grid(load_grid(path, arguments))
    assert len(plan.cells) == len(plan.pairs) * len(plan.methods) * len(plan.seeds)
    assert all(unit.job is not None for unit in plan.units)


def test_the_gpu_proxy_grid_is_the_issues_grid(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    plan = plan_grid(load_grid(ROOT / "configs/grids/gpu_proxy.yaml", [f"out={tmp_path}"]))
    assert plan.pairs == ["resnet32x4 -> resnet8x4", "wrn_40_2 -> wrn_16_2", "vgg13 -> mobilenetv2"]
    assert plan.methods == ["ce", "kd", "crd", "dkd", "dist", "mimkd", "mimkd_sgtl"]
    assert plan.seeds == [0, 1] and len(plan.units) == 42
    for unit in plan.units:
        config, method_config = unit.job
        assert (config.data.name, config.data.image_size, config.data.channels) == (
            "fashion_mnist",
            32,
            3,
        )
        assert config.optim.lr == (0.01 if config.model.name == "mobilenetv2" else 0.05)
        if unit.method == "mimkd":
            assert method_config.hidden == 512
    local_modes = {unit.job[1].local_mode for unit in plan.units if unit.method == "mimkd"}
    assert local_modes == {"teacher_global_student_local", "student_global_teacher_local"}
