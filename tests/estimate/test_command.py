"""`mimkd mi estimate|layers` end to end: output, honest report, and one-line errors (exit 2)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from known_mi import gaussian_pairs
from scipy.special import digamma

import mimkd
from mimkd.cli import main

# the subprocess imports the same mimkd as this test (a worktree's src/, not an installed copy)
SOURCE_ROOT = str(Path(mimkd.__file__).resolve().parents[1])


pytestmark = pytest.mark.usefixtures("one_thread")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line, no traceback
    assert lines[0].startswith("mimkd: error: ")
    return lines[0]


def test_estimate_json_prints_exactly_one_object(tmp_path):
    x, y = gaussian_pairs(1, 0.5, 1000)
    np.savez(tmp_path / "pairs.npz", x=x, y=y)
    command = [sys.executable, "-m", "mimkd", "mi", "estimate", str(tmp_path / "pairs.npz")]
    command += ["--json", "--out", str(tmp_path / "out")]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": SOURCE_ROOT},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-1000:]
    record = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert record["estimator"] == "gaussian" and record["requested"] == "auto"
    assert record["ci_low"] <= record["mi_nats"] <= record["ci_high"]
    assert abs(record["mi_nats"] - 0.5) < 0.06
    assert record["n"] == record["n_eval"] == 1000
    saved = json.loads((tmp_path / "out" / "mi.json").read_text())
    assert saved["mi_nats"] == record["mi_nats"]


def test_report_says_what_ran_on_which_rows_and_what_the_interval_covers(tmp_path, capsys):
    x, y = gaussian_pairs(3, 0.5, 1000)
    np.savez(tmp_path / "pairs.npz", x=x, y=y)
    out = tmp_path / "out"
    assert (
        main(
            ["mi", "estimate", str(tmp_path / "pairs.npz"), "--estimator", "infonce"]
            + ["--steps", "60", "--out", str(out)]
        )
        == 0
    )
    report = capsys.readouterr().out
    assert "estimator   infonce\n" in report
    assert (
        "1000 pairs in 2 halves, each in turn: 400 train the critic, 100 choose its step" in report
    )
    assert "500 evaluate" in report and "all 1000 evaluated once" in report
    assert "evaluation noise only" in report
    assert (out / "mi.json").is_file() and (out / "mi_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_estimate_below_zero_prints_a_warning_line(tmp_path, capsys):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "independent.npz", x=rng.normal(size=(300, 1)), y=rng.normal(size=(300, 1)))
    code = main(
        ["mi", "estimate", str(tmp_path / "independent.npz"), "--estimator", "ksg", "--json"]
        + ["--out", str(tmp_path)]
    )
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert code == 0 and record["mi_nats"] < 0  # independent: KSG lands a little below 0 here
    assert "mimkd: warning: the estimate" in captured.err and "below 0" in captured.err
    assert record["warnings"] and "below 0" in record["warnings"][0]


def test_estimate_at_the_ceiling_prints_a_warning_line(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(500, 1))
    np.savez(tmp_path / "same.npz", x=x, y=x)  # Y = X: infinite MI, KSG reports its ceiling
    assert (
        main(["mi", "estimate", str(tmp_path / "same.npz"), "--json", "--out", str(tmp_path)]) == 0
    )
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["estimator"] == "ksg"
    assert record["ceiling"] == pytest.approx(float(digamma(500) - digamma(3)))
    assert record["mi_nats"] == pytest.approx(record["ceiling"])
    assert "mimkd: warning: " in captured.err and "ceiling" in captured.err


@pytest.mark.parametrize("rows", [0, 8, 10])
def test_too_few_rows_is_one_line_and_exit_2_and_keeps_earlier_results(tmp_path, capsys, rows):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mi.json").write_text('{"earlier": true}\n')
    np.savez(tmp_path / "tiny.npz", x=np.ones((rows, 1)), y=np.ones((rows, 1)))
    assert main(["mi", "estimate", str(tmp_path / "tiny.npz"), "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert "no values" in line if rows == 0 else "at least 100" in line
    assert json.loads((out / "mi.json").read_text()) == {"earlier": True}


def test_unwritable_out_is_one_line_before_any_work(tmp_path, capsys):
    x, y = gaussian_pairs(1, 0.5, 200)
    np.savez(tmp_path / "pairs.npz", x=x, y=y)
    (tmp_path / "a_file").write_text("not a folder")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        assert main(["mi", "estimate", str(tmp_path / "pairs.npz"), "--out", str(out)]) == 2
        line = _error_line(capsys)
        assert "--out" in line and "folder" in line


def test_bad_input_errors_are_one_line(tmp_path, capsys):
    assert main(["mi", "estimate", str(tmp_path / "none.npz"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in _error_line(capsys)
    x, y = gaussian_pairs(1, 0.5, 200)
    np.savez(tmp_path / "p.npz", a=x, b=y)
    assert main(["mi", "estimate", str(tmp_path / "p.npz"), "--out", str(tmp_path)]) == 2
    assert "--x/--y" in _error_line(capsys)
    np.savez(tmp_path / "p.npz", x=x, y=y)
    for flag, value, expected in (
        ("--estimator", "infonse", "infonce"),
        ("--preprocess", "ranks", "copula"),
        ("--critic", "bilinear", "separable"),
    ):
        args = ["mi", "estimate", str(tmp_path / "p.npz"), flag, value, "--out", str(tmp_path)]
        assert main(args) == 2
        assert expected in _error_line(capsys)


def test_help_lists_every_estimator(capsys):
    with pytest.raises(SystemExit):
        main(["mi", "estimate", "--help"])
    text = capsys.readouterr().out
    for name in (
        "auto",
        "ksg",
        "gaussian",
        "infonce",
        "nwj",
        "dv",
        "mine",
        "smile",
        "jsd-dv",
        "jsd-nwj",
    ):
        assert f"  {name} " in text
    assert "--critic" in text and "concat" in text and "copula" in text


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
