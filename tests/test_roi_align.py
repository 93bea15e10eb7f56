"""The NHWC RoIAlign kernel against torchvision's ``roi_align`` (the reference), on a CPU through Triton's
interpreter and, where there is one, on a GPU; and shared-mode detection through it and through CUDA graphs."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

# Runs in a child process: TRITON_INTERPRET must be set before the kernel is built.
_CHECKS = textwrap.dedent("""
    import sys
    import torch
    from torchvision.ops import roi_align
    from gdet.detection.roi_align import available, roi_align_nhwc

    sys.path.insert(0, sys.argv[1])  # the tests folder
    from helpers_roi_align import check_shared_mode_pools_through, hostile_boxes as boxes

    g = torch.Generator().manual_seed(0)
    cases = [(37, 9, 13, 7, 1, True, torch.float32), (37, 9, 13, 7, 2, True, torch.float32),
             (16, 5, 6, 3, 0, True, torch.float32), (20, 8, 8, 4, 1, False, torch.float32),
             (130, 6, 7, 5, 1, True, torch.float16), (3, 1, 1, 2, 1, True, torch.float32)]
    for c, h, w, p, sr, aligned, dtype in cases:
        feat = torch.randn((1, c, h, w), generator=g).to(dtype)
        rois = boxes(19, 16 * w, 16 * h, g)
        assert available(feat)
        out = roi_align_nhwc(feat, rois, p, 1 / 16, sr, aligned)
        ref = roi_align(feat.float(), [rois], (p, p), spatial_scale=1 / 16, sampling_ratio=sr, aligned=aligned)
        assert out.shape == (rois.shape[0], c, p, p) and out.dtype == dtype
        assert out.is_contiguous(memory_format=torch.channels_last)
        if dtype == torch.float32:
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
        else:  # accumulated in fp32, rounded once: the reference rounded the same way
            torch.testing.assert_close(out, ref.to(dtype), rtol=0, atol=0)
        assert bool((ref[rois.shape[0] - 4] == 0).all()) and bool((out[rois.shape[0] - 4] == 0).all())
    empty = roi_align_nhwc(torch.randn(1, 5, 4, 4), torch.zeros((0, 4)), 3, 1 / 16)
    assert empty.shape == (0, 5, 3, 3)

    # Shared-mode detection pools through the kernel where it can; the result equals torchvision's path.
    check_shared_mode_pools_through("roi_align_nhwc")
    print("ok")
""")


@pytest.mark.skipif(tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 8),
                    reason="Triton's interpreter before 3.8 cannot loop over a runtime bound")
def test_kernel_equals_torchvision_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", _CHECKS, str(Path(__file__).parent)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout[-2000:] + res.stderr[-4000:]


def test_not_used_on_a_cpu_without_the_interpreter(monkeypatch):
    from gdet.detection.roi_align import available

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not available(torch.zeros(1, 2, 3, 3))
    assert not available(torch.zeros(1, 2, 3, 3, dtype=torch.float64))


def test_rejects_a_batch_of_maps():
    from gdet.detection.roi_align import roi_align_nhwc

    with pytest.raises(ValueError, match=r"Tensor\[1, C, H, W\]"):
        roi_align_nhwc(torch.zeros(2, 3, 4, 4), torch.zeros(1, 4), 2, 1.0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
def test_kernel_on_cuda(dtype, sampling_ratio):
    from torchvision.ops import roi_align

    from gdet.detection.roi_align import roi_align_nhwc

    g = torch.Generator().manual_seed(sampling_ratio)
    feat = torch.randn((1, 832, 38, 50), generator=g).to("cuda", dtype)
    wh = 5 + torch.rand((500, 2), generator=g) * 700
    xy = torch.rand((500, 2), generator=g) * 800 - 50
    rois = torch.cat([xy, xy + wh], 1).cuda()
    out = roi_align_nhwc(feat, rois, 14, 1 / 16, sampling_ratio)
    ref = roi_align(feat.float(), [rois], (14, 14), spatial_scale=1 / 16, sampling_ratio=sampling_ratio,
                    aligned=True)
    tol = 1e-5 if dtype == torch.float32 else (1e-2 if dtype == torch.bfloat16 else 2e-3)
    err = (out.float() - ref).norm() / ref.norm()
    assert torch.isfinite(out).all() and err < tol, float(err)


@cuda
def test_shared_detector_with_cuda_graphs_equals_plain():
    from gdet.detection.model import build_detector
    from gdet.runtime import optimize

    torch.manual_seed(0)
    det = build_detector("googlenet_tv", ["a", "b", "c"], bbox_reg=True, mode="shared", chunk_size=64,
                         backbone_kwargs={"aux_logits": False}).eval()
    plain = optimize(det, device="cuda", precision="fp16")
    graphed = optimize(det, device="cuda", precision="fp16", cuda_graphs=True)
    assert graphed.shared_net.cuda_graphs and not plain.shared_net.cuda_graphs
    image = torch.rand(3, 240, 320, device="cuda")
    for n in (100, 37):  # the last chunk padded; a second image size captures a second trunk graph
        boxes = torch.rand(n, 4, device="cuda") * 150
        boxes[:, 2:] += boxes[:, :2] + 8
        p1, d1 = plain.score_regions(image, boxes)
        p2, d2 = graphed.score_regions(image, boxes)
        torch.testing.assert_close(p2, p1, rtol=0, atol=1e-3)
        torch.testing.assert_close(d2, d1, rtol=0, atol=1e-3)
        image = torch.rand(3, 200, 300, device="cuda")
    graphs = graphed.shared_net._graphs
    assert len(graphs["trunk"].graphs) == 2 and len(graphs["regions"].graphs) == 2 and "head" not in graphs


def test_a_copy_of_a_shared_network_starts_without_graphs():
    import copy

    from gdet.detection.model import build_detector

    det = build_detector("googlenet_tv", ["a", "b"], mode="shared", backbone_kwargs={"aux_logits": False})
    det.shared_net._graphs["trunk"] = object()  # stands for a captured graph (needs CUDA)
    clone = copy.deepcopy(det)
    assert "trunk" in det.shared_net._graphs and not clone.shared_net._graphs
    assert clone.shared_net.backbone is clone.backbone
