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


def test_unknown_keys_suggest_the_closest_one(tmp_path):
    from gdet.classification.train import DEFAULTS

    f = tmp_path / "c.yaml"
    f.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'epoch' \(did you mean 'epochs'\?\)$"):
        load_config(f, defaults=DEFAULTS)
    f.write_text("aug_hflip: 0.5\npretrained: x.pth\n")  # the old names point to the new ones
    with pytest.raises(ConfigError, match=r"unknown key 'aug_hflip' \(did you mean 'hflip'\?\) \(and 1 more"):
        load_config(f, defaults=DEFAULTS)
    f.write_text("lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'wieght_decay' \(did you mean 'weight_decay'\?\)"):
        load_config(f, ["wieght_decay=1"], defaults=DEFAULTS)
    with pytest.raises(ConfigError, match=r"unknown key 'zzz'$"):  # nothing close: no list of 60 keys
        load_config(f, ["zzz=1"], defaults=DEFAULTS)


def test_binary_config_is_one_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    with pytest.raises(ConfigError, match=r"c\.yaml: not a UTF-8 text file"):
        load_config(f)


_CLS = {"data": "d"}
_DET = {"data": "d"}
_MB = {"data": "d"}


def _check(module):
    import importlib

    return importlib.import_module(module).check


@pytest.mark.parametrize("module,cfg,msg", [
    ("gdet.classification.train", {"lr": float("nan")}, "lr: must be a finite number"),
    ("gdet.classification.train", {"lr": 0}, "lr: must be > 0"),
    ("gdet.classification.train", {"grad_clip": 0}, "grad_clip: must be > 0 or null"),
    ("gdet.classification.train", {"warmup_epochs": -1}, "warmup_epochs: must be >= 0"),
    ("gdet.classification.train", {"lr_step_epochs": 0}, "lr_step_epochs: must be >= 1"),
    ("gdet.classification.train", {"threads": 0}, "threads: must be >= 1 or null"),
    ("gdet.classification.train", {"workers": -1}, "workers: must be >= 0"),
    ("gdet.classification.train", {"aug_scale": [0.9, 0.1]}, r"aug_scale: min > max in \[0.9, 0.1\]"),
    ("gdet.classification.train", {"aug_scale": [0.0, 1.0]}, r"aug_scale: must be in \(0, 1\]"),
    ("gdet.classification.train", {"aug_scale": [0.5, 1.2]}, r"aug_scale: must be in \(0, 1\]"),
    ("gdet.classification.train", {"aug_ratio": [1.3, 0.7]}, "aug_ratio: min > max"),
    ("gdet.classification.train", {"label_smoothing": 1.0}, r"label_smoothing: must be in \[0, 1\)"),
    ("gdet.classification.train", {"ema_decay": 1.0}, r"ema_decay: must be in \[0, 1\)"),
    ("gdet.classification.train", {"hflip": 2}, r"hflip: must be in \[0, 1\]"),
    ("gdet.classification.train", {"epochs": 0}, "epochs: must be >= 1"),
    ("gdet.classification.train", {"epochs": 2.5}, "epochs: must be a whole number"),
    ("gdet.classification.train", {"precision": "fp8"}, "precision: unknown option 'fp8'"),
    ("gdet.classification.train", {"lr_schedule": "cosin"}, "lr_schedule: unknown option 'cosin' .did you mean 'cosine'"),
    ("gdet.classification.train", {"backbone": "googlenett"}, "backbone: unknown option 'googlenett' .did you mean 'googlenet'"),
    ("gdet.classification.train", {"input_size": 8},
     r"input_size: 8 px is too small for googlenet \(the smallest input it runs at is \d+ px\)"),
    ("gdet.classification.train", {"backbone_kwargs": "notadict"}, "backbone_kwargs: must be a mapping"),
    ("gdet.classification.train", {"backbone_kwargs": {"foo": 1}}, "backbone_kwargs: googlenet does not accept 'foo'"),
    ("gdet.detection.train", {"batch_size": 0}, "batch_size: must be >= 1"),
    ("gdet.detection.train", {"fg_fraction": 0}, r"fg_fraction: must be in \(0, 1\]"),
    ("gdet.detection.train", {"fg_fraction": 1.5}, r"fg_fraction: must be in \(0, 1\]"),
    ("gdet.detection.train", {"max_proposals": 0}, "max_proposals: must be >= 1"),
    ("gdet.detection.train", {"context_pad": -1}, "context_pad: must be >= 0"),
    ("gdet.detection.train", {"input_size": 8}, "input_size: 8 px is too small for googlenet"),
    ("gdet.detection.train", {"backbone_kwargs": {"foo": 1}}, "backbone_kwargs: googlenet does not accept 'foo'"),
    ("gdet.detection.train", {"nms_iou": 0}, r"nms_iou: must be in \(0, 1\]"),
    ("gdet.detection.train", {"epochs": 0}, "epochs: must be >= 1"),
    ("gdet.detection.train", {"bg_iou_lo": 0.5}, r"bg_iou_lo: must be below fg_iou \(0.5\)"),
    ("gdet.proposals.multibox_train", {"input_size": 8}, "input_size: 8 px is too small for googlenet"),
    ("gdet.proposals.multibox_train", {"match_iou": 1.5}, "match_iou: must be <= 1"),
    ("gdet.proposals.multibox_train", {"num_priors": 0}, "num_priors: must be >= 1"),
    ("gdet.proposals.multibox_train", {"head": "dense"}, "head: unknown option 'dense'"),
])
def test_every_range_is_checked_with_one_line_naming_the_key(module, cfg, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        _check(module)({"data": "d", **cfg})
    assert "\n" not in str(e.value) and str(e.value).startswith(next(iter(cfg)))


def test_defaults_pass_their_own_checks():
    for module in ("gdet.classification.train", "gdet.detection.train", "gdet.proposals.multibox_train"):
        cfg = _check(module)({"data": "d", "input_size": 64})
        assert cfg["work_dir"] and cfg["weights_strict"] is True and cfg["eval_every"] == 1


def test_every_trainer_speaks_one_vocabulary():
    from gdet.classification.train import DEFAULTS as CLS
    from gdet.detection.train import DEFAULTS as DET
    from gdet.engine.trainer import ENGINE_DEFAULTS
    from gdet.proposals.multibox_train import DEFAULTS as MB

    shared = {"work_dir", "weights", "weights_strict", "hflip", "max_steps_per_epoch", "ema_decay", "batch_size",
              "eval_every", "log_every", "workers", "device", "precision", "seed", "resume", "epochs", "tensorboard"}
    for defaults in (CLS, DET, MB):
        assert shared <= set(defaults) and set(ENGINE_DEFAULTS) <= set(defaults)
        assert not {"out", "pretrained", "backbone_weights", "flip", "aug_hflip", "max_steps", "ema",
                    "eval_images", "eval_nms"} & set(defaults)
    assert "eval_max_images" in DET and "eval_max_images" in MB and "nms_iou" in DET and "nms_iou" in MB
    # Every shipped config loads against its trainer's keys and passes the range checks.
    from pathlib import Path

    import importlib

    root = Path(__file__).resolve().parents[1] / "configs"
    owners = {"cls": "gdet.classification.train", "det_cls": "gdet.classification.train",
              "det": "gdet.detection.train", "multibox": "gdet.proposals.multibox_train"}
    for f in sorted(root.glob("*.yaml")):
        key = "det_cls" if f.name.startswith("det_cls") else f.name.split("_")[0]
        mod = importlib.import_module(owners[key])
        cfg = load_config(f, defaults=mod.DEFAULTS)
        mod.check({**cfg, "data": cfg["data"] or "d"})


@pytest.mark.parametrize("override, msg", [
    ("work_dir=[a]", "work_dir: expected a string, got ['a']"),
    ("data={a: 1}", "data: expected a string, got {'a': 1}"),
    ("lr_milestones=[b]", "lr_milestones: expected a list of numbers, got ['b']"),
    ("lr_milestones=3", "lr_milestones: expected a list of numbers, got 3"),
])
def test_a_value_of_the_wrong_type_names_its_key(tmp_path, override, msg):
    from gdet.detection.train import DEFAULTS
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.01\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, [override], defaults=DEFAULTS)
    assert str(e.value) == f"{cfg}: {msg}"


def test_a_number_for_a_name_becomes_the_name_and_a_base_must_be_a_file_name(tmp_path):
    from gdet.detection.train import DEFAULTS
    cfg = tmp_path / "c.yaml"
    cfg.write_text("val_split: 2012\n")
    assert load_config(cfg, ["data=2007"], defaults=DEFAULTS)["val_split"] == "2012"
    assert load_config(cfg, ["data=2007"], defaults=DEFAULTS)["data"] == "2007"
    cfg.write_text("base: [a]\n")
    with pytest.raises(ConfigError, match=r"base: expected the name of a config file, got \['a'\]"):
        load_config(cfg)
