"""gdet export: ONNX / TorchScript files equal the PyTorch models (every backbone), metadata, CLI and errors."""
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from gdet.backbones import build_backbone, list_backbones
from gdet.cli import LazyGroup
from gdet.detection.model import Detector, detector_checkpoint_meta, load_detector
from gdet.engine import save_checkpoint
from gdet.errors import GdetError
from gdet.export import classifier_spec, export_onnx, export_torchscript
from gdet.export.nets import adaptive_pool_matrix
from gdet.export.torchscript import read_metadata
from gdet.export.verify import relative_error

# The command as gdet/cli.py registers it, so errors go through the same one-line handler.
main = LazyGroup(name="gdet", lazy={"export": "gdet.export.cli:export"})


def ort_run(path, x):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.numpy()})


def onnx_meta(path):
    onnx = pytest.importorskip("onnx")
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def smallest_eval_input(name: str) -> int:
    """The smallest input each network accepts in eval mode: 75 px for the 299-px networks, 32 px (one cell of
    the stride-32 feature map) for the others."""
    return 75 if name.startswith("inception") else 32


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_exports_equal_to_pytorch(name, tmp_path):
    size = smallest_eval_input(name)
    torch.manual_seed(0)
    net = build_backbone(name, num_classes=3)
    spec = classifier_spec(net, ["a", "b", "c"], size)
    x = torch.randn(5, 3, size, size)  # a batch size the exporter never saw
    with torch.no_grad():
        want = F.softmax(net.eval()(x), dim=1).numpy()
    res = export_torchscript(spec, tmp_path / "m.pt")
    assert res["errors"]["probs"] <= 1e-4
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    assert not any("aux" in k.lower() for k in loaded.state_dict())  # eval form: no aux heads in the file
    with torch.no_grad():
        (got,) = loaded(x)
    assert relative_error(got, want) <= 1e-4
    meta = read_metadata(tmp_path / "m.pt")
    assert meta["class_names"] == ["a", "b", "c"] and meta["preprocessing"]["input_size"] == size
    assert meta["preprocessing"]["mean"] == list(net.mean) and meta["backbone"] == name
    pytest.importorskip("onnxruntime")
    res = export_onnx(spec, tmp_path / "m.onnx")
    assert res["errors"]["probs"] <= 1e-4
    (got,) = ort_run(tmp_path / "m.onnx", x)
    assert got.shape == (5, 3) and relative_error(got, want) <= 1e-4
    props = onnx_meta(tmp_path / "m.onnx")
    assert json.loads(props["class_names"]) == ["a", "b", "c"] and json.loads(props["std"]) == list(net.std)
    assert json.loads(props["gdet"])["task"] == "classify"


def _detector_ckpt(path, bbox_reg=True):
    torch.manual_seed(1)
    net = build_backbone("googlenet", num_classes=3, aux_logits=True)  # aux heads are trained, never exported
    det = Detector(net, ["square", "disc"], context_pad=2, input_size=32, bbox_reg=bbox_reg)
    torch.nn.init.normal_(det.bbox_head.weight, std=0.1)  # visible deltas
    save_checkpoint({"model": det.state_dict(), **detector_checkpoint_meta(det, {"aux_logits": True})}, path)
    return det.eval()


