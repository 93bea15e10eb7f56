"""Offline fusion of detection sets: concatenate + per-class NMS, and weighted boxes fusion with exact numbers."""
import pytest
import torch

from gdet.detection.fusion import fuse_detections, weighted_boxes_fusion
from gdet.errors import GdetError


def _d(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


A = [_d([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.6], [0, 1])]
B = [_d([[2, 0, 12, 10], [50, 50, 60, 60]], [0.3, 0.8], [0, 0])]


def test_wbf_weighted_mean_and_model_penalty():
    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10], [100, 100, 110, 110]])
    scores = torch.tensor([0.9, 0.3, 0.5])
    b, s = weighted_boxes_fusion(boxes, scores, num_models=2, iou_thr=0.55)
    # cluster 1: IoU(0-10, 2-12) = 80/120 > 0.55 -> x1 = (0*0.9 + 2*0.3)/1.2 = 0.5, x2 = 10.5, score = 0.6 * 2/2
    # cluster 2: one box of two models -> 0.5 * 1/2
    assert torch.allclose(b, torch.tensor([[0.5, 0, 10.5, 10], [100, 100, 110, 110]]))
    assert s.tolist() == pytest.approx([0.6, 0.25])
    e = weighted_boxes_fusion(torch.zeros((0, 4)), torch.zeros(0), 2)
    assert e[0].shape == (0, 4)


def test_fuse_nms_and_wbf_per_class():
    nms = fuse_detections([A, B], "nms", iou_thr=0.3)[0]
    # class 0: the 0.9 box suppresses its 0.3 neighbour; the class-0 box at 50 survives; class 1 kept
    got = sorted(zip(nms["labels"].tolist(), [round(v, 5) for v in nms["scores"].tolist()]))
    assert got == [(0, 0.8), (0, 0.9), (1, 0.6)]
    wbf = fuse_detections([A, B], "wbf")[0]
    assert len(wbf["scores"]) == 3 and torch.all(wbf["scores"][:-1] >= wbf["scores"][1:])
    weighted = fuse_detections([A, B], "nms", weights=[1.0, 0.0])[0]
    assert weighted["scores"].max().item() == pytest.approx(0.9)


def test_fuse_bad_input():
    with pytest.raises(GdetError):
        fuse_detections([A, B + B])
    with pytest.raises(GdetError):
        fuse_detections([A], method="vote")
    with pytest.raises(GdetError):
        fuse_detections([A, B], weights=[1.0])
