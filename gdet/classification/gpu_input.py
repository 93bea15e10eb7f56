"""Batched training input: workers only read compressed bytes; decoding (nvJPEG on CUDA) and the paper's
augmentations run on whole batches on the training device.

The augmentation draws the same distributions as the per-image :class:`gdet.classification.transforms.TrainTransform`
(crop area/aspect, interpolation, ColorJitter factors and order, PCA lighting, flip) from one ``torch.Generator``
seeded by ``(seed, epoch, rank)``, so a run is deterministic for a seed whatever the number of workers.

Public API::

    EncodedImageDataset(paths, labels)            items: (Tensor[L] uint8 file bytes, label, path, exif orientation)
    collate_encoded(items) -> EncodedBatch(data, offsets, labels, paths, orientations); .files() -> byte tensors
    decode_batch(data, device, paths=None, orientations=None, stats=None) -> list of Tensor[3, H, W] uint8
    BatchTrainAugment(size, scale, ratio, brightness, contrast, saturation, lighting, interpolations, hflip)
        .sample(sizes, generator) -> AugmentParams ;  .apply(images, params, dtype) -> Tensor[N, 3, S, S]
    DeviceBatchLoader(loader, augment, device, seed=0, rank=0, channels_last=False, dtype=uint8, prefetch=2)
    build_device_loader(paths, labels, augment, *, batch_size, device, info=None, num_workers=4, seed=0, ...)
    epoch_generator(seed, epoch, rank) -> torch.Generator
"""
from __future__ import annotations

import math
import queue
import struct
import threading
import warnings
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from gdet.classification.transforms import INTERPOLATIONS, PCA_EIGVAL, PCA_EIGVEC, resize
from gdet.data.image import read_image, to_chw
from gdet.engine import build_loader
from gdet.engine.distributed import DistInfo
from gdet.errors import ConfigError, DataError

JPEG_MAGIC = b"\xff\xd8"
# torchvision >= 0.29 announces that torchvision.io's decoders will move to TorchCodec; they still work, and
# the warning would repeat for every batch.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)
# ITU-R 601 luma, the weights torchvision's ColorJitter uses (rgb_to_grayscale).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------- reading, decoding

def declared_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) a JPEG (frame header) or PNG (IHDR) declares, read without decoding; ``None`` for other
    formats or an unreadable header. Lets workers refuse a decompression bomb before any decoder allocates it."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return h, w
    if not data.startswith(JPEG_MAGIC):
        return None
    i, n = 2, len(data)
    while i + 4 <= n and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in (0xD9, 0xDA):
            return None
        seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
        # SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC): precision, height, width follow the length
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and i + 9 <= n:
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return h, w
        i += 2 + seg_len
    return None


def _max_pixels() -> int | None:
    from PIL import Image

    # Pillow refuses images above twice MAX_IMAGE_PIXELS (DecompressionBombError); the same bound here.
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * int(Image.MAX_IMAGE_PIXELS)


def jpeg_exif_orientation(data: bytes) -> int:
    """EXIF orientation tag (1-8) of a JPEG's APP1 segment; 1 when absent, unreadable or not a JPEG.

    nvJPEG ignores EXIF; reading the tag in the worker lets rotated photos go to the CPU decoder, which applies
    it as :func:`gdet.data.image.read_image` does."""
    if not data.startswith(JPEG_MAGIC):
        return 1
    i, n = 2, len(data)
    while i + 4 <= n and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no metadata after this
            return 1
        seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
        seg = data[i + 4:i + 2 + seg_len]
        if marker == 0xE1 and seg.startswith(b"Exif\x00\x00") and len(seg) >= 14:
            tiff = seg[6:]
            endian = {b"II": "<", b"MM": ">"}.get(tiff[:2])
            if endian is None:
                return 1
            try:
                ifd = struct.unpack(endian + "I", tiff[4:8])[0]
                count = struct.unpack(endian + "H", tiff[ifd:ifd + 2])[0]
                for k in range(count):
                    e = ifd + 2 + 12 * k
                    tag, typ = struct.unpack(endian + "HH", tiff[e:e + 4])
                    if tag == 0x0112 and typ == 3:
                        v = struct.unpack(endian + "H", tiff[e + 8:e + 10])[0]
                        return v if 1 <= v <= 8 else 1
            except struct.error:
                return 1
            return 1
        i += 2 + seg_len
    return 1


