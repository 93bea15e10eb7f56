"""Ensembles: class probabilities averaged over crops and models (the paper's 7-model, 144-crop predictions).

Works on tensors of scores, never on models, so results dumped to files can be combined offline.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from gdet.errors import GdetError


def common_classes(members: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """The class list shared by every member of an ensemble (probabilities are averaged class by class).

    Args:
        members: ``(name, class names)`` per member; the name (its weights file) is what an error shows.

    Raises:
        GdetError: no member, or a member whose classes (names or order) differ from the first one's.
    """
    if not members:
        raise GdetError("ensemble: no member given (--weights)")
    first, names = members[0][0], list(members[0][1])
    for name, classes in members[1:]:
        if list(classes) != names:
            diff = sorted(set(classes) ^ set(names))
            why = (f"classes {', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''} are in one and not the other"
                   if diff else "the same classes in another order")
            raise GdetError(f"{name}: its classes differ from {first}'s ({why}); an ensemble needs one label set")
    return names


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
