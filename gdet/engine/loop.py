"""The plain training loop and its pieces: device transfer, losses with aux heads, the AMP step."""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gdet.backbones.base import BackboneOutput
from gdet.engine.device import autocast
from gdet.engine.distributed import reduce_sum
from gdet.engine.logger import progress
from gdet.errors import GdetError


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


def optimizer_step(loss: Tensor, optimizer: torch.optim.Optimizer, *, scaler: torch.amp.GradScaler | None = None,
                   grad_clip: float | None = None, parameters=None) -> None:
    """Backward + (unscale, clip) + step + zero_grad, with an optional fp16 GradScaler."""
    if scaler is not None:
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def topk_correct(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of samples whose target is among the top-k logits, for each k (k clipped to the class count)."""
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices  # N x kmax
    hit = pred.eq(target.view(-1, 1))
    return [hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler, device: torch.device, *,
                    scaler: torch.amp.GradScaler | None = None, precision: str = "fp32", ema=None,
                    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None, aux_weight: float = 0.3,
                    log_every: int = 50, prepare: Callable[[Tensor], Tensor] | None = None,
                    channels_last: bool = False, grad_clip: float | None = None, max_steps: int | None = None,
                    epoch: int = 0, desc: str | None = None) -> dict[str, float]:
    """One pass over ``loader`` (batches ``(images Tensor[N, 3, H, W], targets Tensor[N])``).

    Args:
        model: the network (possibly DDP-wrapped), in training mode on ``device``.
        scheduler: a per-iteration scheduler (stepped after every optimizer step) or ``None``.
        scaler: a GradScaler for fp16 (see :func:`build_grad_scaler`).
        precision: fp32, bf16 or fp16 (autocast).
        ema: an ``AveragedModel`` updated after every step (see :func:`gdet.engine.build_ema`).
        loss_fn: ``loss_fn(logits, targets)``; default cross-entropy.
        aux_weight: weight of each aux head's loss when the model returns a :class:`BackboneOutput`.
        prepare: applied to the images on the device before the forward pass, e.g. uint8 -> normalised float
            (doing it on the device keeps host-to-device copies 4x smaller).
        max_steps: stop after this many steps (smoke runs).

    Returns:
        ``{"loss", "acc1", "acc5", "lr", "images_per_s", "steps"}`` averaged over all ranks' samples.
    """
    loss_fn = loss_fn or F.cross_entropy
    model.train()
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
    n_steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    bar = progress(total=n_steps, desc=desc or f"epoch {epoch}", leave=False)
    params = [p for p in model.parameters() if p.requires_grad] if grad_clip else None
    t0 = time.perf_counter()
    step = 0
    for step, (images, targets) in enumerate(loader, 1):
        images = move_to_device(images, device, channels_last)
        targets = move_to_device(targets, device)
        if prepare is not None:
            images = prepare(images)
        with autocast(device, precision):
            output = model(images)
            loss, logits = compute_loss(output, targets, loss_fn, aux_weight)
        optimizer_step(loss, optimizer, scaler=scaler, grad_clip=grad_clip, parameters=params)
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(_unwrap(model))
        with torch.no_grad():
            n = targets.shape[0]
            c1, c5 = topk_correct(logits.detach(), targets)
            stats += torch.stack([loss.detach().double() * n, c1.double(), c5.double(),
                                  torch.tensor(float(n), dtype=torch.float64, device=device)])
        if step % max(log_every, 1) == 0 or step == n_steps:
            # .item() synchronises the device, so only every log_every steps.
            cur = float(stats[0] / stats[3].clamp(min=1))
            if not math.isfinite(cur):
                raise GdetError(f"training diverged at epoch {epoch} step {step} (loss {cur}); lower the lr")
            bar.set_postfix(loss=f"{cur:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        bar.update(1)
        if max_steps is not None and step >= max_steps:
            break
    bar.close()
    elapsed = time.perf_counter() - t0
    total = reduce_sum(stats)
    count = float(total[3].clamp(min=1))
    return {
        "loss": float(total[0]) / count,
        "acc1": float(total[1]) / count,
        "acc5": float(total[2]) / count,
        "lr": float(optimizer.param_groups[0]["lr"]),
        "images_per_s": float(total[3]) / max(elapsed, 1e-9),
        "steps": step,
    }


def _unwrap(model: nn.Module) -> nn.Module:
    from gdet.engine.distributed import unwrap_model

    return unwrap_model(model)
