"""gdet.parallel: shares of a work list over ranks, and results gathered on rank 0 in the original order."""
import os
import socket

import pytest

from gdet.parallel import gather_to_rank0, rank_world, shard, unshard


@pytest.mark.parametrize("n", [0, 1, 5, 8])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_cover_everything_once_and_unshard_restores_order(n, world):
    seq = [f"im{k}" for k in range(n)]
    shares = [shard(seq, r, world) for r in range(world)]
    assert sorted(x for s in shares for x in s) == sorted(seq)  # every item exactly once
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert unshard(shares) == seq
    # Results computed per share come back aligned with the items.
    assert unshard([[x.upper() for x in s] for s in shares]) == [x.upper() for x in seq]


def test_single_process_defaults_and_bad_input():
    assert rank_world() == (0, 1)
    assert shard([1, 2, 3]) == [1, 2, 3] and gather_to_rank0([4, 5]) == [4, 5]
    assert shard([0, 1, 2, 3, 4], 1, 2) == [1, 3]
    with pytest.raises(ValueError, match="rank 2"):
        shard([1], 2, 2)
    with pytest.raises(ValueError, match="rank 0 has 1 items"):
        unshard([[0], [1, 2]])  # 3 items over 2 ranks: rank 0 deals first, so it holds 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, n, out_dir):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    assert rank_world() == (rank, world)
    mine = shard(list(range(n)))
    # Results of different sizes per item, with tensors, as detections are.
    results = [{"k": k, "boxes": torch.full((k % 3, 4), float(k))} for k in mine]
    everything = gather_to_rank0(results)
    torch.save({"everything": everything, "mine": mine}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_gather_to_rank0_over_two_gloo_ranks(tmp_path):
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), 7, str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"rank{k}.pt") for k in range(2)]
    assert [x["mine"] for x in r] == [[0, 2, 4, 6], [1, 3, 5]]
    assert r[1]["everything"] is None
    got = r[0]["everything"]
    assert [d["k"] for d in got] == list(range(7))
    for k, d in enumerate(got):
        assert torch.equal(d["boxes"], torch.full((k % 3, 4), float(k)))
