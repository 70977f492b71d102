"""Every RepDistiller/mdistiller teacher file loads through the one loader, with their logits.

`../shared/fixtures/repdistiller/checkpoints.json` holds, for each of RepDistiller's 22 models, the
exact state_dict layout of their files, a deterministic fill and the logits their own code gives.
Each test rebuilds the file in their on-disk format and folder naming
(`<model>_vanilla/ckpt_epoch_240.pth`: `{"epoch", "model", "accuracy", "optimizer"}`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
from pathlib import Path

import pytest
import torch

from mimkd.cli import main
from mimkd.errors import CheckpointError, UnknownNameError
from mimkd.models import create_model
from mimkd.models.loading import architecture_from_folder, load_model

FIXTURE = Path("shared", "fixtures", "repdistiller", "checkpoints.json")

# RepDistiller's `model_dict` names of the CRD benchmark's CIFAR-100 models
REPDISTILLER_MODELS = [
    *("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"),
    *("resnet8x4", "resnet32x4", "ResNet50", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"),
    *("vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "MobileNetV2", "ShuffleV1", "ShuffleV2"),
]


@pytest.fixture(scope="module")
def fixtures() -> dict:
    # ../shared beside the checkout (a worktree may sit a level deeper)
    for folder in Path(__file__).resolve().parents:
        if (folder / FIXTURE).is_file():
            entries = json.loads((folder / FIXTURE).read_text())
            assert sorted(entries) == sorted(REPDISTILLER_MODELS)
            return entries
    pytest.fail(f"{FIXTURE} was not found beside the checkout; it comes with ../shared.")


def fill_state_dict(layout: list) -> dict[str, torch.Tensor]:
    """The fixture's recipe: float64 draws in layout order, stored as float32."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape, dtype in layout:
        if dtype != "float32":
            state[key] = torch.zeros(shape, dtype=torch.int64)
            continue
        if key.endswith("running_var"):
            tensor = torch.rand(shape, generator=generator, dtype=torch.float64) * 0.5 + 0.75
        elif key.endswith("running_mean"):
            tensor = torch.randn(shape, generator=generator, dtype=torch.float64) * 0.1
        elif len(shape) >= 2:
            tensor = torch.randn(shape, generator=generator, dtype=torch.float64)
            tensor = tensor / math.prod(shape[1:]) ** 0.5
        elif key.endswith("weight"):
            tensor = 1.0 + 0.1 * torch.randn(shape, generator=generator, dtype=torch.float64)
        else:
            tensor = 0.1 * torch.randn(shape, generator=generator, dtype=torch.float64)
        state[key] = tensor.float()
    return state


def fixture_input() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 32, 32, generator=generator, dtype=torch.float64).float()


def optimizer_state(state: dict) -> dict:
    """An SGD state_dict shaped like the one RepDistiller saves beside the weights."""
    return {
        "state": {},
        "param_groups": [
            {
                "lr": 0.05,
                "momentum": 0.9,
                "dampening": 0,
                "weight_decay": 5e-4,
                "nesterov": False,
                "params": list(range(len(state))),
            }
        ],
    }


def write_teacher(folder: Path, name: str, state: dict, filename="ckpt_epoch_240.pth", **extra):
    """RepDistiller's train_teacher.py file: `<name>_vanilla/<file>`."""
    path = folder / f"{name}_vanilla" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"epoch": 240, "model": state, "optimizer": optimizer_state(state), **extra}
    if "best_acc" not in extra:
        record["accuracy"] = torch.tensor(73.5)  # their top1.avg: a 0-d tensor, in percent
    torch.save(record, path)
    return path


def relative_error(logits: torch.Tensor, expected: list) -> float:
    reference = torch.tensor(expected, dtype=torch.float64)
    return float((logits.double() - reference).abs().max() / reference.abs().max())


def logits_of(path: Path, model_name: str | None = None) -> torch.Tensor:
    loaded = load_model(
        str(path), model_name=model_name, num_classes=100, in_channels=3, image_size=32
    )
    with torch.no_grad():
        return loaded.model.eval()(fixture_input())


@pytest.mark.parametrize("name", REPDISTILLER_MODELS)
def test_repdistiller_teacher_file_gives_their_logits(name, fixtures, tmp_path):
    entry = fixtures[name]
    path = write_teacher(tmp_path, name, fill_state_dict(entry["layout"]))
    loaded = load_model(str(path), model_name=None, num_classes=100, in_channels=3, image_size=32)
    assert loaded.format == "repdistiller"
    assert sum(p.numel() for p in loaded.model.parameters()) == entry["params"]
    assert loaded.accuracy == pytest.approx(0.735)
    with torch.no_grad():
        logits = loaded.model.eval()(fixture_input())
    assert relative_error(logits, entry["logits"]) <= 1e-4


@pytest.mark.parametrize("name", ["wrn_16_2", "ResNet50"])
def test_renamed_models_keep_the_zoo_tap_paths(name, fixtures, tmp_path):
    # the zoo's module names differ from RepDistiller's for these two families: the loader maps
    # keys, so the zoo's declared taps still address real modules
    loaded = load_model(
        str(write_teacher(tmp_path, name, fill_state_dict(fixtures[name]["layout"]))),
        model_name=None,
        num_classes=100,
        in_channels=3,
    )
    modules = dict(loaded.model.named_modules())
    taps = loaded.model.default_taps
    assert all(stage in modules for stage in taps.stages)
    assert taps.last_map in modules


