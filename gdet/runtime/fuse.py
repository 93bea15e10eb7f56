"""Exact inference rewrites of the module tree: batch norm folded into convolutions, an Inception block's parallel
1x1 convolutions fused into one, LRN kept in fp32 under reduced precision.

Every rewrite keeps the arithmetic of eval mode: only the order of floating-point additions changes, so outputs
agree with the original network to rounding (tested to 1e-5 relative in fp32 for every registry backbone).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gdet.backbones.base import IMAGENET_MEAN, IMAGENET_STD, ConvBNReLU, ConvReLU
from gdet.backbones.bn_inception import InceptionV2Block
from gdet.backbones.googlenet import Inception
from gdet.backbones.googlenet_tv import GoogLeNetTV, InceptionBN
from gdet.backbones.inception_v3 import InceptionA, InceptionC, InceptionD, InceptionE, InceptionV3
from gdet.backbones.inception_v4 import InceptionA4, InceptionB4, InceptionC4, Mixed5b, _Branches, _Residual

__all__ = ["ConvAct", "FusedBranches", "FusedResidual", "OneDNNConvAct", "fold_batch_norm", "fold_conv_bn",
           "fuse_blocks", "fuse_parallel_1x1", "fp32_lrn", "onednn_available", "rewrite", "use_onednn"]


class ConvAct(nn.Module):
    """A convolution with bias, optionally followed by ReLU: what ``ConvBNReLU`` becomes after folding."""

    def __init__(self, conv: nn.Conv2d, relu: bool = True):
        super().__init__()
        self.conv = conv
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return torch.relu_(x) if self.relu else x

    def is_pointwise(self) -> bool:
        """True for a 1x1, stride-1, unpadded, ungrouped convolution (one that can share its input read)."""
        c = self.conv
        return (c.kernel_size == (1, 1) and c.stride == (1, 1) and c.padding == (0, 0) and c.dilation == (1, 1)
                and c.groups == 1 and c.padding_mode == "zeros")


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution equal to ``bn(conv(x))`` in eval mode (running statistics), computed in float64.

    ``W' = W * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta`` per output channel.
    """
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    out.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
    out.bias.copy_((bias - bn.running_mean.double()) * scale + bn.bias.double())
    return out


def _replace_children(module: nn.Module, fn) -> nn.Module:
    """Replace ``module`` and every descendant ``m`` by ``fn(m)``, children before their parent. Returns the new
    ``module`` (itself unless ``fn`` replaced it)."""
    for name, child in list(module.named_children()):
        new = _replace_children(child, fn)
        if new is not child:
            setattr(module, name, new)
    return fn(module)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """Turn every ``ConvBNReLU`` into a biased convolution + ReLU and every ``ConvReLU`` into the same form, in
    place. Returns ``model`` (or its replacement when ``model`` itself is such a layer)."""

    def fn(m: nn.Module) -> nn.Module:
        if isinstance(m, ConvBNReLU):
            return ConvAct(fold_conv_bn(m.conv, m.bn))
        if isinstance(m, ConvReLU):
            return ConvAct(m.conv)
        return m

    return _replace_children(model, fn)


class Fork(nn.Module):
    """``t -> [a(t), b(t)]``: one input feeding two outputs that are concatenated next to each other."""

    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, t: Tensor) -> list[Tensor]:
        return [self.a(t), self.b(t)]


class FusedBranches(nn.Module):
    """An Inception block whose parallel 1x1 convolutions read their common input once.

    ``head`` is the concatenation of the 1x1 convolutions (output channels stacked, ReLU after); its output is
    split into ``splits`` channels and each part goes through its ``tails`` chain. ``others`` are the branches
    that read the block input directly (pooling branches). ``order`` lists, in concatenation order, where each
    output comes from: ``(0, i)`` tail ``i``, ``(1, j)`` other branch ``j``. A branch may return a list of
    tensors (a :class:`Fork`), concatenated in place.

    Args: x (Tensor[N, C, H, W]). Returns Tensor[N, sum of branch channels, H', W'].
    """

    def __init__(self, head: ConvAct, splits: list[int], tails: list[nn.Module], others: list[nn.Module],
                 order: list[tuple[int, int]]):
        super().__init__()
        self.head = head
        self.splits = list(splits)
        self.tails = nn.ModuleList(tails)
        self.others = nn.ModuleList(others)
        self.order = [tuple(o) for o in order]

    def forward(self, x: Tensor) -> Tensor:
        parts = self.head(x).split(self.splits, 1)
        outs: list[Tensor] = []
        for kind, i in self.order:
            r = self.tails[i](parts[i]) if kind == 0 else self.others[i](x)
            if isinstance(r, list):
                outs.extend(r)
            else:
                outs.append(r)
        return torch.cat(outs, 1)


