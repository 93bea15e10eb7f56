"""MultiBox (Erhan et al., 2014; Szegedy et al., 2014 "Scalable, High-Quality Object Detection"): a head on any
registry backbone that regresses ``K`` class-agnostic boxes, each with an objectness score.

Boxes live in normalised image coordinates (x1, y1, x2, y2 in 0..1; the image is warped to a square input).
Each output ``i`` owns a prior box ``p_i`` (k-means centre of the training ground truth) and predicts
``l_i = p_i + delta_i``. Training matches every ground truth ``g_j`` to one prior by bipartite matching
(Hungarian, cost ``||p_i - g_j||^2``; with more objects than priors only ``K`` are matched) and minimises, per
image,

    F = alpha * 1/2 * sum_matched ||l_i - g_j||^2  +  sum_i BCE(c_i, x_i)

where ``x_i`` is 1 for matched outputs and 0 otherwise (logistic loss on all ``K`` confidences); the batch
loss is the mean over images. Inference: boxes scaled to the image, tiny ones removed, NMS, the top ``K``.

Two heads: ``fc`` (Erhan et al.: pooled features -> one linear layer -> ``K`` boxes; priors are k-means centres)
and ``conv`` (convolutional priors as in Szegedy et al. 2014: k-means box shapes on every feature-map cell, one
shared convolutional predictor; optionally every prior with IoU >= ``match_iou`` to a ground truth is matched
too). ``conv`` generalises from far less data; docs/proposals.md has the comparison.
"""
from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_iou, nms, remove_small_boxes

from gdet.backbones import build_backbone
from gdet.data import to_chw
from gdet.engine import load_checkpoint, load_model_weights, resolve_device
from gdet.errors import CheckpointError, GdetError
from gdet.proposals.base import Proposer, as_rgb
from gdet.runtime import optimize

TASK = "multibox"