class EncodedImageDataset(Dataset):
    """Image files as undecoded bytes, for :class:`DeviceBatchLoader` (workers do no pixel work).

    Args:
        paths: image files (any format :func:`gdet.data.image.read_image` reads; JPEG is decoded on the GPU).
        labels: one int label per path.

    Items are ``(Tensor[L] uint8 file bytes, label, path, EXIF orientation)``.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int]):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = list(map(str, paths))
        self.labels = [int(v) for v in labels]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise DataError(f"{path}: image not found") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read image: {e.strerror or e}") from None
        if not raw:
            raise DataError(f"{path}: cannot decode image: empty file")
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        head = raw[:1 << 16]
        size, limit = declared_size(head), _max_pixels()
        if size is not None and limit is not None and size[0] * size[1] > limit:
            raise DataError(f"{path}: cannot decode image: {size[1]}x{size[0]} pixels is more than the "
                            f"{limit} allowed (a decompression bomb?)")
        return data, self.labels[i], path, jpeg_exif_orientation(head)


class EncodedBatch(NamedTuple):
    """A batch of undecoded files: their bytes end to end in one tensor, so that a worker hands over two tensors
    per batch rather than one shared-memory file descriptor per image.

    Attributes:
        data: ``Tensor[total]`` uint8, the files' bytes concatenated.
        offsets: ``Tensor[N + 1]`` int64; file ``i`` is ``data[offsets[i]:offsets[i + 1]]``.
        labels: ``Tensor[N]`` int64.
        paths: the N file names (for error messages).
        orientations: N EXIF orientations (1 = upright).
    """

    data: Tensor
    offsets: Tensor
    labels: Tensor
    paths: list[str]
    orientations: list[int]

    def files(self) -> list[Tensor]:
        """The N files as ``Tensor[L_i]`` uint8 views of :attr:`data`."""
        o = self.offsets.tolist()
        return [self.data[o[i]:o[i + 1]] for i in range(len(o) - 1)]


def collate_encoded(items) -> EncodedBatch:
    """``[(bytes, label, path, orientation)]`` -> :class:`EncodedBatch`."""
    data, labels, paths, orients = zip(*items) if items else ((), (), (), ())
    lengths = torch.tensor([0] + [len(d) for d in data], dtype=torch.int64)
    flat = torch.cat(list(data)) if data else torch.zeros(0, dtype=torch.uint8)
    return EncodedBatch(flat, lengths.cumsum(0), torch.tensor(labels, dtype=torch.int64), list(paths), list(orients))


def _decode_cpu(data: Tensor, path: str) -> Tensor:
    """One image on the CPU: torchvision for JPEG/PNG/GIF/WebP (EXIF applied), Pillow (``read_image``) for the
    rest and for what torchvision returns at another bit depth."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        img = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
        if img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3:
            return img
    except (RuntimeError, ValueError):
        pass

    return to_chw(read_image(path))


