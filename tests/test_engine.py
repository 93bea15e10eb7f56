import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from gdet.engine import MetricLogger, load_checkpoint, load_model_weights, plot_curves, save_checkpoint
from gdet.errors import CheckpointError
from gdet.io import atomic_write, load_json, save_json
from gdet.errors import DataError


def test_checkpoint_round_trip_and_plain_state_dict(tmp_path):
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    save_checkpoint({"model": m.state_dict(), "epoch": 3, "class_names": ["a", "b"]}, tmp_path / "c.pth")
    ck = load_checkpoint(tmp_path / "c.pth")
    assert ck["format"] == "gdet" and ck["epoch"] == 3 and ck["class_names"] == ["a", "b"]
    m2 = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    load_model_weights(m2, tmp_path / "c.pth")
    x = torch.randn(5, 3)
    assert torch.equal(m(x), m2(x))
    # A plain state dict with DDP's "module." prefix loads too.
    torch.save({f"module.{k}": v for k, v in m.state_dict().items()}, tmp_path / "plain.pth")
    m3 = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    load_model_weights(m3, tmp_path / "plain.pth")
    assert torch.equal(m(x), m3(x))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pth: not a readable PyTorch checkpoint \(not a torch.save"):
        load_checkpoint(tmp_path / "junk.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth: .*\(the file is empty\)"):
        load_checkpoint(tmp_path / "empty.pth")
    torch.save({"w": torch.zeros(1000)}, tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"cut\.pth: .*\(a damaged zip archive: truncated or corrupt\)"):
        load_checkpoint(tmp_path / "cut.pth")
    np.savez(tmp_path / "arrays.npz", w=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"arrays\.npz: .*\(a zip archive, not a torch.save file\)"):
        load_checkpoint(tmp_path / "arrays.npz")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"w": [0.0]}, protocol=2))
    with pytest.raises(CheckpointError, match=r"plain\.pkl: .*\(a Python pickle, not a torch.save file\)"):
        load_checkpoint(tmp_path / "plain.pkl")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")  # a whole model, not its weights: refused, with the fix
    with pytest.raises(CheckpointError, match=r"module\.pth: refused: .*\(torch\.nn\.modules\.linear\.Linear\); "
                                              r"only weights files are loaded \(save model\.state_dict\(\)"):
        load_checkpoint(tmp_path / "module.pth")
    torch.save({"model": nn.Linear(3, 5).state_dict()}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*weight"):
        load_model_weights(nn.Linear(3, 4), tmp_path / "other.pth")
    torch.save({"w": torch.zeros(1)}, tmp_path / "keys.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(2\): weight, bias; unexpected keys \(1\): w"):
        load_model_weights(nn.Linear(3, 4), tmp_path / "keys.pth")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "out.json"
    save_json({"a": 1}, p)
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write("{partial")
            raise RuntimeError("crash")
    assert load_json(p) == {"a": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["out.json"]
    p.write_text('{"a": 1,\n "b": }')
    with pytest.raises(DataError, match=r"out\.json: line 2"):
        load_json(p)


def test_metric_logger_and_curves(tmp_path):
    log = MetricLogger(tmp_path / "m.jsonl")
    for e in range(3):
        log.log(epoch=e, train_loss=1.0 / (e + 1), val_top1=0.3 * e)
    rows = [json.loads(l) for l in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    plot_curves(tmp_path / "m.jsonl", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_model_weights_accepts_checkpoint_dicts_and_skips_aux_for_aux_free_models(tmp_path):
    from gdet.backbones import build_backbone

    src = build_backbone("googlenet", num_classes=7, aux_logits=True)
    save_checkpoint({"model": src.state_dict(), "backbone": "googlenet"}, tmp_path / "g.pth")
    # A torchvision-style file with aux weights loads into a model built without aux heads.
    dst = build_backbone("googlenet", num_classes=7, aux_logits=False, weights=tmp_path / "g.pth")
    x = torch.randn(1, 3, 64, 64)
    src.eval(), dst.eval()
    assert torch.equal(src(x), dst(x))
    # An already-read gdet checkpoint dict is used as such, not mistaken for a state dict.
    ck = load_checkpoint(tmp_path / "g.pth")
    dst2 = build_backbone("googlenet", num_classes=7, aux_logits=True)
    out = load_model_weights(dst2, ck)
    assert out["backbone"] == "googlenet"
    dst2.eval()
    assert torch.equal(src(x), dst2(x))
    # The reverse (a model with aux heads, a file without) still fails, naming the missing aux keys.
    save_checkpoint({"model": dst.state_dict()}, tmp_path / "noaux.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): aux1"):
        load_model_weights(build_backbone("googlenet", num_classes=7, aux_logits=True), tmp_path / "noaux.pth")


def test_erase_on_error_leaves_no_bar_behind():
    import io

    from tqdm import tqdm

    from gdet.engine import erase_on_error

    done = io.StringIO()
    for _ in erase_on_error(tqdm(range(3), file=done, desc="ok")):
        pass
    assert done.getvalue().endswith("\n") and "3/3" in done.getvalue()  # a finished bar stays on its line
    failed = io.StringIO()
    with pytest.raises(ValueError):
        for i in erase_on_error(tqdm(range(3), file=failed, desc="bad")):
            if i == 1:
                raise ValueError
    out = failed.getvalue()
    assert "\n" not in out and out.endswith("\r")  # erased: the error that follows starts a clean line
    assert out.rsplit("\r", 2)[-2].strip() == ""

    def data():  # the data itself fails (an undecodable image read by the loader)
        yield 0
        raise ValueError

    failed = io.StringIO()
    with pytest.raises(ValueError):
        for _ in erase_on_error(tqdm(data(), total=3, file=failed, desc="bad")):
            pass
    out = failed.getvalue()
    assert "\n" not in out and out.endswith("\r") and out.rsplit("\r", 2)[-2].strip() == ""