# ---------------------------------------------------------------------------------------------------- priors
def _kmeans(x: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    """k-means++ initialisation then Lloyd iterations (L2) on the rows of ``x``; returns ``k`` centres."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(x, axis=0)
    if uniq.shape[0] <= k:
        extra = uniq[rng.integers(0, uniq.shape[0], k - uniq.shape[0])]
        return np.concatenate([uniq, extra + rng.normal(0, 0.01, extra.shape)])
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(x.shape[0])]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for i in range(1, k):
        centres[i] = x[rng.choice(x.shape[0], p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(x.shape[0])]
        d2 = np.minimum(d2, ((x - centres[i]) ** 2).sum(1))
    for _ in range(iters):
        assign = ((x[:, None, :] - centres[None]) ** 2).sum(2).argmin(1)
        new = centres.copy()
        for c in range(k):
            members = x[assign == c]
            if len(members):
                new[c] = members.mean(0)
        if np.allclose(new, centres):
            break
        centres = new
    return centres


def _as_array(boxes: Tensor | np.ndarray) -> np.ndarray:
    x = np.asarray(boxes.numpy() if isinstance(boxes, Tensor) else boxes, dtype=np.float64).reshape(-1, 4)
    if x.shape[0] == 0:
        raise GdetError("k-means priors: no ground-truth boxes to cluster")
    return x


def kmeans_priors(boxes: Tensor | np.ndarray, k: int, iters: int = 100, seed: int = 0) -> Tensor:
    """Cluster normalised boxes into ``k`` priors (k-means++ initialisation, Lloyd iterations, L2 in xyxy).

    Args:
        boxes (Tensor[M, 4]): ground-truth boxes in normalised (x1, y1, x2, y2).
        k: number of priors. With fewer than ``k`` distinct boxes the rest are jittered copies.

    Returns:
        Tensor[k, 4] float32 priors, sorted by area (small first) for a stable order.
    """
    centres = np.clip(_kmeans(_as_array(boxes), k, iters, seed), 0.0, 1.0)
    area = (centres[:, 2] - centres[:, 0]) * (centres[:, 3] - centres[:, 1])
    order = np.lexsort((centres[:, 1], centres[:, 0], area))
    return torch.from_numpy(centres[order].astype(np.float32))


def grid_priors(boxes: Tensor | np.ndarray, grid: tuple[int, int], anchors: int, iters: int = 100,
                seed: int = 0) -> Tensor:
    """Convolutional priors (Szegedy et al. 2014, "Scalable, High-Quality Object Detection"): ``anchors`` box
    shapes, k-means of the ground truths' (width, height), centred on every cell of a ``grid = (rows, cols)``
    feature map.

    Returns:
        Tensor[rows * cols * anchors, 4] float32 normalised xyxy, ordered (row, col, shape) as the convolutional
        head's outputs; shapes sorted by area.
    """
    x = _as_array(boxes)
    wh = _kmeans(np.stack([x[:, 2] - x[:, 0], x[:, 3] - x[:, 1]], 1), anchors, iters, seed).clip(1e-3, 1.0)
    wh = wh[np.argsort(wh[:, 0] * wh[:, 1], kind="stable")]
    rows, cols = grid
    cy, cx = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
    c = np.stack([cx, cy], -1).reshape(-1, 1, 2)  # cells x 1 x 2
    pri = np.concatenate([c - wh[None] / 2, c + wh[None] / 2], -1).reshape(-1, 4)
    return torch.from_numpy(pri.astype(np.float32))


# -------------------------------------------------------------------------------------------------- matching
def match_priors(priors: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Bipartite matching of ground truths to priors minimising the total squared L2 distance.

    Args:
        priors (Tensor[K, 4]), gt (Tensor[G, 4]): normalised xyxy.

    Returns:
        (prior_idx Tensor[M], gt_idx Tensor[M]) int64 with M = min(K, G): ``gt[gt_idx[m]]`` is matched to
        ``priors[prior_idx[m]]``; sorted by ``gt_idx``.
    """
    if gt.shape[0] == 0 or priors.shape[0] == 0:
        e = torch.zeros(0, dtype=torch.int64)
        return e, e
    cost = torch.cdist(gt.double(), priors.double()).pow(2).cpu().numpy()  # G x K
    g_idx, p_idx = linear_sum_assignment(cost)
    return torch.as_tensor(p_idx, dtype=torch.int64), torch.as_tensor(g_idx, dtype=torch.int64)


def encode_targets(priors: Tensor, gt: Tensor, match_iou: float | None = None) -> tuple[Tensor, Tensor]:
    """Per-prior training targets: the bipartite matches, plus (with ``match_iou``) every other prior whose IoU
    with a ground truth reaches ``match_iou``, assigned to that best-overlapping ground truth. The extra matches
    keep neighbouring convolutional priors, which see nearly the same features, from being taught opposite
    labels.

    Returns:
        target_boxes (Tensor[K, 4]): the matched ground truth (the prior itself where unmatched).
        matched (Tensor[K]): bool, True where a ground truth is matched.
    """
    target = priors.clone()
    matched = torch.zeros(priors.shape[0], dtype=torch.bool)
    if match_iou is not None and gt.shape[0]:
        best, arg = box_iou(priors, gt.to(priors.dtype)).max(1)
        extra = best >= match_iou
        target[extra] = gt[arg[extra]].to(target.dtype)
        matched |= extra
    p_idx, g_idx = match_priors(priors, gt)
    target[p_idx] = gt[g_idx].to(target.dtype)
    matched[p_idx] = True
    return target, matched


def multibox_loss(pred_boxes: Tensor, logits: Tensor, target_boxes: Tensor, matched: Tensor,
                  alpha: float = 0.3) -> tuple[Tensor, dict[str, Tensor]]:
    """The MultiBox objective, averaged over the batch.

    Args:
        pred_boxes (Tensor[B, K, 4]), logits (Tensor[B, K]): network outputs (normalised xyxy, raw scores).
        target_boxes (Tensor[B, K, 4]), matched (Tensor[B, K] bool): from :func:`encode_targets`.
        alpha: weight of the localisation term (0.3 in Erhan et al.).

    Returns:
        (loss, {"loc": mean localisation term, "conf": mean confidence term}).
    """
    b = max(pred_boxes.shape[0], 1)
    m = matched.to(pred_boxes.dtype)
    loc = 0.5 * ((pred_boxes.float() - target_boxes.float()).pow(2).sum(-1) * m.float()).sum() / b
    conf = F.binary_cross_entropy_with_logits(logits.float(), m.float(), reduction="sum") / b
    return alpha * loc + conf, {"loc": loc.detach(), "conf": conf.detach()}


# ----------------------------------------------------------------------------------------------------- model
def _init_head(hidden: nn.Module, out: nn.Module, prior_prob: float) -> None:
    """He init for the hidden layer; the output layer starts at the priors (offsets ~0) with objectness
    ``prior_prob`` everywhere, as most priors match nothing. ``out`` emits groups of (4 offsets, 1 logit)."""
    nn.init.kaiming_normal_(hidden.weight, nonlinearity="relu")
    nn.init.zeros_(hidden.bias)
    nn.init.normal_(out.weight, std=1e-3)
    nn.init.zeros_(out.bias)
    with torch.no_grad():
        out.bias.view(-1, 5)[:, 4] = float(np.log(prior_prob / (1 - prior_prob)))


class MultiBoxHead(nn.Module):
    """Feature map -> ``K`` box offsets and logits: 1x1 conv (``hidden``) + ReLU, average-pooled to a
    ``grid x grid`` map (keeps coarse position; any input size works), flattened, one linear layer."""

    def __init__(self, in_channels: int, num_priors: int, hidden: int = 256, grid: int = 4, dropout: float = 0.0,
                 prior_prob: float = 0.02):
        super().__init__()
        self.num_priors, self.grid = num_priors, grid
        self.reduce = nn.Conv2d(in_channels, hidden, 1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden * grid * grid, num_priors * 5)
        _init_head(self.reduce, self.fc, prior_prob)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.reduce(feats), inplace=True)  # N x hidden x h x w
        x = F.adaptive_avg_pool2d(x, self.grid)  # N x hidden x grid x grid
        x = self.fc(self.dropout(torch.flatten(x, 1))).view(-1, self.num_priors, 5)  # N x K x 5
        return x[..., :4], x[..., 4]


