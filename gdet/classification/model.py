"""Classifiers restored from gdet classification checkpoints, and the on-device input normalisation."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from gdet.backbones import build_backbone
from gdet.engine import load_checkpoint, load_model_weights, unwrap_model
from gdet.errors import CheckpointError

TASK = "classify"


class Normalizer:
    """``Tensor[N, 3, H, W]`` uint8 (or 0-1 float) on the device -> the network's normalised float input."""

    def __init__(self, model: nn.Module):
        net = unwrap_model(model)
        self.normalize = net.normalize

    def __call__(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return self.normalize(x)


@dataclass
class Classifier:
    """A trained network with what inference needs: class names and the input size it was trained at."""

    model: nn.Module
    class_names: list[str]
    input_size: int
    path: str = ""

    def prepare(self, x: Tensor) -> Tensor:
        return Normalizer(self.model)(x)

    @torch.no_grad()
    def logits(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Args: images (Tensor[N, 3, S, S]) uint8 on the model's device. Returns Tensor[N, C] float logits."""
        out = [self.model(self.prepare(images[i:i + batch_size])).float() for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(self.class_names))


def load_classifier(path: str | os.PathLike, device: torch.device | str = "cpu", use_ema: bool = True) -> Classifier:
    """Build the network recorded in a gdet classification checkpoint and load its weights (the Polyak-averaged
    ones when present and ``use_ema``). A detection/MultiBox checkpoint, a bare state dict or a foreign file
    raises :class:`CheckpointError` naming the file."""
    ckpt = load_checkpoint(path)
    task = ckpt.get("task")
    if task is not None and task != TASK:
        raise CheckpointError(f"{path}: this is a {task!r} checkpoint, not a classification one")
    if task is None or not ckpt.get("backbone") or not ckpt.get("class_names"):
        raise CheckpointError(f"{path}: not a gdet classification checkpoint (no task/backbone/class names; "
                              "train one with `gdet classify train`)")
    kwargs = dict(ckpt.get("backbone_kwargs") or {})
    model = build_backbone(ckpt["backbone"], num_classes=len(ckpt["class_names"]), **kwargs)
    _load(model, ckpt, use_ema, path)
    pre = ckpt.get("preprocessing") or {}
    size = int(pre.get("input_size") or getattr(model, "input_size", 224))
    model.input_size = size
    model.eval().to(device)
    return Classifier(model=model, class_names=list(ckpt["class_names"]), input_size=size, path=str(Path(path)))


def _load(model: nn.Module, ckpt: dict, use_ema: bool, path) -> None:
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    try:
        load_model_weights(model, state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {str(e).removeprefix('state dict: ')}") from None