def decode_batch(data: Sequence[Tensor], device: torch.device | str, paths: Sequence[str] | None = None,
                 orientations: Sequence[int] | None = None, stats: dict[str, int] | None = None) -> list[Tensor]:
    """Decode file bytes to RGB images on ``device``.

    On CUDA, JPEGs without an EXIF rotation are decoded together by nvJPEG (``torchvision.io.decode_jpeg`` on a
    list); other formats, rotated JPEGs and any JPEG nvJPEG rejects are decoded on the CPU and copied over. On the
    CPU every image is decoded by ``torchvision.io.decode_image`` (Pillow for formats it does not read).

    Args:
        data: ``Tensor[L] uint8`` file contents, one per image (on the CPU).
        device: where the decoded images go.
        paths: file names, for error messages.
        orientations: EXIF orientation per image (see :func:`jpeg_exif_orientation`); default all 1.
        stats: if given, ``stats["gpu"]`` / ``stats["cpu"]`` count the images decoded on each side.

    Returns:
        list of ``Tensor[3, H_i, W_i]`` uint8 on ``device``.

    Raises:
        DataError: an image cannot be decoded by any decoder (message names the file).
    """
    device = torch.device(device)
    n = len(data)
    paths = list(paths) if paths is not None else [f"image {i}" for i in range(n)]
    orientations = list(orientations) if orientations is not None else [1] * n
    out: list[Tensor | None] = [None] * n
    if device.type == "cuda":
        from torchvision.io import ImageReadMode, decode_jpeg

        gpu_idx = [i for i in range(n) if orientations[i] == 1 and bytes(data[i][:2].tolist()) == JPEG_MAGIC]
        if gpu_idx and not _NVJPEG["missing"]:
            try:
                decoded = decode_jpeg([data[i] for i in gpu_idx], mode=ImageReadMode.RGB, device=device)
                for i, img in zip(gpu_idx, decoded):
                    out[i] = img
            except (RuntimeError, ValueError) as e:
                if "not compiled with nvJPEG" in str(e):
                    _NVJPEG["missing"] = True
                    _warn_once("torchvision: built without nvJPEG; decoding JPEGs on the CPU")
                    gpu_idx = []
                # One bad file fails the whole batched call; retry one by one to find it.
                for i in gpu_idx:
                    try:
                        out[i] = decode_jpeg(data[i], mode=ImageReadMode.RGB, device=device)
                    except (RuntimeError, ValueError) as e:
                        _warn_once(f"{paths[i]}: nvJPEG cannot decode it ({str(e).splitlines()[0][:120]}); "
                                   "decoding such images on the CPU")
        if stats is not None:
            stats["gpu"] = stats.get("gpu", 0) + sum(o is not None for o in out)
    for i in range(n):
        if out[i] is None:
            img = _decode_cpu(data[i], paths[i])
            out[i] = img.to(device, non_blocking=True) if device.type != "cpu" else img
            if stats is not None:
                stats["cpu"] = stats.get("cpu", 0) + 1
    return out  # type: ignore[return-value]


_WARNED: set[str] = set()
_NVJPEG = {"missing": False}


def _warn_once(msg: str) -> None:
    key = msg.split(":", 1)[-1]
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------ batched resampling

def _aa_bilinear(x: Tensor) -> Tensor:
    x = x.abs()
    return torch.where(x < 1, 1 - x, torch.zeros_like(x))


