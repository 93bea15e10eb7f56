"""gdet.runtime: every rewritten network equals the original (fp32, 1e-5), detectors unchanged, chunking, compile."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gdet.backbones import build_backbone, list_backbones
from gdet.backbones.base import ConvBNReLU
from gdet.backbones.googlenet_tv import InceptionBN
from gdet.errors import GdetError
from gdet.runtime import Runner, chunk_spans, optimize, resolve_precision
from gdet.runtime.check import randomize_batch_norm as _randomize
from gdet.runtime.fuse import ConvAct, Fp32LRN, FusedBranches, FusedResidual, fold_conv_bn

# Smallest input each family accepts, rounded up a little (299-px networks need >= 75 px).
MIN_SIZE = {"googlenet": 64, "googlenet_tv": 64, "bn_inception": 64}


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_equals_the_original_in_fp32(name):
    model = _randomize(build_backbone(name, num_classes=7))
    before = copy.deepcopy(model.state_dict())
    size = MIN_SIZE.get(name, 75)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
    fast = optimize(model, device="cpu", precision="fp32")
    with torch.no_grad():
        out = fast(x)
    assert out.shape == ref.shape == (2, 7) and out.dtype == torch.float32
    assert _rel_err(out, ref) < 1e-5
    mods = list(fast.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in mods)
    assert sum(isinstance(m, (FusedBranches, FusedResidual)) for m in mods) >= 9
    # The caller's model is untouched: same weights, batch norm still there.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == (name != "googlenet")


def test_fold_conv_bn_matches_functional_reference():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    bn = _randomize(nn.Sequential(nn.BatchNorm2d(6, eps=1e-3)))[0]
    x = torch.randn(3, 4, 9, 9)
    ref = F.batch_norm(F.conv2d(x, conv.weight, conv.bias, padding=1), bn.running_mean, bn.running_var,
                       bn.weight, bn.bias, training=False, eps=1e-3)
    folded = fold_conv_bn(conv, bn)
    assert folded.bias is not None and folded.padding == (1, 1)
    with torch.no_grad():
        assert _rel_err(folded(x), ref.detach()) < 1e-6


def test_parallel_1x1_convolutions_become_one():
    block = _randomize(InceptionBN(16, 8, 6, 10, 4, 5, 3))
    x = torch.randn(2, 16, 7, 7)
    fast = optimize(block, device="cpu", precision="fp32")
    assert isinstance(fast, FusedBranches)
    # branch1 (8) + 3x3 reduce (6) + 5x5 reduce (4) read x once; the pool projection reads the pooled input.
    assert fast.head.conv.out_channels == 18 and fast.splits == [8, 6, 4]
    assert isinstance(fast.head, ConvAct) and fast.head.relu
    with torch.no_grad():
        assert _rel_err(fast(x), block(x)) < 1e-6


def test_detector_outputs_unchanged():
    from gdet.detection.model import Detector, EnsembleDetector, detect_image

    torch.manual_seed(0)
    net = _randomize(build_backbone("googlenet_tv", num_classes=3, aux_logits=True))
    det = Detector(net, ["a", "b"], input_size=32, context_pad=2, bbox_reg=True, chunk_size=7).eval()
    with torch.no_grad():
        det.bbox_head.weight.normal_(std=0.1)
    crops = torch.randn(5, 3, 32, 32)
    fast = optimize(det, device="cpu", precision="fp32")
    assert isinstance(fast, Detector) and fast.chunk_size == 7 and fast.backbone.aux1 is None
    with torch.no_grad():
        ref, out = det(crops), fast(crops)
    assert out.aux_logits == () and _rel_err(out.logits, ref.logits) < 1e-5
    assert _rel_err(out.bbox_deltas, ref.bbox_deltas) < 1e-5
    image = torch.rand(3, 60, 80)
    boxes = torch.tensor([[0, 0, 40, 30], [10, 5, 70, 55], [30, 20, 79, 59], [5, 5, 25, 50]] * 3, dtype=torch.float32)
    p_ref, d_ref = det.score_regions(image, boxes)
    p, d = fast.score_regions(image, boxes)
    assert (p - p_ref).abs().max() < 1e-5 and (d - d_ref).abs().max() < 1e-5
    a = detect_image(det, image, boxes, score_thr=0.0)
    b = detect_image(fast, image, boxes, score_thr=0.0)
    assert torch.equal(a["labels"], b["labels"]) and (a["scores"] - b["scores"]).abs().max() < 1e-5
    ens = optimize(EnsembleDetector([det, det]), device="cpu")
    assert all(m is not det and m.runtime_info["fused"] for m in ens.members)
    pe, _ = ens.score_regions(image, boxes)
    assert (pe - p_ref).abs().max() < 1e-5
    assert det.training is False and det.backbone.aux1 is not None  # the original keeps its aux heads


def test_multibox_network_optimizes():
    from gdet.proposals.multibox import build_multibox

    torch.manual_seed(0)
    mb = _randomize(build_multibox(backbone="bn_inception", priors=torch.rand(16, 4), hidden=32, grid=2))
    x = torch.randn(2, 3, 64, 64)
    fast = optimize(mb, device="cpu")
    with torch.no_grad():
        (b_ref, l_ref), (b, lg) = mb(x), fast(x)
    assert _rel_err(b, b_ref) < 1e-5 and _rel_err(lg, l_ref) < 1e-5


def test_reduced_precision_keeps_lrn_in_fp32_and_returns_float32():
    model = build_backbone("googlenet", num_classes=5, aux_logits=False).eval()
    x = torch.randn(2, 3, 64, 64)
    fast = optimize(model, device="cpu", precision="bf16")
    assert fast.runtime_info["precision"] == "bf16" and fast.fc.weight.dtype == torch.bfloat16
    lrns = [m for m in fast.modules() if isinstance(m, Fp32LRN)]
    assert len(lrns) == 2
    with torch.no_grad():
        out, ref = fast(x), model(x)
    assert out.dtype == torch.float32 and _rel_err(out, ref) < 0.1
    y = torch.rand(1, 8, 5, 5).bfloat16() * 40
    assert torch.equal(lrns[0](y), lrns[0].lrn(y.float()).bfloat16())


def test_precision_names():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("auto", cuda) == "fp16"
    assert resolve_precision("fp16", cpu) == "bf16" and resolve_precision("bf16", cuda) == "bf16"
    with pytest.raises(GdetError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", cpu)


def test_optimized_network_is_inference_only_and_cuda_graphs_ignored_on_cpu():
    model = build_backbone("googlenet_tv", num_classes=3, aux_logits=False).eval()
    fast = optimize(model, device="cpu", cuda_graphs=True, chunk_size=4)
    assert fast.runtime_info["cuda_graphs"] is False and "forward" not in vars(fast)
    assert not any(p.requires_grad for p in fast.parameters())
    fast.train()
    with pytest.raises(GdetError, match="inference only"):
        fast(torch.randn(1, 3, 64, 64))
    assert model.training is False


def test_chunk_spans():
    assert chunk_spans(10, 4, pad=False) == [(0, 4, 4), (4, 8, 4), (8, 10, 2)]
    assert chunk_spans(10, 4, pad=True) == [(0, 4, 4), (4, 8, 4), (8, 10, 4)]
    assert chunk_spans(3, 8, pad=True) == [(0, 3, 8)]
    assert chunk_spans(0, 8, pad=True) == []
    with pytest.raises(GdetError):
        chunk_spans(5, 0, pad=False)


class _Recorder(nn.Module):
    """Per-row linear map that records the batch sizes it sees; returns a (Tensor, Tensor) named pair."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.shape[0])
        y = self.lin(x.mean((2, 3)))
        return y, y.sum(1)


