"""Classifiers restored from gdet classification checkpoints, and the on-device input normalisation."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from gdet.backbones import build_backbone, is_aux_key
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


def load_classifier(path: str | os.PathLike, device: torch.device | str = "cpu", use_ema: bool = True,
                    backbone: str | None = None, class_names: list[str] | None = None) -> Classifier:
    """Build the network recorded in a gdet classification checkpoint and load its weights (the Polyak-averaged
    ones when present and ``use_ema``).

    A plain state dict (e.g. torchvision's ``googlenet-*.pth``) carries no network name: give ``backbone`` (e.g.
    ``"googlenet_tv"``); the class count is read from its ``fc.weight`` and the names from ``class_names``
    (default ``class_0``, ``class_1``, ...). A detection/MultiBox checkpoint or a foreign file raises
    :class:`CheckpointError` naming the file."""
    ckpt = load_checkpoint(path)
    task = ckpt.get("task")
    if task is not None and task != TASK:
        raise CheckpointError(f"{path}: this is a {task!r} checkpoint, not a classification one")
    if task is None and not ckpt.get("backbone") and backbone is not None:
        return _load_plain(path, ckpt, backbone, class_names, device)
    if task is None or not ckpt.get("backbone") or not ckpt.get("class_names"):
        raise CheckpointError(f"{path}: not a gdet classification checkpoint (no task/backbone/class names); "
                              "for a plain state dict such as torchvision's, name its network with --backbone")
    kwargs = dict(ckpt.get("backbone_kwargs") or {})
    model = build_backbone(ckpt["backbone"], num_classes=len(ckpt["class_names"]), **kwargs)
    _load(model, ckpt, use_ema, path)
    pre = ckpt.get("preprocessing") or {}
    size = int(pre.get("input_size") or getattr(model, "input_size", 224))
    model.input_size = size
    model.eval().to(device)
    return Classifier(model=model, class_names=list(ckpt["class_names"]), input_size=size, path=str(Path(path)))


def _load_plain(path, ckpt: dict, backbone: str, class_names: list[str] | None, device) -> Classifier:
    state = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    fc = state.get("fc.weight")
    if fc is None or fc.ndim != 2:
        raise CheckpointError(f"{path}: no classifier weights 'fc.weight' in this state dict")
    num_classes = int(fc.shape[0])
    if class_names is not None and len(class_names) != num_classes:
        raise CheckpointError(f"{path}: has {num_classes} classes but {len(class_names)} class names were given")
    has_aux = any(is_aux_key(k) for k in state)
    kwargs = {"aux_logits": has_aux} if has_aux else {}
    model = build_backbone(backbone, num_classes=num_classes, **kwargs)
    _load(model, {"model": state}, False, path)
    model.eval().to(device)
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
    return Classifier(model=model, class_names=names, input_size=int(model.input_size), path=str(Path(path)))


def _load(model: nn.Module, ckpt: dict, use_ema: bool, path) -> None:
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    try:
        load_model_weights(model, state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {str(e).removeprefix('state dict: ')}") from None
