"""GoogLeNet as in the paper (Szegedy et al., 2014, Table 1 and Figure 3): LRN, true 5x5 branches, no batch norm."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gdet.backbones.base import Backbone, ConvReLU
from gdet.backbones.registry import register_backbone

# Table 1: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj) per inception module.
INCEPTION_CFG: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}

# Named stages of both GoogLeNet variants (same topology): channels and stride of each.
FEATURE_INFO = (
    {"name": "conv3", "channels": 192, "stride": 4},
    {"name": "inception3b", "channels": 480, "stride": 8},
    {"name": "inception4e", "channels": 832, "stride": 16},
    {"name": "inception5b", "channels": 1024, "stride": 32},
)


class Inception(nn.Module):
    """Figure 2(b): 1x1, 1x1->3x3, 1x1->5x5 and 3x3 max-pool->1x1 branches, concatenated."""

    def __init__(self, in_ch: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool_proj: int):
        super().__init__()
        self.branch1 = ConvReLU(in_ch, c1, 1)
        self.branch2 = nn.Sequential(ConvReLU(in_ch, c3r, 1), ConvReLU(c3r, c3, 3, padding=1))
        self.branch3 = nn.Sequential(ConvReLU(in_ch, c5r, 1), ConvReLU(c5r, c5, 5, padding=2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), ConvReLU(in_ch, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """The paper's auxiliary classifier: avg-pool 5x5/3, 1x1 conv 128 + ReLU, FC 1024 + ReLU, dropout 0.7, linear.

    At 224 px input the 14x14 map pools to 4x4, so FC 1024 sees 128 x 4 x 4 = 2048 inputs; other input sizes
    are pooled adaptively to the same 4x4 so the head works at any size.
    """

    def __init__(self, in_ch: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.conv = ConvReLU(in_ch, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) >= 5:
            x = F.avg_pool2d(x, 5, stride=3)  # N x C x 4 x 4 at 224 px
        x = F.adaptive_avg_pool2d(x, 4)
        x = self.conv(x)  # N x 128 x 4 x 4
        x = torch.flatten(x, 1)
        x = self.dropout(F.relu(self.fc1(x), inplace=True))  # N x 1024
        return self.fc2(x)  # N x num_classes


class GoogLeNet(Backbone):
    """GoogLeNet (Inception v1) exactly as Table 1: 22 layers with parameters, 9 inception modules.

    Input: ``Tensor[N, 3, H, W]`` normalised RGB (ImageNet mean/std on 0-1 input); 224 x 224 by default, any
    size >= 32 works thanks to the adaptive final pooling.
    """

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, dropout: float = 0.4,
                 dropout_aux: float = 0.7):
        super().__init__()
        self.num_classes = num_classes
        self.aux_logits = aux_logits
        self.conv1 = ConvReLU(3, 64, 7, stride=2, padding=3)
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.lrn1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv2 = ConvReLU(64, 64, 1)
        self.conv3 = ConvReLU(64, 192, 3, padding=1)
        self.lrn2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.pool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        chans = 192
        for name, cfg in INCEPTION_CFG.items():
            block = Inception(chans, *cfg)
            setattr(self, f"inception{name}", block)
            chans = block.out_channels
        self.pool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.pool4 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.aux1 = InceptionAux(512, num_classes, dropout_aux) if aux_logits else None  # on 4a
        self.aux2 = InceptionAux(528, num_classes, dropout_aux) if aux_logits else None  # on 4d
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)

        self.out_channels = 1024
        self.stride = 32
        self.input_size = 224
        self.feature_info = [dict(f) for f in FEATURE_INFO]
        self._init_weights()

    def _init_weights(self) -> None:
        # No batch norm: He initialisation keeps activations from vanishing over 22 ReLU layers.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.constant_(m.bias, 0.0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def aux_heads(self) -> list[nn.Module]:
        return [h for h in (self.aux1, self.aux2) if h is not None]

    def _stem(self, x: Tensor) -> Tensor:
        x = self.conv1(x)  # N x 64 x 112 x 112
        x = self.lrn1(self.pool1(x))  # N x 64 x 56 x 56
        x = self.conv3(self.conv2(x))  # N x 192 x 56 x 56
        x = self.pool2(self.lrn2(x))  # N x 192 x 28 x 28
        x = self.inception3b(self.inception3a(x))  # N x 480 x 28 x 28
        return self.pool3(x)  # N x 480 x 14 x 14

    def _aux_forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        x = self.inception4a(self._stem(x))  # N x 512 x 14 x 14
        a1 = self.aux1(x)
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # N x 528 x 14 x 14
        a2 = self.aux2(x)
        x = self.pool4(self.inception4e(x))  # N x 832 x 7 x 7
        x = self.inception5b(self.inception5a(x))  # N x 1024 x 7 x 7
        return x, (a1, a2)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self._stem(x)
        x = self.inception4e(self.inception4d(self.inception4c(self.inception4b(self.inception4a(x)))))
        x = self.pool4(x)  # N x 832 x 7 x 7
        return self.inception5b(self.inception5a(x))  # N x 1024 x 7 x 7

    def forward_head(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # N x 1024
        return self.fc(self.dropout(x))  # N x num_classes


@register_backbone("googlenet")
def googlenet(*, num_classes: int = 1000, aux_logits: bool = True, dropout: float = 0.4, **kwargs) -> GoogLeNet:
    """GoogLeNet v1 as in the paper (LRN, true 5x5 branches, no batch norm), with the two aux heads."""
    return GoogLeNet(num_classes=num_classes, aux_logits=aux_logits, dropout=dropout, **kwargs)