def test_runner_pads_the_last_chunk_and_drops_the_padding():
    torch.manual_seed(0)
    model = _Recorder()
    x = torch.randn(10, 3, 4, 4)
    with torch.no_grad():
        ref = model(x)
    model.seen.clear()
    out = Runner(model, chunk_size=4, pad=True).run(x)
    assert model.seen == [4, 4, 4]
    assert out[0].shape == (10, 2) and torch.allclose(out[0], ref[0], atol=1e-6)
    assert torch.allclose(out[1], ref[1], atol=1e-6)
    model.seen.clear()
    out = Runner(model, chunk_size=4).run(x)
    assert model.seen == [4, 4, 2] and torch.allclose(out[0], ref[0], atol=1e-6)
    model.seen.clear()
    one = Runner(model, chunk_size=1, pad=True).run(x[:3])
    assert model.seen == [1, 1, 1] and torch.allclose(one[0], ref[0][:3], atol=1e-6)


def test_compile_path_on_a_tiny_network():
    torch.manual_seed(0)
    model = _randomize(nn.Sequential(ConvBNReLU(3, 8, 3, padding=1), InceptionBN(8, 4, 4, 4, 2, 2, 2)))
    x = torch.randn(2, 3, 12, 12)
    fast = optimize(model, device="cpu", compile=True)
    try:
        out = fast(x)
    except Exception as e:  # noqa: BLE001  only a missing compiler toolchain may skip
        if "compiler" in str(e).lower() or "cc" in type(e).__name__.lower():
            pytest.skip(f"torch.compile toolchain unavailable: {str(e).splitlines()[0]}")
        raise
    with torch.no_grad():
        ref = model(x)
    assert fast.runtime_info["compiled"] and "forward" in vars(fast)
    assert out.shape == (2, 12, 12, 12) and _rel_err(out, ref) < 1e-5
    with torch.no_grad():
        assert _rel_err(fast(x + 1), model(x + 1)) < 1e-5  # a second call reuses the compiled code


