"""R-CNN region warping: context-padded proposals warped to the network's input with ``torchvision.ops.roi_align``.

R-CNN (Girshick et al., 2014, appendix A; ``rcnn_im_crop.m``, mode ``warp``, ``padding=16``) dilates each proposal
so that, after warping it to ``S x S`` pixels, ``p = 16`` pixels of image context surround the original box on
every side. The box therefore grows by ``S / (S - 2p)`` in each dimension around its centre, is warped
anisotropically (no aspect-ratio preservation) to ``S x S``, and whatever falls outside the image is filled with
the mean pixel. R-CNN rounds the dilated box to whole pixels; here it stays continuous (sub-pixel exact).

How it is done here, in one batched call per chunk on the device where the model runs:

* The image is normalised first (``backbone.normalize``), so the mean pixel becomes exactly 0.
* ``roi_align(aligned=True, sampling_ratio=1)`` takes one bilinear sample at the centre of each output pixel,
  which is exactly what a bilinear resize (``cv2.resize(INTER_LINEAR)`` / ``F.interpolate(align_corners=False)``,
  no antialiasing, as R-CNN's ``imresize(..., 'antialiasing', false)``) computes.
* ``roi_align`` replicates the border pixel for samples up to one pixel outside the image and returns 0 beyond;
  a mask of the sample positions outside ``[0, W] x [0, H]`` sets them to exactly 0 (the mean), so the fill does
  not depend on that detail.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torchvision.ops import roi_align

__all__ = ["context_boxes", "crop_regions", "iter_region_chunks", "DEFAULT_CONTEXT_PAD"]

DEFAULT_CONTEXT_PAD = 16


def context_boxes(boxes: Tensor, out_size: int, context_pad: int = DEFAULT_CONTEXT_PAD) -> Tensor:
    """Dilate boxes about their centres so that ``context_pad`` pixels of context surround them at ``out_size``.

    Args:
        boxes (Tensor[N, 4]): (x1, y1, x2, y2) in image pixels.
        out_size: side of the warped crop (the backbone's input size).
        context_pad: context width at the warped size (R-CNN: 16 at 227).
    Returns:
        Tensor[N, 4]: the dilated boxes (may extend beyond the image).
    """
    if not 0 <= 2 * context_pad < out_size:
        raise ValueError(f"context_pad {context_pad} must be >= 0 and < out_size / 2 ({out_size})")
    scale = out_size / (out_size - 2 * context_pad)
    ctr = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * (0.5 * scale)
    return torch.cat([ctr - half, ctr + half], dim=1)


def crop_regions(image: Tensor, boxes: Tensor, out_size: int, context_pad: int = DEFAULT_CONTEXT_PAD,
                 sampling_ratio: int = 1) -> Tensor:
    """Warp regions of one normalised image to ``out_size x out_size`` crops, R-CNN style.

    Args:
        image (Tensor[3, H, W]): the image already normalised for the network (mean pixel == 0), float.
        boxes (Tensor[N, 4]): proposals (x1, y1, x2, y2) in pixels of ``image``.
        out_size: crop side ``S``.
        context_pad: pixels of context at size ``S`` (0: the plain box).
        sampling_ratio: bilinear samples per output pixel and axis; 1 is exactly a bilinear resize (R-CNN), larger
            values average more samples (an antialiased resize when shrinking big boxes).
    Returns:
        Tensor[N, 3, S, S] on ``image``'s device, in ``image``'s dtype; pixels outside the image are exactly 0.
    """
    n = boxes.shape[0]
    c, h, w = image.shape
    if n == 0:
        return image.new_zeros((0, c, out_size, out_size))
    img = image.float()[None]
    rois = context_boxes(boxes.to(device=img.device, dtype=torch.float32), out_size, context_pad)
    idx = torch.zeros((n, 1), dtype=torch.float32, device=img.device)
    crops = roi_align(img, torch.cat([idx, rois], 1), (out_size, out_size), spatial_scale=1.0,
                      sampling_ratio=sampling_ratio, aligned=True)  # N x 3 x S x S
    # Positions of the sample points; those outside the image get the mean (0 after normalisation).
    # With sampling_ratio > 1 the mask uses the pixel centre, so border pixels may average a few border samples.
    t = (torch.arange(out_size, device=img.device, dtype=torch.float32) + 0.5) / out_size  # S
    xs = rois[:, 0:1] + t[None] * (rois[:, 2:3] - rois[:, 0:1])  # N x S
    ys = rois[:, 1:2] + t[None] * (rois[:, 3:4] - rois[:, 1:2])  # N x S
    inside = ((ys >= 0) & (ys <= h))[:, :, None] & ((xs >= 0) & (xs <= w))[:, None, :]  # N x S x S
    crops = crops * inside[:, None].to(crops.dtype)
    return crops.to(image.dtype)


def iter_region_chunks(image: Tensor, boxes: Tensor, out_size: int, context_pad: int = DEFAULT_CONTEXT_PAD,
                       chunk_size: int = 256, sampling_ratio: int = 1) -> Iterator[tuple[slice, Tensor]]:
    """Yield ``(slice, crops)`` for consecutive chunks of at most ``chunk_size`` boxes, so that memory stays
    bounded (``chunk_size x 3 x S x S`` floats) for any number of proposals."""
    for start in range(0, boxes.shape[0], chunk_size):
        sl = slice(start, min(start + chunk_size, boxes.shape[0]))
        yield sl, crop_regions(image, boxes[sl], out_size, context_pad, sampling_ratio)