class FusedResidual(nn.Module):
    """The Inception-ResNet unit ``relu(x + scale * up(branches(x)))`` over :class:`FusedBranches`."""

    def __init__(self, body: nn.Module, up: nn.Conv2d, scale: float, relu: bool):
        super().__init__()
        self.body, self.up, self.scale, self.relu = body, up, scale, relu

    def forward(self, x: Tensor) -> Tensor:
        out = x + self.scale * self.up(self.body(x))
        return F.relu(out) if self.relu else out


class _PoolThen(nn.Sequential):
    """A pooling layer followed by a projection; a Sequential so its keys read ``0`` (pool) and ``1`` (proj)."""


def _split_head(branch: nn.Module) -> tuple[ConvAct | None, nn.Module]:
    """``(1x1 head, rest)`` of a branch that starts with a pointwise ConvAct, else ``(None, branch)``."""
    if isinstance(branch, ConvAct):
        return (branch, nn.Identity()) if branch.is_pointwise() else (None, branch)
    if isinstance(branch, nn.Sequential) and len(branch) and isinstance(branch[0], ConvAct) \
            and branch[0].is_pointwise() and not isinstance(branch, _PoolThen):
        rest = list(branch)[1:]
        return branch[0], (nn.Sequential(*rest) if rest else nn.Identity())
    return None, branch


@torch.no_grad()
def _stack_heads(heads: list[ConvAct]) -> ConvAct:
    w = torch.cat([h.conv.weight for h in heads], 0)
    b = torch.cat([h.conv.bias if h.conv.bias is not None else torch.zeros(h.conv.out_channels, device=w.device,
                                                                             dtype=w.dtype) for h in heads])
    conv = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=True, device=w.device, dtype=w.dtype)
    conv.weight.copy_(w)
    conv.bias.copy_(b)
    return ConvAct(conv, relu=True)


def fuse_parallel_1x1(branches: list[nn.Module]) -> nn.Module | None:
    """One :class:`FusedBranches` equal to ``cat([b(x) for b in branches], 1)``, or None when fewer than two
    branches start with a pointwise ConvAct + ReLU (nothing to fuse)."""
    heads, tails, others, order = [], [], [], []
    for b in branches:
        head, rest = _split_head(b)
        if head is not None and head.relu:
            order.append((0, len(heads)))
            heads.append(head)
            tails.append(rest)
        else:
            order.append((1, len(others)))
            others.append(b)
    if len(heads) < 2:
        return None
    return FusedBranches(_stack_heads(heads), [h.conv.out_channels for h in heads], tails, others, order)


def _seq(*mods: nn.Module) -> nn.Sequential:
    return nn.Sequential(*mods)


