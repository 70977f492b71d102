"""Short real runs on real Fashion-MNIST: the whole path from IDX files to report."""

import json

import torch

import mimkd
from mimkd.cli import main


def test_distill_on_a_fashion_mnist_subset_writes_report_and_beats_chance(
    fashion_available, tmp_path, capsys
):
    teacher_dir = tmp_path / "teacher"
    common = [
        "data.train_subset=1000",
        "data.test_subset=1000",
        "optim.lr=0.1",
        "progress=false",
        "data.batch_size=64",
    ]
    assert main(["train", "model=cnn_small", "epochs=2", *common, f"run_dir={teacher_dir}"]) == 0
    student_dir = tmp_path / "student"
    code = main(
        [
            "distill",
            "method=kd",
            "model=cnn_tiny",
            f"teacher={teacher_dir / 'best.pt'}",
            "epochs=3",
            *common,
            "data.batch_size=32",
            f"run_dir={student_dir}",
        ]
    )
    assert code == 0
    for name in (
        "report.md",
        "curves.png",
        "results.json",
        "config.yaml",
        "metrics.jsonl",
        "last.pt",
        "best.pt",
    ):
        assert (student_dir / name).is_file(), name
    results = json.loads((student_dir / "results.json").read_text())
    assert results["best_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert len(results["teacher_sha256"]) == 64
    assert results["teacher_accuracy"] > 0.3
    assert results["student_parameters"] == 3778
    report = (student_dir / "report.md").read_text()
    assert "curves.png" in report and results["teacher_sha256"] in report
    assert (student_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["eval", str(student_dir / "best.pt"), "--json"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert evaluation["top1"] == results["best_accuracy"]  # same 1000 test images, same weights


def test_python_api_with_modules(idx_folder, tmp_path):
    from mimkd.models import create_model

    teacher = create_model("cnn_small", num_classes=10, in_channels=1)
    student = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(28 * 28, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    results = mimkd.distill(
        student,
        teacher,
        method="kd",
        overrides={
            "data.root": str(idx_folder),
            "data.download": False,
            "epochs": 1,
            "progress": False,
            "run_dir": str(tmp_path),
        },
    )
    assert results["student_parameters"] == 28 * 28 * 32 + 32 + 32 * 10 + 10
    assert (tmp_path / "report.md").is_file()


def test_quickstart_smoke(fashion_available, tmp_path, capsys):
    assert main(["quickstart", "--fast", "--out", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert "| teacher cnn_small" in output and "| student cnn_tiny | kd" in output
    run_dir = next(p for p in tmp_path.iterdir() if p.name != "teachers")
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["students"]) >= {"ce", "kd"}
    assert (run_dir / "curves.png").is_file() and (run_dir / "report.md").is_file()
    # a second quickstart reuses the teacher trained with the same settings
    teachers = list((tmp_path / "teachers").iterdir())
    assert main(["quickstart", "--fast", "--out", str(tmp_path), "methods=[ce]"]) == 0
    assert list((tmp_path / "teachers").iterdir()) == teachers


def test_quickstart_teacher_stopped_part_way_continues(fashion_available, tmp_path):
    """A quickstart teacher cut off after its first epoch (Ctrl-C, a kill) is resumed by the next
    quickstart, not refused as an unfinished run nor trained again from scratch."""
    from mimkd.config import load_config
    from mimkd.engine.run import run
    from mimkd.quickstart import QuickstartSettings, teacher_checkpoint, teacher_run

    settings = QuickstartSettings(teacher_images=256, teacher_epochs=2, test_images=100)
    folder, overrides = teacher_run(settings, tmp_path)
    steps_per_epoch = 256 // settings.batch_size
    config, method_config = load_config(
        None, [*overrides, "progress=false", f"max_steps={steps_per_epoch}"]
    )
    run(config, method_config)  # stops at the end of epoch 1 of 2
    # what a kill after epoch 1's checkpoint leaves: no results.json (written last) nor report
    for name in ("results.json", "report.md", "curves.png"):
        (folder / name).unlink()
    checkpoint, results = teacher_checkpoint(settings, tmp_path)
    assert checkpoint == folder / "best.pt" and results["epochs"] == 2
    epochs = [
        json.loads(line)["epoch"]
        for line in (folder / "metrics.jsonl").read_text().splitlines()
        if '"kind": "epoch"' in line
    ]
    assert epochs == [1, 2]
