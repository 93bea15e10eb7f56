"""gdet.nms: per-class NMS, soft-NMS against a plain reference, the four-step post-processing, empty inputs."""
import math

import pytest
import torch

from gdet.nms import batched_soft_nms, multiclass_nms, postprocess, soft_nms


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def ref_nms(boxes, scores, thr):
    """Greedy NMS, written out plainly."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(_iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def ref_soft_nms(boxes, scores, thr, sigma, method, min_score):
    """Soft-NMS as in Bodla et al.'s Algorithm 1, with python lists."""
    s = list(scores)
    rest = list(range(len(boxes)))
    keep, out = [], []
    while rest:
        m = max(rest, key=lambda i: (s[i], -i))
        if s[m] < min_score:
            break
        keep.append(m)
        out.append(s[m])
        rest.remove(m)
        for i in rest:
            ov = _iou(boxes[m], boxes[i])
            if method == "linear":
                if ov > thr:
                    s[i] *= 1 - ov
            else:
                s[i] *= math.exp(-ov * ov / sigma)
        rest = [i for i in rest if s[i] >= min_score]
    return keep, out


def random_boxes(n, seed, size=100.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * 40 + 5
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)


def test_multiclass_nms_matches_reference_per_class():
    boxes, scores = random_boxes(60, 1)
    labels = torch.arange(60) % 3
    keep, kept_scores = multiclass_nms(boxes, scores, labels, 0.3)
    expected = []
    for c in range(3):
        idx = [i for i in range(60) if labels[i] == c]
        expected += [idx[k] for k in ref_nms(boxes[idx].tolist(), scores[idx].tolist(), 0.3)]
    assert sorted(keep.tolist()) == sorted(expected)
    assert torch.equal(kept_scores, scores[keep])
    assert torch.all(kept_scores[:-1] >= kept_scores[1:])


def test_different_classes_do_not_suppress_each_other():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep, _ = multiclass_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5)
    assert keep.tolist() == [0, 1]


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_matches_reference(method):
    boxes, scores = random_boxes(40, 2, size=50.0)
    keep, new = soft_nms(boxes, scores, iou_threshold=0.3, sigma=0.5, method=method, score_threshold=1e-3)
    rk, rs = ref_soft_nms(boxes.tolist(), scores.tolist(), 0.3, 0.5, method, 1e-3)
    assert keep.tolist() == rk
    assert torch.allclose(new, torch.tensor(rs), atol=1e-6)


def test_soft_nms_keeps_more_than_hard_nms_and_decays_overlaps():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep, new = soft_nms(boxes, scores, 0.3, method="linear")
    assert keep.tolist() == [0, 2, 1]
    iou = 90 / 110
    assert new[2].item() == pytest.approx(0.8 * (1 - iou), rel=1e-5)
    hard, _ = multiclass_nms(boxes, scores, torch.zeros(3, dtype=torch.long), 0.3)
    assert hard.tolist() == [0, 2]


def test_batched_soft_nms_is_per_class():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10.0]])
    keep, new = batched_soft_nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), method="linear")
    assert keep.tolist() == [0, 1] and new.tolist() == pytest.approx([0.9, 0.8])


def test_empty_inputs():
    e4, e = torch.zeros((0, 4)), torch.zeros(0)
    k, s = multiclass_nms(e4, e, torch.zeros(0, dtype=torch.long))
    assert k.numel() == 0 and s.numel() == 0
    k, s = soft_nms(e4, e)
    assert k.numel() == 0
    k, s = batched_soft_nms(e4, e, torch.zeros(0, dtype=torch.long))
    assert k.numel() == 0
    out = postprocess(e4, torch.zeros((0, 4)), 0.05, 0.3, 100)
    assert out["boxes"].shape == (0, 4) and out["labels"].dtype == torch.int64
    # everything below the score threshold
    out = postprocess(torch.tensor([[0, 0, 5, 5.0]]), torch.tensor([[0.99, 0.01]]), 0.05, 0.3, 100)
    assert len(out["scores"]) == 0


def test_postprocess_four_steps():
    # 2 classes + background; 4 boxes.
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 20.001, 30], [40, 40, 60, 60.0]])
    probs = torch.tensor([
        [0.1, 0.8, 0.1],   # class 0 strong
        [0.2, 0.7, 0.1],   # overlaps box 0 in class 0 -> suppressed; class 1 below thr
        [0.0, 0.0, 1.0],   # tiny box -> removed by remove_small_boxes
        [0.3, 0.3, 0.4],   # both classes kept
    ])
    out = postprocess(boxes, probs, score_thr=0.2, nms_thr=0.3, max_dets=100, min_size=0.01)
    got = sorted(zip(out["labels"].tolist(), [round(s, 4) for s in out["scores"].tolist()]))
    assert got == [(0, 0.3), (0, 0.8), (1, 0.4)]
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])
    top = postprocess(boxes, probs, score_thr=0.2, nms_thr=0.3, max_dets=2)
    assert top["scores"].tolist() == pytest.approx([0.8, 0.4])


def test_postprocess_class_specific_boxes():
    boxes = torch.tensor([[[0, 0, 10, 10], [100, 100, 110, 110]]], dtype=torch.float32)  # 1 x 2 classes x 4
    probs = torch.tensor([[0.0, 0.5, 0.5]])
    out = postprocess(boxes, probs, score_thr=0.1)
    assert out["boxes"][out["labels"] == 1].tolist() == [[100, 100, 110, 110]]


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_zero_area_boxes_are_kept_as_torchvision_nms_keeps_them(method):
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 5.0, 5.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep, new = soft_nms(boxes, scores, method=method)
    assert keep.tolist() == nms(boxes, scores, 0.3).tolist() == [0, 1, 2]
    assert torch.equal(new, scores) and torch.isfinite(new).all()
