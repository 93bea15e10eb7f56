"""RoIAlign on a CPU as one weighted embedding-bag sum, against torchvision's ``roi_align`` (the reference), and
shared-mode detection through it."""
import pytest
import torch
from torch import nn
from torchvision.ops import roi_align

from gdet.detection import roi_align as nhwc
from gdet.detection.roi_align import bags_available, roi_align_bags
from helpers_roi_align import check_shared_mode_pools_through, hostile_boxes


@pytest.mark.parametrize("c,h,w,p,sr,aligned,dtype", [
    (37, 9, 13, 7, 1, True, torch.float32), (37, 9, 13, 7, 2, True, torch.float32),
    (20, 8, 8, 4, 1, False, torch.float32), (3, 1, 1, 2, 1, True, torch.float32),
    (16, 5, 6, 3, 3, True, torch.float64), (16, 5, 6, 3, 2, False, torch.float64),
    (832, 12, 17, 14, 1, True, torch.float32)])
def test_equals_torchvision(c, h, w, p, sr, aligned, dtype):
    g = torch.Generator().manual_seed(c + h + p)
    feat = torch.randn((1, c, h, w), generator=g, dtype=dtype)
    rois = hostile_boxes(19, 16 * w, 16 * h, g).to(dtype)
    for layout in (torch.contiguous_format, torch.channels_last):
        out = roi_align_bags(feat.contiguous(memory_format=layout), rois, p, 1 / 16, sr, aligned)
        ref = roi_align(feat, [rois], (p, p), spatial_scale=1 / 16, sampling_ratio=sr, aligned=aligned)
        assert out.shape == (rois.shape[0], c, p, p) and out.dtype == dtype
        assert out.is_contiguous(memory_format=torch.channels_last)
        tol = 1e-12 if dtype == torch.float64 else 2e-6
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
        assert bool((out[rois.shape[0] - 4] == 0).all())  # the box beyond the map pools zeros


def test_huge_coordinates_pool_zeros_as_torchvision():
    feat = torch.randn((1, 4, 5, 6), generator=torch.Generator().manual_seed(2))
    rois = torch.tensor([[0.0, 0.0, 1e20, 50.0], [5.0, 5.0, 40.0, 3e38], [-1e30, -1e30, 20.0, 20.0]])
    out = roi_align_bags(feat, rois, 3, 1 / 16, 2)
    ref = roi_align(feat, [rois], (3, 3), spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=2e-6)


def test_gradient_equals_torchvision():
    g = torch.Generator().manual_seed(3)
    feat = torch.randn((1, 5, 6, 7), generator=g, dtype=torch.float64, requires_grad=True)
    rois = hostile_boxes(6, 7 * 16, 6 * 16, g).double()
    weight = torch.randn((10, 5, 3, 3), generator=g, dtype=torch.float64)
    ours, = torch.autograd.grad((roi_align_bags(feat, rois, 3, 1 / 16, 2) * weight).sum(), feat)
    ref, = torch.autograd.grad((roi_align(feat, [rois], (3, 3), 1 / 16, 2, True) * weight).sum(), feat)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_empty_and_refused_inputs():
    assert roi_align_bags(torch.randn(1, 5, 4, 4), torch.zeros((0, 4)), 3, 1 / 16).shape == (0, 5, 3, 3)
    with pytest.raises(ValueError, match="one image"):
        roi_align_bags(torch.zeros(2, 3, 4, 4), torch.zeros(1, 4), 2, 1.0)
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align_bags(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4), 2, 1.0, sampling_ratio=0)
    assert bags_available(torch.zeros(1, 2, 3, 3), 1)
    assert not bags_available(torch.zeros(1, 2, 3, 3), 0)  # the adaptive grid stays with torchvision
    assert not bags_available(torch.zeros(1, 2, 3, 3, dtype=torch.bfloat16), 1)


def test_shared_detection_pools_through_it_at_inference():
    check_shared_mode_pools_through("roi_align_bags")


def test_training_keeps_torchvisions_kernel(monkeypatch):
    from gdet.backbones import build_backbone
    from gdet.detection.shared import SharedDetectorNet

    bb = build_backbone("googlenet_tv", num_classes=4, aux_logits=False)
    net = SharedDetectorNet(bb, nn.Linear(1024, 12), scales=(64,), max_size=None, pooled_size=4, input_size=48)
    calls = []
    monkeypatch.setattr(nhwc, "roi_align_bags", lambda *a, **k: calls.append(1))
    out = net.train()([torch.randn(3, 80, 72)], [torch.tensor([[4.0, 6.0, 50.0, 70.0]])])
    assert calls == [] and out.logits.requires_grad  # torchvision's kernel, with its autograd
