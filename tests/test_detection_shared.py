"""Shared-feature (Fast R-CNN style) detection: backbone split, region pooling against a hand-written reference,
multi-scale assignment, image-centric training and loading of classification weights."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gdet.backbones import build_backbone, list_backbones
from gdet.detection.labels import decode_boxes
from gdet.detection.shared import (SharedDetectorNet, distillation_loss, rescale_image, sample_image_regions,
                                   shared_loss,
                                   shared_stage, split_backbone)
from gdet.engine.checkpoint import save_checkpoint
from gdet.errors import GdetError
from helpers_detection import make_voc, save_detector, tiny_detector


def _lively(bb: nn.Module) -> nn.Module:
    """Re-initialise so that activations keep their scale through the network (torchvision's std-0.01 init makes
    GoogLeNet-BN's logits ~1e-12 at random init, which any comparison would pass), with non-trivial batch-norm
    statistics; returns the network in eval mode."""
    g = torch.Generator().manual_seed(7)
    for m in bb.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.1, generator=g)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
    return bb.eval()


def _bilinear(feat: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """One bilinear sample of ``feat`` (C x H x W) at continuous (y, x), torchvision roi_align's border rule:
    zero beyond one pixel outside, clamped to the border pixel within it."""
    c, h, w = feat.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return feat.new_zeros(c)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feat[:, y0, x0] + (1 - ly) * lx * feat[:, y0, x1]
            + ly * (1 - lx) * feat[:, y1, x0] + ly * lx * feat[:, y1, x1])


def _ref_pool(feat: torch.Tensor, box, scale: float, size: int, ratio: int) -> torch.Tensor:
    """Average of ``ratio x ratio`` bilinear samples per bin of a ``size x size`` grid over ``box`` (pixel-corner
    convention: feature cell i covers [i, i+1) after scaling, so its centre is at i + 0.5)."""
    x1, y1, x2, y2 = (float(v) * scale - 0.5 for v in box)
    bw, bh = (x2 - x1) / size, (y2 - y1) / size
    out = feat.new_zeros((feat.shape[0], size, size))
    for py in range(size):
        for px in range(size):
            acc = feat.new_zeros(feat.shape[0])
            for iy in range(ratio):
                for ix in range(ratio):
                    acc += _bilinear(feat, y1 + py * bh + (iy + 0.5) * bh / ratio,
                                     x1 + px * bw + (ix + 0.5) * bw / ratio)
            out[:, py, px] = acc / (ratio * ratio)
    return out


def _stage_output(bb, x: torch.Tensor, stage: str) -> torch.Tensor:
    """The stage's output taken with a forward hook during the backbone's own forward pass."""
    got = {}
    handle = getattr(bb, stage).register_forward_hook(lambda m, i, o: got.setdefault("x", o))
    with torch.no_grad():
        bb.forward_features(x)
    handle.remove()
    return got["x"]


def _ref_rest(bb, x: torch.Tensor) -> torch.Tensor:
    """Both GoogLeNets after inception 4e, written out: max-pool, 5a, 5b, then the classifier head."""
    pool = bb.pool4 if hasattr(bb, "pool4") else bb.maxpool4
    return bb.forward_head(bb.inception5b(bb.inception5a(pool(x))))


@pytest.mark.parametrize("name", list_backbones())
def test_split_reproduces_the_network(name):
    bb = _lively(build_backbone(name, num_classes=3))
    split = split_backbone(bb)
    info = shared_stage(bb)
    assert info["stride"] == 16 and split.stage == info["name"] and split.channels == info["channels"]
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        feat = split.trunk(x)
        ref_feat = _stage_output(bb, x, split.stage)
        assert feat.shape[1] == info["channels"]
        torch.testing.assert_close(feat, ref_feat, rtol=0, atol=0)
        logits = bb(x)
        assert logits.abs().max() > 0.1
        torch.testing.assert_close(bb.forward_head(split.rest(feat)), logits, rtol=1e-5, atol=1e-5)


def test_split_shares_parameters_and_gradients():
    bb = build_backbone("googlenet_tv", num_classes=3, aux_logits=False)
    split = split_backbone(bb)
    assert {id(p) for p in split.trunk.parameters()} | {id(p) for p in split.rest.parameters()} <= \
        {id(p) for p in bb.parameters()}
    bb.forward_head(split.rest(split.trunk(torch.randn(2, 3, 64, 64)))).sum().backward()
    assert bb.conv1.conv.weight.grad.abs().sum() > 0 and bb.inception5b.branch1.conv.weight.grad.abs().sum() > 0
    bb.eval()  # the split follows the backbone's mode: batch norm now uses running statistics
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(split.trunk(x), _stage_output(bb, x, split.stage), rtol=0, atol=0)


def test_bad_stage_is_one_line_error():
    bb = build_backbone("googlenet", num_classes=3, aux_logits=False)
    with pytest.raises(GdetError, match="no stage 'inception9z'; its stages: conv3, inception3b"):
        split_backbone(bb, "inception9z")
    with pytest.raises(GdetError, match="scales"):
        SharedDetectorNet(bb, scales=(), pooled_size=4)
    # R-CNN mode's crop size sets what the remaining stages expect: 4e is 4 x 4 at 64 px (64 / 16).
    assert SharedDetectorNet(bb, input_size=64).pooled_size == 4


class _SkipNet(nn.Module):
    """A toy network whose last stage also reads a map from before the stride-16 stage: no split exists there."""

    feature_info = [{"name": "s16", "channels": 4, "stride": 16}, {"name": "s32", "channels": 4, "stride": 32}]

    def __init__(self):
        super().__init__()
        self.s16 = nn.Conv2d(3, 4, 3, stride=16)
        self.s32 = nn.Conv2d(4, 4, 3, stride=2)

    def forward_features(self, x):
        return self.s32(self.s16(x)) + x.mean()


def test_split_refuses_a_skip_across_the_stage():
    with pytest.raises(GdetError, match="after 's16' also read .* computed before it"):
        split_backbone(_SkipNet())
    no16 = type("NoStride16", (nn.Module,), {"feature_info": [{"name": "a", "channels": 1, "stride": 8}]})()
    with pytest.raises(GdetError, match="'NoStride16' has no stride-16 stage"):
        split_backbone(no16)


@pytest.mark.parametrize("name,stage,size", [("googlenet", None, 4), ("googlenet_tv", None, 4),
                                             ("bn_inception", None, 4), ("googlenet", "inception5b", 2)])
def test_whole_image_region_is_the_full_network(name, stage, size):
    """At the network's own scale a region covering the whole image, pooled to the stage's size with one sample
    per bin, is exactly the stage map, so logits and box deltas equal the plain network's."""
    bb = _lively(build_backbone(name, num_classes=4, aux_logits=False))
    head = nn.Linear(bb.out_channels, 12)
    net = SharedDetectorNet(bb, head, stage=stage, scales=(64,), max_size=64, pooled_size=size,
                            sampling_ratio=1).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = net(x, [torch.tensor([[0.0, 0.0, 64.0, 64.0]])])
        feats = bb.forward_features(x)
        assert bb(x).abs().max() > 0.1
        torch.testing.assert_close(out.logits, bb(x), rtol=1e-5, atol=1e-5)
        ref_deltas = head(feats.mean((2, 3))).view(1, 3, 4)
        torch.testing.assert_close(out.bbox_deltas, ref_deltas, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["googlenet", "googlenet_tv"])
def test_regions_match_a_hand_written_reference(name):
    bb = _lively(build_backbone(name, num_classes=3, aux_logits=False))
    net = SharedDetectorNet(bb, scales=(96,), max_size=128, sampling_ratio=2).eval()
    assert net.pooled_size == 14 and net.stage == "inception4e" and net.stride == 16  # 4e at 224 px
    image = torch.randn(3, 80, 112)
    boxes = torch.tensor([[4.0, 6.0, 60.0, 70.0],  # inside
                          [50.5, 10.25, 111.0, 79.0],  # to the borders
                          [-12.0, -8.0, 30.0, 20.0],  # partly outside
                          [33.0, 40.0, 36.0, 42.0]])  # smaller than one feature cell
    with torch.no_grad():
        got = net([image], [boxes]).logits
        # 96 / 80 = 1.2 would make the long side 134 > 128, so the cap wins: 128 / 112.
        scale = 128 / 112
        resized = F.interpolate(image[None], size=(round(80 * scale), 128), mode="bilinear", align_corners=False)
        assert resized.shape[-2:] == (91, 128)
        fmap = _stage_output(bb, resized, "inception4e")[0]  # 832 x 6 x 8
        sx, sy = 128 / 112, 91 / 80
        ref = []
        for b in boxes.tolist():
            # Scale x and y by their own factors, then map pixels to the stride-16 map.
            b = [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]
            ref.append(_ref_pool(fmap, b, 1 / 16, 14, 2))
        ref = _ref_rest(bb, torch.stack(ref))
    assert ref.abs().max() > 0.1 and (ref[0] - ref[1]).abs().max() > 0.01
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_multi_scale_pools_each_region_at_its_scale():
    """Each region comes from the scale where its area is closest to 224 x 224 pixels."""
    bb = _lively(build_backbone("googlenet", num_classes=3, aux_logits=False))
    kw = dict(max_size=None, pooled_size=6)
    both = SharedDetectorNet(bb, scales=(100, 400), **kw).eval()
    small = SharedDetectorNet(bb, scales=(100,), **kw).eval()
    large = SharedDetectorNet(bb, scales=(400,), **kw).eval()
    image = torch.randn(3, 200, 200)
    big_box, small_box = torch.tensor([[0.0, 0.0, 200.0, 200.0]]), torch.tensor([[70.0, 80.0, 130.0, 140.0]])
    with torch.no_grad():
        got = both([image], [torch.cat([big_box, small_box])]).logits
        # Whole image: 100^2 px at scale 100 vs 400^2 at 400; the 60-px box: 30^2 vs 120^2 (224^2 = 50176).
        torch.testing.assert_close(got[0:1], small([image], [big_box]).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1:2], large([image], [small_box]).logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got[1:2], small([image], [small_box]).logits, atol=1e-4)
    # At inference the trunk runs at the scales some region is pooled from, and only at those.
    sizes = []
    handle = bb.inception4e.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    with torch.no_grad():
        both([image], [torch.cat([big_box, small_box])])
        assert sorted(sizes) == [6, 25]  # the 4e map at 100 and 400 px
        sizes.clear()
        both([image], [big_box])
        assert sizes == [6]
        assert both.needed_scales(image, small_box) == [400]
        sizes.clear()
        # In training each image runs the trunk at one scale drawn at random ...
        both.train()
        torch.manual_seed(0)  # the draw uses torch's RNG: this seed gives both scales within 6 draws
        for _ in range(6):
            both([image], [big_box])
        assert len(sizes) == 6 and set(sizes) == {6, 25}
        # ... or, with train_pyramid, as at inference: every region from its own scale.
        sizes.clear()
        both.train_pyramid = True
        for boxes in (big_box, small_box, torch.cat([big_box, small_box])):
            both([image], [boxes])
        assert sizes == [6, 25, 6, 25]
    handle.remove()


