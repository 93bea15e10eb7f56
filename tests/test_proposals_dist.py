"""`gdet proposals compute` over several processes (gloo on CPU): the same proposal file as one process."""
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from helpers_dist import free_port, torchrun  # noqa: E402
from helpers_proposals import write_voc  # noqa: E402

from gdet.proposals.compute import _part_name, compute_proposals  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPTS = {"max_side": 64}  # tiny images stay tiny: selective search in milliseconds


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _items(root):
    ids = sorted(p.stem for p in (root / "JPEGImages").glob("*.png"))
    return [(i, str(root / "JPEGImages" / f"{i}.png")) for i in ids]


def test_torchrun_two_ranks_write_the_one_process_file(tmp_path):
    root = write_voc(tmp_path / "voc", n=5, h=48, w=64)  # 5 images: an uneven split over 2 ranks
    args = ["proposals", "compute", "--data", str(root), "--split", "val", "--method", "ss", "--workers", "0",
            "--opt", "max_side=64"]
    # Both files from fresh processes: one process, then two ranks (this test process has run hundreds of others)
    torchrun(["-m", "gdet.cli", *args, "--out", tmp_path / "one.npz"], cwd=tmp_path, nproc=1)
    out = torchrun(["-m", "gdet.cli", *args, "--out", tmp_path / "two.npz"], cwd=tmp_path)
    assert out.count("5 images (5 computed, 0 reused)") == 1  # rank 0 reports, once
    one, two = _arrays(tmp_path / "one.npz"), _arrays(tmp_path / "two.npz")
    assert set(one) == set(two)
    for k in one:
        assert np.array_equal(one[k], two[k]), k
    assert one["boxes"].shape[0] > 5 * 3  # really proposals, not an empty file on both sides
    assert not (tmp_path / "two.npz.parts").exists()


def _seed_part(parts: Path, image_id, boxes, scores, size):
    parts.mkdir(parents=True, exist_ok=True)
    np.savez(parts / _part_name(image_id), image_id=np.array(str(image_id)), boxes=np.asarray(boxes, np.float32),
             scores=np.asarray(scores, np.float32), size=np.array(size, dtype=np.int64))


def _rank_worker(rank, world, port, base, items, bad_items):
    import torch

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), GDET_NO_PROGRESS="1")
    from gdet.errors import GdetError
    from gdet.parallel import process_group_from_env

    # Each rank in its own directory and a relative --out: nodes that share no file system.
    os.chdir(os.path.join(base, f"node{rank}"))
    with process_group_from_env() as info:
        assert info.world_size == world and info.rank == rank
        try:
            compute_proposals(bad_items, "ss", "bad.npz", method_kwargs=OPTS, distributed=True)
            bad = None
        except GdetError as e:  # every rank learns of the one rank's failure instead of waiting
            bad = str(e)
        res = compute_proposals(items, "ss", "props.npz", method_kwargs=OPTS, distributed=True, meta={"x": 1})
    with open(os.path.join(base, f"rank{rank}.json"), "w") as f:
        json.dump({"res": res, "bad": bad}, f)


def test_ranks_without_a_shared_directory_resume_and_merge(tmp_path):
    import torch.multiprocessing as mp

    root = write_voc(tmp_path / "voc", n=5, h=48, w=64)
    items = _items(root)
    ref = compute_proposals(items, "ss", tmp_path / "ref.npz", method_kwargs=OPTS, meta={"x": 1})
    assert ref["computed"] == 5
    want = _arrays(tmp_path / "ref.npz")
    off = want["offsets"]

    def rows(k):
        return want["boxes"][off[k]:off[k + 1]], want["scores"][off[k]:off[k + 1]], want["sizes"][k]

    # Partial results of an interrupted run: node 1 holds img000 (deliberately different boxes, so the test sees
    # that it was shipped to rank 0 and not recomputed) and img002; node 0 holds img004.
    fake = np.array([[1, 2, 30, 40]], np.float32), np.array([0.5], np.float32), rows(0)[2]
    _seed_part(tmp_path / "node1" / "props.npz.parts", "img000", *fake)
    _seed_part(tmp_path / "node1" / "props.npz.parts", "img002", *rows(2))
    _seed_part(tmp_path / "node0" / "props.npz.parts", "img004", *rows(4))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    bad_items = items[:3] + [("broken", str(tmp_path / "bad.png"))]  # the broken image falls to rank 1

    mp.spawn(_rank_worker, args=(2, free_port(), str(tmp_path), items, bad_items), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["bad"] == r1["bad"] and "bad.png" in r0["bad"]
    assert r0["res"]["computed"] == 2 and r0["res"]["reused"] == 3  # img001 and img003, one per rank
    assert r0["res"]["rank_computed"] == 1 and r1["res"]["rank_computed"] == 1
    assert r0["res"]["out"] == r1["res"]["out"] == "props.npz"
    assert not (tmp_path / "node1" / "props.npz").exists()  # rank 0 alone writes the file
    got = _arrays(tmp_path / "node0" / "props.npz")
    assert list(got["image_ids"]) == [i for i, _ in items]
    exp_boxes = np.concatenate([fake[0]] + [rows(k)[0] for k in range(1, 5)])
    exp_scores = np.concatenate([fake[1]] + [rows(k)[1] for k in range(1, 5)])
    assert np.array_equal(got["boxes"], exp_boxes) and np.array_equal(got["scores"], exp_scores)
    assert np.array_equal(got["sizes"], want["sizes"]) and str(got["meta"]) == str(want["meta"])
    assert not (tmp_path / "node0" / "props.npz.parts").exists()
    assert not (tmp_path / "node1" / "props.npz.parts").exists()