def test_exactness_report_on_cpu():
    from click.testing import CliRunner

    from gdet.runtime.check import exactness_rows, format_rows, main, relative_error

    rows = exactness_rows("cpu", ("fp32", "bf16"), names=["googlenet_tv"])
    assert [(r["network"], r["precision"]) for r in rows] == [
        ("googlenet_tv", "fp32"), ("googlenet_tv", "bf16"),
        ("detector (googlenet_tv, bbox_reg)", "fp32"), ("detector (googlenet_tv, bbox_reg)", "bf16"),
        ("detector (googlenet_tv, shared mode)", "fp32"), ("detector (googlenet_tv, shared mode)", "bf16")]
    assert all(r["ok"] and 0 <= r["rel_err"] <= r["tol"] for r in rows)
    assert rows[0]["rel_err"] < 1e-5 < rows[1]["rel_err"]  # bf16 is close, not exact
    assert relative_error(torch.tensor([1.0, -2.0]), torch.tensor([1.0, -4.0])) == pytest.approx(0.5)
    assert len(format_rows(rows)) == 7
    # fp16 against a reference beyond fp16's range is n/a, not a failure; an error past tolerance is one.
    from gdet.runtime.check import _row

    cpu = torch.device("cpu")
    assert _row("n", "fp16", "runtime", float("nan"), cpu, ref_max=1e6)["ok"] is None
    assert _row("n", "fp16", "runtime", float("nan"), cpu, ref_max=10.0)["ok"] is False
    assert "n/a" in format_rows([_row("n", "fp16", "runtime", float("nan"), cpu, ref_max=1e6)])[1]
    bad = CliRunner().invoke(main, ["--device", "cpu", "--precisions", "fp8"])
    assert bad.exit_code != 0