def _block_branches(m: nn.Module) -> list[nn.Module] | None:
    """The branches, in concatenation order, of a known Inception block (after :func:`fold_batch_norm`)."""
    avg = lambda: nn.AvgPool2d(3, stride=1, padding=1)  # noqa: E731  F.avg_pool2d(x, 3, 1, 1)
    avg_valid = lambda: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)  # noqa: E731
    if isinstance(m, (Inception, InceptionBN)):
        return [m.branch1, m.branch2, m.branch3, _PoolThen(*m.branch4)]
    if isinstance(m, InceptionV2Block):
        return ([m.branch1x1] if m.branch1x1 is not None else []) + [m.branch3x3, m.branch3x3dbl,
                                                                       _PoolThen(*m.branch_pool)]
    if isinstance(m, InceptionA):
        return [m.branch1x1, _seq(m.branch5x5_1, m.branch5x5_2),
                _seq(m.branch3x3dbl_1, m.branch3x3dbl_2, m.branch3x3dbl_3), _PoolThen(avg(), m.branch_pool)]
    if isinstance(m, InceptionC):
        return [m.branch1x1, _seq(m.branch7x7_1, m.branch7x7_2, m.branch7x7_3),
                _seq(*(getattr(m, f"branch7x7dbl_{i}") for i in range(1, 6))), _PoolThen(avg(), m.branch_pool)]
    if isinstance(m, InceptionD):
        return [_seq(m.branch3x3_1, m.branch3x3_2), _seq(*(getattr(m, f"branch7x7x3_{i}") for i in range(1, 5))),
                nn.MaxPool2d(3, stride=2)]
    if isinstance(m, InceptionE):
        return [m.branch1x1, _seq(m.branch3x3_1, Fork(m.branch3x3_2a, m.branch3x3_2b)),
                _seq(m.branch3x3dbl_1, m.branch3x3dbl_2, Fork(m.branch3x3dbl_3a, m.branch3x3dbl_3b)),
                _PoolThen(avg(), m.branch_pool)]
    if isinstance(m, (InceptionA4, InceptionB4, Mixed5b)):
        return [m.b0, m.b1, m.b2, _PoolThen(avg_valid(), m.b3)]
    if isinstance(m, InceptionC4):
        return [m.b0, _seq(m.b1, Fork(m.b1a, m.b1b)), _seq(*m.b2, Fork(m.b2a, m.b2b)), _PoolThen(avg_valid(), m.b3)]
    if isinstance(m, _Branches):
        out: list[nn.Module] = list(m.paths)
        for i in m.pool_at:
            out.insert(i, nn.MaxPool2d(3, stride=2))
        return out
    return None


def fuse_blocks(model: nn.Module) -> nn.Module:
    """Rewrite every known Inception block (and Inception-ResNet unit) of ``model`` in place so that its parallel
    1x1 convolutions run as one. Call after :func:`fold_batch_norm`. Returns ``model`` (or its replacement)."""

    def fn(m: nn.Module) -> nn.Module:
        if isinstance(m, _Residual):
            body = fuse_parallel_1x1(list(m.branches))
            return m if body is None else FusedResidual(body, m.up, m.scale, m.relu)
        branches = _block_branches(m)
        if branches is None:
            return m
        fused = fuse_parallel_1x1(branches)
        return m if fused is None else fused

    return _replace_children(model, fn)


class Fp32LRN(nn.Module):
    """Local response normalisation, computed in float32 whatever the input dtype (its squared sums and the
    ``** -0.75`` power lose too much in fp16/bf16; the result is cast back to the input dtype).

    On a channels-last input the window sum over channels runs as a 1-D average pool over the contiguous channel
    axis instead of torch's padded 3-D average pool: the same sums, divisions and power, so the same values
    (bit for bit in the tests), 1.5x faster on the CPU.
    """

    def __init__(self, lrn: nn.LocalResponseNorm):
        super().__init__()
        self.lrn = lrn

    def _forward32(self, x: Tensor) -> Tensor:
        lrn = self.lrn
        if x.dim() != 4 or lrn.size % 2 == 0 or not x.is_contiguous(memory_format=torch.channels_last):
            return lrn(x)
        n, c, h, w = x.shape
        sq = (x * x).permute(0, 2, 3, 1).reshape(-1, 1, c)  # (N*H*W) x 1 x C, a view of the NHWC memory
        div = F.avg_pool1d(sq, lrn.size, 1, lrn.size // 2)  # zero-padded window mean, as torch's LRN
        div = div.mul_(lrn.alpha).add_(lrn.k).pow_(lrn.beta)
        return x / div.reshape(n, h, w, c).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float32, torch.float64):
            return self._forward32(x)
        return self._forward32(x.float()).to(x.dtype)


def fp32_lrn(model: nn.Module) -> nn.Module:
    """Wrap every ``nn.LocalResponseNorm`` of ``model`` in :class:`Fp32LRN`, in place. Returns ``model``."""
    return _replace_children(model, lambda m: Fp32LRN(m) if isinstance(m, nn.LocalResponseNorm) else m)


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's fused convolution (``torch.ops.mkldnn._convolution_pointwise``)."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except (AttributeError, RuntimeError):
        return False


