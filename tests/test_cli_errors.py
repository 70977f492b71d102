"""Every bad input issue 12 lists ends as one line on stderr and exit 2, and the line is true."""

from __future__ import annotations

import pytest

from mimkd.cli import main


def _one_line(capsys, argv: list[str], code: int = 2) -> str:
    assert main(argv) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def _data(idx_folder) -> list[str]:
    return [f"data.root={idx_folder}", "data.download=false", "progress=false"]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("epochs=0", "bad value 0 for epochs: it must be >= 1"),  # was: exit 0, a NaN report
        ("epochs=-3", "bad value -3 for epochs: it must be >= 1"),
        ("data.train_subset=-5", "data.train_subset: it must be >= 0"),  # was: all 60,000
        ("optim.lr=-1", "bad value -1.0 for optim.lr: it must be > 0"),  # was: a traceback
        ("optim.lr=inf", "bad value inf for optim.lr: give a finite number"),
        ("data.eval_batch_size=0", "data.eval_batch_size: it must be >= 1"),  # was: after training
        ("optim.milestones=[0.5,-1]", "bad value -1.0 for optim.milestones: it must be >= 0"),
        ("seed=-1", "bad value -1 for seed"),
        ("data.channels=2", "bad value 2 for data.channels: choose one of 0, 1, 3"),
    ],
)
def test_numeric_ranges_are_checked_when_the_config_loads(
    capsys, idx_folder, tmp_path, override, fragment
):
    line = _one_line(capsys, ["train", *_data(idx_folder), override, f"run_dir={tmp_path}/r"])
    assert fragment in line, line
    assert not (tmp_path / "r").exists()  # refused before any folder or data was touched


def test_batch_size_zero_for_kd_names_the_range_not_negatives(capsys, idx_folder, tmp_path):
    argv = ["distill", "method=kd", *_data(idx_folder), "data.batch_size=0", f"out_dir={tmp_path}"]
    line = _one_line(capsys, argv)
    # was: kd "compares samples within a batch", which kd does not
    assert "bad value 0 for data.batch_size: it must be >= 1" in line
    assert "within a batch" not in line


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["list", "model"], ["invalid choice: 'model'", "`mimkd list --help`"]),
        (["distill", "--resumee", "runs/x"], ["--resumee", "Did you mean '--resume'?"]),
        ([], ["the following arguments are required: COMMAND"]),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, fragments):
    # was: argparse's usage line, then its error line
    line = _one_line(capsys, argv)
    assert line.startswith("mimkd: error: ")
    for fragment in fragments:
        assert fragment in line, line


def test_help_still_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["list", "--help"])
    assert exit_info.value.code == 0
    assert "models" in capsys.readouterr().out


def test_nan_before_the_first_checkpoint_names_no_checkpoint(capsys, idx_folder, tmp_path):
    run_dir = tmp_path / "run"
    argv = ["train", *_data(idx_folder), "optim.lr=1e30", "log_every=1", f"run_dir={run_dir}"]
    line = _one_line(capsys, argv)
    # was: "the last good checkpoint is .../last.pt", a file never written
    assert "no checkpoint was written yet" in line and "last.pt" not in line
    assert not (run_dir / "last.pt").exists()


def test_nan_after_a_checkpoint_names_it(capsys, idx_folder, tmp_path):
    run_dir = tmp_path / "run"
    argv = ["train", *_data(idx_folder), "epochs=1", "data.train_subset=64", "data.batch_size=16"]
    argv.append(f"run_dir={run_dir}")
    assert main(argv) == 0
    capsys.readouterr()
    # the resumed epoch 2 diverges: a label weight of 1e30 blows the weights up
    line = _one_line(
        capsys, ["train", "--resume", str(run_dir), "epochs=2", "ce.ce_weight=1e30", "log_every=1"]
    )
    assert f"the last good checkpoint is {run_dir / 'last.pt'} (epoch 1)" in line
    assert (run_dir / "last.pt").is_file()
