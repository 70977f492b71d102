"""MIMKD on a real Fashion-MNIST subset: the bound starts at chance, rises, and the student learns."""

import json
import math

from mimkd.cli import main


def test_mimkd_distillation_on_fashion_mnist(fashion_available, tmp_path):
    common = [
        "data.train_subset=1000",
        "data.test_subset=1000",
        "progress=false",
        "data.batch_size=64",
    ]
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    assert (
        main(
            [
                "train",
                "model=cnn_small",
                "epochs=2",
                "optim.lr=0.1",
                *common,
                f"run_dir={teacher_dir}",
            ]
        )
        == 0
    )
    argv = [
        "distill",
        "method=mimkd",
        "model=cnn_tiny",
        f"teacher={teacher_dir / 'best.pt'}",
        "epochs=4",
    ]
    assert main([*argv, "optim.lr=0.1", "log_every=1", *common, f"run_dir={student_dir}"]) == 0
    records = [
        json.loads(line) for line in (student_dir / "metrics.jsonl").read_text().splitlines()
    ]
    first_step = next(r for r in records if r["kind"] == "interval")
    epochs = [r for r in records if r["kind"] == "epoch"]
    chance = 2 * math.log(2)
    # at initialisation the critics cannot tell pairs apart: L_MI is close to 2 log 2
    assert abs(first_step["mi_loss_global"] - chance) < 0.25
    assert abs(first_step["mi_loss_local"] - chance) < 0.25
    assert epochs[-1]["mi_loss_global"] < first_step["mi_loss_global"] - 0.2
    assert epochs[-1]["mi_loss_local"] < first_step["mi_loss_local"]
    for term in ("global", "local"):
        assert epochs[-1][f"critic_acc_pos_{term}"] > 0.5
        assert epochs[-1][f"critic_acc_neg_{term}"] > 0.5
    results = json.loads((student_dir / "results.json").read_text())
    assert results["best_accuracy"] > 0.3  # chance is 0.1
    assert results["extra_parameters"] > 0