def test_detector_cli_onnx_torchscript_fp16(tmp_path):
    det = _detector_ckpt(tmp_path / "det.pth")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = det(x)
    probs, deltas = F.softmax(out.logits, dim=1).numpy(), out.bbox_deltas.numpy()
    assert np.abs(deltas).max() > 1e-3
    for fmt in ("torchscript", "onnx"):
        if fmt == "onnx":
            pytest.importorskip("onnxruntime")
        dst = tmp_path / f"det.{fmt}"
        r = CliRunner().invoke(main, ["export", "--weights", str(tmp_path / "det.pth"), "--format", fmt,
                                      "--out", str(dst)])
        assert r.exit_code == 0, r.output
        assert "outputs probs, deltas" in r.output and "max relative error probs" in r.output
        if fmt == "onnx":
            got = ort_run(dst, x)
            meta = json.loads(onnx_meta(dst)["gdet"])
        else:
            with torch.no_grad():
                got = [t.numpy() for t in torch.jit.load(str(dst))(x)]
            meta = read_metadata(dst)
        assert got[0].shape == (4, 3) and got[1].shape == (4, 2, 4)
        assert relative_error(got[0], probs) <= 1e-4 and relative_error(got[1], deltas) <= 1e-4
        assert meta["task"] == "detect" and meta["class_names"] == ["square", "disc"]
        assert meta["detector"] == {"context_pad": 2, "input_size": 32, "bbox_reg": True, "sampling_ratio": 1}
    r = CliRunner().invoke(main, ["export", "--weights", str(tmp_path / "det.pth"), "--format", "fp16",
                                  "--out", str(tmp_path / "det16.pth")])
    assert r.exit_code == 0, r.output
    d16 = load_detector(tmp_path / "det16.pth")
    assert torch.equal(d16.bbox_head.weight, det.bbox_head.weight.half().float())


def test_classifier_ema_raw_and_input_size(tmp_path):
    torch.manual_seed(2)
    net = build_backbone("googlenet_tv", num_classes=4, aux_logits=True)
    raw = net.state_dict()
    ema = {k: v * 0.5 if v.is_floating_point() and k.endswith("weight") else v for k, v in raw.items()}
    save_checkpoint({"model": raw, "ema": ema, "task": "classify", "class_names": list("abcd"),
                     "backbone": "googlenet_tv", "backbone_kwargs": {"aux_logits": True},
                     "preprocessing": {**net.preprocessing(), "input_size": 48}}, tmp_path / "cls.pth")
    outs = {}
    for flag in ([], ["--raw"]):
        dst = tmp_path / f"cls{len(flag)}.pt"
        r = CliRunner().invoke(main, ["export", "--weights", str(tmp_path / "cls.pth"), "--format", "torchscript",
                                      "--out", str(dst), *flag])
        assert r.exit_code == 0, r.output
        assert "input [batch, 3, 48, 48]" in r.output
        outs[len(flag)] = torch.jit.load(str(dst)).state_dict()["backbone.fc.weight"]
    assert torch.equal(outs[0], ema["fc.weight"]) and torch.equal(outs[1], raw["fc.weight"])
    r = CliRunner().invoke(main, ["export", "--weights", str(tmp_path / "cls.pth"), "--format", "torchscript",
                                  "--out", str(tmp_path / "c64.pt"), "--input-size", "64"])
    assert r.exit_code == 0 and read_metadata(tmp_path / "c64.pt")["input"]["shape"] == ["batch", 3, 64, 64]


def test_adaptive_pool_matrix_matches_torch():
    x = torch.randn(2, 5, 3, 7)
    for gh, gw in ((4, 4), (2, 3), (3, 7)):
        want = F.adaptive_avg_pool2d(x, (gh, gw))
        got = torch.einsum("nchw,gh,kw->ncgk", x, adaptive_pool_matrix(3, gh), adaptive_pool_matrix(7, gw))
        assert torch.allclose(got, want, atol=1e-6)
    # Bins by hand: 3 inputs -> 2 outputs pool [0, 1] and [1, 2].
    assert torch.allclose(adaptive_pool_matrix(3, 2), torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]))