def test_rescale_image_sides_and_factors():
    img = torch.rand(3, 480, 640)
    out, (fx, fy) = rescale_image(img, 600, 1000)
    assert out.shape == (3, 600, 800) and (fx, fy) == (1.25, 1.25)
    out, (fx, fy) = rescale_image(torch.rand(3, 100, 500), 600, 1000)  # capped by the long side
    assert out.shape == (3, 200, 1000) and fx == 2.0 and fy == 2.0
    same, f = rescale_image(img, 480, None)
    assert same is img and f == (1.0, 1.0)


def test_empty_and_chunked_batches():
    bb = build_backbone("googlenet", num_classes=3, aux_logits=False).eval()
    net = SharedDetectorNet(bb, nn.Linear(1024, 8), scales=(64,), max_size=64, pooled_size=4, chunk_size=3).eval()
    one = SharedDetectorNet(bb, net.bbox_head, scales=(64,), max_size=64, pooled_size=4, chunk_size=100).eval()
    imgs = torch.randn(3, 3, 64, 64)
    boxes = [torch.tensor([[0.0, 0, 30, 30], [10, 10, 60, 50]]), torch.zeros((0, 4)),
             torch.tensor([[5.0, 5, 20, 40], [0, 0, 64, 64], [30, 2, 63, 20], [1, 1, 9, 9]])]
    with torch.no_grad():
        a, b = net(imgs, boxes), one(imgs, boxes)
        assert a.logits.shape == (6, 3) and a.bbox_deltas.shape == (6, 2, 4)
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.bbox_deltas, b.bbox_deltas, rtol=1e-5, atol=1e-5)
        empty = net(imgs[:1], [torch.zeros((0, 4))])
    assert empty.logits.shape == (0, 3) and empty.bbox_deltas.shape == (0, 2, 4)
    probs, deltas = net.score_regions(torch.rand(3, 50, 70), torch.zeros((0, 4)))
    assert probs.shape == (0, 3) and deltas.shape == (0, 2, 4)
    probs, deltas = net.score_regions(torch.rand(3, 50, 70), boxes[2])
    torch.testing.assert_close(probs.sum(1), torch.ones(4))


