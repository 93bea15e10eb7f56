import pytest

from gdet.config import apply_overrides, load_config
from gdet.errors import ConfigError


def test_base_merge_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("lr: 0.1\nmodel: {name: googlenet, dropout: 0.4}\nepochs: 10\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nepochs: 3\nmodel: {dropout: 0.2}\n")
    cfg = load_config(tmp_path / "child.yaml", ["lr=0.01", "model.name=bn_inception", "steps=[1, 2]"],
                      defaults={"lr": 1.0, "model": {}, "epochs": 1, "steps": []})
    assert cfg == {"lr": 0.01, "model": {"name": "bn_inception", "dropout": 0.2}, "epochs": 3, "steps": [1, 2]}


def test_two_level_base_is_rejected(tmp_path):
    (tmp_path / "a.yaml").write_text("x: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="one level"):
        load_config(tmp_path / "c.yaml")


def test_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        apply_overrides({"lr": 1}, ["lrr=2"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({"lr": 1}, ["lr"])