def _lrn_reference(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """AlexNet's formula written out: x / (k + alpha / n * sum of squares over a window of n channels) ** beta."""
    c = x.shape[1]
    sq = x.double() ** 2
    out = torch.empty_like(sq)
    for i in range(c):
        lo, hi = max(0, i - size // 2), min(c, i + (size - 1) // 2 + 1)
        out[:, i] = x[:, i].double() / (k + alpha / size * sq[:, lo:hi].sum(1)) ** beta
    return out


def test_lrn_rewrite_equals_the_formula_and_torch():
    x = (torch.randn(2, 11, 6, 5) * 30).contiguous(memory_format=torch.channels_last)
    lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
    fast = Fp32LRN(lrn)
    out = fast(x)
    assert torch.equal(out, lrn(x))  # same sums, divisions and power
    assert (out.double() - _lrn_reference(x)).abs().max() < 1e-5
    assert torch.equal(fast(x.contiguous()), lrn(x.contiguous()))  # NCHW input takes torch's own path


def test_onednn_option_is_exact():
    from gdet.runtime.fuse import OneDNNConvAct, onednn_available

    if not onednn_available():
        pytest.skip("this torch build has no oneDNN")
    model = _randomize(build_backbone("googlenet_tv", num_classes=4, aux_logits=False))
    fast = optimize(model, device="cpu", onednn=True)
    assert fast.runtime_info["onednn"] and any(isinstance(m, OneDNNConvAct) for m in fast.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _rel_err(fast(x), model(x)) < 1e-5


def test_holders_of_networks_are_optimized_by_copy():
    from gdet.classification.model import Classifier

    net = _randomize(build_backbone("googlenet_tv", num_classes=3, aux_logits=False))
    clf = Classifier(model=net, class_names=["a", "b", "c"], input_size=64, path="x.pth")
    fast = optimize(clf, device="cpu")
    assert isinstance(fast, Classifier) and fast.class_names == clf.class_names and fast.path == "x.pth"
    assert fast.model is not net and clf.model is net and fast.model.runtime_info["fused"]
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    assert _rel_err(fast.logits(images), clf.logits(images)) < 1e-5
    with pytest.raises(TypeError, match="needs a module"):
        optimize(object(), device="cpu")


def test_optimize_leaves_the_random_stream_alone():
    # Training-time evaluation runs through the runtime; building its modules must not move the training's RNG.
    net = build_backbone("googlenet_tv", num_classes=3, aux_logits=False).eval()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    optimize(net, device="cpu")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", ["googlenet", "bn_inception"])
def test_optimized_shared_detector_runs_the_rewritten_modules(name):
    """A shared-mode detector's trunk/head split is rebuilt over the folded and fused modules: every module it
    calls is one of the optimized network's (cast with it), outputs equal the original in fp32; odd image and
    map sides (bn_inception's reduction pools) work."""
    from gdet.detection.model import build_detector

    torch.manual_seed(0)
    det = build_detector(name, ["a", "b", "c"], backbone_kwargs={"aux_logits": False}, bbox_reg=True,
                         mode="shared", shared={"scales": [150]})
    _randomize(det)
    image = torch.rand((3, 97, 131))
    boxes = torch.tensor([[0.0, 0.0, 131.0, 97.0], [10.0, 20.0, 80.0, 90.0], [30.0, 5.0, 60.0, 70.0]])
    probs, deltas = det.score_regions(image, boxes)
    fast = optimize(det, device="cpu", precision="fp32")
    split = fast.shared_net.split
    leaves = [m for g in (split.trunk, split.rest) for m in g.modules() if not list(m.children())]
    tree = {id(m) for m in fast.modules()}
    assert leaves and all(id(m) in tree for m in leaves)
    assert fast.shared_net.channels_last and fast.shared_net.backbone is fast.backbone
    p1, d1 = fast.score_regions(image, boxes)
    assert _rel_err(p1, probs) < 1e-5 and _rel_err(d1, deltas) < 1e-5
    from gdet.runtime.fuse import onednn_available

    if onednn_available():  # and with oneDNN's packed convolutions (applied after the rewrite)
        packed = optimize(det, device="cpu", precision="fp32", onednn=True)
        split = packed.shared_net.split
        tree = {id(m) for m in packed.modules()}
        assert all(id(m) in tree for g in (split.trunk, split.rest) for m in g.modules() if not list(m.children()))
        assert _rel_err(packed.score_regions(image, boxes)[0], probs) < 1e-5
    pb, _ = optimize(det, device="cpu", precision="bf16").score_regions(image, boxes)  # bf16 trunk input
    assert pb.dtype == torch.float32 and (pb - probs).abs().max() < 0.05