def _scene(g: torch.Generator, size: int = 96):
    """A grey noisy image with one red (class 0) or blue (class 1) square; returns image, gt boxes, gt labels."""
    img = 0.5 + 0.1 * torch.randn((3, size, size), generator=g)
    cls = int(torch.randint(2, (1,), generator=g))
    s = int(torch.randint(28, 48, (1,), generator=g))
    x0, y0 = (int(v) for v in torch.randint(0, size - s, (2,), generator=g))
    img[:, y0:y0 + s, x0:x0 + s] = torch.tensor([0.9, 0.1, 0.1] if cls == 0 else [0.1, 0.1, 0.9])[:, None, None]
    return img.clamp(0, 1), torch.tensor([[x0, y0, x0 + s, y0 + s]], dtype=torch.float32), torch.tensor([cls])


def _proposals(g: torch.Generator, gt: torch.Tensor, size: int = 96) -> torch.Tensor:
    jitter = gt.repeat(12, 1) + torch.randn((12, 4), generator=g) * 6
    xy = torch.rand((24, 2), generator=g) * (size - 16)
    wh = 8 + torch.rand((24, 2), generator=g) * 40
    rand = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
    return torch.cat([jitter, rand]).clamp(0, size)


def test_sample_image_regions_is_image_centric_fast_rcnn():
    g = torch.Generator().manual_seed(1)
    _, gt, lab = _scene(g)
    props = _proposals(g, gt)
    s = sample_image_regions(props, gt, lab, regions=16, fg_fraction=0.25, seed=3)
    assert s["boxes"].shape == (16, 4) and int((s["labels"] > 0).sum()) == 4
    assert set(s["labels"].tolist()) <= {0, int(lab) + 1}
    from torchvision.ops import box_iou
    iou = box_iou(s["boxes"], gt)[:, 0]
    assert bool((iou[s["labels"] > 0] >= 0.5).all())
    bg = s["labels"] == 0
    assert bool(((iou[bg] >= 0.1) & (iou[bg] < 0.5)).all())  # Fast R-CNN's background range
    use = s["bbox_use"]
    assert bool(use.any()) and bool((iou[use] > 0.5).all())
    torch.testing.assert_close(decode_boxes(s["boxes"][use], s["bbox_targets"][use]), gt.expand(int(use.sum()), 4),
                               rtol=1e-4, atol=1e-3)
    same = sample_image_regions(props, gt, lab, regions=16, fg_fraction=0.25, seed=3)
    assert torch.equal(same["boxes"], s["boxes"])


