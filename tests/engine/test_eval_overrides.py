"""`mimkd eval` reads its data.* overrides through the typed config, like every other command."""

from __future__ import annotations

import json

import pytest

from mimkd.cli import main
from mimkd.engine.evaluate import eval_data_config
from mimkd.errors import ConfigError


def test_overrides_are_typed_and_validated():
    recorded = {"name": "fashion_mnist", "root": "/data", "download": True, "test_subset": 0}
    data = eval_data_config(recorded, ["data.download=false", "data.test_subset=50"])
    assert data.download is False and data.test_subset == 50 and data.root == "/data"
    with pytest.raises(ConfigError, match="data.test_subset"):
        eval_data_config(recorded, ["data.test_subset=abc"])
    with pytest.raises(ConfigError, match="data.test_subsett"):
        eval_data_config(recorded, ["data.test_subsett=5"])
    with pytest.raises(ConfigError, match="data.\\* overrides"):
        eval_data_config(recorded, ["optim.lr=0.1"])
    with pytest.raises(ConfigError, match="data.name=NAME"):
        eval_data_config(None, [])
    assert eval_data_config(None, [], default_name="cifar100").name == "cifar100"


def test_eval_applies_overrides_and_refuses_bad_ones(idx_folder, tmp_path, capsys):
    code = main(
        [
            "train",
            "model=cnn_tiny",
            f"data.root={idx_folder}",
            "data.download=false",
            "epochs=1",
            "max_steps=1",
            "progress=false",
            "compile=false",
            f"run_dir={tmp_path}",
        ]
    )
    assert code == 0
    capsys.readouterr()
    checkpoint = str(tmp_path / "best.pt")
    assert main(["eval", checkpoint, "data.test_subset=50", "data.download=false", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 50
    for bad in ("data.test_subset=abc", "epochs=3"):
        assert main(["eval", checkpoint, bad]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "Traceback" not in error
