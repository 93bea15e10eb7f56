"""R-CNN mini-batches: 128 regions, 32 foreground and 96 background, drawn uniformly across all training images."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from gdet.detection.labels import RegionLabels

__all__ = ["RegionSampler"]


class RegionSampler:
    """Draws mini-batches of regions from the labelled regions of every training image.

    Foreground and background pools are kept over the whole training set; each batch takes ``fg_per_batch``
    regions from the foreground pool and fills the rest from the background pool (R-CNN: 32 + 96 = 128, biased
    towards the rare positives). Each pool is walked through a fresh random permutation per epoch (wrapping
    around when a pool is exhausted), so one epoch of ``ceil(num_fg / fg_per_batch)`` batches sees every
    foreground region once. When a batch cannot get enough foreground (an image set with none), background fills it.

    The draw is a function of ``(seed, epoch)`` only, so a resumed run draws exactly the same batches.

    Args:
        regions: one :class:`RegionLabels` per image.
        batch_size: regions per batch (R-CNN: 128).
        fg_fraction: foreground share of a batch (R-CNN: 0.25, i.e. 32 of 128).
        seed: base seed of the per-epoch permutations.
    """

    def __init__(self, regions: list[RegionLabels], batch_size: int = 128, fg_fraction: float = 0.25,
                 seed: int = 0):
        self.batch_size = int(batch_size)
        self.fg_per_batch = int(round(batch_size * fg_fraction))
        self.seed = int(seed)
        img = [torch.full((len(r),), i, dtype=torch.int64) for i, r in enumerate(regions)]
        reg = [torch.arange(len(r), dtype=torch.int64) for r in regions]
        lab = [r.labels for r in regions]
        self.image_index = torch.cat(img) if img else torch.zeros(0, dtype=torch.int64)
        self.region_index = torch.cat(reg) if reg else torch.zeros(0, dtype=torch.int64)
        labels = torch.cat(lab) if lab else torch.zeros(0, dtype=torch.int64)
        self.fg = torch.nonzero(labels > 0).flatten()
        self.bg = torch.nonzero(labels == 0).flatten()
        if len(self.fg) + len(self.bg) == 0:
            raise ValueError("no labelled regions to sample from (no proposals and no ground truth?)")

    @property
    def num_fg(self) -> int:
        return int(self.fg.numel())

    @property
    def num_bg(self) -> int:
        return int(self.bg.numel())

    def batches_per_epoch(self) -> int:
        """Batches needed to see every foreground region once."""
        return max(1, math.ceil(self.num_fg / max(1, self.fg_per_batch)))

    @staticmethod
    def _take(pool: Tensor, perm: Tensor, start: int, n: int) -> Tensor:
        if n <= 0 or pool.numel() == 0:
            return pool[:0]
        pos = (start + torch.arange(n)) % pool.numel()
        return pool[perm[pos]]

    def epoch(self, epoch: int, num_batches: int | None = None) -> list[Tensor]:
        """The batches of one epoch.

        Returns:
            list of ``Tensor[B, 2]`` (image index, region index within that image), foreground rows first.
        """
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
        fg_perm = torch.randperm(self.num_fg, generator=g)
        bg_perm = torch.randperm(self.num_bg, generator=g)
        num_batches = num_batches or self.batches_per_epoch()
        out = []
        fg_pos = bg_pos = 0
        for _ in range(num_batches):
            if self.num_bg == 0:
                n_fg, n_bg = self.batch_size, 0
            else:
                n_fg = min(self.fg_per_batch, self.num_fg)  # a tiny pool does not repeat within a batch
                n_bg = self.batch_size - n_fg
            idx = torch.cat([self._take(self.fg, fg_perm, fg_pos, n_fg), self._take(self.bg, bg_perm, bg_pos, n_bg)])
            fg_pos += n_fg
            bg_pos += n_bg
            out.append(torch.stack([self.image_index[idx], self.region_index[idx]], 1))
        return out

    @staticmethod
    def shard(batch: Tensor, rank: int, world_size: int) -> Tensor:
        """This rank's share of a batch (every ``world_size``-th row), so that the global batch keeps its
        size and its foreground/background mix under DDP."""
        return batch[rank::world_size]