def test_short_training_lowers_the_loss():
    g = torch.Generator().manual_seed(0)
    scenes = [_scene(g) for _ in range(4)]
    props = [_proposals(g, gt) for _, gt, _ in scenes]
    bb = build_backbone("googlenet", num_classes=3, aux_logits=False)
    net = SharedDetectorNet(bb, nn.Linear(1024, 8), scales=(96,), max_size=96, pooled_size=4)
    imgs = [bb.normalize(im[None])[0] for im, _, _ in scenes]
    targets = [{"boxes": gt, "labels": lab} for _, gt, lab in scenes]

    def eval_loss():
        net.eval()
        with torch.no_grad():
            out = shared_loss(net, imgs, targets, props, regions_per_image=32, seed=0)
        net.train()
        return float(out["loss"])

    before = eval_loss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    for step in range(12):
        pair = [(2 * step) % 4, (2 * step + 1) % 4]  # 2 images x 16 regions per step
        out = shared_loss(net, [imgs[i] for i in pair], [targets[i] for i in pair], [props[i] for i in pair],
                          regions_per_image=16, seed=step + 1)
        assert out["num_regions"] == 32 and out["num_fg"] == 8 and "loss_bbox" in out
        opt.zero_grad()
        out["loss"].backward()
        if step == 0:
            assert bb.conv1.conv.weight.grad.abs().sum() > 0  # the trunk learns through roi_align
            assert net.bbox_head.weight.grad.abs().sum() > 0
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)