def _aa_bicubic(x: Tensor, a: float = -0.5) -> Tensor:
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_matrices(start: Tensor, length: Tensor, full: int, out: int, kinds: Tensor,
                      device: torch.device | str | None = None) -> Tensor:
    """Weights of a 1-D crop-and-resize along one axis, per image, as ``F.interpolate`` computes them.

    Every resize mode of :func:`gdet.classification.transforms.resize` is separable and linear: output pixel
    ``o`` is a weighted sum of input pixels. Antialiased bilinear/bicubic use PyTorch's (Pillow's) filters,
    widened by the scale when shrinking (bicubic ``a = -0.5``); area is PyTorch's adaptive average pooling
    (``floor(o L / S)`` to ``ceil((o + 1) L / S)``); nearest is ``floor(o * (L / S))`` in float32.

    Args:
        start: ``Tensor[N]`` int64 first pixel of each crop along the axis.
        length: ``Tensor[N]`` int64 crop length ``L``.
        full: length of the (padded) input axis.
        out: output length ``S``.
        kinds: ``Tensor[N]`` int64 index into :data:`INTERPOLATIONS` (bilinear, area, nearest, bicubic).
        device: where the matrices are built (default ``start``'s device); CPU inputs avoid GPU syncs.

    Returns:
        ``Tensor[N, out, full]`` float32 on ``device``; zero outside each crop.
    """
    dev = torch.device(device) if device is not None else start.device
    present = set(kinds.tolist()) if kinds.device.type == "cpu" else set(range(len(INTERPOLATIONS)))
    start, length, kinds = (t.to(dev, non_blocking=True) for t in (start, length, kinds))
    length_i = length.view(-1, 1, 1)
    rel = torch.arange(full, device=dev).view(1, 1, full) - start.view(-1, 1, 1)  # N x 1 x full
    inside = (rel >= 0) & (rel < length_i)
    o_i = torch.arange(out, device=dev).view(1, out, 1)
    o_f = o_i.to(torch.float32)
    rel_f = rel.to(torch.float32)
    scale = length_i.to(torch.float32) / out  # PyTorch: (float) input_size / output_size
    w = torch.zeros(len(start), out, full, dtype=torch.float32, device=dev)
    for k, name in enumerate(INTERPOLATIONS):
        if k not in present:
            continue
        sel = kinds == k
        if name in ("bilinear", "bicubic"):
            fn = _aa_bilinear if name == "bilinear" else _aa_bicubic  # zero beyond its support
            invscale = torch.where(scale >= 1, 1 / scale, torch.ones_like(scale))
            center = scale * (o_f + 0.5)
            wk = fn((rel_f - center + 0.5) * invscale) * inside
            wk = wk / wk.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        elif name == "area":
            lo = (o_i * length_i) // out
            hi = ((o_i + 1) * length_i + out - 1) // out
            wk = ((rel >= lo) & (rel < hi)).to(torch.float32) / (hi - lo).to(torch.float32)
        else:  # nearest
            src = torch.minimum(torch.floor(o_f * scale).to(torch.int64), length_i - 1)
            wk = (rel == src).to(torch.float32)
        w = torch.where(sel.view(-1, 1, 1), wk, w)
    return w


# ------------------------------------------------------------------------------------------------- augmentation

@dataclass
class AugmentParams:
    """Random draws for one batch of ``N`` images (all CPU tensors).

    Attributes:
        boxes: ``Tensor[N, 4]`` int64 crops as (top, left, height, width) in pixels of each decoded image.
        modes: ``Tensor[N]`` int64 index into the augmentation's interpolation list.
        flips: ``Tensor[N]`` bool, horizontal flip.
        factors: ``Tensor[N, 3]`` float brightness, contrast, saturation factors (1 = unchanged).
        order: ``Tensor[N, 3]`` int64 permutation of (0 brightness, 1 contrast, 2 saturation): the order applied.
        lighting: ``Tensor[N, 3]`` float RGB offset of the PCA lighting noise (0-1 scale).
    """

    boxes: Tensor
    modes: Tensor
    flips: Tensor
    factors: Tensor
    order: Tensor
    lighting: Tensor


