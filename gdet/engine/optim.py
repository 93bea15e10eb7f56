"""Optimizer and learning-rate schedule builders shared by every trainer (classification, MultiBox, detection).

The schedule is a per-iteration multiplier of the base learning rate (a :class:`LrSchedule` inside
``torch.optim.lr_scheduler.LambdaLR``), so warm-up is smooth. A resumed run takes its position on the curve from the
checkpoint and the curve itself from its config (:func:`set_schedule_position`), so that ``epochs=`` or
``lr_step_epochs=`` given at a resume take effect.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Iterable

import torch
from torch import nn

from gdet.errors import ConfigError

SCHEDULES = ("step", "multistep", "cosine", "constant")

# Keys read by the two builders, with their defaults (the paper's recipe: SGD momentum 0.9, lr x0.96 every 8 epochs).
OPTIM_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 2e-4,
    "no_decay_norm_bias": True,
    "lr_schedule": "step",
    "lr_step_epochs": 8,
    "lr_gamma": 0.96,
    "lr_milestones": [],
    "min_lr": 0.0,
    "warmup_epochs": 0.0,
    "warmup_factor": 0.1,
    "epochs": 1,
}

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def optim_value(cfg: dict, key: str):
    """The value of an optimizer or schedule key in ``cfg``, its default where unset; names lower-cased."""
    value = cfg.get(key, OPTIM_DEFAULTS[key])
    return value.lower() if isinstance(value, str) else value


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool = True) -> list[dict]:
    """Split trainable parameters into a decayed group and (optionally) an undecayed one holding biases and
    normalisation weights, which weight decay would only pull towards zero without regularising anything."""
    if not no_decay_norm_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if isinstance(module, _NORMS) or name.endswith("bias") or p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(cfg: dict, model: nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer named by ``cfg["optimizer"]``.

    Keys (defaults in :data:`OPTIM_DEFAULTS`): ``optimizer`` (sgd | adamw), ``lr``, ``momentum``, ``nesterov``,
    ``weight_decay``, ``no_decay_norm_bias`` (no weight decay on biases and norm layers).
    """
    get = functools.partial(optim_value, cfg)
    name = str(get("optimizer"))
    groups = param_groups(model, float(get("weight_decay")), bool(get("no_decay_norm_bias")))
    lr = float(get("lr"))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(get("momentum")), nesterov=bool(get("nesterov")))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ConfigError(f"optimizer {name!r}: unknown (use sgd or adamw)")


class LrSchedule:
    """Learning-rate multiplier as a function of the iteration (picklable, so scheduler state round-trips).

    Args:
        kind: ``step`` (x ``gamma`` every ``step_epochs``; the paper: 0.96 every 8), ``multistep`` (x ``gamma``
            at each epoch in ``milestones``), ``cosine`` (to ``min_factor`` at the end), ``constant``.
        steps_per_epoch: optimizer steps per epoch (the decay is applied at whole epochs, as in the paper).
        epochs: length of the run (cosine only).
        warmup_epochs: linear warm-up from ``warmup_factor`` to 1 over this many (fractional) epochs.
    """

    def __init__(self, kind: str, steps_per_epoch: int, *, epochs: int = 1, step_epochs: float = 8,
                 gamma: float = 0.96, milestones: Iterable[float] = (), min_factor: float = 0.0,
                 warmup_epochs: float = 0.0, warmup_factor: float = 0.1):
        if kind not in SCHEDULES:
            raise ConfigError(f"lr_schedule {kind!r}: unknown (use {', '.join(SCHEDULES)})")
        if steps_per_epoch < 1:
            raise ConfigError("lr schedule: steps_per_epoch must be >= 1 (is the training set empty?)")
        self.kind = kind
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = max(int(epochs), 1)
        self.step_epochs = float(step_epochs)
        self.gamma = float(gamma)
        self.milestones = sorted(float(m) for m in milestones)
        self.min_factor = float(min_factor)
        self.warmup_steps = int(round(float(warmup_epochs) * self.steps_per_epoch))
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step: int) -> float:
        epoch = step // self.steps_per_epoch  # whole epochs done
        if self.kind == "step":
            factor = self.gamma ** (epoch // self.step_epochs) if self.step_epochs > 0 else 1.0
        elif self.kind == "multistep":
            factor = self.gamma ** sum(epoch >= m for m in self.milestones)
        elif self.kind == "cosine":
            total = self.epochs * self.steps_per_epoch - self.warmup_steps
            t = min(max(step - self.warmup_steps, 0) / max(total, 1), 1.0)
            factor = self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))
        else:
            factor = 1.0
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


def build_scheduler(cfg: dict, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler: call ``scheduler.step()`` after every ``optimizer.step()``.

    Keys: ``lr_schedule`` (step | multistep | cosine | constant), ``lr_step_epochs``, ``lr_gamma``,
    ``lr_milestones`` (epochs), ``min_lr`` (cosine floor, absolute), ``warmup_epochs``, ``warmup_factor``,
    ``epochs``, ``lr``. The paper's recipe is ``step`` with 8 epochs and gamma 0.96 (lr cut by 4%).
    """
    get = functools.partial(optim_value, cfg)
    lr = float(get("lr"))
    schedule = LrSchedule(
        str(get("lr_schedule")), steps_per_epoch, epochs=int(get("epochs")),
        step_epochs=float(get("lr_step_epochs")), gamma=float(get("lr_gamma")),
        milestones=get("lr_milestones") or (), min_factor=float(get("min_lr")) / lr if lr > 0 else 0.0,
        warmup_epochs=float(get("warmup_epochs")), warmup_factor=float(get("warmup_factor")))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def set_schedule_position(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> list[float]:
    """Put a :func:`build_scheduler` scheduler at optimizer step ``step`` of its own curve and set each parameter
    group's lr to the curve's value there (as if it had run ``step`` steps). Returns the lrs."""
    scheduler.last_epoch = int(step)
    scheduler._step_count = int(step) + 1
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)
    return lrs
