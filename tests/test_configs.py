from pathlib import Path

import pytest

from mimkd.config import load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads(path):
    run, _ = load_config(path)
    assert run.method and run.model.name and run.epochs > 0
