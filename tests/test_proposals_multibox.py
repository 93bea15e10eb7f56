"""MultiBox: k-means priors, bipartite matching, loss, training, inference, the training tool, `combined`."""
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gdet.backbones.base import Backbone
from gdet.errors import CheckpointError, GdetError
from gdet.proposals import build_proposer, load_proposals
from gdet.proposals.multibox import (ConvMultiBoxHead, MultiBox, MultiBoxProposer, encode_targets, grid_priors,
                                     kmeans_priors, match_priors, multibox_loss, postprocess)
from helpers_proposals import blob_image, write_voc

ROOT = Path(__file__).resolve().parents[1]


class TinyBackbone(Backbone):
    """Two strided convolutions: enough to test the head and the loss quickly."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.out_channels, self.stride, self.feature_info = 16, 4, [{"name": "body", "channels": 16, "stride": 4}]

    def forward_features(self, x):
        return self.body(x)


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9], [0.0, 0.4, 0.2, 1.0]])
    pts = np.concatenate([c + rng.normal(0, 0.01, (50, 4)) for c in centres])
    priors = kmeans_priors(torch.tensor(pts), 3)
    assert priors.shape == (3, 4)
    # Each prior is within noise of one true centre, one prior per centre.
    d = torch.cdist(priors.double(), torch.tensor(centres))
    assert sorted(d.argmin(1).tolist()) == [0, 1, 2] and float(d.min(1).values.max()) < 0.01
    area = (priors[:, 2] - priors[:, 0]) * (priors[:, 3] - priors[:, 1])
    assert bool((area[1:] >= area[:-1]).all())  # sorted small to large
    few = kmeans_priors(torch.tensor(centres[:2]), 5)
    assert few.shape == (5, 4) and bool(((few >= 0) & (few <= 1)).all())
    with pytest.raises(GdetError):
        kmeans_priors(torch.zeros((0, 4)), 3)


def _brute_force_match(priors, gt):
    """Every injective assignment of the smaller side into the larger; the cheapest total L2^2."""
    k, g = priors.shape[0], gt.shape[0]
    cost = ((gt[:, None, :] - priors[None]) ** 2).sum(-1)
    best, best_pairs = np.inf, None
    if g <= k:
        for perm in itertools.permutations(range(k), g):
            c = sum(cost[j, perm[j]] for j in range(g))
            if c < best - 1e-12:
                best, best_pairs = c, [(perm[j], j) for j in range(g)]
    else:
        for perm in itertools.permutations(range(g), k):
            c = sum(cost[perm[i], i] for i in range(k))
            if c < best - 1e-12:
                best, best_pairs = c, [(i, perm[i]) for i in range(k)]
    return best, best_pairs


@pytest.mark.parametrize("k,g,seed", [(5, 3, 0), (4, 4, 1), (3, 5, 2), (6, 1, 3), (6, 4, 4)])
def test_matching_is_optimal_against_brute_force(k, g, seed):
    rng = np.random.default_rng(seed)
    priors, gt = rng.random((k, 4)), rng.random((g, 4))
    p_idx, g_idx = match_priors(torch.tensor(priors), torch.tensor(gt))
    assert len(p_idx) == min(k, g) and len(set(p_idx.tolist())) == len(p_idx) and len(set(g_idx.tolist())) == len(g_idx)
    got = float(((priors[p_idx.numpy()] - gt[g_idx.numpy()]) ** 2).sum())
    ref, _ = _brute_force_match(priors, gt)
    assert got == pytest.approx(ref, abs=1e-9)


def test_matching_prefers_global_optimum_over_greedy():
    # Greedy would give gt 0 its nearest prior 0 and leave gt 1 far away; the optimum swaps them.
    priors = torch.tensor([[0.0, 0, 0, 0], [1.0, 0, 0, 0]])
    gt = torch.tensor([[0.4, 0, 0, 0], [-0.5, 0, 0, 0]])
    p_idx, g_idx = match_priors(priors, gt)
    assert dict(zip(g_idx.tolist(), p_idx.tolist())) == {0: 1, 1: 0}
    target, matched = encode_targets(priors, torch.zeros((0, 4)))
    assert not matched.any() and torch.equal(target, priors)


def test_grid_priors_layout_matches_the_conv_head():
    rng = np.random.default_rng(0)
    # Two box shapes (0.1 x 0.2 and 0.5 x 0.4) with small noise, anywhere in the image.
    wh = np.concatenate([[0.1, 0.2] + rng.normal(0, 1e-3, (40, 2)), [0.5, 0.4] + rng.normal(0, 1e-3, (40, 2))])
    xy = rng.uniform(0, 0.5, wh.shape)
    pri = grid_priors(torch.tensor(np.concatenate([xy, xy + wh], 1)), (3, 4), anchors=2)
    assert pri.shape == (3 * 4 * 2, 4)
    head = ConvMultiBoxHead(8, anchors=2, hidden=4)
    nn.init.normal_(head.out.weight)
    nn.init.normal_(head.out.bias)
    feats = torch.randn(2, 8, 3, 4)
    delta, logits = head(feats)
    raw = head.out(torch.relu(head.conv(feats)))  # N x (A*5) x rows x cols
    for r, c, a in itertools.product(range(3), range(4), range(2)):
        i = (r * 4 + c) * 2 + a
        # Output i is anchor a at cell (r, c) ...
        assert torch.equal(delta[:, i], raw[:, a * 5: a * 5 + 4, r, c]) and torch.equal(logits[:, i], raw[:, a * 5 + 4, r, c])
        # ... and prior i is centred on that cell with shape a (small first).
        cx, cy = (pri[i, 0] + pri[i, 2]) / 2, (pri[i, 1] + pri[i, 3]) / 2
        assert float(cx) == pytest.approx((c + 0.5) / 4, abs=1e-6) and float(cy) == pytest.approx((r + 0.5) / 3, abs=1e-6)
        want = [0.1, 0.2] if a == 0 else [0.5, 0.4]
        assert (pri[i, 2:] - pri[i, :2]).tolist() == pytest.approx(want, abs=2e-3)
    model = MultiBox(TinyBackbone(), grid_priors(torch.tensor(np.concatenate([xy, xy + wh], 1)), (8, 8), 2),
                     hidden=4, kind="conv", anchors=2)
    boxes, logits = model(torch.rand(1, 3, 32, 32))  # TinyBackbone: stride 4, 8 x 8 cells
    assert boxes.shape == (1, 128, 4) and logits.shape == (1, 128)
    with pytest.raises(GdetError, match="input size it was trained at"):
        model(torch.rand(1, 3, 48, 48))
    with pytest.raises(GdetError, match="anchors per cell"):
        MultiBox(TinyBackbone(), torch.rand(5, 4), kind="conv", anchors=2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_matching_adds_overlapping_priors(seed):
    from torchvision.ops import box_iou

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 0.6, (30, 2))
    priors = torch.tensor(np.concatenate([xy, xy + rng.uniform(0.1, 0.4, (30, 2))], 1), dtype=torch.float32)
    gxy = rng.uniform(0, 0.6, (4, 2))
    gt = torch.tensor(np.concatenate([gxy, gxy + rng.uniform(0.1, 0.4, (4, 2))], 1), dtype=torch.float32)
    base_t, base_m = encode_targets(priors, gt)
    t, m = encode_targets(priors, gt, match_iou=0.4)
    iou = box_iou(priors, gt).numpy()
    for i in range(priors.shape[0]):  # reference, one prior at a time
        if base_m[i]:  # bipartite matches win
            assert m[i] and torch.equal(t[i], base_t[i])
        elif iou[i].max() >= 0.4:
            assert m[i] and torch.equal(t[i], gt[int(iou[i].argmax())])
        else:
            assert not m[i] and torch.equal(t[i], priors[i])
    assert int(m.sum()) >= int(base_m.sum()) == 4


def test_bipartite_match_wins_over_a_better_overlap():
    # Prior 0 overlaps gt 1 most (IoU 0.93 vs 0.74), but the optimal assignment (total L2^2 0.373 against
    # 0.501 the other way round) gives it gt 0; the assignment must not be overwritten by the IoU rule.
    priors = torch.tensor([[0.0, 0.0, 0.58, 0.58], [0.3, 0.3, 0.9, 0.9]])
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.6, 0.6]])
    t, m = encode_targets(priors, gt, match_iou=0.5)
    assert m.tolist() == [True, True]
    assert torch.equal(t[0], gt[0]) and torch.equal(t[1], gt[1])


def test_loss_against_hand_computed_value():
    pred = torch.tensor([[[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6]]])
    logits = torch.tensor([[2.0, -1.0]])
    target = torch.tensor([[[0.0, 0.1, 0.5, 0.7], [0.2, 0.2, 0.6, 0.6]]])
    matched = torch.tensor([[True, False]])
    loss, parts = multibox_loss(pred, logits, target, matched, alpha=0.3)
    loc = 0.5 * (0.1 ** 2 + 0.2 ** 2)  # only the matched output
    conf = np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))  # -log sigmoid(2) - log(1 - sigmoid(-1))
    assert float(parts["loc"]) == pytest.approx(loc, rel=1e-5)
    assert float(parts["conf"]) == pytest.approx(conf, rel=1e-5)
    assert float(loss) == pytest.approx(0.3 * loc + conf, rel=1e-5)
    # Two images: the mean over images.
    loss2, _ = multibox_loss(pred.repeat(2, 1, 1), logits.repeat(2, 1), target.repeat(2, 1, 1), matched.repeat(2, 1))
    assert float(loss2) == pytest.approx(float(loss), rel=1e-6)


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    gts = [torch.tensor(rng.uniform(0, 0.5, (2, 2)), dtype=torch.float32) for _ in range(4)]
    gts = [torch.cat([g, g + 0.3], 1) for g in gts]
    priors = kmeans_priors(torch.cat(gts), 6)
    model = MultiBox(TinyBackbone(), priors, hidden=16, grid=2)
    images = torch.rand(4, 3, 32, 32)
    targets = [encode_targets(priors, g) for g in gts]
    tb, tm = torch.stack([t[0] for t in targets]), torch.stack([t[1] for t in targets])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        boxes, logits = model(images)
        assert boxes.shape == (4, 6, 4) and logits.shape == (4, 6)
        loss, _ = multibox_loss(boxes, logits, tb, tm, alpha=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    # Every parameter got a gradient.
    assert all(p.grad is not None for p in model.parameters())


def test_postprocess_nms_topk_and_scaling():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.49], [0.5, 0.5, 1.2, 1.0], [0.1, 0.1, 0.101, 0.2]])
    logits = torch.tensor([3.0, 2.0, 1.0, 5.0])
    b, s = postprocess(boxes, logits, 200, 100, top_k=5, nms_iou=0.7, min_size=2)
    assert b.tolist() == [[0.0, 0.0, 100.0, 50.0], [100.0, 50.0, 200.0, 100.0]]
    assert s.tolist() == pytest.approx(torch.sigmoid(torch.tensor([3.0, 1.0])).tolist())
    b, _ = postprocess(boxes, logits, 200, 100, top_k=1, nms_iou=1.0, min_size=0)
    assert b.shape == (1, 4)


def test_googlenet_multibox_forward_any_size():
    from gdet.proposals.multibox import build_multibox

    m = build_multibox(backbone="googlenet", priors=torch.rand(7, 4)).eval()
    with torch.no_grad():
        boxes, logits = m(torch.zeros(2, 3, 64, 96))
    assert boxes.shape == (2, 7, 4) and logits.shape == (2, 7) and torch.isfinite(boxes).all()
    assert not hasattr(m.backbone, "aux1") or m.backbone.aux1 is None


def test_tile_regions_cover_the_image_with_the_asked_overlap():
    from gdet.proposals.multibox import tile_regions

    assert tile_regions(500, 375) == [(0, 0, 500, 375)]
    regs = tile_regions(500, 375, tiles=3, overlap=0.25)
    assert len(regs) == 10 and regs[0] == (0, 0, 500, 375)
    tiles = np.array(regs[1:])
    w, h = tiles[:, 2] - tiles[:, 0], tiles[:, 3] - tiles[:, 1]
    assert np.allclose(w, 500 * 0.4, atol=1) and np.allclose(h, 375 * 0.4, atol=1)  # 1 / (3 - 2 * 0.25)
    cover = np.zeros((375, 500), dtype=int)
    for x0, y0, x1, y1 in regs[1:]:
        cover[y0:y1, x0:x1] += 1
    assert cover.min() == 1 and cover.max() == 4  # every pixel seen; corners of four windows overlap
    # Horizontal neighbours share a quarter of a window.
    assert abs((tiles[0, 2] - tiles[1, 0]) - 0.25 * w[0]) <= 1
    # A tiny image keeps only non-empty windows.
    assert all(x1 > x0 and y1 > y0 for x0, y0, x1, y1 in tile_regions(2, 1, tiles=3))


class CentreBox(nn.Module):
    """A stand-in network: one box, the centre half of whatever window it sees, scored by its brightness."""

    num_priors = 1

    def normalize(self, x):
        return x

    def forward(self, x):
        n = x.shape[0]
        boxes = torch.tensor([0.25, 0.25, 0.75, 0.75]).expand(n, 1, 4)
        return boxes, (x.mean((1, 2, 3)) * 10 - 5).view(n, 1)


def test_tiles_map_each_window_back_and_rank_by_score():
    from gdet.proposals.multibox import tile_regions

    img = np.zeros((300, 400, 3), dtype=np.uint8)
    img[:150, 200:] = 60  # four quadrants of distinct brightness
    img[150:, :200] = 120
    img[150:, 200:] = 220
    p = MultiBoxProposer(CentreBox(), 64, tiles=2, tile_overlap=0.25, top_k=10, min_size=0)
    boxes, scores = p.propose(img)
    regs = tile_regions(400, 300, 2, 0.25)
    want = {(x0 + 0.25 * (x1 - x0), y0 + 0.25 * (y1 - y0), x0 + 0.75 * (x1 - x0), y0 + 0.75 * (y1 - y0)): img[y0:y1, x0:x1].mean()
            for x0, y0, x1, y1 in regs}
    order = sorted(want, key=want.get, reverse=True)  # brighter window first
    assert boxes.shape == (5, 4) and torch.allclose(boxes, torch.tensor(order), atol=1e-3)
    assert bool((scores[:-1] >= scores[1:]).all())
    one = MultiBoxProposer(CentreBox(), 64, tiles=1, min_size=0).propose(img)[0]
    assert torch.allclose(one, torch.tensor([[100.0, 75.0, 300.0, 225.0]]))
    with pytest.raises(GdetError, match="tiles"):
        MultiBoxProposer(CentreBox(), 64, tiles=0)
    tiny = MultiBoxProposer(CentreBox(), 64, tiles=3, min_size=0).propose(np.full((2, 3, 3), 90, np.uint8))[0]
    assert tiny.shape[1] == 4 and bool((tiny[:, 2] <= 3).all())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A MultiBox trained for one tiny epoch by the tool, then resumed for a second; and the same two epochs
    uninterrupted through the API."""
    from gdet.proposals.multibox_train import train

    tmp = tmp_path_factory.mktemp("mb")
    root = write_voc(tmp / "voc", n=4, split="train")
    (root / "ImageSets" / "Main" / "val.txt").write_text("img000\nimg001\n")
    cfg = tmp / "mb.yaml"
    text = ("backbone: googlenet\ninput_size: 64\nnum_priors: 8\nbatch_size: 2\nepochs: 1\nworkers: 0\n"
            "device: cpu\nthreads: 1\noptimizer: adamw\nlr: 1.0e-3\nema_decay: 0.5\n")
    cfg.write_text(text)
    args = [sys.executable, str(ROOT / "tools" / "train_multibox.py"), "--config", str(cfg), f"data={root}",
            f"work_dir={tmp / 'run'}"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env={"GDET_NO_PROGRESS": "1", **_env()})
    assert r.returncode == 0, r.stderr
    r2 = subprocess.run(args + ["epochs=2", f"resume={tmp / 'run' / 'last.pth'}"], capture_output=True, text=True,
                        cwd=ROOT, env={"GDET_NO_PROGRESS": "1", **_env()})
    assert r2.returncode == 0, r2.stderr
    import yaml

    straight = {**yaml.safe_load(text), "data": str(root), "epochs": 2, "work_dir": str(tmp / "straight")}
    train(straight)
    return tmp, root


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "GDET_NO_PROGRESS"}


