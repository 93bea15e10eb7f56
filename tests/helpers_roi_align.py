"""Shared helpers (no tests) for the RoIAlign tests: hostile boxes, and shared-mode detection through a fast
RoIAlign against torchvision's path. Imported by the tests and by the Triton interpreter's child process."""
from __future__ import annotations

import torch
from torch import nn


def hostile_boxes(n: int, w: float, h: float, g: torch.Generator) -> torch.Tensor:
    """``n`` random boxes around a ``w x h`` image (some past its edges), then four hostile ones: beyond the map, over
    its far edge, a point, a box of negative size."""
    wh = torch.rand((n, 2), generator=g) * torch.tensor([1.3 * w, 1.3 * h])
    xy = torch.rand((n, 2), generator=g) * torch.tensor([w + 20.0, h + 20.0]) - 20.0
    b = torch.cat([xy, xy + wh], 1)
    extra = torch.tensor([[-60.0, -60.0, -20.0, -20.0], [w - 3.0, h - 3.0, w + 40.0, h + 40.0],
                          [7.0, 5.0, 7.0, 5.0], [30.0, 20.0, 10.0, 8.0]])
    return torch.cat([b, extra])


def check_shared_mode_pools_through(kernel_name: str) -> None:
    """A two-scale shared-mode network at inference calls ``gdet.detection.roi_align.<kernel_name>`` once per scale
    and gives torchvision's results (``fast_pool = False``) to 1e-5."""
    import gdet.detection.roi_align as fast
    from gdet.backbones import build_backbone
    from gdet.detection.shared import SharedDetectorNet

    torch.manual_seed(0)
    bb = build_backbone("googlenet_tv", num_classes=4, aux_logits=False).eval()
    net = SharedDetectorNet(bb, nn.Linear(1024, 12), scales=(64, 96), max_size=None, pooled_size=4,
                            input_size=48).eval()
    img = torch.randn(3, 80, 72)
    rois = hostile_boxes(9, 72, 80, torch.Generator().manual_seed(1))[:10].abs()
    calls = []
    kernel = getattr(fast, kernel_name)
    setattr(fast, kernel_name, lambda *a, **k: calls.append(1) or kernel(*a, **k))
    try:
        with torch.no_grad():
            quick = net([img], [rois])
            assert len(calls) == 2, calls  # one call per scale of the pyramid
            net.fast_pool = False
            slow = net([img], [rois])
        assert len(calls) == 2
    finally:
        setattr(fast, kernel_name, kernel)
    torch.testing.assert_close(quick.logits, slow.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(quick.bbox_deltas, slow.bbox_deltas, rtol=1e-5, atol=1e-5)
