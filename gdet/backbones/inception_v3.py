"""Inception-v3 (Szegedy et al., 2016, "Rethinking the Inception Architecture"); keys match torchvision's."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gdet.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, ConvBNReLU
from gdet.backbones.googlenet_tv import imagenet_to_half_range
from gdet.backbones.registry import register_backbone


class InceptionA(nn.Module):
    """35x35 module (Figure 5): 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avg-pool->1x1."""

    def __init__(self, in_ch: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBNReLU(in_ch, 64, 1)
        self.branch5x5_1 = ConvBNReLU(in_ch, 48, 1)
        self.branch5x5_2 = ConvBNReLU(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBNReLU(in_ch, 64, 1)
        self.branch3x3dbl_2 = ConvBNReLU(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBNReLU(96, 96, 3, padding=1)
        self.branch_pool = ConvBNReLU(in_ch, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)  # N x (224 + pool_features) x 35 x 35


class InceptionB(nn.Module):
    """35 -> 17 grid reduction: 3x3/2 | 1x1->3x3->3x3/2 | max-pool/2."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3 = ConvBNReLU(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBNReLU(in_ch, 64, 1)
        self.branch3x3dbl_2 = ConvBNReLU(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBNReLU(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)  # N x 768 x 17 x 17


class InceptionC(nn.Module):
    """17x17 module (Figure 6): factorised 7x7 as 1x7 and 7x1 convolutions."""

    def __init__(self, in_ch: int, c7: int):
        super().__init__()
        self.branch1x1 = ConvBNReLU(in_ch, 192, 1)
        self.branch7x7_1 = ConvBNReLU(in_ch, c7, 1)
        self.branch7x7_2 = ConvBNReLU(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBNReLU(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBNReLU(in_ch, c7, 1)
        self.branch7x7dbl_2 = ConvBNReLU(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBNReLU(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBNReLU(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBNReLU(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBNReLU(in_ch, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)  # N x 768 x 17 x 17


class InceptionD(nn.Module):
    """17 -> 8 grid reduction: 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | max-pool/2."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3_1 = ConvBNReLU(in_ch, 192, 1)
        self.branch3x3_2 = ConvBNReLU(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBNReLU(in_ch, 192, 1)
        self.branch7x7x3_2 = ConvBNReLU(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBNReLU(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBNReLU(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)  # N x 1280 x 8 x 8


class InceptionE(nn.Module):
    """8x8 module (Figure 7): expanded filter bank, 3x3 split into parallel 1x3 and 3x1 outputs."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.branch1x1 = ConvBNReLU(in_ch, 320, 1)
        self.branch3x3_1 = ConvBNReLU(in_ch, 384, 1)
        self.branch3x3_2a = ConvBNReLU(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBNReLU(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBNReLU(in_ch, 448, 1)
        self.branch3x3dbl_2 = ConvBNReLU(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBNReLU(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBNReLU(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBNReLU(in_ch, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], 1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)  # N x 2048 x 8 x 8


class InceptionAuxV3(nn.Module):
    """Aux head on the 17x17 grid: avg-pool 5x5/3, 1x1 conv 128, 5x5 conv 768, global pool, linear.

    At 299 px the 17x17 map pools to 5x5; maps smaller than 17x17 (small inputs) are pooled adaptively to
    5x5 instead, so the 5x5 convolution always has room and the head works at any input size >= 75 px.
    """

    def __init__(self, in_ch: int, num_classes: int):
        super().__init__()
        self.conv0 = ConvBNReLU(in_ch, 128, 1)
        self.conv1 = ConvBNReLU(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.avg_pool2d(x, 5, stride=3) if min(x.shape[-2:]) >= 17 else F.adaptive_avg_pool2d(x, 5)
        x = self.conv1(self.conv0(x))  # N x 768 x 1 x 1 at 299 px
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))  # N x num_classes


class InceptionV3(Backbone):
    """Inception-v3 in torchvision's layout: state-dict keys and shapes equal ``torchvision.models.inception_v3``.

    Input: ``Tensor[N, 3, H, W]`` ImageNet-normalised 0-1 RGB, 299 x 299 by default (>= 75 px). With
    ``transform_input=True`` (torchvision's pretrained setting) the network re-maps it to ``(x01 - 0.5) / 0.5``.
    """

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = True,
                 dropout: float = 0.5):
        super().__init__()
        self.num_classes = num_classes
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = ConvBNReLU(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBNReLU(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBNReLU(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = ConvBNReLU(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBNReLU(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.AuxLogits = InceptionAuxV3(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2048, num_classes)

        self.out_channels = 2048
        self.stride = 32
        self.input_size = 299
        self.mean, self.std, self.input_scale = IMAGENET_MEAN, IMAGENET_STD, 1.0
        self.feature_info = [
            {"name": "Conv2d_4a_3x3", "channels": 192, "stride": 4},
            {"name": "Mixed_5d", "channels": 288, "stride": 8},
            {"name": "Mixed_6e", "channels": 768, "stride": 16},
            {"name": "Mixed_7c", "channels": 2048, "stride": 32},
        ]
        self._init_weights()

    def _init_weights(self) -> None:
        # Truncated normal as in the TF release: std 0.1, except the aux 5x5 conv (0.01) and aux linear (0.001).
        special = {}
        if self.AuxLogits is not None:
            special = {id(self.AuxLogits.conv1.conv): 0.01, id(self.AuxLogits.fc): 0.001}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=special.get(id(m), 0.1), a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def aux_heads(self) -> list[nn.Module]:
        return [self.AuxLogits] if self.AuxLogits is not None else []

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = self._new_linear(self.fc.in_features, num_classes)
        if self.AuxLogits is not None:
            self.AuxLogits.fc = self._new_linear(self.AuxLogits.fc.in_features, num_classes)
        self.num_classes = num_classes

    def _to_17(self, x: Tensor) -> Tensor:
        if self.transform_input:
            x = imagenet_to_half_range(x)
        x = self.Conv2d_1a_3x3(x)  # N x 32 x 149 x 149
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(x))  # N x 64 x 147 x 147
        x = self.maxpool1(x)  # N x 64 x 73 x 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # N x 192 x 71 x 71
        x = self.maxpool2(x)  # N x 192 x 35 x 35
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # N x 288 x 35 x 35
        x = self.Mixed_6a(x)  # N x 768 x 17 x 17
        return self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # N x 768 x 17 x 17

    def _to_8(self, x: Tensor) -> Tensor:
        return self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # N x 2048 x 8 x 8

    def _aux_forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        x = self._to_17(x)
        aux = self.AuxLogits(x)
        return self._to_8(x), (aux,)

    def forward_features(self, x: Tensor) -> Tensor:
        return self._to_8(self._to_17(x))

    def forward_head(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # N x 2048
        return self.fc(self.dropout(x))  # N x num_classes


@register_backbone("inception_v3")
def inception_v3(*, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = True,
                 dropout: float = 0.5, **kwargs) -> InceptionV3:
    """Inception-v3, key-compatible with ``torchvision.models.inception_v3`` (whose weight file includes the
    aux head: keep ``aux_logits=True`` to load it; ``transform_input=True`` is its pretrained setting)."""
    return InceptionV3(num_classes=num_classes, aux_logits=aux_logits, transform_input=transform_input,
                       dropout=dropout, **kwargs)
