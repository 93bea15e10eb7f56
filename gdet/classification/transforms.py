"""Training augmentation of the paper (crops over 8-100% of the area, aspect 3/4-4/3, photometric distortions,
random interpolation, flips) and the 1-crop evaluation transform. Inputs are ``[H, W, 3]`` uint8 RGB arrays
(what :func:`gdet.data.image.read_image` returns); outputs are ``Tensor[3, S, S]`` uint8, normalised later on
the device (4x less host-to-device traffic than float)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from gdet.classification.multicrop import INTERPOLATIONS, apply_crops, crop_boxes, resize
from gdet.data import to_chw
from gdet.errors import ConfigError

# PCA of ImageNet RGB pixels (0-1 scale), as used by AlexNet's "lighting" noise.
PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                           [-0.5808, -0.0045, -0.8140],
                           [-0.5836, -0.6948, 0.4203]])


class Lighting:
    """AlexNet's PCA lighting noise: add ``eigvec @ (alpha * eigval)``, ``alpha ~ N(0, std)``, to every pixel
    of a 0-1 float image."""

    def __init__(self, std: float = 0.1):
        self.std = float(std)

    def __call__(self, img: Tensor) -> Tensor:
        if self.std <= 0:
            return img
        alpha = torch.randn(3) * self.std
        rgb = PCA_EIGVEC @ (alpha * PCA_EIGVAL)
        return (img + rgb.view(3, 1, 1).to(img.dtype)).clamp_(0, 1)


class TrainTransform:
    """Random-area crop resized with a random interpolation, photometric distortions, horizontal flip.

    Args:
        size: output side in pixels.
        scale: range of the crop's share of the image area (paper: 0.08-1).
        ratio: range of the crop's aspect ratio w/h (paper: 3/4-4/3).
        brightness, contrast, saturation: ColorJitter strengths (0 disables).
        lighting: std of the PCA lighting noise (0 disables).
        interpolations: resize methods drawn uniformly per image.
        hflip: probability of a horizontal flip.
    """

    def __init__(self, size: int, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, lighting: float = 0.1,
                 interpolations: Sequence[str] = INTERPOLATIONS, hflip: float = 0.5):
        for m in interpolations:
            if m not in INTERPOLATIONS:
                raise ConfigError(f"interpolation {m!r}: unknown (use {', '.join(INTERPOLATIONS)})")
        if not interpolations:
            raise ConfigError("aug_interpolations: give at least one interpolation")
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.interpolations = list(interpolations)
        self.jitter = (v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation)
                       if max(brightness, contrast, saturation) > 0 else None)
        self.lighting = Lighting(lighting)
        self.hflip = float(hflip)

    def crop_params(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a crop with area share in ``scale`` and aspect ratio (log-uniform) in ``ratio``;
        after 10 failed draws, the largest centred crop whose aspect fits (torchvision's rule)."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*self.scale).item()
            aspect = math.exp(torch.empty(1).uniform_(*log_ratio).item())
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,)).item())
                left = int(torch.randint(0, width - w + 1, (1,)).item())
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: np.ndarray | Tensor) -> Tensor:
        img = to_chw(image)
        top, left, h, w = self.crop_params(img.shape[1], img.shape[2])
        mode = self.interpolations[int(torch.randint(len(self.interpolations), (1,)).item())]
        x = resize(img[:, top:top + h, left:left + w].float(), (self.size, self.size), mode) / 255.0
        x = x.clamp_(0, 1)
        if self.jitter is not None:
            x = self.jitter(x)
        x = self.lighting(x)
        if torch.rand(1).item() < self.hflip:
            x = TF.horizontal_flip(x)
        return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)


class EvalTransform:
    """1-crop evaluation: shorter side resized to ``round(256 * size / 224)``, centre ``size`` crop."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, image: np.ndarray | Tensor) -> Tensor:
        img = to_chw(image)
        return apply_crops(img, crop_boxes(img.shape[2], img.shape[1], 1, self.size), self.size)[0]
