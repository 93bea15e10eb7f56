"""THE backbone registry: a dict and a decorator, shared by classification, MultiBox and detection."""
from __future__ import annotations

import os
from typing import Callable

from torch import nn

from gdet.errors import GdetError

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str | None = None):
    """Register a builder under ``name`` (default: the function's name). A duplicate name raises."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _BACKBONES:
            raise ValueError(f"backbone {key!r} is already registered")
        _BACKBONES[key] = fn
        return fn

    return wrap


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return sorted(_BACKBONES)


def get_backbone_builder(name: str) -> Callable[..., nn.Module]:
    if name not in _BACKBONES:
        raise GdetError(f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}")
    return _BACKBONES[name]


def build_backbone(
    name: str,
    *,
    num_classes: int = 1000,
    aux_logits: bool | None = None,
    weights: str | os.PathLike | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered backbone.

    Args:
        name: a name from :func:`list_backbones`.
        num_classes: size of the classifier (and of the aux classifiers).
        aux_logits: build the auxiliary heads (``None``: the network's default). Networks without aux heads
            reject ``True``.
        weights: path of a local checkpoint (gdet's format, a plain state dict, or a torchvision file).
            Nothing is ever downloaded.
        **kwargs: passed to the builder (e.g. ``dropout``).
    """
    builder = get_backbone_builder(name)
    if aux_logits is not None:
        kwargs["aux_logits"] = aux_logits
    model = builder(num_classes=num_classes, **kwargs)
    model.backbone_name = name
    if weights is not None:
        from gdet.engine.checkpoint import load_model_weights

        load_model_weights(model, weights)
    return model
