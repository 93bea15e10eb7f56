"""A weights file is data: a checkpoint whose unpickling would run code is refused, and nothing runs."""
import os
import random

import numpy as np
import pytest
import torch

from gdet.engine import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from gdet.errors import CheckpointError


class _Payload:
    """Unpickling this calls ``os.system("touch <marker>")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(path, marker):
    # An otherwise valid gdet checkpoint with one hostile object inside it.
    torch.save({"format": "gdet", "format_version": 1, "model": {"w": torch.zeros(2)},
                "config": {"note": _Payload(marker)}}, path)


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    ckpt, marker = tmp_path / "evil.pth", tmp_path / "MARKER"
    _crafted(ckpt, marker)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused.*system"):
        load_checkpoint(ckpt)
    assert not marker.exists()


@pytest.mark.parametrize("argv", [
    ["classify", "--image", "{img}", "--weights", "{ckpt}"],
    ["detect", "--image", "{img}", "--weights", "{ckpt}"],
])
def test_crafted_checkpoint_through_the_cli(tmp_path, argv):
    from click.testing import CliRunner

    from gdet.cli import main
    from PIL import Image

    ckpt, marker, img = tmp_path / "evil.pth", tmp_path / "MARKER", tmp_path / "x.jpg"
    _crafted(ckpt, marker)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    res = CliRunner().invoke(main, [a.format(img=img, ckpt=ckpt) for a in argv])
    assert res.exit_code == 1, res.output
    assert "refused" in res.output and "Traceback" not in res.output
    assert not marker.exists()


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    saved = rng_state()
    want = (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    save_checkpoint({"model": {}, "rng": saved}, tmp_path / "s.pth")
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    set_rng_state(load_checkpoint(tmp_path / "s.pth")["rng"])
    got = (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    assert got == want


def test_shipped_assets_and_torchvision_state_dicts_load(tmp_path):
    from pathlib import Path

    import gdet
    from torchvision.models import googlenet

    for f in sorted((Path(gdet.__file__).parent / "assets").glob("*.pth")):
        assert "model" in load_checkpoint(f)
    torch.save(googlenet(weights=None, init_weights=False, aux_logits=True).state_dict(), tmp_path / "tv.pth")
    assert "conv1.conv.weight" in load_checkpoint(tmp_path / "tv.pth")["model"]