def test_tool_trains_resumes_and_writes_outputs(trained):
    tmp, _ = trained
    run = tmp / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and "val_recall@100" in rows[0]
    assert {"train_loss", "train_loc", "train_conf", "lr", "train_images_per_s"} <= set(rows[0])
    assert (run / "curves.png").exists() and (run / "best.pth").exists() and (run / "config.yaml").exists()
    ck = torch.load(run / "last.pth", weights_only=True)
    assert ck["task"] == "multibox" and ck["priors"].shape == (8, 4) and ck["epoch"] == 2
    # The resumed run ends with exactly the weights (raw and averaged) of the uninterrupted one.
    ref = torch.load(tmp / "straight" / "last.pth", weights_only=True)
    assert ref["epoch"] == 2 and torch.equal(ref["priors"], ck["priors"])
    for part in ("model", "ema"):
        assert ref[part].keys() == ck[part].keys()
        for k, v in ref[part].items():
            assert torch.equal(v, ck[part][k]), (part, k)
    # best.pth holds the epoch of the best val recall, and last.pth says which one that is.
    recalls = [r["val_recall@100"] for r in rows]
    best = torch.load(run / "best.pth", weights_only=True)
    assert best["epoch"] == ck["best_epoch"] == 1 + recalls.index(max(recalls))
    assert ck["best_score"] == max(recalls) and ck["score_name"] == "val_recall@100"


