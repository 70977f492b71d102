import pytest

from mimkd.config import describe_keys, load_config
from mimkd.distillers.kd import KDConfig
from mimkd.errors import ConfigError, UnknownNameError


def test_yaml_and_overrides_fill_the_dataclasses(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "method: kd\nepochs: 7\ndata:\n  batch_size: 32\n  augment: crop_flip\noptim:\n  lr: 0.2\n"
        "  milestones: [3, 5]\nkd:\n  temperature: 2.0\n"
    )
    run, method = load_config(config_file, ["optim.lr=0.05", "kd.kd_weight=0.5", "model=resnet8x4"])
    assert run.method == "kd"
    assert run.epochs == 7
    assert run.data.batch_size == 32 and run.data.augment == "crop_flip"
    assert run.optim.lr == 0.05  # the override wins over the file
    assert run.optim.milestones == [3, 5]
    assert run.model.name == "resnet8x4"  # short form of model.name
    assert method == KDConfig(temperature=2.0, ce_weight=0.1, kd_weight=0.5)


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"'optim\.lrr'.*Did you mean 'optim\.lr'"):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"'kd\.temprature'.*'kd\.temperature'"):
        load_config(None, ["method=kd", "kd.temprature=2"])


def test_unknown_key_in_yaml_file(tmp_path):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("data:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match=r"data\.batchsize.*data\.batch_size"):
        load_config(config_file)


def test_wrong_type_and_bad_choice_name_the_key():
    with pytest.raises(ConfigError, match="'epochs'"):
        load_config(None, ["epochs=many"])
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, ["precision=fp16"])


def test_unknown_method_suggests_a_name():
    with pytest.raises(UnknownNameError, match="Did you mean 'kd'"):
        load_config(None, ["method=kdd"])


def test_every_key_is_described_with_a_default():
    rows = {key: (default, meaning) for key, default, meaning in describe_keys("kd")}
    assert rows["optim.lr"][0] == 0.05
    assert rows["kd.temperature"][0] == 4.0
    assert all(meaning for _, meaning in rows.values())
