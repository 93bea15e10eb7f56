"""The one interface every backbone implements, and the building blocks the Inception family shares."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_aux_key(key: str) -> bool:
    """Whether a state-dict key belongs to an auxiliary classifier (``aux1.``, ``aux2.``, ``AuxLogits.``), with
    or without the ``module.`` / ``backbone.`` prefixes of DDP and the detector. The one rule by which checkpoints
    with and without aux heads are told apart and aux weights are dropped for inference."""
    for prefix in ("module.", "_orig_mod.", "backbone."):
        key = key.removeprefix(prefix)
    return key.split(".", 1)[0].lower().startswith("aux")


class BackboneOutput(NamedTuple):
    """What ``forward`` returns in training mode when aux heads exist: main logits and the aux logits in
    network order (e.g. ``(aux_4a, aux_4d)`` for GoogLeNet). In eval mode ``forward`` returns plain logits."""

    logits: Tensor
    aux_logits: tuple[Tensor, ...]


class Backbone(nn.Module):
    """Base class of every registered network.

    Subclasses set the metadata below in ``__init__`` and implement ``forward_features`` (image -> last
    feature map), ``forward_head`` (feature map -> logits) and, when they have aux heads, ``_aux_forward``.

    Metadata:
        out_channels: channels of the last feature map.
        stride: total stride of the last feature map.
        input_size: default square input size in pixels (224 or 299).
        mean, std: per-channel normalisation, applied after scaling the 0-1 input by ``input_scale``.
        input_scale: 1.0 if the network expects 0-1 input, 255.0 if it expects 0-255.
        feature_info: list of ``{"name", "channels", "stride"}`` for the named stages, in order.
        aux_logits: whether aux heads exist (they are used only in training mode).
        aux_weight: weight of each aux loss in the trainer (0.3 in the paper).
    """

    out_channels: int
    stride: int = 32
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_scale: float = 1.0
    feature_info: list[dict]
    aux_logits: bool = False
    aux_weight: float = 0.3
    num_classes: int
    backbone_name: str = ""

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the main (and aux) classifiers with fresh ``num_classes``-way layers."""
        self.fc = self._new_linear(self.fc.in_features, num_classes)
        for head in self.aux_heads():
            head.fc2 = self._new_linear(head.fc2.in_features, num_classes)
        self.num_classes = num_classes

    def aux_heads(self) -> list[nn.Module]:
        return []

    @staticmethod
    def _new_linear(in_features: int, out_features: int) -> nn.Linear:
        layer = nn.Linear(in_features, out_features)
        nn.init.normal_(layer.weight, std=0.01)
        nn.init.zeros_(layer.bias)
        return layer

    def preprocessing(self) -> dict:
        """What a checkpoint stores so that inference normalises exactly as training did."""
        return {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_scale": self.input_scale,
        }

    def normalize(self, x: Tensor) -> Tensor:
        """Map a float image batch in 0-1, ``Tensor[N, 3, H, W]`` RGB, to the network's input."""
        # Kept per device and dtype: a new tensor from a list on a GPU is a copy that waits for the device.
        key = (tuple(self.mean), tuple(self.std), x.device, x.dtype)
        cache = self.__dict__.setdefault("_normalize_cache", {})
        if key not in cache:
            cache.clear()
            with torch.inference_mode(False):  # plain tensors, usable in training after an inference-mode call
                cache[key] = (torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1),
                              torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1))
        mean, std = cache[key]
        return (x * self.input_scale - mean) / std

    def forward(self, x: Tensor) -> Tensor | BackboneOutput:
        """Args: x (Tensor[N, 3, H, W]) normalised input. Returns logits (Tensor[N, num_classes]); in
        training mode with aux heads, a :class:`BackboneOutput` with the aux logits too."""
        if self.training and self.aux_logits:
            feats, aux = self._aux_forward(x)
            return BackboneOutput(self.forward_head(feats), aux)
        return self.forward_head(self.forward_features(x))

    def _aux_forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:  # pragma: no cover - abstract
        raise NotImplementedError


class ConvReLU(nn.Sequential):
    """Convolution with bias followed by ReLU, as in the 2014 networks (no batch norm)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=True)
        self.relu = nn.ReLU(inplace=True)


class ConvBNReLU(nn.Module):
    """Convolution (no bias) + batch norm + ReLU; torchvision's ``BasicConv2d`` layout, so keys match."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size, stride=1, padding=0, eps: float = 0.001):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu_(self.bn(self.conv(x)))


def count_parameters(model: nn.Module, include_aux: bool = True) -> int:
    """Number of parameters; without aux heads if ``include_aux`` is False."""
    aux = {id(p) for head in (model.aux_heads() if hasattr(model, "aux_heads") else []) for p in head.parameters()}
    return sum(p.numel() for p in model.parameters() if include_aux or id(p) not in aux)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int | None = None) -> int:
    """Multiply-adds of one eval-mode forward pass at ``input_size`` (default: the model's), counted by
    torch's FlopCounterMode (FLOPs / 2), not typed in."""
    from torch.utils.flop_counter import FlopCounterMode

    size = input_size or getattr(model, "input_size", 224)
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2
