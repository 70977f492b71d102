"""`mimkd mi estimate|layers` end to end (the estimators themselves are tested in tests/mi)."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from mimkd.cli import main


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_estimate_json_prints_exactly_one_object(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 1))
    y = 0.8 * x + 0.6 * rng.normal(size=(1000, 1))  # rho 0.8: I = -0.5 log(1 - 0.64) = 0.511 nats
    np.savez(tmp_path / "pairs.npz", x=x, y=y)
    command = [
        sys.executable,
        "-m",
        "mimkd",
        "mi",
        "estimate",
        str(tmp_path / "pairs.npz"),
        "--steps",
        "150",
        "--json",
        "--out",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-1000:]
    record = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert {"mi_nats", "ci_low", "ci_high", "estimator", "n", "seconds"} <= set(record)
    assert record["ci_low"] <= record["mi_nats"] <= record["ci_high"]
    assert 0.2 < record["mi_nats"] < 0.511 + 0.15
    assert (tmp_path / "out" / "mi.json").is_file() and (
        tmp_path / "out" / "mi_curve.png"
    ).is_file()


def test_estimate_errors_are_one_line(tmp_path, capsys):
    assert main(["mi", "estimate", str(tmp_path / "none.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    np.savez(tmp_path / "p.npz", x=np.zeros((10, 2)), y=np.zeros((10, 2)))
    assert main(["mi", "estimate", str(tmp_path / "p.npz"), "--estimator", "infonse"]) == 2
    assert "infonce" in capsys.readouterr().err


def test_layers_between_two_checkpoints(idx_folder, tmp_path, capsys):
    common = [f"data.root={idx_folder}", "data.download=false", "epochs=1", "progress=false"]
    assert main(["train", "model=cnn_small", *common, f"run_dir={tmp_path / 't'}"]) == 0
    assert main(["train", "model=cnn_tiny", *common, f"run_dir={tmp_path / 's'}"]) == 0
    capsys.readouterr()
    code = main(
        [
            "mi",
            "layers",
            "--teacher",
            str(tmp_path / "t" / "best.pt"),
            "--student",
            str(tmp_path / "s" / "best.pt"),
            "--samples",
            "200",
            "--steps",
            "40",
            "--out",
            str(tmp_path / "mi"),
            "--json",
        ]
    )
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["teacher_layer"] for r in rows} >= {"fc:input"}
    assert all(math.isfinite(r["mi_nats"]) for r in rows)
    assert (tmp_path / "mi" / "layers.png").is_file()
