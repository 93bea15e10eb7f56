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
from gdet.proposals.multibox import (MultiBox, MultiBoxProposer, encode_targets, kmeans_priors, match_priors,
                                     multibox_loss, postprocess)
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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A MultiBox trained for two tiny epochs by the tool, then resumed for a third."""
    tmp = tmp_path_factory.mktemp("mb")
    root = write_voc(tmp / "voc", n=4, split="train")
    (root / "ImageSets" / "Main" / "val.txt").write_text("img000\nimg001\n")
    cfg = tmp / "mb.yaml"
    cfg.write_text("backbone: googlenet\ninput_size: 64\nnum_priors: 8\nbatch_size: 2\nepochs: 1\nworkers: 0\n"
                   "device: cpu\nthreads: 1\noptimizer: adamw\nlr: 1.0e-3\n")
    args = [sys.executable, str(ROOT / "tools" / "train_multibox.py"), "--config", str(cfg), f"data={root}",
            f"work_dir={tmp / 'run'}"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env={"GDET_NO_PROGRESS": "1", **_env()})
    assert r.returncode == 0, r.stderr
    r2 = subprocess.run(args + ["epochs=2", f"resume={tmp / 'run' / 'last.pth'}"], capture_output=True, text=True,
                        cwd=ROOT, env={"GDET_NO_PROGRESS": "1", **_env()})
    assert r2.returncode == 0, r2.stderr
    return tmp, root


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "GDET_NO_PROGRESS"}


def test_tool_trains_resumes_and_writes_outputs(trained):
    tmp, _ = trained
    run = tmp / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and "val_recall@100" in rows[0]
    assert (run / "curves.png").exists() and (run / "best.pth").exists()
    ck = torch.load(run / "last.pth", weights_only=False)
    assert ck["task"] == "multibox" and ck["priors"].shape == (8, 4) and ck["epoch"] == 2


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
    c = build_proposer("combined", weights=str(weights), top_k=5)
    cb, cs = c.propose(img)
    ss_only, _ = build_proposer("ss", superpixel_scale=2).propose(img)
    assert cb.shape[0] <= boxes.shape[0] + ss_only.shape[0] and torch.equal(cb[: boxes.shape[0]], boxes)
    assert torch.unique(cb, dim=0).shape[0] == cb.shape[0]
    out = tmp / "mb.npz"
    r = CliRunner().invoke(main, ["proposals", "compute", "--data", str(root), "--split", "val", "--method",
                                  "multibox", "--weights", str(weights), "--out", str(out), "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert len(load_proposals(out)) == 2


def test_bad_checkpoint_and_bad_config(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not a MultiBox checkpoint"):
        MultiBoxProposer.from_checkpoint(weights=str(tmp_path / "plain.pth"))
    with pytest.raises(GdetError, match="needs weights"):
        build_proposer("multibox")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train_multibox.py"), "--config",
                        str(tmp_path / "none.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "none.yaml" in r.stderr
    (tmp_path / "c.yaml").write_text("epochz: 3\n")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train_multibox.py"), "--config",
                        str(tmp_path / "c.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "unknown key(s) epochz" in r.stderr and "Traceback" not in r.stderr
