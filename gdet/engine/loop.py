"""Pieces the tasks share: device transfer, losses with aux heads, top-k counts."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from gdet.backbones.base import BackboneOutput


def move_to_device(obj: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Copy tensors (nested in lists, tuples and dicts) to ``device`` with ``non_blocking`` (pinned memory makes
    the copy asynchronous). 4-D tensors become channels-last when asked."""
    if isinstance(obj, Tensor):
        obj = obj.to(device, non_blocking=True)
        if channels_last and obj.ndim == 4:
            obj = obj.contiguous(memory_format=torch.channels_last)
        return obj
    if isinstance(obj, dict):
        return {k: move_to_device(v, device, channels_last) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(move_to_device(v, device, channels_last) for v in obj)
    return obj


def build_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 on CUDA (bf16 and fp32 need none); ``None`` otherwise."""
    if precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def compute_loss(output: Tensor | BackboneOutput, target: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 aux_weight: float = 0.3) -> tuple[Tensor, Tensor]:
    """Loss of a backbone's output: main loss plus ``aux_weight`` x each aux head's loss (the paper: 0.3).

    Returns:
        (total loss, main logits) — the logits for accuracy bookkeeping.
    """
    if isinstance(output, BackboneOutput):
        loss = loss_fn(output.logits.float(), target)
        for aux in output.aux_logits:
            loss = loss + aux_weight * loss_fn(aux.float(), target)
        return loss, output.logits
    return loss_fn(output.float(), target), output


def topk_correct(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of samples whose target is among the top-k logits, for each k (k clipped to the class count)."""
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices  # N x kmax
    hit = pred.eq(target.view(-1, 1))
    return [hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks]
