"""GoogLeNet as torchvision builds it (batch norm, 3x3 "5x5" branch, ceil-mode pools); its weight files load as-is."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gdet.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, ConvBNReLU
from gdet.backbones.googlenet import FEATURE_INFO, INCEPTION_CFG
from gdet.backbones.registry import register_backbone


def imagenet_to_half_range(x: Tensor) -> Tensor:
    """Re-normalise an ImageNet mean/std input to ``(x01 - 0.5) / 0.5``, the input torchvision's ported
    GoogLeNet and Inception-v3 weights were trained on (their ``transform_input=True``).

    Args:
        x (Tensor[N, 3, H, W]): ``(x01 - IMAGENET_MEAN) / IMAGENET_STD``.
    Returns:
        Tensor[N, 3, H, W]: ``(x01 - 0.5) / 0.5``, per channel ``x * std / 0.5 + (mean - 0.5) / 0.5``.
    """
    chans = [x[:, c:c + 1] * (s / 0.5) + (m - 0.5) / 0.5 for c, (m, s) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD))]
    return torch.cat(chans, 1)


class InceptionBN(nn.Module):
    """Figure 2(b) with batch norm; the "5x5" branch uses a 3x3 kernel, as in torchvision's ported weights."""

    def __init__(self, in_ch: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool_proj: int):
        super().__init__()
        self.branch1 = ConvBNReLU(in_ch, c1, 1)
        self.branch2 = nn.Sequential(ConvBNReLU(in_ch, c3r, 1), ConvBNReLU(c3r, c3, 3, padding=1))
        self.branch3 = nn.Sequential(ConvBNReLU(in_ch, c5r, 1), ConvBNReLU(c5r, c5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     ConvBNReLU(in_ch, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAuxBN(nn.Module):
    """torchvision's aux head: adaptive avg-pool to 4x4, 1x1 conv 128 (+BN), FC 1024, dropout, FC classes."""

    def __init__(self, in_ch: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, 4))  # N x 128 x 4 x 4
        x = self.dropout(F.relu(self.fc1(torch.flatten(x, 1)), inplace=True))  # N x 1024
        return self.fc2(x)  # N x num_classes


class GoogLeNetTV(Backbone):
    """GoogLeNet in torchvision's layout: every state-dict key and shape equals ``torchvision.models.googlenet``.

    Differences from the paper network (``googlenet``): batch norm after every convolution (no conv biases,
    no LRN), the "5x5" branch is 3x3, the last max-pool is 2x2, main dropout 0.2.

    Input: ``Tensor[N, 3, H, W]`` normalised with ImageNet mean/std on 0-1 RGB (``normalize``). With
    ``transform_input=True`` (the setting of torchvision's pretrained weights) the network itself re-maps that
    input to ``(x01 - 0.5) / 0.5`` first, so callers always feed ImageNet-normalised images.
    """

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = True,
                 dropout: float = 0.2, dropout_aux: float = 0.7):
        super().__init__()
        self.num_classes = num_classes
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.conv1 = ConvBNReLU(3, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = ConvBNReLU(64, 64, 1)
        self.conv3 = ConvBNReLU(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        chans = 192
        for name, cfg in INCEPTION_CFG.items():
            block = InceptionBN(chans, *cfg)
            setattr(self, f"inception{name}", block)
            chans = block.out_channels
            if name == "3b":
                self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            elif name == "4e":
                self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.aux1 = InceptionAuxBN(512, num_classes, dropout_aux) if aux_logits else None  # on 4a
        self.aux2 = InceptionAuxBN(528, num_classes, dropout_aux) if aux_logits else None  # on 4d
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)

        self.out_channels = 1024
        self.stride = 32
        self.input_size = 224
        self.mean, self.std, self.input_scale = IMAGENET_MEAN, IMAGENET_STD, 1.0
        self.feature_info = [dict(f) for f in FEATURE_INFO]
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's scheme: truncated normal (std 0.01) for conv and linear weights, BN at identity.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.01, a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def aux_heads(self) -> list[nn.Module]:
        return [h for h in (self.aux1, self.aux2) if h is not None]

    def _stem(self, x: Tensor) -> Tensor:
        if self.transform_input:
            x = imagenet_to_half_range(x)
        x = self.maxpool1(self.conv1(x))  # N x 64 x 56 x 56
        x = self.conv3(self.conv2(x))  # N x 192 x 56 x 56
        x = self.maxpool2(x)  # N x 192 x 28 x 28
        x = self.inception3b(self.inception3a(x))  # N x 480 x 28 x 28
        return self.maxpool3(x)  # N x 480 x 14 x 14

    def _tail(self, x: Tensor) -> Tensor:
        x = self.maxpool4(self.inception4e(x))  # N x 832 x 7 x 7
        return self.inception5b(self.inception5a(x))  # N x 1024 x 7 x 7

    def _aux_forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        x = self.inception4a(self._stem(x))  # N x 512 x 14 x 14
        a1 = self.aux1(x)
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # N x 528 x 14 x 14
        a2 = self.aux2(x)
        return self._tail(x), (a1, a2)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.inception4a(self._stem(x))
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # N x 528 x 14 x 14
        return self._tail(x)

    def forward_head(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # N x 1024
        return self.fc(self.dropout(x))  # N x num_classes


@register_backbone("googlenet_tv")
def googlenet_tv(*, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = True,
                 dropout: float = 0.2, **kwargs) -> GoogLeNetTV:
    """GoogLeNet with batch norm, key-compatible with ``torchvision.models.googlenet``.

    torchvision's weight file contains the aux heads, so keep ``aux_logits=True`` (the default) to load it;
    ``transform_input=True`` matches its pretrained configuration.
    """
    return GoogLeNetTV(num_classes=num_classes, aux_logits=aux_logits, transform_input=transform_input,
                       dropout=dropout, **kwargs)
