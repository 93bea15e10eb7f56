"""Polyak (exponential moving) averaging of the weights, on ``torch.optim.swa_utils.AveragedModel``."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class EmaUpdate:
    """``multi_avg_fn`` for :class:`AveragedModel`: ``avg <- d * avg + (1 - d) * w``.

    With ``warmup`` the decay is ``min(decay, (1 + k) / (10 + k))`` where ``k = n_averaged - 1`` counts the
    earlier averaging steps, so a short run is not dominated by the random initial weights. The decay is computed
    as a tensor on the weights' device from ``n_averaged`` (no host sync per step), and the state is just the
    averaged weights plus ``n_averaged``.
    """

    def __init__(self, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay {decay} is outside [0, 1]")
        self.decay = float(decay)
        self.warmup = bool(warmup)

    @torch.no_grad()
    def __call__(self, ema_params: list[torch.Tensor], model_params: list[torch.Tensor], n_averaged) -> None:
        if not torch.is_floating_point(ema_params[0]):
            for a, m in zip(ema_params, model_params):  # integer buffers (BN's num_batches_tracked) follow
                a.copy_(m)
            return
        if self.warmup:
            k = torch.as_tensor(n_averaged, device=ema_params[0].device).to(torch.float32) - 1
            d = torch.clamp((1 + k) / (10 + k), max=self.decay)
        else:
            d = torch.tensor(self.decay, device=ema_params[0].device)
        d = d.to(ema_params[0].dtype)
        torch._foreach_mul_(ema_params, d)
        torch._foreach_add_(ema_params, torch._foreach_mul(model_params, 1 - d))


def build_ema(model: nn.Module, decay: float = 0.9999, warmup: bool = True,
              device: torch.device | None = None) -> AveragedModel:
    """An :class:`AveragedModel` holding the Polyak-averaged copy of ``model`` (pass the unwrapped model, not
    DDP). Parameters and buffers (BatchNorm statistics) are averaged. Call ``ema.update_parameters(model)``
    after each optimizer step; evaluate ``ema.module``."""
    ema = AveragedModel(model, device=device, multi_avg_fn=EmaUpdate(decay, warmup), use_buffers=True)
    ema.eval()
    return ema


def ema_state(ema: AveragedModel) -> dict[str, torch.Tensor]:
    """The averaged weights as a plain state dict of the wrapped network (what ``load_model_weights(...,
    use_ema=True)`` reads)."""
    return ema.module.state_dict()


def load_ema_state(ema: AveragedModel, state: dict[str, torch.Tensor], n_averaged: int) -> None:
    """Restore averaged weights and the update counter written by :func:`ema_state`."""
    ema.module.load_state_dict(state)
    ema.n_averaged.fill_(int(n_averaged))