def test_resume_that_changes_the_loss_restarts_best(trained, capsys):
    # Without validation best.pth is the epoch of the lowest training loss; alpha weighs the localisation term
    # of that loss, so a resume that changes it cannot compare the new epochs with the old ones.
    from gdet.proposals.multibox_train import train

    _, root = trained
    tmp = root.parent / "mb_alpha"
    base = {"backbone": "googlenet", "input_size": 64, "num_priors": 8, "batch_size": 2, "workers": 0,
            "device": "cpu", "threads": 1, "optimizer": "adamw", "lr": 1.0e-3, "data": str(root),
            "work_dir": str(tmp), "eval_every": 0}
    train({**base, "epochs": 1})
    capsys.readouterr()
    train({**base, "epochs": 2, "resume": str(tmp / "last.pth")})  # alpha unchanged: epoch 1 still competes
    assert "restarts" not in capsys.readouterr().out
    assert torch.load(tmp / "last.pth", weights_only=True)["score_name"] == "neg_train_loss"
    train({**base, "epochs": 3, "alpha": 3.0, "resume": str(tmp / "last.pth")})
    out = capsys.readouterr().out
    assert "alpha 0.3 → 3.0 changes what the training loss measures; best.pth restarts at epoch 3" in out
    assert torch.load(tmp / "best.pth", weights_only=True)["epoch"] == 3


