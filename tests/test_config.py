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


def test_numbers_are_checked_against_the_defaults(tmp_path):
    from gdet.config import load_config
    from gdet.errors import ConfigError

    defaults = {"epochs": 1, "lr": 0.1, "ema": False, "name": "x", "limit": None}
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 3\nlr: 2\nlimit: abc\n")  # an int for a float default is fine; None defaults are free
    assert load_config(f, defaults=defaults) == {"epochs": 3, "lr": 2, "ema": False, "name": "x", "limit": "abc"}
    for override, msg in [("epochs=abc", "epochs: expected a number, got 'abc'"),
                          ("lr=fast", "lr: expected a number"),
                          ("ema=1", "ema: expected true or false"), ("epochs=true", "epochs: expected a number")]:
        with pytest.raises(ConfigError, match=msg):
            load_config(f, [override], defaults=defaults)
    # Exponents without a decimal point are floats (YAML 1.2), in files and in overrides.
    f.write_text("lr: 1e-3\n")
    assert load_config(f, ["epochs=2E+1"], defaults=defaults)["lr"] == 0.001
    assert load_config(f, ["epochs=2E+1"], defaults=defaults)["epochs"] == 20.0
