"""Selective search (Uijlings et al., 2013) through OpenCV's ``cv2.ximgproc`` or the ``selectivesearch`` package.

Both backends work on a copy of the image resized so that its longer side is ``max_side`` (500) pixels, as
R-CNN did; boxes are mapped back to the original image, exact duplicates and boxes smaller than ``min_size``
pixels (original image) are dropped, and the order is the backend's ranking.

Superpixel scale. Both backends start from Felzenszwalb-Huttenlocher graph segmentations whose merge
threshold is ``tau(C) = k / |C|``: doubling ``k`` roughly doubles the size of the initial superpixels.
``superpixel_scale`` multiplies every ``k``: with OpenCV the segmentations use ``k = base_k + i * inc_k``
(fast mode: i = 0..2, quality: i = 0..4), so ``superpixel_scale=2`` doubles ``base_k`` and ``inc_k``
(150/150 -> 300/300); with the package it doubles Felzenszwalb's ``scale``. The GoogLeNet paper's
"superpixels twice as large" is ``superpixel_scale=2`` (about half the boxes; see docs/proposals.md).

Determinism. OpenCV ranks regions by ``level * rand()`` with the C library's ``rand()``; each call re-seeds it
(``srand(seed)``, under a lock) so the same image gives the same boxes in the same order in every process.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from gdet.errors import GdetError
from gdet.proposals.base import (Proposer, check_choice, dedupe_boxes, filter_small, map_boxes_back,
                                 rank_scores, resize_longer_side)

MISSING_XIMGPROC = (
    "cv2.ximgproc is missing: opencv-python shadows opencv-contrib-python-headless; run: "
    "pip uninstall -y opencv-python opencv-contrib-python-headless && pip install opencv-contrib-python-headless"
)
OPENCV_STRATEGIES = ("color", "texture", "size", "fill")
_RAND_LOCK = threading.Lock()
_LIBC: Any = None


def _ximgproc_segmentation():
    """``cv2.ximgproc.segmentation``, or a :class:`GdetError` that says how to install it."""
    import cv2

    seg = getattr(getattr(cv2, "ximgproc", None), "segmentation", None)
    if seg is None:
        raise GdetError(MISSING_XIMGPROC)
    return seg


def _libc():
    """The C library whose ``rand()`` OpenCV calls (None where it cannot be loaded)."""
    global _LIBC
    if _LIBC is None:
        try:
            if sys.platform == "win32":
                _LIBC = ctypes.cdll.msvcrt
            else:
                _LIBC = ctypes.CDLL(None)
            _LIBC.srand.argtypes = [ctypes.c_uint]
        except (OSError, AttributeError):  # pragma: no cover - exotic platforms
            _LIBC = False
    return _LIBC or None


def seed_c_rand(seed: int = 0) -> bool:
    """Seed the C library's ``rand()``; returns False where that is impossible."""
    libc = _libc()
    if libc is None:  # pragma: no cover
        return False
    libc.srand(seed)
    return True