def test_proposer_from_checkpoint_and_cli(trained):
    from click.testing import CliRunner

    from gdet.cli import main

    tmp, root = trained
    weights = tmp / "run" / "last.pth"
    p = build_proposer("multibox", weights=str(weights), top_k=5)
    img, _ = blob_image(0)
    boxes, scores = p.propose(img)
    assert 0 < boxes.shape[0] <= 5 and bool((scores[:-1] >= scores[1:]).all())
    assert bool((boxes[:, 2] <= img.shape[1]).all() and (boxes[:, 3] <= img.shape[0]).all())
    batch = p.propose_batch([img, img])
    assert torch.allclose(batch[1][0], boxes, atol=1e-4)
    tiled = build_proposer("multibox", weights=str(weights), top_k=5, tiles=2)
    tb, _ = tiled.propose(img)
    assert 0 < tb.shape[0] <= 5 and tiled.config()["tiles"] == 2
    assert bool((tb[:, 2] <= img.shape[1]).all() and (tb[:, 3] <= img.shape[0]).all() and (tb >= 0).all())
    assert build_proposer("combined", weights=str(weights), top_k=5, tiles=2).config()["multibox"]["tiles"] == 2
    c = build_proposer("combined", weights=str(weights), top_k=5)
    cb, cs = c.propose(img)
    ss_only, _ = build_proposer("ss", superpixel_scale=2).propose(img)
    assert cb.shape[0] <= boxes.shape[0] + ss_only.shape[0] and torch.equal(cb[: boxes.shape[0]], boxes)
    assert torch.unique(cb, dim=0).shape[0] == cb.shape[0]
    out = tmp / "mb.npz"
    r = CliRunner().invoke(main, ["proposals", "compute", "--data", str(root), "--split", "val", "--method",
                                  "multibox", "--proposal-weights", str(weights), "--out", str(out), "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert len(load_proposals(out)) == 2


def test_conv_head_trains_exports_and_proposes(tmp_path):
    """The convolutional head end to end: train() with IoU matching, fp16 export, proposer."""
    from gdet.export.checkpoint import export_checkpoint
    from gdet.proposals.multibox_train import train

    root = write_voc(tmp_path / "voc", n=4, split="train")
    (root / "ImageSets" / "Main" / "val.txt").write_text("img000\n")
    res = train({"data": str(root), "backbone": "googlenet", "input_size": 64, "head": "conv", "anchors": 3,
                 "match_iou": 0.5, "hidden": 16, "batch_size": 2, "epochs": 1, "workers": 0, "device": "cpu",
                 "optimizer": "adamw", "lr": 1e-3, "work_dir": str(tmp_path / "run")})
    ck = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert ck["head"]["kind"] == "conv" and ck["priors"].shape == (2 * 2 * 3, 4)  # 64 px / 32 = 2 x 2 cells
    assert 0.0 <= res["best_recall"] <= 1.0
    size = export_checkpoint(tmp_path / "run" / "last.pth", tmp_path / "mb16.pth")
    assert size < (tmp_path / "run" / "last.pth").stat().st_size
    exp = torch.load(tmp_path / "mb16.pth", weights_only=True)
    assert exp["model"]["head.out.weight"].dtype == torch.float16 and exp["model"]["priors"].dtype == torch.float32
    # The fp16 copy computes what the fp32 checkpoint does, up to fp16 rounding of the weights.
    from gdet.proposals.multibox import load_multibox

    m32, _ = load_multibox(tmp_path / "run" / "last.pth")
    m16, _ = load_multibox(tmp_path / "mb16.pth")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        (b32, l32), (b16, l16) = m32(m32.normalize(x)), m16(m16.normalize(x))
    assert b32.shape == (2, 12, 4) and torch.allclose(b32, b16, atol=2e-3) and torch.allclose(l32, l16, atol=2e-2)
    assert not torch.equal(l32, l16)  # really the rounded weights
    img, _ = blob_image(0)
    boxes, scores = build_proposer("multibox", weights=str(tmp_path / "mb16.pth"), top_k=5, min_size=0).propose(img)
    assert 0 < boxes.shape[0] <= 5 and bool((scores[:-1] >= scores[1:]).all())
    from gdet.errors import ConfigError

    with pytest.raises(ConfigError, match="head: unknown option 'dense'"):
        train({"data": str(root), "head": "dense"})
    with pytest.raises(ConfigError, match="match_iou: must be <= 1"):
        train({"data": str(root), "match_iou": 1.5})


def test_backbone_weights_that_fit_nothing_are_refused(tmp_path):
    from gdet.proposals.multibox import build_multibox

    torch.save({"model": {"foo.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no weight fits"):
        build_multibox(backbone="googlenet", priors=torch.rand(4, 4), backbone_weights=str(tmp_path / "other.pth"))


def test_bad_checkpoint_and_bad_config(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not a MultiBox checkpoint"):
        MultiBoxProposer.from_checkpoint(weights=str(tmp_path / "plain.pth"))
    with pytest.raises(GdetError, match="needs weights"):
        build_proposer("multibox")
    with pytest.raises(GdetError, match="^proposal option min_size: must be a non-negative number, got 'abc'$"):
        build_proposer("ss", min_size="abc")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train_multibox.py"), "--config",
                        str(tmp_path / "none.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "none.yaml" in r.stderr
    (tmp_path / "c.yaml").write_text("epochz: 3\n")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train_multibox.py"), "--config",
                        str(tmp_path / "c.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "unknown key 'epochz' (did you mean 'epochs'?)" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
