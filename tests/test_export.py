import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file

from mimkd.cli import main
from mimkd.models import create_model


@pytest.fixture(scope="module")
def checkpoint(idx_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    assert (
        main(
            [
                "train",
                "model=cnn_tiny",
                f"data.root={idx_folder}",
                "data.download=false",
                "epochs=1",
                "progress=false",
                f"run_dir={folder}",
            ]
        )
        == 0
    )
    return folder / "best.pt"


def _trained_model(checkpoint):
    model = create_model("cnn_tiny", num_classes=10, in_channels=1)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    return model.eval()


def test_onnx_export_matches_pytorch(checkpoint, tmp_path):
    target = tmp_path / "student.onnx"
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(target)]) == 0
    batch = torch.randn(5, 1, 28, 28)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": batch.numpy()})[0]
    with torch.no_grad():
        expected = _trained_model(checkpoint)(batch).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_safetensors_and_pt2_exports(checkpoint, tmp_path):
    assert (
        main(
            [
                "export",
                str(checkpoint),
                "--format",
                "safetensors",
                "--out",
                str(tmp_path / "s.safetensors"),
            ]
        )
        == 0
    )
    state = load_file(str(tmp_path / "s.safetensors"))
    reference = _trained_model(checkpoint).state_dict()
    assert state.keys() == reference.keys() and all(
        torch.equal(state[k], reference[k]) for k in state
    )
    assert (
        main(["export", str(checkpoint), "--format", "pt2", "--out", str(tmp_path / "s.pt2")]) == 0
    )
    exported = torch.export.load(str(tmp_path / "s.pt2")).module()
    batch = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(exported(batch), _trained_model(checkpoint)(batch), atol=1e-5)


def test_safetensors_teacher_loads_for_distillation(checkpoint, tmp_path, idx_folder):
    path = tmp_path / "teacher.safetensors"
    assert main(["export", str(checkpoint), "--format", "safetensors", "--out", str(path)]) == 0
    code = main(
        [
            "distill",
            "method=kd",
            f"teacher={path}",
            "teacher.model=cnn_tiny",
            f"data.root={idx_folder}",
            "data.download=false",
            "epochs=1",
            "progress=false",
            f"run_dir={tmp_path / 'kd'}",
        ]
    )
    assert code == 0
