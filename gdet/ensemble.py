"""Ensembles: class probabilities averaged over crops and models (the paper's 7-model, 144-crop predictions).

Works on tensors of scores, never on models, so results dumped to files can be combined offline.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from gdet.errors import GdetError


def average_probabilities(probs: Sequence[Tensor] | Tensor, weights: Sequence[float] | None = None) -> Tensor:
    """Weighted mean of class-probability tensors.

    Args:
        probs: M tensors of the same shape ``[..., C]`` (or one ``Tensor[M, ..., C]``), e.g. one per model.
        weights: M non-negative weights (default: equal); they are normalised to sum to 1.

    Returns:
        Tensor[..., C], still a probability distribution when the inputs are.
    """
    stacked = probs if isinstance(probs, Tensor) else torch.stack(list(probs))
    m = stacked.shape[0]
    if m == 0:
        raise GdetError("ensemble: nothing to average")
    if weights is None:
        return stacked.mean(0)
    w = torch.as_tensor(list(weights), dtype=stacked.dtype, device=stacked.device)
    if w.numel() != m:
        raise GdetError(f"ensemble: {w.numel()} weights for {m} members")
    if (w < 0).any() or float(w.sum()) <= 0:
        raise GdetError("ensemble: weights must be non-negative and not all zero")
    w = w / w.sum()
    return (stacked * w.view(-1, *([1] * (stacked.ndim - 1)))).sum(0)


def crop_probabilities(logits: Tensor, crops_per_image: int) -> Tensor:
    """Softmax over classes, then mean over each image's crops.

    Args:
        logits: Tensor[N * K, C], the K crops of each image consecutive.
        crops_per_image: K.

    Returns:
        Tensor[N, C] probabilities.
    """
    if logits.shape[0] % crops_per_image:
        raise GdetError(f"ensemble: {logits.shape[0]} rows is not a multiple of {crops_per_image} crops")
    probs = logits.float().softmax(-1)
    return probs.view(-1, crops_per_image, probs.shape[-1]).mean(1)
