"""Work over torchrun ranks: deal a sequence out (``shard``), collect the results on rank 0 in the original order.

The pattern of every "run a model over a dataset" command under torchrun::

    mine = shard(records)                          # this rank's records: records[rank::world]
    results = [detect(r) for r in mine]            # one result per record
    everything = gather_to_rank0(results)          # rank 0: the results of all records, in records' order
    if everything is not None:                     # None on the other ranks
        write(everything)                          # the same file as a one-process run

Without an initialised process group every function behaves as for a single process (``shard`` returns the
whole sequence, ``gather_to_rank0`` returns its input).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence, TypeVar

import torch.distributed as dist

from gdet.engine.distributed import cleanup, init_distributed

__all__ = ["gather_to_rank0", "process_group_from_env", "rank_world", "shard", "unshard"]

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(seq: Sequence[T], rank: int | None = None, world: int | None = None) -> list[T]:
    """This rank's share of ``seq``: items ``rank, rank + world, ...`` (dealt in turn, so the shares differ in
    length by at most one and neighbouring items, often of similar cost, go to different ranks).

    Args:
        seq: the whole work list, the same on every rank.
        rank, world: default: those of the current process group.
    """
    if rank is None or world is None:
        rank, world = rank_world()
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return list(seq[rank::world])


def unshard(shares: Sequence[Sequence[T]]) -> list[T]:
    """Inverse of :func:`shard`: ``shares[r]`` is rank ``r``'s share (or its results, one per item), in rank
    order; returns the items in the original order."""
    world = len(shares)
    n = sum(len(s) for s in shares)
    for r, s in enumerate(shares):
        if len(s) != len(range(r, n, world)):
            raise ValueError(f"rank {r} has {len(s)} items; a share of {n} items over {world} ranks has "
                             f"{len(range(r, n, world))}")
    return [shares[k % world][k // world] for k in range(n)]


def gather_to_rank0(local: Sequence[Any]) -> list[Any] | None:
    """Collect every rank's results (one per item of its :func:`shard`) on rank 0, in the original order.

    A collective call: every rank must make it. Items are pickled (``torch.distributed.gather_object``), so
    move tensors to the CPU first. Returns the full list on rank 0 and None on the other ranks.
    """
    rank, world = rank_world()
    if world == 1:
        return list(local)
    shares = [None] * world if rank == 0 else None
    dist.gather_object(list(local), shares, dst=0)
    return unshard(shares) if rank == 0 else None


@contextlib.contextmanager
def process_group_from_env() -> Iterator:
    """torchrun's process group (gloo: what is exchanged is small and on the CPU) for the duration of a command.

    Yields a :class:`~gdet.engine.distributed.DistInfo`; without torchrun it is a single process and nothing is
    initialised."""

    info = init_distributed("cpu")
    try:
        yield info
    finally:
        if info.distributed:
            cleanup()