class ConvMultiBoxHead(nn.Module):
    """Convolutional priors: 3x3 conv (``hidden``) + ReLU, then a 1x1 conv giving ``anchors`` x (4 offsets +
    1 logit) at every cell, flattened in (row, col, anchor) order to match :func:`grid_priors`. Shares weights
    across positions, so it needs far less data than the fully connected head."""

    def __init__(self, in_channels: int, anchors: int, hidden: int = 256, dropout: float = 0.0,
                 prior_prob: float = 0.01):
        super().__init__()
        self.anchors = anchors
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.dropout = nn.Dropout2d(dropout)
        self.out = nn.Conv2d(hidden, anchors * 5, 1)
        _init_head(self.conv, self.out, prior_prob)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        x = self.out(self.dropout(F.relu(self.conv(feats), inplace=True)))  # N x A*5 x h x w
        n, _, h, w = x.shape
        x = x.view(n, self.anchors, 5, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * self.anchors, 5)
        return x[..., :4], x[..., 4]


HEADS = ("fc", "conv")


class MultiBox(nn.Module):
    """Backbone features + :class:`MultiBoxHead`; ``forward(x)`` -> (boxes Tensor[N, K, 4] normalised xyxy,
    logits Tensor[N, K]). ``x`` is the backbone's normalised input (see :meth:`normalize`)."""

    def __init__(self, backbone: nn.Module, priors: Tensor, hidden: int = 256, grid: int = 4, dropout: float = 0.0,
                 kind: str = "fc", anchors: int = 9):
        super().__init__()
        if kind not in HEADS:
            raise GdetError(f"MultiBox head {kind!r}: use one of {HEADS}")
        self.backbone = backbone
        if hasattr(backbone, "fc"):  # the classifier is unused; drop it (DDP insists every parameter is used)
            backbone.fc = nn.Identity()
        self.register_buffer("priors", priors.float().clone())
        if kind == "conv":
            if priors.shape[0] % anchors:
                raise GdetError(f"{priors.shape[0]} priors are not a grid of {anchors} anchors per cell")
            self.head = ConvMultiBoxHead(backbone.out_channels, anchors, hidden, dropout)
        else:
            self.head = MultiBoxHead(backbone.out_channels, priors.shape[0], hidden, grid, dropout)

    @property
    def num_priors(self) -> int:
        return int(self.priors.shape[0])

    def normalize(self, x01: Tensor) -> Tensor:
        return self.backbone.normalize(x01)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.backbone.forward_features(x)  # N x C x h x w
        delta, logits = self.head(feats)
        if delta.shape[1] != self.priors.shape[0]:
            raise GdetError(f"MultiBox: {delta.shape[1]} outputs for {self.priors.shape[0]} priors (a convolutional "
                            f"head must run at the input size it was trained at)")
        return self.priors.unsqueeze(0) + delta, logits