def test_data_parallel_prefix_and_other_containers(fixtures, tmp_path):
    entry = fixtures["wrn_16_1"]
    state = fill_state_dict(entry["layout"])
    prefixed = {f"module.{key}": value for key, value in state.items()}
    variants = {
        "dp_vanilla/ckpt_epoch_240.pth": {"epoch": 240, "model": prefixed, "accuracy": 70.1},
        "a/under_state_dict.pth": {"state_dict": prefixed, "epoch": 3},
        "b/under_net.pt": {"net": state},
        "c/top_level.pth": prefixed,
    }
    for relative, record in variants.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(record, path)
        assert relative_error(logits_of(path, "wrn_16_1"), entry["logits"]) <= 1e-4, relative


def test_last_file_with_argparse_namespace_and_best_file(fixtures, tmp_path):
    entry = fixtures["resnet8x4"]
    state = fill_state_dict(entry["layout"])
    options = argparse.Namespace(
        model="resnet8x4", dataset="cifar100", lr_decay_epochs=[150, 180, 210], trial=0
    )
    last = write_teacher(tmp_path, "resnet8x4", state, "resnet8x4_last.pth", opt=options)
    assert relative_error(logits_of(last), entry["logits"]) <= 1e-4
    best = write_teacher(tmp_path, "resnet8x4", state, "resnet8x4_best.pth", best_acc=75.2)
    assert load_model(str(best), model_name=None, num_classes=100, in_channels=3).accuracy == (
        pytest.approx(0.752)
    )
    # outside a named folder, the Namespace's `model` still names the architecture
    elsewhere = tmp_path / "copied" / "teacher.pth"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(last.read_bytes())
    loaded = load_model(str(elsewhere), model_name=None, num_classes=100, in_channels=3)
    assert loaded.name == "resnet8x4" and loaded.metadata["opt"]["trial"] == 0


class _WritesMarker:
    """Unpickling this would call os.system: the payload a poisoned checkpoint carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(fixtures, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    folder = tmp_path / "resnet8_vanilla"
    folder.mkdir()
    path = folder / "ckpt_epoch_240.pth"
    state = fill_state_dict(fixtures["resnet8"]["layout"])
    torch.save({"epoch": 240, "model": state, "opt": _WritesMarker(marker)}, path)
    assert b"system" in path.read_bytes()  # the payload really is in the file
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_model(str(path), model_name=None, num_classes=100, in_channels=3)
    assert main(["eval", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "weights_only" not in error
    assert not marker.exists()
    # and a plain pickle.dump of the same payload (no torch zip container)
    raw = folder / "raw.pth"
    raw.write_bytes(pickle.dumps({"model": state, "x": _WritesMarker(marker)}, protocol=2))
    with pytest.raises(CheckpointError):
        load_model(str(raw), model_name="resnet8", num_classes=100, in_channels=3)
    assert not marker.exists()


def test_architecture_from_the_folder_name():
    cases = {
        "resnet32x4_vanilla/ckpt_epoch_240.pth": "resnet32x4",
        "wrn_40_2_vanilla/ckpt_epoch_240.pth": "wrn_40_2",
        "ResNet50_vanilla/ckpt_epoch_240.pth": "resnet50",
        "ShuffleV1_vanilla/ShuffleV1_last.pth": "shufflenetv1",
        "MobileNetV2_vanilla/x.pth": "mobilenetv2",
        "S:resnet8x4_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0.0_1/resnet8x4_best.pth": "resnet8x4",
        "runs/best.pth": None,
    }
    for relative, expected in cases.items():
        assert architecture_from_folder(relative) == expected, relative


def test_unknown_architecture_says_what_to_pass(fixtures, tmp_path):
    folder = tmp_path / "my_teacher"
    folder.mkdir()
    path = folder / "ckpt_epoch_240.pth"
    torch.save({"epoch": 1, "model": fill_state_dict(fixtures["resnet8"]["layout"])}, path)
    with pytest.raises(CheckpointError, match=r"pass teacher\.model=NAME"):
        load_model(str(path), model_name=None, num_classes=100, in_channels=3)
    with pytest.raises(UnknownNameError, match="resnet32"):
        load_model(str(path), model_name="resnet33", num_classes=100, in_channels=3)
    with pytest.raises(CheckpointError, match="does not fit 'resnet20'"):
        load_model(str(path), model_name="resnet20", num_classes=100, in_channels=3)
    with pytest.raises(CheckpointError, match="is a folder"):
        load_model(str(folder), model_name=None, num_classes=100, in_channels=3)


def test_torchvision_and_timm_state_dicts(tmp_path):
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for name in ("tv:resnet18", "timm:test_resnet"):
        torch.manual_seed(0)
        original = create_model(name, num_classes=10, in_channels=3).eval()
        path = tmp_path / f"{name.replace(':', '_')}.pth"
        torch.save(original.state_dict(), path)
        loaded = load_model(str(path), model_name=name, num_classes=10, in_channels=3)
        with torch.no_grad():
            assert torch.equal(loaded.model.eval()(images), original(images)), name


def test_distill_and_eval_take_a_repdistiller_teacher(fixtures, tmp_path, capsys):
    from conftest import write_cifar

    write_cifar(tmp_path / "c100", "cifar100")
    data = [f"data.root={tmp_path / 'c100'}", "data.download=false"]
    teacher = write_teacher(tmp_path, "resnet8", fill_state_dict(fixtures["resnet8"]["layout"]))
    code = main(
        [
            "distill",
            "method=kd",
            "model=resnet8",
            "data.name=cifar100",
            *data,
            f"teacher={teacher}",
            "epochs=1",
            "max_steps=1",
            "progress=false",
            "compile=false",
            f"run_dir={tmp_path / 'kd'}",
        ]
    )
    assert code == 0
    capsys.readouterr()
    # RepDistiller's teachers are CIFAR-100 models: eval needs only where the data is
    assert main(["eval", str(teacher), *data, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "repdistiller" and result["model"] == "resnet8"
    assert result["count"] == 20
