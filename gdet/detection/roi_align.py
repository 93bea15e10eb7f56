"""RoIAlign on a channels-last feature map, one region per program, every channel in vector loads (Triton, CUDA).

``torchvision.ops.roi_align`` takes one CUDA thread per output element of an NCHW map: at 2,000 regions x 832
channels x 14 x 14 every thread recomputes the bin's sample positions and bilinear weights and reads 2-byte values
one channel plane apart. Here a program takes a block of bins of one region and a block of channels: positions and
weights are computed once per bin and shared by all channels, and each corner is one contiguous read along the
channels of the NHWC map. The arithmetic is torchvision's (the same sample points, clamping and weights, summed in
the same order in float32), so the result equals ``roi_align`` on the float32 map up to the final rounding to the
map's dtype. The output is ``Tensor[R, C, P, P]`` in channels-last layout, what the inference runtime's NHWC
network reads next. Forward only (no autograd): training keeps torchvision's kernel.

Without Triton (or a GPU) :func:`roi_align_nhwc` is not used; ``TRITON_INTERPRET=1`` runs the kernel on a CPU,
which is how the tests check it against torchvision.

On a CPU, :func:`roi_align_bags` computes the same RoIAlign as one weighted embedding-bag sum: bilinear weights are
separable, so each bin is a weighted sum of ``4 * s * s`` rows of the ``(H * W) x C`` channels-last map (``s``
samples per bin and axis), which ``torch.nn.functional.embedding_bag`` adds up with vector loads along the
channels. torchvision's CPU kernel walks the channels of an NCHW map one plane at a time.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["available", "bags_available", "roi_align_bags", "roi_align_nhwc"]


# Tiles tried once per (channels, pooled side) on CUDA; the first call of a process measures them (about a second).
_TILES = ((8, 128, 4), (16, 128, 4), (32, 128, 4), (16, 64, 2), (32, 64, 4), (8, 256, 4), (16, 256, 4), (16, 256, 8),
          (32, 256, 8))


@functools.lru_cache(maxsize=None)
def _kernel(autotune: bool = False):
    import triton
    import triton.language as tl

    tune = (triton.autotune([triton.Config({"BLOCK_B": b, "BLOCK_C": c}, num_warps=w) for b, c, w in _TILES],
                            key=["C", "P"]) if autotune else (lambda f: f))

    # Sizes are never specialised: Triton would turn a size of 1 (a 1-pixel-wide map, one bin) into a constant.
    @tune
    @triton.jit(do_not_specialize=["H", "W", "C", "P", "sampling_ratio"])
    def roi_align_nhwc_kernel(feat_ptr, rois_ptr, out_ptr, H, W, C, P, spatial_scale, offset, sampling_ratio,
                              ALIGNED: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
        r = tl.program_id(0)
        bins = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)  # [BLOCK_B] bin index ph * P + pw
        cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C] channels
        bmask = bins < P * P
        cmask = cs < C
        ph = (bins // P).to(tl.float32)
        pw = (bins % P).to(tl.float32)
        x1 = tl.load(rois_ptr + r * 4 + 0).to(tl.float32)
        y1 = tl.load(rois_ptr + r * 4 + 1).to(tl.float32)
        x2 = tl.load(rois_ptr + r * 4 + 2).to(tl.float32)
        y2 = tl.load(rois_ptr + r * 4 + 3).to(tl.float32)
        start_w = x1 * spatial_scale - offset
        start_h = y1 * spatial_scale - offset
        roi_w = x2 * spatial_scale - offset - start_w
        roi_h = y2 * spatial_scale - offset - start_h
        if not ALIGNED:
            roi_w = tl.maximum(roi_w, 1.0)
            roi_h = tl.maximum(roi_h, 1.0)
        bin_w = roi_w / P
        bin_h = roi_h / P
        grid_h = tl.where(sampling_ratio > 0, sampling_ratio, tl.ceil(roi_h / P).to(tl.int32))
        grid_w = tl.where(sampling_ratio > 0, sampling_ratio, tl.ceil(roi_w / P).to(tl.int32))
        count = tl.maximum(grid_h * grid_w, 1).to(tl.float32)
        fh = H * 1.0
        fw = W * 1.0
        acc = tl.zeros([BLOCK_B, BLOCK_C], dtype=tl.float32)
        for iy in range(grid_h):
            y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h.to(tl.float32)  # [BLOCK_B]
            for ix in range(grid_w):
                x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w.to(tl.float32)
                inside = (y >= -1.0) & (y <= fh) & (x >= -1.0) & (x <= fw)
                yy = tl.maximum(y, 0.0)
                xx = tl.maximum(x, 0.0)
                y_low = yy.to(tl.int32)
                x_low = xx.to(tl.int32)
                y_edge = y_low >= H - 1
                x_edge = x_low >= W - 1
                y_low = tl.where(y_edge, H - 1, y_low)
                x_low = tl.where(x_edge, W - 1, x_low)
                y_high = tl.where(y_edge, H - 1, y_low + 1)
                x_high = tl.where(x_edge, W - 1, x_low + 1)
                yy = tl.where(y_edge, y_low.to(tl.float32), yy)
                xx = tl.where(x_edge, x_low.to(tl.float32), xx)
                ly = yy - y_low.to(tl.float32)
                lx = xx - x_low.to(tl.float32)
                hy = 1.0 - ly
                hx = 1.0 - lx
                m = (inside & bmask)[:, None] & cmask[None, :]
                c = cs[None, :]
                v1 = tl.load(feat_ptr + ((y_low * W + x_low) * C)[:, None] + c, mask=m, other=0.0).to(tl.float32)
                v2 = tl.load(feat_ptr + ((y_low * W + x_high) * C)[:, None] + c, mask=m, other=0.0).to(tl.float32)
                v3 = tl.load(feat_ptr + ((y_high * W + x_low) * C)[:, None] + c, mask=m, other=0.0).to(tl.float32)
                v4 = tl.load(feat_ptr + ((y_high * W + x_high) * C)[:, None] + c, mask=m, other=0.0).to(tl.float32)
                val = ((hy * hx)[:, None] * v1 + (hy * lx)[:, None] * v2 + (ly * hx)[:, None] * v3
                       + (ly * lx)[:, None] * v4)
                acc += tl.where(m, val, 0.0)
        acc = acc / count
        out = out_ptr + r.to(tl.int64) * P * P * C + (bins * C)[:, None] + cs[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=bmask[:, None] & cmask[None, :])

    return roi_align_nhwc_kernel


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # missing, or a build that does not load on this machine
        return False
    return True


def available(feat: Tensor) -> bool:
    """Whether :func:`roi_align_nhwc` can pool from ``feat``: a CUDA tensor (or any tensor under
    ``TRITON_INTERPRET=1``), fp16/bf16/fp32, with Triton importable."""
    on_device = feat.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    return on_device and feat.dtype in (torch.float16, torch.bfloat16, torch.float32) and _triton_importable()


def roi_align_nhwc(feat: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int = 1,
                   aligned: bool = True, *, block_bins: int | None = None, block_channels: int = 128,
                   num_warps: int = 4) -> Tensor:
    """``torchvision.ops.roi_align(feat, [rois], output_size, spatial_scale, sampling_ratio, aligned)`` for one
    image, in channels-last layout and ``feat``'s dtype (accumulated in float32).

    Args:
        feat (Tensor[1, C, H, W]): the feature map (any layout; made channels-last if it is not).
        rois (Tensor[R, 4]): (x1, y1, x2, y2) in the map's input pixels (multiplied by ``spatial_scale``).
        output_size: pooled side ``P``.
        sampling_ratio: samples per bin and axis (0: ``ceil(roi side / P)``, as torchvision).
        block_bins, block_channels, num_warps: the kernel's tile (bins x channels, powers of two) and warps per
            program. Default on CUDA: the fastest of a few tiles, measured at the first call for each channel count
            and pooled side; elsewhere 16 x 128, 4 warps.
    Returns:
        Tensor[R, C, P, P], channels-last, ``feat.dtype``.
    """
    if feat.dim() != 4 or feat.shape[0] != 1:
        raise ValueError(f"roi_align_nhwc pools from one image's map, Tensor[1, C, H, W]; got {tuple(feat.shape)}")
    _, c, h, w = feat.shape
    p = int(output_size)
    r = rois.shape[0]
    out = torch.empty((r, c, p, p), device=feat.device, dtype=feat.dtype, memory_format=torch.channels_last)
    if r == 0 or c == 0:
        return out
    feat = feat.contiguous(memory_format=torch.channels_last)
    rois = rois.to(torch.float32).contiguous()
    args = (feat, rois, out, h, w, c, p, float(spatial_scale), 0.5 if aligned else 0.0, int(sampling_ratio))
    if block_bins is None and feat.is_cuda:
        def grid(meta):
            return r, -(-(p * p) // meta["BLOCK_B"]), -(-c // meta["BLOCK_C"])

        _kernel(autotune=True)[grid](*args, ALIGNED=bool(aligned))
        return out
    block_c = min(int(block_channels), 1 << (c - 1).bit_length())
    block_b = min(int(block_bins or 16), 1 << (p * p - 1).bit_length())
    grid = (r, -(-(p * p) // block_b), -(-c // block_c))
    _kernel()[grid](*args, ALIGNED=bool(aligned), BLOCK_B=block_b, BLOCK_C=block_c, num_warps=int(num_warps))
    return out


def bags_available(feat: Tensor, sampling_ratio: int) -> bool:
    """Whether :func:`roi_align_bags` pools from ``feat``: a CPU float32/float64 map and a fixed number of samples
    per bin (``sampling_ratio >= 1``; the adaptive grid, 0, stays with torchvision)."""
    return feat.device.type == "cpu" and feat.dtype in (torch.float32, torch.float64) and int(sampling_ratio) >= 1


def _axis_samples(lo: Tensor, hi: Tensor, size: int, p: int, s: int, spatial_scale: float, aligned: bool
                  ) -> tuple[Tensor, Tensor]:
    """Bilinear taps of one axis: for each region, bin and sample, the two neighbouring pixel indices and their
    weights, with torchvision's sample positions, clamping and out-of-map rule (weights 0 beyond one pixel).

    Returns:
        index (Tensor[R, P, s, 2], int64) and weight (Tensor[R, P, s, 2]).
    """
    offset = 0.5 if aligned else 0.0
    start = lo * spatial_scale - offset
    length = hi * spatial_scale - offset - start
    if not aligned:
        length = length.clamp(min=1.0)
    bin_ = length / p
    ph = torch.arange(p, dtype=lo.dtype, device=lo.device)
    it = torch.arange(s, dtype=lo.dtype, device=lo.device) + 0.5
    # torchvision: start + ph * bin + (i + .5) * bin / grid, in the map's dtype
    y = (start[:, None, None] + ph[None, :, None] * bin_[:, None, None]
         + it[None, None, :] * bin_[:, None, None] / s)  # R x P x s
    inside = ((y >= -1.0) & (y <= size)).to(lo.dtype)
    y = y.clamp(min=0, max=size)  # beyond the map the weights are 0; the cap keeps huge coordinates in int64
    low = y.to(torch.int64)
    edge = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(edge, low, low + 1)
    y = torch.where(edge, low.to(y.dtype), y)
    frac = y - low.to(y.dtype)
    return torch.stack([low, high], -1), torch.stack([(1 - frac) * inside, frac * inside], -1)


def roi_align_bags(feat: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int = 1,
                   aligned: bool = True) -> Tensor:
    """``torchvision.ops.roi_align(feat, [rois], output_size, spatial_scale, sampling_ratio, aligned)`` for one
    image on a CPU, in channels-last layout, as one ``embedding_bag`` weighted sum (see the module's text).

    Args:
        feat (Tensor[1, C, H, W]): the feature map, float32 or float64 (any layout; channels-last avoids a copy).
        rois (Tensor[R, 4]): (x1, y1, x2, y2) in the map's input pixels (multiplied by ``spatial_scale``).
        output_size: pooled side ``P``.
        sampling_ratio: samples per bin and axis, >= 1 (torchvision's adaptive grid, 0, is not supported).
    Returns:
        Tensor[R, C, P, P], channels-last, ``feat.dtype``; differentiable with respect to ``feat``.
    """
    if feat.dim() != 4 or feat.shape[0] != 1:
        raise ValueError(f"roi_align_bags pools from one image's map, Tensor[1, C, H, W]; got {tuple(feat.shape)}")
    s = int(sampling_ratio)
    if s < 1:
        raise ValueError(f"roi_align_bags needs a fixed sampling_ratio >= 1, got {sampling_ratio}")
    _, c, h, w = feat.shape
    p = int(output_size)
    r = rois.shape[0]
    if r == 0 or c == 0 or h == 0 or w == 0:
        return feat.new_zeros((r, c, p, p)).contiguous(memory_format=torch.channels_last)
    rois = rois.to(feat.dtype)
    yi, yw = _axis_samples(rois[:, 1], rois[:, 3], h, p, s, spatial_scale, aligned)  # R x P x s x 2
    xi, xw = _axis_samples(rois[:, 0], rois[:, 2], w, p, s, spatial_scale, aligned)
    # bag of bin (ph, pw): taps (iy, a) x (ix, b) -> shape R x P x P x (s * 2) x (s * 2)
    index = yi.reshape(r, p, 1, 2 * s, 1) * w + xi.reshape(r, 1, p, 1, 2 * s)
    weight = yw.reshape(r, p, 1, 2 * s, 1) * xw.reshape(r, 1, p, 1, 2 * s) / (s * s)
    table = feat[0].permute(1, 2, 0).reshape(h * w, c)  # a view when feat is channels-last
    out = F.embedding_bag(index.reshape(r * p * p, 4 * s * s), table,
                          per_sample_weights=weight.reshape(r * p * p, 4 * s * s), mode="sum")
    return out.view(r, p, p, c).permute(0, 3, 1, 2)