def build_trunk(backbone: str, backbone_kwargs: dict | None = None, num_classes: int = 1000) -> nn.Module:
    """Registry backbone ``backbone`` with its aux heads off (``backbone_kwargs`` may already say so)."""
    kw = dict(backbone_kwargs or {})
    kw.setdefault("aux_logits", False)
    try:
        return build_backbone(backbone, num_classes=num_classes, **kw)
    except TypeError:  # a network without the aux_logits switch
        kw.pop("aux_logits")
        return build_backbone(backbone, num_classes=num_classes, **kw)


def build_multibox(*, backbone: str, priors: Tensor, backbone_kwargs: dict | None = None,
                   backbone_weights: str | os.PathLike | None = None, hidden: int = 256, grid: int = 4,
                   dropout: float = 0.0, kind: str = "fc", anchors: int = 9) -> MultiBox:
    """A MultiBox network on registry backbone ``backbone`` (aux heads off; ``backbone_weights``: a local
    classification checkpoint to start from)."""
    net = build_trunk(backbone, backbone_kwargs)
    if backbone_weights:
        load_model_weights(net, backbone_weights, strict=False)
    return MultiBox(net, priors, hidden=hidden, grid=grid, dropout=dropout, kind=kind, anchors=anchors)


def load_multibox(path: str | os.PathLike, device: torch.device | str = "cpu", use_ema: bool = True) -> tuple[MultiBox, dict]:
    """Rebuild a MultiBox network from a ``gdet train multibox`` checkpoint. Returns (model in eval mode,
    checkpoint dict)."""
    ckpt = load_checkpoint(path)
    if ckpt.get("task") != TASK or "priors" not in ckpt:
        raise CheckpointError(f"{path}: not a MultiBox checkpoint (task={ckpt.get('task')!r}); "
                              f"train one with gdet train multibox")
    head = ckpt.get("head", {})
    model = build_multibox(backbone=ckpt["backbone"], priors=ckpt["priors"],
                           backbone_kwargs=ckpt.get("backbone_kwargs"), **head)
    load_model_weights(model, path, use_ema=use_ema)
    return model.to(device).eval(), ckpt


# ------------------------------------------------------------------------------------------------- inference
def image_to_input(image: np.ndarray, size: int) -> Tensor:
    """RGB uint8 ``[H, W, 3]`` -> uint8 ``Tensor[3, size, size]`` (warped, as in training)."""
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR
    return to_chw(cv2.resize(image, (size, size), interpolation=interp))


@torch.no_grad()
def postprocess(boxes: Tensor, logits: Tensor, width: int, height: int, *, top_k: int = 200, nms_iou: float = 0.7,
                min_size: float = 4.0, score_thresh: float = 0.0) -> tuple[Tensor, Tensor]:
    """One image's normalised outputs -> (boxes Tensor[n, 4] pixels, scores Tensor[n]), n <= top_k:
    score threshold -> clip -> remove_small_boxes -> NMS -> top-k."""
    scores = logits.float().sigmoid()
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes.device)
    b = boxes.float().clamp(0, 1) * scale
    keep = torch.nonzero(scores >= score_thresh).flatten()
    b, scores = b[keep], scores[keep]
    keep = remove_small_boxes(b, min_size)
    b, scores = b[keep], scores[keep]
    keep = nms(b, scores, nms_iou) if nms_iou < 1.0 else scores.argsort(descending=True)
    keep = keep[:top_k]
    return b[keep], scores[keep]


def tile_regions(width: int, height: int, tiles: int = 1, overlap: float = 0.25) -> list[tuple[int, int, int, int]]:
    """The windows MultiBox looks at: the whole image, then for ``tiles >= 2`` a ``tiles x tiles`` grid of
    windows, each ``1 / (tiles - (tiles - 1) * overlap)`` of the image's width and height, neighbours
    overlapping by ``overlap`` of a window, together covering the image exactly. Each window is warped to the
    network's input, so its objects are seen that much larger. Returns (x0, y0, x1, y1) integer pixels."""
    regions = [(0, 0, int(width), int(height))]
    if tiles >= 2:
        side = 1.0 / (tiles - (tiles - 1) * overlap)
        step = side * (1.0 - overlap)
        for i in range(tiles):
            for j in range(tiles):
                x0, y0 = int(round(j * step * width)), int(round(i * step * height))
                x1 = width if j == tiles - 1 else int(round((j * step + side) * width))
                y1 = height if i == tiles - 1 else int(round((i * step + side) * height))
                if x1 > x0 and y1 > y0:  # a tiny image can leave empty windows
                    regions.append((x0, y0, x1, y1))
    return regions