class SelectiveSearch(Proposer):
    """Selective search proposals.

    Args:
        backend: ``"opencv"`` (``cv2.ximgproc``, the default) or ``"selectivesearch"`` (the package, slower and
            with lower recall; kept for comparison).
        mode: OpenCV only: ``"fast"`` (2 colour spaces, 3 segmentations, 2 strategies), ``"quality"``
            (more colour spaces, 5 segmentations) or ``"single"`` (one segmentation ``k=base_k``, one
            strategy).
        max_side: resize so the longer side has this many pixels first (None/0: no resize).
        min_size: drop boxes narrower or lower than this, in pixels of the original image.
        base_k, inc_k, sigma: OpenCV graph segmentation parameters (first ``k``, its increment, Gaussian sigma).
        scale, sigma_pkg, min_region: the package's Felzenszwalb ``scale``, ``sigma`` and ``min_size``.
        superpixel_scale: multiplies every segmentation ``k`` (2.0 = the paper's superpixels twice as large).
        strategies: OpenCV only: replace the mode's merging strategies by one combining these of
            ``color, texture, size, fill``.
        max_boxes: keep at most this many boxes (best ranked); None keeps all.
        seed: seed of the C ``rand()`` that OpenCV ranks with.
    """

    def __init__(self, *, backend: str = "opencv", mode: str = "fast", max_side: int | None = 500,
                 min_size: float = 8.0, base_k: int = 150, inc_k: int = 150, sigma: float = 0.8,
                 scale: float = 500.0, sigma_pkg: float = 0.9, min_region: int = 10,
                 superpixel_scale: float = 1.0, strategies: Sequence[str] | str | None = None,
                 max_boxes: int | None = None, seed: int = 0):
        self.backend = check_choice(backend, ("opencv", "selectivesearch"), "selective search backend")
        self.mode = check_choice(mode, ("fast", "quality", "single"), "selective search mode")
        if isinstance(strategies, str):
            strategies = [s.strip() for s in strategies.split(",") if s.strip()]
        if strategies is not None:
            for s in strategies:
                check_choice(s, OPENCV_STRATEGIES, "selective search strategy")
            if not 1 <= len(strategies) <= 4:
                raise GdetError("selective search strategies: give 1 to 4 of color, texture, size, fill")
        if superpixel_scale <= 0:
            raise GdetError(f"superpixel_scale must be positive, got {superpixel_scale}")
        self.max_side, self.min_size = max_side, float(min_size)
        self.base_k, self.inc_k, self.sigma = int(base_k), int(inc_k), float(sigma)
        self.scale, self.sigma_pkg, self.min_region = float(scale), float(sigma_pkg), int(min_region)
        self.superpixel_scale = float(superpixel_scale)
        self.strategies = list(strategies) if strategies is not None else None
        self.max_boxes, self.seed = max_boxes, int(seed)
        if self.backend == "opencv":
            _ximgproc_segmentation()  # fail at build time, not on the first image
            self.name = "ss" if self.mode == "fast" else f"ss_{self.mode}"
        else:
            self.name = "selectivesearch"

    def config(self) -> dict[str, Any]:
        cfg = {"method": self.name, "backend": self.backend, "max_side": self.max_side, "min_size": self.min_size,
               "superpixel_scale": self.superpixel_scale, "max_boxes": self.max_boxes}
        if self.backend == "opencv":
            cfg.update(mode=self.mode, base_k=self.base_k, inc_k=self.inc_k, sigma=self.sigma,
                       strategies=self.strategies, seed=self.seed)
        else:
            cfg.update(scale=self.scale, sigma_pkg=self.sigma_pkg, min_region=self.min_region)
        return cfg

    def propose(self, image: np.ndarray) -> tuple[Tensor, Tensor]:
        """Selective search boxes of an RGB ``uint8 [H, W, 3]`` image (see :meth:`Proposer.propose`).

        An image one pixel high or wide has no regions to merge: its only box is the whole image, kept if it
        passes ``min_size`` (so usually no box at all).
        """
        if isinstance(image, np.ndarray) and image.ndim in (2, 3) and image.dtype == np.uint8 \
                and 1 <= min(image.shape[:2]) < 2:
            h, w = image.shape[:2]
            return filter_small(torch.tensor([[0.0, 0.0, float(w), float(h)]]), torch.ones(1), self.min_size)
        return super().propose(image)

    def _propose(self, image: np.ndarray) -> tuple[Tensor, Tensor]:
        h, w = image.shape[:2]
        small, factor = resize_longer_side(image, self.max_side)
        raw = self._opencv(small) if self.backend == "opencv" else self._package(small)
        boxes = map_boxes_back(raw, factor, w, h)
        scores = rank_scores(boxes.shape[0])
        boxes, scores = dedupe_boxes(boxes, scores)
        boxes, scores = filter_small(boxes, scores, self.min_size)
        if self.max_boxes is not None:
            boxes, scores = boxes[: self.max_boxes], scores[: self.max_boxes]
        return boxes.contiguous(), scores.contiguous()

    def _opencv(self, rgb: np.ndarray) -> Tensor:
        """Raw OpenCV boxes on the resized image, xyxy, in OpenCV's rank order."""
        import cv2

        seg = _ximgproc_segmentation()
        ss = seg.createSelectiveSearchSegmentation()
        ss.setBaseImage(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # OpenCV's colour conversions assume BGR
        base_k = max(1, round(self.base_k * self.superpixel_scale))
        inc_k = max(1, round(self.inc_k * self.superpixel_scale))
        if self.mode == "fast":
            ss.switchToSelectiveSearchFast(base_k, inc_k, self.sigma)
        elif self.mode == "quality":
            ss.switchToSelectiveSearchQuality(base_k, inc_k, self.sigma)
        else:
            ss.switchToSingleStrategy(base_k, self.sigma)
        if self.strategies is not None:
            makers = {"color": seg.createSelectiveSearchSegmentationStrategyColor,
                      "texture": seg.createSelectiveSearchSegmentationStrategyTexture,
                      "size": seg.createSelectiveSearchSegmentationStrategySize,
                      "fill": seg.createSelectiveSearchSegmentationStrategyFill}
            ss.clearStrategies()
            ss.addStrategy(seg.createSelectiveSearchSegmentationStrategyMultiple(
                *[makers[s]() for s in self.strategies]))
        with _RAND_LOCK:
            seed_c_rand(self.seed)
            rects = ss.process()  # N x 4 (x, y, w, h), w and h count pixels
        if rects is None or len(rects) == 0:
            return torch.zeros((0, 4))
        r = torch.from_numpy(np.asarray(rects, dtype=np.float32).reshape(-1, 4))
        return torch.cat([r[:, :2], r[:, :2] + r[:, 2:]], 1)

    def _package(self, rgb: np.ndarray) -> Tensor:
        """Raw boxes of the ``selectivesearch`` package on the resized image, corrected to xyxy.

        The package reports ``(min_x, min_y, max_x - min_x, max_y - min_y)`` with inclusive maxima, i.e.
        width and height one pixel short (a one-column region has width 0): the box is
        ``(min_x, min_y, max_x + 1, max_y + 1)``. Its list holds the initial segments then each merge;
        it is reversed (coarse to fine) so that truncation keeps the large merged regions.
        """
        import warnings

        try:
            import selectivesearch
        except ImportError as e:  # pragma: no cover - declared dependency
            raise GdetError("the selectivesearch package is missing; run: pip install selectivesearch") from e
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skimage's LBP-on-float warning, on every call
            _, regions = selectivesearch.selective_search(
                rgb, scale=self.scale * self.superpixel_scale, sigma=self.sigma_pkg, min_size=self.min_region)
        if not regions:
            return torch.zeros((0, 4))
        return correct_package_boxes(np.array([r["rect"] for r in regions], dtype=np.float32)).flip(0)


def correct_package_boxes(rects: np.ndarray) -> Tensor:
    """``selectivesearch`` 0.4 ``(x, y, w, h)`` rects (w, h one short) -> xyxy ``Tensor[N, 4]``."""
    r = torch.from_numpy(np.asarray(rects, dtype=np.float32).reshape(-1, 4))
    return torch.cat([r[:, :2], r[:, :2] + r[:, 2:] + 1.0], 1)
