"""Region labelling by IoU, R-CNN box-regression targets, and the 32/96 mini-batch sampler."""
import math

import pytest
import torch

from gdet.detection.labels import decode_boxes, encode_boxes, label_regions
from gdet.detection.sampler import RegionSampler

GT = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0], [50.0, 0.0, 60.0, 10.0]])
GT_LABELS = torch.tensor([3, 1, 0])


def test_labels_by_iou_with_gt_first():
    props = torch.tensor([
        [0.0, 0.0, 10.0, 5.0],     # IoU 0.5 with gt0 -> class 3 (+1)
        [0.0, 0.0, 10.0, 4.9],     # IoU 0.49 -> background
        [20.0, 20.0, 40.0, 38.0],  # IoU 0.9 with gt1 -> class 1 (+1)
        [100.0, 100.0, 110.0, 110.0],  # no overlap -> background
    ])
    r = label_regions(props, GT, GT_LABELS)
    assert r.boxes.shape == (7, 4) and torch.equal(r.boxes[:3], GT)
    assert r.labels.tolist() == [4, 2, 1, 4, 0, 2, 0]
    assert r.iou[:3].tolist() == [1.0, 1.0, 1.0]
    assert r.iou[3].item() == pytest.approx(0.5) and r.iou[4].item() == pytest.approx(0.49)
    assert r.gt_index.tolist() == [0, 1, 2, 0, 0, 1, -1]
    no_gt = label_regions(props, GT, GT_LABELS, add_gt=False)
    assert no_gt.labels.tolist() == [4, 0, 2, 0]


def test_ignored_gt_is_not_a_positive_and_its_overlaps_are_not_background():
    ignore = torch.tensor([False, True, False])
    props = torch.tensor([[20.0, 20.0, 40.0, 38.0], [20.0, 20.0, 40.0, 25.0], [0.0, 0.0, 10.0, 9.0]])
    r = label_regions(props, GT, GT_LABELS, ignore)
    # gt0, gt2 join as positives; gt1 (difficult) does not.
    assert r.boxes.shape[0] == 5
    # IoU 0.9 with the difficult box -> ignored; IoU 0.25 with it -> background; IoU 0.9 with gt0 -> class 3.
    assert r.labels.tolist() == [4, 1, -1, 0, 4]


def test_no_ground_truth_and_bg_lower_bound():
    props = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]])
    r = label_regions(props, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long))
    assert r.labels.tolist() == [0, 0] and r.gt_index.tolist() == [-1, -1]
    r = label_regions(props, GT[:1], GT_LABELS[:1], bg_iou_lo=0.1, add_gt=False)
    # IoU 1 -> fg; IoU 25/175 = 0.14 -> bg
    assert r.labels.tolist() == [4, 0]
    r = label_regions(props[1:], GT[:1], GT_LABELS[:1], bg_iou_lo=0.2, add_gt=False)
    assert r.labels.tolist() == [-1]
    empty = label_regions(torch.zeros((0, 4)), torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long))
    assert len(empty) == 0


def test_bbox_targets_match_rcnn_formulas_and_invert():
    p = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # centre (20, 40), size 20 x 40
    g = torch.tensor([[12.0, 18.0, 36.0, 58.0]])  # centre (24, 38), size 24 x 40
    t = encode_boxes(p, g, std=(1, 1, 1, 1))
    assert t[0].tolist() == pytest.approx([4 / 20, -2 / 40, math.log(24 / 20), 0.0])
    t = encode_boxes(p, g)
    assert t[0].tolist() == pytest.approx([2.0, -0.5, math.log(1.2) / 0.2, 0.0])
    assert torch.allclose(decode_boxes(p, t), g, atol=1e-4)
    per_class = decode_boxes(p, torch.stack([t, torch.zeros_like(t)], 1))  # N x 2 classes x 4
    assert torch.allclose(per_class[:, 0], g, atol=1e-4) and torch.allclose(per_class[:, 1], p)


def _regions(n_images, fg_per_image, bg_per_image):
    out = []
    for i in range(n_images):
        props = [[0.0, 0.0, 10.0, 10.0]] * fg_per_image + [[100.0, 100.0, 110.0, 110.0]] * bg_per_image
        gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
        out.append(label_regions(torch.tensor(props).reshape(-1, 4), gt, torch.tensor([i % 2]), add_gt=False))
    return out


def test_sampler_32_fg_96_bg_across_images_and_deterministic():
    regions = _regions(10, 20, 50)
    s = RegionSampler(regions, batch_size=128, fg_fraction=0.25, seed=3)
    assert (s.num_fg, s.num_bg) == (200, 500)
    assert s.batches_per_epoch() == math.ceil(200 / 32)
    batches = s.epoch(0)
    seen_fg = set()
    for b in batches:
        labels = torch.stack([regions[i].labels[j] for i, j in b.tolist()])
        assert b.shape == (128, 2)
        assert int((labels > 0).sum()) == 32 and int((labels == 0).sum()) == 96
        assert len(set(b[:, 0].tolist())) > 1  # drawn across images
        seen_fg |= {tuple(x) for x in b[:32].tolist()}
    assert len(seen_fg) == 200  # one epoch sees every foreground region
    assert all(torch.equal(a, b) for a, b in zip(batches, s.epoch(0)))
    assert not all(torch.equal(a, b) for a, b in zip(batches, s.epoch(1)))


def test_sampler_few_foreground_and_sharding():
    regions = _regions(2, 5, 200)
    s = RegionSampler(regions, batch_size=128, seed=0)
    b = s.epoch(0, num_batches=3)[0]
    labels = torch.stack([regions[i].labels[j] for i, j in b.tolist()])
    assert int((labels > 0).sum()) == 10 and int((labels == 0).sum()) == 118  # background fills in
    shards = [RegionSampler.shard(b, r, 2) for r in range(2)]
    assert sum(len(x) for x in shards) == 128
    assert {tuple(x) for sh in shards for x in sh.tolist()} == {tuple(x) for x in b.tolist()}
    only_bg = RegionSampler(_regions(2, 0, 10), batch_size=8)
    assert only_bg.epoch(0, 1)[0].shape == (8, 2)
    with pytest.raises(ValueError):
        RegionSampler([label_regions(torch.zeros((0, 4)), torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long))])