class MultiBoxProposer(Proposer):
    """MultiBox as a proposal method: ``propose(image)`` -> the top ``top_k`` boxes after NMS.

    Args:
        model: a trained :class:`MultiBox` (eval mode).
        input_size: the square input side the model was trained at.
        top_k, nms_iou, min_size: post-processing (see :func:`postprocess`).
        tiles: 1 looks at the whole image once; ``n >= 2`` also at ``n x n`` overlapping zoomed windows (see
            :func:`tile_regions`), one batch of ``1 + n^2`` inputs, the boxes of all windows united by NMS.
            Zooming finds the small objects a network with a coarse prior grid misses.
        tile_overlap: overlap of neighbouring windows, as a fraction of a window.
        device: where the network runs.
    """

    name = "multibox"

    def __init__(self, model: MultiBox, input_size: int, *, top_k: int = 200, nms_iou: float = 0.7,
                 min_size: float = 4.0, tiles: int = 1, tile_overlap: float = 0.25,
                 device: torch.device | str = "cpu", weights: str | None = None):
        if int(tiles) < 1 or not 0.0 <= float(tile_overlap) < 1.0:
            raise GdetError(f"multibox: tiles={tiles!r} must be >= 1 and tile_overlap={tile_overlap!r} in [0, 1)")
        # The inference runtime's exact rewrite (folded BN, fused 1x1 convolutions; fp16 on CUDA), on a copy.
        self.model = optimize(model.to(device), device=device)
        self.device = torch.device(device)
        self.input_size, self.top_k, self.nms_iou, self.min_size = int(input_size), int(top_k), float(nms_iou), float(min_size)
        self.tiles, self.tile_overlap = int(tiles), float(tile_overlap)
        self.weights = weights

    @classmethod
    def from_checkpoint(cls, *, weights: str | os.PathLike | None = None, device: str = "cpu", **kwargs) -> "MultiBoxProposer":
        if not weights:
            raise GdetError("method 'multibox' needs weights=PATH (a checkpoint from gdet train multibox)")
        dev = resolve_device(device)
        model, ckpt = load_multibox(weights, dev)
        return cls(model, int(ckpt.get("input_size", 224)), device=dev, weights=str(weights), **kwargs)

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "weights": self.weights, "input_size": self.input_size, "top_k": self.top_k,
                "nms_iou": self.nms_iou, "min_size": self.min_size, "num_priors": self.model.num_priors,
                "tiles": self.tiles, "tile_overlap": self.tile_overlap}

    @torch.no_grad()
    def propose_batch(self, images: list[np.ndarray]) -> list[tuple[Tensor, Tensor]]:
        """Propose for several images in one forward pass (same results as :meth:`propose` one by one)."""
        images = [as_rgb(im) for im in images]
        regions = [tile_regions(im.shape[1], im.shape[0], self.tiles, self.tile_overlap) for im in images]
        x = torch.stack([image_to_input(np.ascontiguousarray(im[y0:y1, x0:x1]), self.input_size)
                         for im, regs in zip(images, regions) for x0, y0, x1, y1 in regs]).to(self.device)
        boxes, logits = self.model(self.model.normalize(x.float() / 255.0))
        out, k = [], 0
        for regs in regions:
            parts = []
            for x0, y0, x1, y1 in regs:
                b, sc = postprocess(boxes[k], logits[k], x1 - x0, y1 - y0, top_k=self.top_k, nms_iou=self.nms_iou,
                                    min_size=self.min_size)
                parts.append((b + b.new_tensor([x0, y0, x0, y0]), sc))
                k += 1
            b, sc = parts[0] if len(parts) == 1 else (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
            if len(parts) > 1:
                keep = nms(b, sc, self.nms_iou)[: self.top_k]
                b, sc = b[keep], sc[keep]
            out.append((b.cpu(), sc.cpu()))
        return out

    def _propose(self, image: np.ndarray) -> tuple[Tensor, Tensor]:
        return self.propose_batch([image])[0]
