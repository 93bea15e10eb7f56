"""Data loaders for training and evaluation, single-process or distributed."""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from gdet.engine.distributed import DistInfo


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank ``r`` of ``w`` reads indices ``r, r + w, r + 2w, ...`` in order, with no padding,
    so sums reduced over ranks count every sample exactly once (DistributedSampler pads with repeats)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loader(dataset: Dataset, *, batch_size: int, train: bool, info: DistInfo | None = None,
                 num_workers: int = 0, device: torch.device | None = None, seed: int = 0, shuffle: bool | None = None,
                 drop_last: bool | None = None, collate_fn: Callable | None = None) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` and the epoch (call :func:`set_epoch` each epoch), so a
    resumed run sees the same batches as an uninterrupted one.

    Training uses a :class:`DistributedSampler` (also with one process: same code path, same order),
    shuffled unless ``shuffle=False``; evaluation uses :class:`ShardSampler`. ``batch_size`` is per process.
    Memory is pinned when the device is CUDA. Workers are restarted each epoch (not persistent): their
    augmentation seeds are then drawn from the main RNG, which checkpoints restore, so resume stays exact.
    """
    info = info or DistInfo()
    shuffle = train if shuffle is None else shuffle
    drop_last = train if drop_last is None else drop_last
    if train:
        sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle,
                                     seed=seed, drop_last=False)
    else:
        sampler = ShardSampler(len(dataset), info.rank, info.world_size)
    pin = device is not None and device.type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, pin_memory=pin,
                      drop_last=drop_last, persistent_workers=False, collate_fn=collate_fn,
                      prefetch_factor=4 if num_workers > 0 else None)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell a DistributedSampler which epoch it is (it reshuffles by ``seed + epoch``)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