class OneDNNConvAct(nn.Module):
    """A :class:`ConvAct` run by oneDNN on the CPU with its weight pre-packed once in oneDNN's blocked layout and
    the ReLU applied inside the convolution kernel (the same values: ReLU of the same sums). fp32 CPU only.

    The plain ``conv`` stays attached (state dict, inspection); only the packed copy is used in ``forward``.
    """

    def __init__(self, m: ConvAct):
        super().__init__()
        c = m.conv
        self.conv, self.relu = c, m.relu
        self._args = (list(c.padding), list(c.stride), list(c.dilation), c.groups)
        with torch.no_grad():
            self._packed = torch._C._nn.mkldnn_reorder_conv2d_weight(c.weight.detach().to_mkldnn(), *self._args)
        self._attr = "relu" if m.relu else "none"

    def forward(self, x: Tensor) -> Tensor:
        if not (x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous()):
            # A channel slice of a fused 1x1 output: oneDNN would copy it and reorder; the plain kernel is faster
            # there (measured: GoogLeNet 48 vs 62 ms per batch of 8 at 160 px on 2 cores).
            y = self.conv(x)
            return torch.relu_(y) if self.relu else y
        padding, stride, dilation, groups = self._args
        return torch.ops.mkldnn._convolution_pointwise(x, self._packed, self.conv.bias, padding, stride, dilation,
                                                       groups, self._attr, [], "")


def use_onednn(model: nn.Module) -> nn.Module:
    """Replace every fp32 CPU :class:`ConvAct` of ``model`` by :class:`OneDNNConvAct`, in place. Returns ``model``
    (or its replacement). Call after the model reached its final device and dtype."""

    def fn(m: nn.Module) -> nn.Module:
        if isinstance(m, ConvAct) and m.conv.weight.device.type == "cpu" and m.conv.weight.dtype == torch.float32 \
                and m.conv.padding_mode == "zeros" and isinstance(m.conv.padding, tuple):
            return OneDNNConvAct(m)
        return m

    return _replace_children(model, fn)


class ChannelAffine(nn.Module):
    """``x * a[c] + b[c]`` per channel in one kernel each (the input re-mapping of torchvision's GoogLeNet and
    Inception-v3, which the original computes with three slices and a concatenation)."""

    def __init__(self, a: list[float], b: list[float]):
        super().__init__()
        self.register_buffer("a", torch.tensor(a, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("b", torch.tensor(b, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.a.to(x.dtype) + self.b.to(x.dtype)


def _inline_transform_input(model: nn.Module) -> None:
    """Move ``transform_input`` of GoogLeNetTV / InceptionV3 into a :class:`ChannelAffine` before the first
    convolution (same arithmetic per element: one multiply, one add)."""
    for m in model.modules():
        if isinstance(m, (GoogLeNetTV, InceptionV3)) and m.transform_input:
            a = [s / 0.5 for s in IMAGENET_STD]
            b = [(mu - 0.5) / 0.5 for mu in IMAGENET_MEAN]
            name = "conv1" if isinstance(m, GoogLeNetTV) else "Conv2d_1a_3x3"
            setattr(m, name, nn.Sequential(ChannelAffine(a, b), getattr(m, name)))
            m.transform_input = False


def rewrite(model: nn.Module, *, fuse: bool = True) -> nn.Module:
    """All exact rewrites, in place: input re-mapping inlined, batch norm folded, parallel 1x1 convolutions fused
    (``fuse``), aux heads dropped, LRN in fp32. ``model`` must be in eval mode. Returns ``model`` (or its
    replacement when ``model`` itself is a rewritten block)."""
    _inline_transform_input(model)
    for m in model.modules():
        # Aux heads run only in training mode: an inference network does not carry them.
        for name in ("aux1", "aux2", "AuxLogits"):
            if getattr(m, name, None) is not None and hasattr(m, "aux_heads"):
                setattr(m, name, None)
        if hasattr(m, "aux_heads") and getattr(m, "aux_logits", False):
            m.aux_logits = False
    model = fold_batch_norm(model)
    if fuse:
        model = fuse_blocks(model)
    return fp32_lrn(model)