def test_distillation_loss_is_hintons_softened_kl():
    """KL(teacher || student) of both distributions at temperature T, times T^2, against a sum written out from
    the definition; zero when the student already predicts the teacher's distribution."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g)
    teacher = torch.softmax(2.0 * torch.randn(6, 4, generator=g), 1)
    for t in (1.0, 2.0, 4.0):
        ref = 0.0
        for i in range(6):
            q = [float(teacher[i, c]) ** (1 / t) for c in range(4)]
            q = [v / sum(q) for v in q]
            e = [math.exp(float(z[i, c]) / t) for c in range(4)]
            p = [v / sum(e) for v in e]
            ref += sum(qc * math.log(qc / pc) for qc, pc in zip(q, p)) / 6
        assert float(distillation_loss(z, teacher, t)) == pytest.approx(t * t * ref, rel=1e-5)
        same = torch.log(teacher) + 3.0  # the teacher's logits up to a constant: the same distribution at any T
        assert float(distillation_loss(same, teacher, t)) == pytest.approx(0.0, abs=1e-6)


def test_shared_loss_with_a_teacher_mixes_cross_entropy_and_distillation():
    """shared_loss(teacher=...) = (1 - w) CE + w KD on the same regions; the teacher is asked for exactly the
    sampled regions of each image; with w = 1 the student follows the teacher, not the labels."""
    g = torch.Generator().manual_seed(1)
    scenes = [_scene(g) for _ in range(2)]
    props = [_proposals(g, gt) for _, gt, _ in scenes]
    bb = build_backbone("googlenet", num_classes=3, aux_logits=False)
    net = SharedDetectorNet(bb, None, scales=(96,), max_size=96, pooled_size=4).eval()
    imgs = [bb.normalize(im[None])[0] for im, _, _ in scenes]
    targets = [{"boxes": gt, "labels": lab} for _, gt, lab in scenes]
    asked = []

    def teacher(i, boxes):  # a fixed preference for class 2, whatever the region
        asked.append((i, boxes.clone()))
        return torch.tensor([0.1, 0.2, 0.7]).expand(boxes.shape[0], 3)

    with torch.no_grad():
        plain = shared_loss(net, imgs, targets, props, regions_per_image=16, seed=5)
        mixed = shared_loss(net, imgs, targets, props, regions_per_image=16, seed=5, teacher=teacher,
                            distill_weight=0.25, distill_temperature=2.0)
        out = net(imgs, [b for _, b in asked])
    assert [i for i, _ in asked] == [0, 1] and sum(b.shape[0] for _, b in asked) == 32
    kd = distillation_loss(out.logits, torch.tensor([0.1, 0.2, 0.7]).expand(32, 3), 2.0)
    assert float(mixed["loss_distill"]) == pytest.approx(0.25 * float(kd), rel=1e-5)  # weighted, as logged
    assert float(mixed["loss_cls"]) == pytest.approx(float(plain["loss_cls"]), rel=1e-6)
    assert float(mixed["loss"]) == pytest.approx(0.75 * float(plain["loss_cls"]) + 0.25 * float(kd), rel=1e-5)

    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for step in range(8):
        res = shared_loss(net, imgs, targets, props, regions_per_image=16, seed=step, teacher=teacher,
                          distill_weight=1.0, distill_temperature=1.0)
        opt.zero_grad()
        res["loss"].backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        probs = torch.softmax(net(imgs, [p[:20] for p in props]).logits, 1).mean(0)
    assert probs.argmax() == 2 and probs[2] > 0.5, probs  # the teacher's class, though most regions are background


def test_loads_classification_weights_with_the_same_keys(tmp_path):
    cls_net = _lively(build_backbone("googlenet_tv", num_classes=10, aux_logits=True))  # a "trained" network
    path = tmp_path / "cls.pth"
    save_checkpoint({"task": "classify", "backbone": "googlenet_tv", "model": cls_net.state_dict()}, path)

    bb = build_backbone("googlenet_tv", num_classes=10, aux_logits=True, weights=path)
    bb.reset_classifier(3)  # C + 1 outputs, as R-CNN mode starts
    net = SharedDetectorNet(bb, nn.Linear(1024, 8), scales=(64,), max_size=64, pooled_size=4)
    keys = set(net.state_dict())
    assert keys == {f"backbone.{k}" for k in cls_net.state_dict()} | {"bbox_head.weight", "bbox_head.bias"}
    ref = cls_net.eval()
    net.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.split.trunk(x), _stage_output(ref, x, "inception4e"), rtol=0, atol=0)

    # The detector's state dict round-trips strictly into a fresh shared network (a checkpoint of either mode).
    fresh_bb = build_backbone("googlenet_tv", num_classes=3, aux_logits=True)
    fresh = SharedDetectorNet(fresh_bb, nn.Linear(1024, 8), scales=(64,), max_size=64, pooled_size=4).eval()
    fresh.load_state_dict(net.state_dict(), strict=True)
    boxes = [torch.tensor([[0.0, 0.0, 40.0, 50.0], [10.0, 5.0, 64.0, 64.0]])]
    with torch.no_grad():
        a, b = net(x, boxes), fresh(x, boxes)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    torch.testing.assert_close(a.bbox_deltas, b.bbox_deltas, rtol=0, atol=0)


def test_speed_script_tiny():
    from click.testing import CliRunner

    from gdet.benchmarks.shared_speed import main

    args = ["--backbones", "googlenet", "--proposals", "6", "--width", "96", "--height", "64", "--scales", "64",
            "--max-size", "96", "--pooled-size", "4", "--rcnn-sample", "3", "--clock", "cpu"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    row = [line.split() for line in res.output.splitlines() if line.startswith("googlenet ")]
    assert len(row) == 1 and row[0][1] == "6" and row[0][3] == "3" and float(row[0][2]) > 0
    bad = CliRunner().invoke(main, ["--proposals", "many"])
    assert isinstance(bad.exception, GdetError) and "--proposals: expected a comma list" in str(bad.exception)
    if not torch.cuda.is_available():
        bad = CliRunner().invoke(main, [*args, "--device", "cuda"])
        assert isinstance(bad.exception, GdetError) and "no CUDA GPU" in str(bad.exception)


def test_modes_follow_the_backbone_and_are_restored():
    """A detector may hold the shared network outside its module tree (its state dict stays the R-CNN one): its
    train()/eval() then reach only the backbone, which is what the shared network follows."""
    bb = build_backbone("googlenet_tv", num_classes=3, aux_logits=False)
    holder = nn.Module()
    holder.backbone = bb
    holder.__dict__["shared"] = SharedDetectorNet(bb, scales=(64, 96), max_size=None, pooled_size=4, input_size=48)
    assert set(holder.state_dict()) == {f"backbone.{k}" for k in bb.state_dict()}
    sizes = []
    bb.inception4e.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    holder.eval()
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 64.0, 64.0]])  # nearest 48^2 px at scale 96, 64
    with torch.no_grad():
        holder.shared(torch.randn(1, 3, 64, 64), [boxes])
    assert sorted(sizes) == [4, 6]  # eval: the pyramid
    holder.train()
    bb.conv1.bn.eval()  # e.g. frozen batch norm
    sizes.clear()
    holder.shared.score_regions(torch.rand(3, 64, 64), boxes)
    assert sorted(sizes) == [4, 6]  # scoring is always in eval mode
    assert bb.training and bb.inception5b.training and not bb.conv1.bn.training  # modes restored
    sizes.clear()
    holder.shared(torch.randn(1, 3, 64, 64), [boxes])
    assert len(sizes) == 1  # training: one scale per image


def test_training_step_equals_rcnn_on_the_same_crops():
    """Each warped crop given as an image at its own size with a whole-image box makes shared mode compute R-CNN
    mode's network, so one training step of a shared-mode Detector (through ``Detector.train()``, which freezes
    batch norm with ``frozen_bn``, the fx split and roi_align's backward) must give R-CNN mode's loss and gradients
    with batch norm frozen the same way; and the optimizer must hold every parameter that receives a gradient."""
    import copy

    from gdet.detection.model import Detector
    from gdet.engine.optim import build_optimizer

    bb = _lively(build_backbone("googlenet_tv", num_classes=4, aux_logits=False, dropout=0.0))
    names = ["a", "b", "c"]
    ref = Detector(copy.deepcopy(bb), names, input_size=48, bbox_reg=True, mode="rcnn")
    det = Detector(bb, names, input_size=48, bbox_reg=True, mode="shared",
                   shared={"scales": [48], "max_size": None})
    det.bbox_head.load_state_dict(ref.bbox_head.state_dict())
    ref.double(), det.double()  # float64: the two paths sum in different orders; keep rounding out of the check
    assert det.shared_net.pooled_size == 3
    det.frozen_bn = True
    det.train()
    ref.train()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    g = torch.Generator().manual_seed(3)
    crops = torch.randn(6, 3, 48, 48, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 2])
    whole = torch.tensor([[0.0, 0.0, 48.0, 48.0]], dtype=torch.float64)

    def step(model, out):
        loss = F.cross_entropy(out.logits, labels) + out.bbox_deltas.square().mean()
        model.zero_grad()
        loss.backward()
        return loss

    loss = step(det, det(list(crops), [whole] * 6))
    ref_loss = step(ref, ref(crops))
    assert ref_loss > 0.5
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
    got = dict(det.named_parameters())
    for k, p in ref.named_parameters():
        assert p.grad is not None and got[k].grad is not None, k
        torch.testing.assert_close(got[k].grad, p.grad, rtol=1e-6, atol=1e-9, msg=k)
    assert all(not m.training for m in det.modules() if isinstance(m, nn.BatchNorm2d))
    held = {id(p) for grp in build_optimizer({"lr": 0.01, "weight_decay": 1e-4}, det).param_groups
            for p in grp["params"]}
    assert {id(p) for p in det.parameters() if p.grad is not None} <= held


def test_views_warp_is_a_shift_and_a_resize():
    from gdet.benchmarks.shared_views import warp

    img = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(0))
    moved = warp(img, 1.0, 1.0, 3.0, 2.0)[0]
    assert moved.shape == (3, 22, 27)
    torch.testing.assert_close(moved[:, 2:, 3:], img, rtol=0, atol=1e-6)
    assert moved[:, :2].abs().max() < 1e-5 and moved[:, :, :3].abs().max() < 1e-5  # grid rounding only
    big = warp(img, 2.0, 2.0, 0.0, 0.0)[0]
    ref = F.interpolate(img[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
    assert big.shape == ref.shape
    torch.testing.assert_close(big[:, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], rtol=0, atol=1e-5)


def test_views_field_scene_and_shared_geometry():
    """On an image that is the crop itself surrounded by the mean colour, the field and scene views see the same
    canvas; the shared view at a box of the crop's area is shared mode at the image's own scale."""
    from gdet.benchmarks.shared_views import view_logits

    det = tiny_detector(num_classes=2, input_size=32).eval()  # context_pad 2: box [2, 2, 30, 30] -> [0, 0, 32, 32]
    net = SharedDetectorNet.from_detector(det).eval()
    m = 16 * math.ceil(32 / 2 / 16)
    mean01 = torch.tensor(det.backbone.mean).view(3, 1, 1) / det.backbone.input_scale  # normalises to 0
    img = mean01.expand(3, 32 + 2 * m, 32 + 2 * m).clone()
    img[:, m:m + 32, m:m + 32] = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    box = torch.tensor([[m + 2.0, m + 2.0, m + 30.0, m + 30.0]])
    torch.testing.assert_close(det.normalize(img[None])[0, :, 0, 0], torch.zeros(3), rtol=0, atol=1e-6)
    out = view_logits(det, net, img, box)
    torch.testing.assert_close(out["scene"], out["field"], rtol=0, atol=1e-5)
    whole = torch.tensor([[m + 0.0, m + 0.0, m + 32.0, m + 32.0]])  # 32 x 32 = the crop's area: scale 1
    probs, _ = SharedDetectorNet.from_detector(det, scales=[32 + 2 * m], max_size=None).score_regions(img, whole)
    torch.testing.assert_close(F.softmax(view_logits(det, net, img, whole)["shared"], 1), probs, rtol=0, atol=1e-5)


def test_views_script_tiny(tmp_path):
    from click.testing import CliRunner

    from gdet.benchmarks.shared_views import main

    res = CliRunner().invoke(main, ["--limit", "3", "--threads", "1"])
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line.split() for line in res.output.splitlines()[2:]}
    assert list(rows) == ["rcnn", "field", "scene", "shared"] and rows["rcnn"][2] == "1.00x"
    assert all(0 <= float(r[1]) <= 1 for r in rows.values())
    from gdet.detection.model import Detector

    rcnn = tiny_detector()
    det = Detector(rcnn.backbone, rcnn.class_names, input_size=rcnn.input_size, mode="shared")
    path = save_detector(det, tmp_path / "shared.pth")
    bad = CliRunner().invoke(main, ["--weights", str(path), "--limit", "1"])
    assert isinstance(bad.exception, GdetError) and "a shared-mode detector" in str(bad.exception)
    voc = make_voc(tmp_path)  # classes square, disc: the tiny detector's
    rcnn_path = save_detector(rcnn, tmp_path / "rcnn.pth")
    res = CliRunner().invoke(main, ["--weights", str(rcnn_path), "--data", str(voc), "--scales", "72"])
    assert res.exit_code == 0, res.output
    assert "4 boxes in 2 images" in res.output and res.output.splitlines()[-1].split()[0] == "pyramid"
    other = save_detector(tiny_detector(num_classes=3), tmp_path / "other.pth")
    bad = CliRunner().invoke(main, ["--weights", str(other), "--data", str(voc)])
    assert isinstance(bad.exception, GdetError) and "are not the detector's" in str(bad.exception)


def test_pool_context_pools_rcnn_crops_dilated_box_and_survives_a_round_trip(tmp_path):
    """pool_context: each proposal is pooled dilated as R-CNN's crop is (context_pad pixels at input_size): the
    same logits as the plain shared network on boxes dilated by R-CNN's own crop code; the setting is saved."""
    from gdet.detection.crops import context_boxes
    from gdet.detection.model import build_detector, load_detector

    torch.manual_seed(0)
    common = dict(input_size=48, context_pad=6, bbox_reg=True, backbone_kwargs={"aux_logits": False})
    det = build_detector("googlenet_tv", ["a", "b"], mode="shared", shared={"scales": [64, 96], "max_size": None,
                                                                            "pool_context": True}, **common).eval()
    _lively(det.backbone)
    nn.init.normal_(det.bbox_head.weight, std=0.1)
    plain = build_detector("googlenet_tv", ["a", "b"], mode="shared", shared={"scales": [64, 96], "max_size": None},
                           **common).eval()
    plain.load_state_dict(det.state_dict())
    assert det.shared_net.context_pad == 6 and plain.shared_net.context_pad == 0
    assert "context 6 px" in det.describe_mode() and "context" not in plain.describe_mode()
    image = torch.rand(3, 70, 90)
    boxes = torch.tensor([[5.0, 8.0, 40.0, 60.0], [30.0, 2.0, 88.0, 69.0], [10.0, 10.0, 22.0, 18.0]])
    p_ctx, d_ctx = det.score_regions(image, boxes)
    p_ref, d_ref = plain.score_regions(image, context_boxes(boxes, 48, 6))
    assert p_ctx.std(0).max() > 1e-3 and d_ctx.abs().max() > 1e-3  # outputs that differ between regions
    torch.testing.assert_close(p_ctx, p_ref, rtol=0, atol=0)
    torch.testing.assert_close(d_ctx, d_ref, rtol=0, atol=0)
    p_plain, _ = plain.score_regions(image, boxes)
    assert (p_plain - p_ctx).abs().max() > 1e-3  # the context changes what is pooled
    back = load_detector(save_detector(det, tmp_path / "ctx.pth"))
    assert back.shared_settings()["pool_context"] and back.shared_net.context_pad == 6
    torch.testing.assert_close(back.score_regions(image, boxes)[0], p_ctx, rtol=1e-6, atol=1e-6)
    with pytest.raises(GdetError, match="context_pad"):
        SharedDetectorNet(build_backbone("googlenet_tv", num_classes=3, aux_logits=False), input_size=48,
                          context_pad=24)