class BatchTrainAugment:
    """The paper's training augmentation (as :class:`~gdet.classification.transforms.TrainTransform`) for whole
    batches on any device: per-image random-area crop resized with a per-image random interpolation, then batched
    ColorJitter (brightness/contrast/saturation in a random order per image), PCA lighting and horizontal flips.

    Args: as ``TrainTransform`` (``size``, ``scale``, ``ratio``, ``brightness``, ``contrast``, ``saturation``,
    ``lighting``, ``interpolations``, ``hflip``), and ``resize_method`` (see :meth:`apply`).
    """

    def __init__(self, size: int, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, lighting: float = 0.1,
                 interpolations: Sequence[str] = INTERPOLATIONS, hflip: float = 0.5, resize_method: str = "auto"):
        if not interpolations:
            raise ConfigError("aug_interpolations: give at least one interpolation")
        if resize_method not in ("auto", "loop", "matrix"):
            raise ConfigError(f"resize method {resize_method!r}: unknown (use auto, loop or matrix)")
        for m in interpolations:
            if m not in INTERPOLATIONS:
                raise ConfigError(f"interpolation {m!r}: unknown (use {', '.join(INTERPOLATIONS)})")
        for key, v in (("aug_brightness", brightness), ("aug_contrast", contrast), ("aug_saturation", saturation),
                       ("aug_lighting", lighting)):
            if float(v) < 0:
                raise ConfigError(f"{key}: {v} is negative")
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.jitter = (float(brightness), float(contrast), float(saturation))
        self.lighting_std = float(lighting)
        self.interpolations = list(interpolations)
        self.hflip = float(hflip)
        self.resize_method = resize_method

    # -- random draws
    def sample(self, sizes: Sequence[tuple[int, int]], generator: torch.Generator | None = None) -> AugmentParams:
        """Draw the parameters for images of ``sizes`` [(H, W), ...]: crop area share uniform in ``scale`` and
        aspect ratio log-uniform in ``ratio``, up to 10 tries, then the largest centred crop whose aspect fits
        (torchvision's ``RandomResizedCrop`` rule, as ``TrainTransform.crop_params``)."""
        g = generator
        n = len(sizes)
        hw = torch.tensor(list(sizes), dtype=torch.float64).reshape(n, 2)
        height, width = hw[:, 0:1], hw[:, 1:2]
        area = height * width
        target = area * torch.empty(n, 10, dtype=torch.float64).uniform_(*self.scale, generator=g)
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = torch.exp(torch.empty(n, 10, dtype=torch.float64).uniform_(*log_r, generator=g))
        w = torch.sqrt(target * aspect).round()
        h = torch.sqrt(target / aspect).round()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.to(torch.uint8).argmax(1)
        found = ok.any(1)
        ch = h.gather(1, first[:, None])[:, 0]
        cw = w.gather(1, first[:, None])[:, 0]
        u_top = torch.rand(n, dtype=torch.float64, generator=g)
        u_left = torch.rand(n, dtype=torch.float64, generator=g)
        # uniform integer offsets in [0, H - h] (TrainTransform: torch.randint(0, H - h + 1))
        top = torch.minimum((u_top * (height[:, 0] - ch + 1)).floor(), height[:, 0] - ch)
        left = torch.minimum((u_left * (width[:, 0] - cw + 1)).floor(), width[:, 0] - cw)
        boxes = torch.stack([top, left, ch, cw], 1).to(torch.int64)
        for i in (~found).nonzero()[:, 0].tolist():
            H, W = int(sizes[i][0]), int(sizes[i][1])
            in_ratio = W / H
            if in_ratio < self.ratio[0]:
                bw, bh = W, int(round(W / self.ratio[0]))
            elif in_ratio > self.ratio[1]:
                bh, bw = H, int(round(H * self.ratio[1]))
            else:
                bw, bh = W, H
            boxes[i] = torch.tensor([(H - bh) // 2, (W - bw) // 2, bh, bw])
        modes = torch.randint(len(self.interpolations), (n,), generator=g)
        flips = torch.rand(n, generator=g) < self.hflip
        lo = torch.tensor([max(0.0, 1 - j) for j in self.jitter])
        hi = torch.tensor([1 + j for j in self.jitter])
        factors = lo + (hi - lo) * torch.rand(n, 3, generator=g)
        order = torch.rand(n, 3, generator=g).argsort(1)
        alpha = torch.randn(n, 3, generator=g) * self.lighting_std
        lighting = (alpha * PCA_EIGVAL) @ PCA_EIGVEC.T  # row i: eigvec @ (alpha_i * eigval)
        return AugmentParams(boxes, modes, flips, factors, order, lighting)

    # -- pixel work
    def apply(self, images: Sequence[Tensor], params: AugmentParams, dtype: torch.dtype = torch.uint8,
              method: str | None = None) -> Tensor:
        """Augment decoded images with the drawn ``params``.

        Args:
            images: ``Tensor[3, H_i, W_i]`` uint8, all on one device.
            params: from :meth:`sample` for these images' sizes.
            dtype: ``torch.uint8`` (0-255, rounded as ``TrainTransform``) or a float dtype (0-1, unrounded).
            method: how crops are resized: ``"loop"`` calls ``F.interpolate`` per image (as ``TrainTransform``);
                ``"matrix"`` pads the batch and applies per-image resampling matrices (:func:`resample_matrices`,
                the same weights) in two batched matmuls, whatever mix of interpolations the batch drew;
                ``"auto"``: matrix on CUDA (a few kernels instead of several per image), loop on the CPU (fewer
                operations). Default: the ``resize_method`` given to the constructor.

        Returns:
            ``Tensor[N, 3, S, S]`` on the images' device.
        """
        n, s = len(images), self.size
        if n == 0:
            return torch.zeros(0, 3, s, s, dtype=dtype)
        device = images[0].device
        method = method or self.resize_method
        if method == "auto":
            method = "matrix" if device.type == "cuda" else "loop"
        if method not in ("loop", "matrix"):
            raise ConfigError(f"resize method {method!r}: unknown (use auto, loop or matrix)")
        x = torch.empty(n, 3, s, s, dtype=torch.float32, device=device)
        boxes = params.boxes.tolist()
        modes = params.modes.tolist()
        kinds = [INTERPOLATIONS.index(self.interpolations[m]) for m in modes]
        loop = list(range(n))
        if method == "matrix":
            # Images far above the batch's median size would blow up the padded batch: those few are looped.
            hs = sorted(im.shape[1] for im in images)
            ws = sorted(im.shape[2] for im in images)
            cap_h, cap_w = 2 * hs[n // 2], 2 * ws[n // 2]
            group = [i for i in range(n) if images[i].shape[1] <= cap_h and images[i].shape[2] <= cap_w]
            loop = sorted(set(range(n)) - set(group))
            resized = self._resize_matrix([images[i] for i in group], params.boxes[group],
                                          torch.tensor([kinds[i] for i in group]))
            if loop:
                x[torch.tensor(group, device=device)] = resized
            else:
                x = resized
        for i in loop:
            top, left, h, w = boxes[i]
            x[i] = resize(images[i][:, top:top + h, left:left + w].float(), (s, s), self.interpolations[modes[i]])
        flip = params.flips.nonzero()[:, 0]
        if len(flip):  # flipping commutes with the per-image photometric steps: one batched op
            flip = flip.to(device, non_blocking=True)
            x[flip] = x[flip].flip(-1)
        x.div_(255.0).clamp_(0, 1)
        if any(j > 0 for j in self.jitter):
            x = self._color_jitter(x, params.factors.to(device, non_blocking=True),
                                   params.order.to(device, non_blocking=True))
        if self.lighting_std > 0:
            x = x.add_(params.lighting.to(device, non_blocking=True).view(n, 3, 1, 1)).clamp_(0, 1)
        if dtype == torch.uint8:
            return x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return x.to(dtype)

    def _resize_matrix(self, images: Sequence[Tensor], boxes: Tensor, kinds: Tensor) -> Tensor:
        """Crop + resize ``images`` (``[Tensor[3, H_i, W_i]]``) with ``boxes`` ``Tensor[M, 4]`` (top, left, h, w)
        and interpolation ``kinds`` -> ``Tensor[M, 3, S, S]`` float 0-255."""
        s, dev = self.size, images[0].device
        hp, wp = max(im.shape[1] for im in images), max(im.shape[2] for im in images)
        if all(im.shape[1] == hp and im.shape[2] == wp for im in images):
            padded = torch.stack(list(images))
        else:
            padded = torch.zeros(len(images), 3, hp, wp, dtype=images[0].dtype, device=dev)
            for i, im in enumerate(images):
                padded[i, :, :im.shape[1], :im.shape[2]] = im
        wy = resample_matrices(boxes[:, 0], boxes[:, 2], hp, s, kinds, dev)  # M x S x Hp
        wx = resample_matrices(boxes[:, 1], boxes[:, 3], wp, s, kinds, dev)  # M x S x Wp
        # width first, as PyTorch's separable kernels: M x 3 x Hp x S, then M x 3 x S x S
        return wy.unsqueeze(1) @ (padded.float() @ wx.transpose(1, 2).unsqueeze(1))

    @staticmethod
    def _color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
        """One ColorJitter step per op slot, all images at once, in place.

        Brightness, contrast and saturation are each ``clamp(f * x + (1 - f) * target)`` with target 0, the
        image's mean grey, or the pixel's grey (torchvision's formulas); per image only the target's weights
        differ, so a step is one batched blend whatever op each image draws."""
        n = x.shape[0]
        for k in range(3):
            op = order[:, k]
            f = factors.gather(1, op[:, None]).to(x.dtype)  # N x 1
            c_sat = ((1 - f) * (op == 2)[:, None]).view(n, 1, 1, 1)
            c_con = ((1 - f) * (op == 1)[:, None]).view(n, 1, 1, 1)
            r, g, b = x.unbind(1)
            gray = r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)
            mean = gray.mean(dim=(1, 2, 3), keepdim=True)
            target = gray.mul_(c_sat).add_(c_con * mean)  # N x 1 x H x W
            x.mul_(f.view(n, 1, 1, 1)).add_(target).clamp_(0, 1)
        return x

    def __call__(self, images: Sequence[Tensor], generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.uint8) -> Tensor:
        """``apply(images, sample(sizes, generator))``: ``[Tensor[3, H_i, W_i] uint8]`` -> ``Tensor[N, 3, S, S]``."""
        return self.apply(images, self.sample([tuple(im.shape[-2:]) for im in images], generator), dtype)


# ------------------------------------------------------------------------------------------------------ loader

def epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` whose stream depends only on ``(seed, epoch, rank)`` (mixed by NumPy's
    SeedSequence, so neighbouring triples give unrelated streams)."""
    a, b = np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed((int(a) << 31) ^ int(b))
    return g


class DeviceBatchLoader:
    """Wraps a DataLoader of :class:`EncodedBatch` and yields ``(images Tensor[N, 3, S, S], labels Tensor[N])``
    already on ``device``, decoded and augmented there; a drop-in for the train loader of
    :func:`gdet.engine.train_one_epoch` (``len``, ``.sampler`` and :func:`gdet.engine.set_epoch` work as on the
    wrapped loader).

    Args:
        loader: yields :class:`EncodedBatch` (see :func:`build_device_loader`).
        augment: the batch augmentation.
        device: decoding and augmentation device.
        seed, rank: with the sampler's epoch, seed the augmentation generator.
        channels_last: return the images in channels-last memory format.
        dtype: ``torch.uint8`` (as the per-image path; normalise with ``Normalizer``) or float 0-1.
        prefetch: batches prepared ahead by a background thread (0: prepare in the caller's thread). On CUDA the
            thread works on its own stream, so decoding/augmentation overlaps the training step.

    Attributes:
        stats: ``{"gpu": n, "cpu": n}`` images decoded on each side so far.
    """

    def __init__(self, loader, augment: BatchTrainAugment, device: torch.device | str, *, seed: int = 0,
                 rank: int = 0, channels_last: bool = False, dtype: torch.dtype = torch.uint8, prefetch: int = 2):
        self.loader = loader
        self.augment = augment
        self.device = torch.device(device)
        self.seed, self.rank = int(seed), int(rank)
        self.channels_last = bool(channels_last)
        self.dtype = dtype
        self.prefetch = max(int(prefetch), 0)
        self.stats: dict[str, int] = {"gpu": 0, "cpu": 0}
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def sampler(self):
        return self.loader.sampler

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _current_epoch(self) -> int:
        # gdet.engine.set_epoch talks to the sampler directly; its epoch is the one that counts.
        return int(getattr(self.sampler, "epoch", self._epoch))

    def prepare(self, batch: EncodedBatch, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Decode and augment one :class:`EncodedBatch` -> ``(Tensor[N, 3, S, S], Tensor[N] int64)`` on device."""
        images = decode_batch(batch.files(), self.device, batch.paths, batch.orientations, self.stats)
        x = self.augment(images, generator, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, batch.labels.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        g = epoch_generator(self.seed, self._current_epoch(), self.rank)
        if self.prefetch == 0:
            for batch in self.loader:
                yield self.prepare(batch, g)
            return
        # Worker processes start here, from the caller's thread, as with a plain DataLoader.
        yield from self._threaded(iter(self.loader), g)

    def _threaded(self, batches, g: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        cuda = self.device.type == "cuda"
        # The thread must use the caller's GPU: "cuda" without an index means the current device, here, now.
        index = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if cuda else None
        stream = torch.cuda.Stream(self.device) if cuda else None
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            try:
                if cuda:
                    torch.cuda.set_device(index)
                for batch in batches:
                    if stop.is_set():
                        return
                    if cuda:
                        with torch.cuda.stream(stream):
                            x, y = self.prepare(batch, g)
                            event = torch.cuda.Event()
                            event.record(stream)
                    else:
                        x, y, event = *self.prepare(batch, g), None
                    if not put((x, y, event)):
                        return
                put(done)
            except BaseException as e:  # re-raised in the consumer, so errors keep their one-line message
                put(e)

        t = threading.Thread(target=work, name="gdet-device-batches", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                x, y, event = item
                if event is not None:
                    cur = torch.cuda.current_stream(self.device)
                    cur.wait_event(event)
                    # The tensors were allocated on the side stream; keep the allocator from reusing them early.
                    x.record_stream(cur)
                    y.record_stream(cur)
                yield x, y
        finally:
            stop.set()
            t.join(timeout=10)


def build_device_loader(paths: Sequence[str], labels: Sequence[int], augment: BatchTrainAugment, *, batch_size: int,
                        device: torch.device | str, info=None, num_workers: int = 4, seed: int = 0,
                        channels_last: bool = False, dtype: torch.dtype = torch.uint8,
                        prefetch: int = 2) -> DeviceBatchLoader:
    """The training loader of the batched path: the same sampler and batches as
    :func:`gdet.engine.build_loader` (``train=True``) over the same files, workers reading bytes only.

    Args:
        paths, labels: the training images and their int labels.
        augment: the batch augmentation (e.g. ``BatchTrainAugment(224)``).
        batch_size: per process.
        device: where decoding and augmentation run (the training device).
        info: ``gdet.engine.DistInfo`` of this process (rank, world size); default single process.
        num_workers: file-reading worker processes.
        seed: sampler order and augmentation seed.
        channels_last, dtype, prefetch: see :class:`DeviceBatchLoader`.
    """

    info = info or DistInfo()
    inner = build_loader(EncodedImageDataset(paths, labels), batch_size=batch_size, train=True, info=info,
                         num_workers=num_workers, device=None, seed=seed, collate_fn=collate_encoded)
    return DeviceBatchLoader(inner, augment, device, seed=seed, rank=info.rank, channels_last=channels_last,
                             dtype=dtype, prefetch=prefetch)
