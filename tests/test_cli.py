"""Every user error ends with one line on stderr and exit code 2, never a traceback."""

import json
import subprocess
import sys

import pytest
import torch

from mimkd.cli import main
from mimkd.distillers import list_distillers


@pytest.fixture(scope="module")
def teacher_10_classes(train_run, tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("teacher"))


def _fails_cleanly(capsys, argv, *fragments):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("mimkd: error: ")
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _data(idx_folder):
    return [f"data.root={idx_folder}", "data.download=false", "progress=false", "epochs=1"]


def test_unknown_names_and_keys(capsys, idx_folder, tmp_path):
    out = f"out_dir={tmp_path}"
    _fails_cleanly(
        capsys,
        ["distill", "model=resnet9000", *_data(idx_folder), out],
        "unknown model 'resnet9000'",
        "mimkd list models",
    )
    _fails_cleanly(
        capsys, ["distill", "method=kdd", *_data(idx_folder), out], "unknown method 'kdd'", "'kd'"
    )
    _fails_cleanly(
        capsys,
        ["train", "data.name=fashion_mnis", "progress=false", out],
        "unknown dataset",
        "'fashion_mnist'",
    )
    _fails_cleanly(
        capsys, ["train", "optim.lrr=0.1"], "unknown config key 'optim.lrr'", "'optim.lr'"
    )
    _fails_cleanly(capsys, ["train", "epochs=lots"], "'epochs'")
    _fails_cleanly(capsys, ["train", "--config", str(tmp_path / "missing.yaml")], "does not exist")


def test_missing_and_corrupt_data(capsys, idx_folder, tmp_path):
    _fails_cleanly(
        capsys,
        ["train", "data.name=cifar100", f"data.root={tmp_path}", "data.download=false"],
        "cifar100 files not found",
        "cifar-100-python",
    )
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for file in idx_folder.iterdir():
        (corrupt / file.name).write_bytes(file.read_bytes()[:100])
    _fails_cleanly(
        capsys, ["train", f"data.root={corrupt}", "data.download=false"], "truncated or corrupt"
    )


def test_teacher_checkpoint_errors(capsys, idx_folder, tmp_path, teacher_10_classes):
    from conftest import write_cifar

    common = ["method=kd", *_data(idx_folder), f"out_dir={tmp_path}"]
    _fails_cleanly(
        capsys,
        ["distill", *common, f"teacher={tmp_path / 'nope.pt'}"],
        "does not exist",
        "mimkd train",
    )
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    _fails_cleanly(capsys, ["distill", *common, f"teacher={garbage}"], "corrupt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(teacher_10_classes.read_bytes()[:2000])
    _fails_cleanly(capsys, ["distill", *common, f"teacher={truncated}"], "corrupt")
    write_cifar(tmp_path / "c100", "cifar100")
    _fails_cleanly(
        capsys,
        [
            "distill",
            "method=kd",
            "data.name=cifar100",
            f"data.root={tmp_path / 'c100'}",
            "data.download=false",
            "epochs=1",
            f"teacher={teacher_10_classes}",
            f"out_dir={tmp_path}",
        ],
        "predicts 10 classes but the dataset has 100",
    )
    _fails_cleanly(capsys, ["distill", *common], "needs a teacher")


def test_plain_state_dict_teacher_of_the_wrong_size(capsys, idx_folder, tmp_path):
    from mimkd.models import create_model

    state = create_model("cnn_small", num_classes=7, in_channels=1).state_dict()
    path = tmp_path / "plain.pt"
    torch.save(state, path)
    _fails_cleanly(
        capsys,
        [
            "distill",
            "method=kd",
            *_data(idx_folder),
            f"teacher={path}",
            "teacher.model=cnn_small",
            f"out_dir={tmp_path}",
        ],
        "predicts 7 classes but the dataset has 10",
    )


def test_batch_of_one_for_methods_that_need_negatives(
    capsys, idx_folder, tmp_path, teacher_10_classes
):
    contrastive = [info for info in list_distillers() if info.min_batch_size >= 2]
    assert contrastive, "no method declares that it needs negatives"
    for info in contrastive:
        _fails_cleanly(
            capsys,
            [
                "distill",
                f"method={info.name}",
                *_data(idx_folder),
                f"teacher={teacher_10_classes}",
                "data.batch_size=1",
                f"out_dir={tmp_path}",
            ],
            f"data.batch_size >= {info.min_batch_size}",
        )


def test_nan_loss_stops_with_a_clear_message(capsys, idx_folder, tmp_path):
    line = _fails_cleanly(
        capsys,
        [
            "train",
            *_data(idx_folder),
            "optim.lr=1e30",
            "log_every=1",
            f"run_dir={tmp_path / 'run'}",
        ],
        "the loss became",
        "no checkpoint was written yet",
    )
    assert "optim.lr" in line


def test_list_json_for_scripts(capsys):
    assert main(["list", "methods", "--json"]) == 0
    methods = json.loads(capsys.readouterr().out)
    kd = next(m for m in methods if m["name"] == "kd")
    assert kd["parameters"] == {
        "temperature": 4.0,
        "ce_weight": 0.1,
        "kd_weight": 0.9,
        "label_smoothing": 0.0,
    }
    assert "Hinton" in kd["paper"]
    assert main(["list", "datasets", "--json"]) == 0
    names = {d["name"] for d in json.loads(capsys.readouterr().out)}
    assert {"fashion_mnist", "cifar10", "cifar100", "imagefolder"} <= names


def test_distill_help_lists_every_key_with_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--help", "method=kd"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for fragment in (
        "optim.lr",
        "[0.05]",
        "kd.temperature",
        "[4.0]",
        "data.batch_size",
        "softening temperature",
    ):
        assert fragment in text


def test_real_process_exit_code_and_single_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mimkd", "train", "optim.lrr=0.1"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_pack_runs_seeds_side_by_side(capsys, idx_folder, tmp_path):
    argv = ["pack", "--seeds", "0,1", "--methods", "ce", "model=cnn_tiny", *_data(idx_folder)]
    assert main([*argv, f"out_dir={tmp_path}"]) == 0
    output = capsys.readouterr().out
    assert "| ce | 2 |" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ce_cnn_tiny_seed0", "ce_cnn_tiny_seed1"]


def test_overrides_after_an_option_are_overrides(capsys, teacher_10_classes):
    """argparse takes positionals in one run: `eval MODEL --json data.x=y` must still apply them."""
    assert main(["eval", str(teacher_10_classes), "--json", "data.test_subset=50"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 50