@pytest.mark.parametrize("kind", ["fc", "conv"])
def test_multibox_exports(kind, tmp_path):
    from gdet.proposals.multibox import build_multibox

    pytest.importorskip("onnxruntime")
    torch.manual_seed(3)
    # 96 px -> a 3 x 3 feature map, pooled to the fc head's 4 x 4 grid (not a whole-number pooling).
    k = 16 if kind == "fc" else 3 * 3 * 2
    priors = torch.rand(k, 2).repeat(1, 2) * 0.5 + torch.tensor([0.0, 0.0, 0.5, 0.5])
    head = {"hidden": 16, "grid": 4, "kind": kind, "anchors": 2}
    model = build_multibox(backbone="googlenet", priors=priors, **head).eval()
    save_checkpoint({"model": model.state_dict(), "task": "multibox", "backbone": "googlenet", "priors": priors,
                     "head": head, "input_size": 96, "backbone_kwargs": {}}, tmp_path / "mb.pth")
    r = CliRunner().invoke(main, ["export", "--weights", str(tmp_path / "mb.pth"), "--format", "onnx",
                                  "--out", str(tmp_path / "mb.onnx")])
    assert r.exit_code == 0, r.output
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        boxes, logits = model(x)
    got_boxes, got_scores = ort_run(tmp_path / "mb.onnx", x)
    assert got_boxes.shape == (3, k, 4) and got_scores.shape == (3, k)
    assert relative_error(got_boxes, boxes) <= 1e-4 and relative_error(got_scores, logits.sigmoid()) <= 1e-4
    assert json.loads(onnx_meta(tmp_path / "mb.onnx")["gdet"])["num_priors"] == k


def test_errors_are_one_line_and_keep_files(tmp_path, monkeypatch):
    _detector_ckpt(tmp_path / "det.pth")
    # Without onnxruntime: one line naming the extra, nothing written.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    r = CliRunner().invoke(main, ["export", "--weights", str(tmp_path / "det.pth"), "--format", "onnx",
                                  "--out", str(tmp_path / "x.onnx")])
    assert r.exit_code == 1
    assert r.output.strip() == "error: onnx export needs onnx and onnxruntime: pip install 'gdet[export]'"
    assert not (tmp_path / "x.onnx").exists()
    monkeypatch.undo()
    # Not a model checkpoint.
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "plain.pth")
    r = CliRunner().invoke(main, ["export", "--weights", str(tmp_path / "plain.pth"), "--format", "torchscript",
                                  "--out", str(tmp_path / "x.pt")])
    assert r.exit_code == 1 and r.output.startswith("error: ") and "plain.pth" in r.output
    assert len(r.output.strip().splitlines()) == 1
    # An export that does not match its reference is refused and an existing file is left alone.
    spec = classifier_spec(build_backbone("googlenet", num_classes=3), list("abc"), 32)
    spec.reference = lambda x: (torch.zeros(x.shape[0], 3),)
    (tmp_path / "keep.pt").write_bytes(b"old")
    with pytest.raises(GdetError, match="differs from the PyTorch model"):
        export_torchscript(spec, tmp_path / "keep.pt")
    assert (tmp_path / "keep.pt").read_bytes() == b"old"


def test_a_shared_mode_detector_exports_as_fp16_only(tmp_path):
    torch.manual_seed(1)
    net = build_backbone("googlenet", num_classes=3, aux_logits=False)
    det = Detector(net, ["square", "disc"], context_pad=0, input_size=32, mode="shared",
                   shared={"scales": [64], "max_size": 96})
    save_checkpoint({"model": det.state_dict(), **detector_checkpoint_meta(det, {"aux_logits": False})},
                    tmp_path / "s.pth")
    for fmt in ("torchscript", "onnx"):
        r = CliRunner().invoke(main, ["export", "--weights", str(tmp_path / "s.pth"), "--format", fmt,
                                      "--out", str(tmp_path / f"s.{fmt}")])
        assert r.exit_code == 1 and "Traceback" not in r.output
        assert r.stderr.strip() == (f"error: {tmp_path / 's.pth'}: a shared-mode detector exports as fp16 only "
                                    "(--format fp16, run by gdet); onnx and torchscript hold R-CNN mode's crop "
                                    "network, not the trunk, RoIAlign and per-region head")
        assert not (tmp_path / f"s.{fmt}").exists()
    r = CliRunner().invoke(main, ["export", "--weights", str(tmp_path / "s.pth"), "--format", "fp16",
                                  "--out", str(tmp_path / "s16.pth")])
    assert r.exit_code == 0, r.output
    assert load_detector(tmp_path / "s16.pth").mode == "shared"
