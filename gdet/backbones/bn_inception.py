"""BN-Inception / Inception-v2 (Ioffe & Szegedy, 2015, Figure 5): GoogLeNet with batch norm, 5x5 -> two 3x3."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gdet.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, ConvBNReLU
from gdet.backbones.registry import register_backbone
from gdet.errors import ConfigError

# Figure 5 of the BN paper: (#1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool, pool proj, stride).
# Stride-2 modules have no 1x1 branch and pass the max-pooled input through (pool proj 0).
BN_INCEPTION_CFG: dict[str, tuple[int, int, int, int, int, str, int, int]] = {
    "3a": (64, 64, 64, 64, 96, "avg", 32, 1),
    "3b": (64, 64, 96, 64, 96, "avg", 64, 1),
    "3c": (0, 128, 160, 64, 96, "max", 0, 2),
    "4a": (224, 64, 96, 96, 128, "avg", 128, 1),
    "4b": (192, 96, 128, 96, 128, "avg", 128, 1),
    "4c": (160, 128, 160, 128, 160, "avg", 128, 1),
    "4d": (96, 128, 192, 160, 192, "avg", 128, 1),
    "4e": (0, 128, 192, 192, 256, "max", 0, 2),
    "5a": (352, 192, 320, 160, 224, "avg", 128, 1),
    "5b": (352, 192, 320, 192, 224, "max", 128, 1),
}

BN_EPS = 1e-5


class ReductionMaxPool(nn.MaxPool2d):
    """The 3x3/2 max-pool branch of a stride-2 block (Caffe rounding, ``ceil_mode``), padded with -inf on the
    right/bottom of an odd side so that its output has the stride-2 convolutions' size, ``ceil(n / 2)``, on any
    input (plain ceil-mode pooling gives ``(n - 1) / 2`` there, and the concatenation fails). Even sides, 224-px
    inputs among them, are pooled exactly as before."""

    def __init__(self):
        super().__init__(3, stride=2, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            x = F.pad(x, (0, w % 2, 0, h % 2), value=float("-inf"))
        return super().forward(x)


class InceptionV2Block(nn.Module):
    """One Figure-5 module: [1x1] | 1x1->3x3 | 1x1->3x3->3x3 | pool[->1x1], concatenated.

    With stride 2 the two 3x3 paths end with a stride-2 convolution and the pool branch is a plain
    3x3/2 max-pool of the input (no projection), as in the paper's 3c and 4e.
    """

    def __init__(self, in_ch: int, c1: int, c3r: int, c3: int, d3r: int, d3: int, pool: str, pool_proj: int,
                 stride: int):
        super().__init__()
        self.branch1x1 = ConvBNReLU(in_ch, c1, 1, eps=BN_EPS) if c1 else None
        self.branch3x3 = nn.Sequential(ConvBNReLU(in_ch, c3r, 1, eps=BN_EPS),
                                       ConvBNReLU(c3r, c3, 3, stride=stride, padding=1, eps=BN_EPS))
        self.branch3x3dbl = nn.Sequential(ConvBNReLU(in_ch, d3r, 1, eps=BN_EPS),
                                          ConvBNReLU(d3r, d3, 3, padding=1, eps=BN_EPS),
                                          ConvBNReLU(d3, d3, 3, stride=stride, padding=1, eps=BN_EPS))
        if stride == 2:
            pool_layer = ReductionMaxPool()
        elif pool == "max":
            pool_layer = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
        else:
            pool_layer = nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
        proj = [ConvBNReLU(in_ch, pool_proj, 1, eps=BN_EPS)] if pool_proj else []
        self.branch_pool = nn.Sequential(pool_layer, *proj)
        self.out_channels = c1 + c3 + d3 + (pool_proj or in_ch)

    def forward(self, x: Tensor) -> Tensor:
        outs = [self.branch1x1(x)] if self.branch1x1 is not None else []
        outs += [self.branch3x3(x), self.branch3x3dbl(x), self.branch_pool(x)]
        return torch.cat(outs, 1)


class BNInception(Backbone):
    """BN-Inception (Inception-v2) as in Figure 5 of Ioffe & Szegedy (2015); 10 inception modules, no aux heads.

    The stem's 7x7 convolution is a plain convolution (the paper marks it depthwise-separable with
    depth multiplier 8; the released Caffe model and its PyTorch ports use a plain one, as here).

    Input: ``Tensor[N, 3, H, W]`` ImageNet-normalised 0-1 RGB, 224 x 224 by default (any size >= 32).
    """

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.0):
        super().__init__()
        if aux_logits:
            raise ConfigError("bn_inception has no aux heads; use aux_logits=False")
        self.num_classes = num_classes
        self.aux_logits = False
        self.conv1 = ConvBNReLU(3, 64, 7, stride=2, padding=3, eps=BN_EPS)
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2_reduce = ConvBNReLU(64, 64, 1, eps=BN_EPS)
        self.conv2 = ConvBNReLU(64, 192, 3, padding=1, eps=BN_EPS)
        self.pool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        chans = 192
        for name, cfg in BN_INCEPTION_CFG.items():
            block = InceptionV2Block(chans, *cfg)
            setattr(self, f"inception{name}", block)
            chans = block.out_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(chans, num_classes)

        self.out_channels = chans  # 1024
        self.stride = 32
        self.input_size = 224
        self.mean, self.std, self.input_scale = IMAGENET_MEAN, IMAGENET_STD, 1.0
        self.feature_info = [
            {"name": "conv2", "channels": 192, "stride": 4},
            {"name": "inception3b", "channels": 320, "stride": 8},
            {"name": "inception4d", "channels": 608, "stride": 16},
            {"name": "inception5b", "channels": 1024, "stride": 32},
        ]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.pool1(self.conv1(x))  # N x 64 x 56 x 56
        x = self.pool2(self.conv2(self.conv2_reduce(x)))  # N x 192 x 28 x 28
        x = self.inception3c(self.inception3b(self.inception3a(x)))  # N x 576 x 14 x 14
        for name in ("4a", "4b", "4c", "4d", "4e"):
            x = getattr(self, f"inception{name}")(x)  # N x 1056 x 7 x 7 after 4e
        return self.inception5b(self.inception5a(x))  # N x 1024 x 7 x 7

    def forward_head(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # N x 1024
        return self.fc(self.dropout(x))  # N x num_classes


@register_backbone("bn_inception")
def bn_inception(*, num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.0,
                 **kwargs) -> BNInception:
    """BN-Inception (Inception-v2, Ioffe & Szegedy 2015) without aux heads."""
    return BNInception(num_classes=num_classes, aux_logits=aux_logits, dropout=dropout, **kwargs)
