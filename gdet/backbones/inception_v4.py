"""Inception-v4 and Inception-ResNet-v2 (Szegedy et al., 2016, "Inception-v4, Inception-ResNet and the Impact of
Residual Connections on Learning"), Figures 3-9 and 15-20 as in the TF-slim release the paper's weights came from."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gdet.backbones.base import Backbone, ConvBNReLU
from gdet.backbones.registry import register_backbone
from gdet.errors import ConfigError

# The TF-slim weights were trained on (x01 - 0.5) / 0.5 input.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


def _avg_pool_3x3(x: Tensor) -> Tensor:
    # TF's 'SAME' average pooling averages only the valid pixels at the border.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _cat(*xs: Tensor) -> Tensor:
    return torch.cat(xs, 1)


class _Branches(nn.Module):
    """Parallel branches concatenated in the given order; ``"maxpool"`` stands for a 3x3/2 max-pool branch."""

    def __init__(self, *branches: nn.Module | str):
        super().__init__()
        self.paths = nn.ModuleList(b for b in branches if not isinstance(b, str))
        self.pool_at = [i for i, b in enumerate(branches) if b == "maxpool"]

    def forward(self, x: Tensor) -> Tensor:
        outs = [p(x) for p in self.paths]
        for i in self.pool_at:
            outs.insert(i, F.max_pool2d(x, 3, stride=2))
        return torch.cat(outs, 1)


def _seq(*layers: tuple) -> nn.Sequential:
    """``_seq((in, out, k), (in, out, k, stride, padding), ...)`` -> a chain of ConvBNReLU."""
    return nn.Sequential(*(ConvBNReLU(*spec) for spec in layers))


def _stem_v4() -> nn.Sequential:
    """Figure 3: 299x299x3 -> 35x35x384 (shared by Inception-v4; Inception-ResNet-v2 uses the v3-style stem)."""
    return nn.Sequential(
        _seq((3, 32, 3, 2), (32, 32, 3), (32, 64, 3, 1, 1)),  # N x 64 x 147 x 147
        _Branches("maxpool", ConvBNReLU(64, 96, 3, stride=2)),  # N x 160 x 73 x 73
        _Branches(_seq((160, 64, 1), (64, 96, 3)),
                  _seq((160, 64, 1), (64, 64, (1, 7), 1, (0, 3)), (64, 64, (7, 1), 1, (3, 0)), (64, 96, 3))),
        _Branches(ConvBNReLU(192, 192, 3, stride=2), "maxpool"),  # N x 384 x 35 x 35
    )


class InceptionA4(nn.Module):
    """Figure 4, 35x35: 1x1 96 | 1x1 64 -> 3x3 96 | 1x1 64 -> 3x3 96 -> 3x3 96 | avg-pool -> 1x1 96."""

    def __init__(self, in_ch: int = 384):
        super().__init__()
        self.b0 = ConvBNReLU(in_ch, 96, 1)
        self.b1 = _seq((in_ch, 64, 1), (64, 96, 3, 1, 1))
        self.b2 = _seq((in_ch, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1))
        self.b3 = ConvBNReLU(in_ch, 96, 1)

    def forward(self, x: Tensor) -> Tensor:
        return _cat(self.b0(x), self.b1(x), self.b2(x), self.b3(_avg_pool_3x3(x)))  # N x 384 x 35 x 35


class InceptionB4(nn.Module):
    """Figure 5, 17x17: 1x1 384 | 1x7/7x1 chain to 256 | double 7x1/1x7 chain to 256 | avg-pool -> 1x1 128."""

    def __init__(self, in_ch: int = 1024):
        super().__init__()
        self.b0 = ConvBNReLU(in_ch, 384, 1)
        self.b1 = _seq((in_ch, 192, 1), (192, 224, (1, 7), 1, (0, 3)), (224, 256, (7, 1), 1, (3, 0)))
        self.b2 = _seq((in_ch, 192, 1), (192, 192, (7, 1), 1, (3, 0)), (192, 224, (1, 7), 1, (0, 3)),
                       (224, 224, (7, 1), 1, (3, 0)), (224, 256, (1, 7), 1, (0, 3)))
        self.b3 = ConvBNReLU(in_ch, 128, 1)

    def forward(self, x: Tensor) -> Tensor:
        return _cat(self.b0(x), self.b1(x), self.b2(x), self.b3(_avg_pool_3x3(x)))  # N x 1024 x 17 x 17


class InceptionC4(nn.Module):
    """Figure 6, 8x8: 1x1 256 | 1x1 384 -> (1x3, 3x1) 256 each | 1x1 384 -> 3x1 448 -> 1x3 512 -> (1x3, 3x1)
    256 each | avg-pool -> 1x1 256."""

    def __init__(self, in_ch: int = 1536):
        super().__init__()
        self.b0 = ConvBNReLU(in_ch, 256, 1)
        self.b1 = ConvBNReLU(in_ch, 384, 1)
        self.b1a = ConvBNReLU(384, 256, (1, 3), padding=(0, 1))
        self.b1b = ConvBNReLU(384, 256, (3, 1), padding=(1, 0))
        self.b2 = _seq((in_ch, 384, 1), (384, 448, (3, 1), 1, (1, 0)), (448, 512, (1, 3), 1, (0, 1)))
        self.b2a = ConvBNReLU(512, 256, (1, 3), padding=(0, 1))
        self.b2b = ConvBNReLU(512, 256, (3, 1), padding=(1, 0))
        self.b3 = ConvBNReLU(in_ch, 256, 1)

    def forward(self, x: Tensor) -> Tensor:
        t1, t2 = self.b1(x), self.b2(x)
        return _cat(self.b0(x), self.b1a(t1), self.b1b(t1), self.b2a(t2), self.b2b(t2),
                    self.b3(_avg_pool_3x3(x)))  # N x 1536 x 8 x 8


def _reduction_a(in_ch: int, k: int, l: int, m: int, n: int) -> _Branches:
    """Figure 7, 35 -> 17: 3x3/2 n | 1x1 k -> 3x3 l -> 3x3/2 m | max-pool/2. (k, l, m, n) from Table 1."""
    return _Branches(ConvBNReLU(in_ch, n, 3, stride=2), _seq((in_ch, k, 1), (k, l, 3, 1, 1), (l, m, 3, 2)), "maxpool")


class _Backbone4(Backbone):
    """Shared metadata and head of the two 2016 networks (no aux heads: the released models have none)."""

    def _setup(self, num_classes: int, aux_logits: bool, dropout: float, name: str) -> None:
        if aux_logits:
            raise ConfigError(f"{name} has no aux heads; use aux_logits=False")
        self.num_classes = num_classes
        self.aux_logits = False
        self.stride = 32
        self.input_size = 299
        self.mean, self.std, self.input_scale = INCEPTION_MEAN, INCEPTION_STD, 1.0
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward_head(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # N x 1536
        return self.fc(self.dropout(x))  # N x num_classes


class InceptionV4(_Backbone4):
    """Inception-v4 (Figure 9): stem, 4 x Inception-A, Reduction-A, 7 x Inception-B, Reduction-B, 3 x Inception-C.

    Input: ``Tensor[N, 3, H, W]``, ``(x01 - 0.5) / 0.5`` RGB (the TF-slim convention), 299 x 299 by default
    (>= 75 px).
    """

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.2):
        super().__init__()
        self._setup(num_classes, aux_logits, dropout, "inception_v4")
        self.stem = _stem_v4()  # N x 384 x 35 x 35
        self.stage_a = nn.Sequential(*(InceptionA4() for _ in range(4)))
        self.reduction_a = _reduction_a(384, 192, 224, 256, 384)  # N x 1024 x 17 x 17
        self.stage_b = nn.Sequential(*(InceptionB4() for _ in range(7)))
        self.reduction_b = _Branches(  # Figure 8, 17 -> 8
            _seq((1024, 192, 1), (192, 192, 3, 2)),
            _seq((1024, 256, 1), (256, 256, (1, 7), 1, (0, 3)), (256, 320, (7, 1), 1, (3, 0)), (320, 320, 3, 2)),
            "maxpool")  # N x 1536 x 8 x 8
        self.stage_c = nn.Sequential(*(InceptionC4() for _ in range(3)))
        self.fc = nn.Linear(1536, num_classes)
        self.out_channels = 1536
        self.feature_info = [
            {"name": "stem", "channels": 384, "stride": 8},
            {"name": "stage_a", "channels": 384, "stride": 8},
            {"name": "stage_b", "channels": 1024, "stride": 16},
            {"name": "stage_c", "channels": 1536, "stride": 32},
        ]
        self._init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stage_a(self.stem(x))  # N x 384 x 35 x 35
        x = self.stage_b(self.reduction_a(x))  # N x 1024 x 17 x 17
        return self.stage_c(self.reduction_b(x))  # N x 1536 x 8 x 8


class _Residual(nn.Module):
    """``relu(x + scale * up(concat(branches(x))))``: the Inception-ResNet unit; ``up`` is a linear 1x1 conv
    (with bias, no BN) back to the input width. Scaling the residual by 0.1-0.3 keeps training stable (Sec. 3.3)."""

    def __init__(self, branches: list[nn.Module], cat_ch: int, ch: int, scale: float, relu: bool = True):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.up = nn.Conv2d(cat_ch, ch, 1, bias=True)
        self.scale = scale
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        out = x + self.scale * self.up(torch.cat([b(x) for b in self.branches], 1))
        return F.relu(out) if self.relu else out


def _block35(scale: float) -> _Residual:
    """Figure 16, 35x35x320: 1x1 32 | 1x1 32 -> 3x3 32 | 1x1 32 -> 3x3 48 -> 3x3 64."""
    return _Residual([ConvBNReLU(320, 32, 1), _seq((320, 32, 1), (32, 32, 3, 1, 1)),
                      _seq((320, 32, 1), (32, 48, 3, 1, 1), (48, 64, 3, 1, 1))], 128, 320, scale)


def _block17(scale: float) -> _Residual:
    """Figure 17, 17x17x1088: 1x1 192 | 1x1 128 -> 1x7 160 -> 7x1 192."""
    return _Residual([ConvBNReLU(1088, 192, 1),
                      _seq((1088, 128, 1), (128, 160, (1, 7), 1, (0, 3)), (160, 192, (7, 1), 1, (3, 0)))],
                     384, 1088, scale)


def _block8(scale: float, relu: bool = True) -> _Residual:
    """Figure 19, 8x8x2080: 1x1 192 | 1x1 192 -> 1x3 224 -> 3x1 256."""
    return _Residual([ConvBNReLU(2080, 192, 1),
                      _seq((2080, 192, 1), (192, 224, (1, 3), 1, (0, 1)), (224, 256, (3, 1), 1, (1, 0)))],
                     448, 2080, scale, relu)


class Mixed5b(nn.Module):
    """The 35x35 entry block of the TF-slim Inception-ResNet-v2: 192 -> 320 channels."""

    def __init__(self):
        super().__init__()
        self.b0 = ConvBNReLU(192, 96, 1)
        self.b1 = _seq((192, 48, 1), (48, 64, 5, 1, 2))
        self.b2 = _seq((192, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1))
        self.b3 = ConvBNReLU(192, 64, 1)

    def forward(self, x: Tensor) -> Tensor:
        return _cat(self.b0(x), self.b1(x), self.b2(x), self.b3(_avg_pool_3x3(x)))  # N x 320 x 35 x 35


class InceptionResNetV2(_Backbone4):
    """Inception-ResNet-v2 (Figure 15) as released in TF-slim: v3-style stem + Mixed_5b, 10 x Block35 (scale
    0.17), Reduction-A, 20 x Block17 (0.10), Reduction-B, 9 x Block8 (0.20) + a final Block8 without scaling
    or ReLU, 1x1 conv to 1536.

    Input: ``Tensor[N, 3, H, W]``, ``(x01 - 0.5) / 0.5`` RGB, 299 x 299 by default (>= 75 px).
    """

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.2,
                 scales: tuple[float, float, float] = (0.17, 0.10, 0.20)):
        super().__init__()
        self._setup(num_classes, aux_logits, dropout, "inception_resnet_v2")
        self.stem = nn.Sequential(
            _seq((3, 32, 3, 2), (32, 32, 3), (32, 64, 3, 1, 1)),  # N x 64 x 147 x 147
            nn.MaxPool2d(3, stride=2),  # N x 64 x 73 x 73
            _seq((64, 80, 1), (80, 192, 3)),  # N x 192 x 71 x 71
            nn.MaxPool2d(3, stride=2),  # N x 192 x 35 x 35
            Mixed5b(),  # N x 320 x 35 x 35
        )
        self.stage_a = nn.Sequential(*(_block35(scales[0]) for _ in range(10)))
        self.reduction_a = _reduction_a(320, 256, 256, 384, 384)  # N x 1088 x 17 x 17
        self.stage_b = nn.Sequential(*(_block17(scales[1]) for _ in range(20)))
        self.reduction_b = _Branches(  # Figure 18, 17 -> 8
            _seq((1088, 256, 1), (256, 384, 3, 2)),
            _seq((1088, 256, 1), (256, 288, 3, 2)),
            _seq((1088, 256, 1), (256, 288, 3, 1, 1), (288, 320, 3, 2)),
            "maxpool")  # N x 2080 x 8 x 8
        self.stage_c = nn.Sequential(*(_block8(scales[2]) for _ in range(9)), _block8(1.0, relu=False))
        self.conv_final = ConvBNReLU(2080, 1536, 1)  # N x 1536 x 8 x 8
        self.fc = nn.Linear(1536, num_classes)
        self.out_channels = 1536
        self.feature_info = [
            {"name": "stem", "channels": 320, "stride": 8},
            {"name": "stage_a", "channels": 320, "stride": 8},
            {"name": "stage_b", "channels": 1088, "stride": 16},
            {"name": "conv_final", "channels": 1536, "stride": 32},
        ]
        self._init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stage_a(self.stem(x))  # N x 320 x 35 x 35
        x = self.stage_b(self.reduction_a(x))  # N x 1088 x 17 x 17
        return self.conv_final(self.stage_c(self.reduction_b(x)))  # N x 1536 x 8 x 8


@register_backbone("inception_v4")
def inception_v4(*, num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.2,
                 **kwargs) -> InceptionV4:
    """Inception-v4 (Szegedy et al., 2016), no aux heads; 42,679,816 parameters at 1000 classes."""
    return InceptionV4(num_classes=num_classes, aux_logits=aux_logits, dropout=dropout, **kwargs)


@register_backbone("inception_resnet_v2")
def inception_resnet_v2(*, num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.2,
                        **kwargs) -> InceptionResNetV2:
    """Inception-ResNet-v2 (Szegedy et al., 2016), residual scales 0.17 / 0.10 / 0.20; 55,843,464 parameters."""
    return InceptionResNetV2(num_classes=num_classes, aux_logits=aux_logits, dropout=dropout, **kwargs)
