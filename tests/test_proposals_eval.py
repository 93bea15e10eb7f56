"""Proposal recall math against a brute-force reference, and the eval_proposals tool."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gdet.proposals.evaluation import AR_THRESHOLDS, ProposalEvaluator, best_overlaps, evaluate_proposals
from gdet.proposals.files import ProposalSet, save_proposals
from gdet.structures import ImageRecord
from helpers_proposals import write_voc

ROOT = Path(__file__).resolve().parents[1]


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference(images, count):
    """Brute force: per class lists of best overlaps, then every metric by the definitions."""
    best, cls, areas = [], [], []
    for gts, labels, ignore, props in images:
        kept = props if count is None else props[:count]
        for g, l, ig in zip(gts, labels, ignore):
            if ig:
                continue
            best.append(max([_iou(g, p) for p in kept], default=0.0))
            cls.append(l)
            areas.append((g[2] - g[0]) * (g[3] - g[1]))
    best, cls, areas = np.array(best), np.array(cls), np.array(areas)
    recall = {t: float(np.mean(best >= t - 1e-9)) for t in AR_THRESHOLDS}
    mabo = float(np.mean([best[cls == c].mean() for c in np.unique(cls)]))
    small = best[areas < 32 ** 2]
    return {"recall@0.5": recall[0.5], "recall@0.7": recall[0.7], "ar": float(np.mean(list(recall.values()))),
            "abo": float(best.mean()), "mabo": mabo, "small_r05": float(np.mean(small >= 0.5)) if len(small) else float("nan")}


def _random_images(seed=0, n=5):
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        def boxes(k, lo, hi):
            xy = rng.uniform(0, 80, (k, 2))
            wh = rng.uniform(lo, hi, (k, 2))
            return np.concatenate([xy, xy + wh], 1).round(1).tolist()
        g = int(rng.integers(1, 6))
        gts = boxes(g, 5, 120)
        labels = rng.integers(0, 3, g).tolist()
        ignore = (rng.random(g) < 0.2).tolist()
        props = boxes(int(rng.integers(0, 40)), 3, 120)
        images.append((gts, labels, ignore, props))
    return images


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_brute_force(seed):
    images = _random_images(seed)
    counts = [1, 5, 20, None]
    ev = ProposalEvaluator(counts)
    for gts, labels, ignore, props in images:
        ev.process(torch.tensor(gts), torch.tensor(labels), torch.tensor(props).reshape(-1, 4), torch.tensor(ignore))
    res = ev.evaluate()
    assert res["num_gt"] == sum(1 for im in images for ig in im[2] if not ig)
    for c in counts:
        ref = _reference(images, c)
        got = res["overall"]["all" if c is None else str(c)]
        for k in ("recall@0.5", "recall@0.7", "ar", "abo", "mabo"):
            assert got[k] == pytest.approx(ref[k], abs=1e-6), (c, k)
        s = res["by_size"]["small"]["all" if c is None else str(c)]["recall@0.5"]
        assert (s != s and ref["small_r05"] != ref["small_r05"]) or s == pytest.approx(ref["small_r05"])


def test_exact_values_on_a_hand_example():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    props = torch.tensor([[0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    ov = best_overlaps(gt, props, [1, 2, 3, None])
    assert ov.tolist() == [[0.5, 0.0], [0.5, 1.0], [1.0, 1.0], [1.0, 1.0]]
    assert best_overlaps(gt, torch.zeros((0, 4)), [5]).tolist() == [[0.0, 0.0]]
    ev = ProposalEvaluator([1, 2])
    ev.process(gt, torch.tensor([0, 1]), props)
    r = ev.evaluate()["overall"]
    assert r["1"]["recall@0.5"] == 0.5 and r["1"]["mabo"] == 0.25 and r["2"]["recall@0.7"] == 0.5
    # AR at 2 proposals: object 1 (IoU 0.5) counts only at t=0.5, object 2 at every t.
    assert r["2"]["ar"] == pytest.approx((0.1 + 1.0) / 2)


def test_empty_inputs_do_not_crash():
    ev = ProposalEvaluator([10])
    res = ev.evaluate()
    assert res["num_gt"] == 0 and res["overall"]["10"]["recall@0.5"] != res["overall"]["10"]["recall@0.5"]
    ev.process(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), torch.zeros((0, 4)))
    ev.process(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([0]), torch.zeros((0, 4)))
    assert ev.evaluate()["overall"]["10"]["recall@0.5"] == 0.0


def test_evaluate_proposals_perfect_and_missing_image():
    recs = [ImageRecord(image_id="a", path="a.png", width=50, height=50, boxes=[[0, 0, 40, 40]], labels=[0]),
            ImageRecord(image_id="b", path="b.png", width=50, height=50, boxes=[[5, 5, 10, 10]], labels=[0])]
    props = ProposalSet.from_lists(["a"], [torch.tensor([[0.0, 0, 40, 40]])], [torch.ones(1)])
    res = evaluate_proposals(recs, props, [None])
    assert res["overall"]["all"]["recall@0.5"] == 0.5 and res["images_without_proposals"] == 1
    assert res["by_size"]["medium"]["all"]["recall@0.5"] == 1.0 and res["by_size"]["small"]["all"]["abo"] == 0.0


def _run(args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "eval_proposals.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_tool_smoke_and_bad_input(tmp_path):
    from gdet.data.dataset import load_detection_set

    root = write_voc(tmp_path / "voc", n=2)
    recs = load_detection_set(root, "val").records
    props = ProposalSet.from_lists([r.image_id for r in recs], [r.boxes for r in recs],
                                   [torch.ones(len(r)) for r in recs], meta={"method": "oracle"})
    save_proposals(tmp_path / "p.npz", props)
    r = _run(["--data", str(root), "--proposals", f"gt={tmp_path / 'p.npz'}", "--counts", "1,all",
              "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["gt"]["overall"]["all"]["recall@0.7"] == 1.0 and res["gt"]["overall"]["all"]["mabo"] == 1.0
    assert (tmp_path / "r.png").stat().st_size > 1000 and "gt" in r.stdout
    bad = _run(["--data", str(root), "--proposals", str(tmp_path / "missing.npz")])
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: ") and "missing.npz" in bad.stderr
    assert "Traceback" not in bad.stderr
    # the same command in this process (the script is a wrapper of it)
    from click.testing import CliRunner

    from gdet.cli import main

    bad = CliRunner().invoke(main, ["proposals", "eval", "--data", str(root), "--proposals", str(tmp_path / "p.npz"),
                                    "--counts", "ten"])
    assert bad.exit_code == 1 and bad.output.startswith("error: --counts") and len(bad.output.splitlines()) == 1
