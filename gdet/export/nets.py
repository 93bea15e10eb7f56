"""Eval-form networks for export: fixed outputs (plain tensors), no aux heads, no train/eval output switch.

Each ``*_spec`` function returns an :class:`ExportSpec`: the small wrapper module that is traced, an independent
reference (the original gdet module, called as gdet's own inference calls it) that the exported file is checked
against, and the metadata written into the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gdet.classification.model import load_classifier
from gdet.detection.model import load_detector
from gdet.engine import load_checkpoint
from gdet.errors import CheckpointError
from gdet.proposals.multibox import MultiBoxHead, load_multibox

__all__ = ["ExportSpec", "classifier_spec", "detector_spec", "multibox_spec", "spec_from_checkpoint"]

INPUT_NAME = "input"


@dataclass
class ExportSpec:
    """What an exporter needs.

    Attributes:
        module: eval-mode wrapper; ``forward(x Tensor[N, 3, S, S]) -> tuple[Tensor, ...]`` (``output_names``).
        reference: the original model as gdet runs it, same input, same outputs; the export is checked against it.
        input_size: ``S``; the exported graph has a dynamic batch dimension and this fixed spatial size.
        output_names: names of the outputs, in order.
        metadata: task, backbone, preprocessing, class names, outputs (JSON-able).
    """

    module: nn.Module
    reference: Callable[[Tensor], tuple[Tensor, ...]]
    input_size: int
    output_names: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)


def strip_aux(backbone: nn.Module) -> nn.Module:
    """Remove a backbone's aux heads in place (they exist for training only) and return it."""
    heads = {id(h) for h in (backbone.aux_heads() if hasattr(backbone, "aux_heads") else [])}
    for name, child in list(backbone.named_children()):
        if id(child) in heads:
            setattr(backbone, name, None)
    if hasattr(backbone, "aux_logits"):
        backbone.aux_logits = False
    return backbone


def _metadata(task: str, backbone: nn.Module, input_size: int, class_names: Sequence[str],
              outputs: dict[str, str], **extra) -> dict[str, Any]:
    pre = backbone.preprocessing()
    pre["input_size"] = int(input_size)
    return {
        "task": task,
        "backbone": getattr(backbone, "backbone_name", ""),
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, int(input_size), int(input_size)], "dtype": "float32",
                  "layout": "NCHW, RGB",
                  "normalization": "x = (rgb01 * input_scale - mean) / std, rgb01 = RGB pixels / 255, "
                                   "resized (warped) to input_size x input_size"},
        "preprocessing": pre,
        "class_names": list(class_names),
        "outputs": outputs,
        **extra,
    }


class ClassifierNet(nn.Module):
    """Normalised images ``Tensor[N, 3, S, S]`` -> ``(probs Tensor[N, C],)`` softmax class probabilities."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = strip_aux(backbone).eval()

    def forward(self, x: Tensor) -> tuple[Tensor]:
        logits = self.backbone.forward_head(self.backbone.forward_features(x))  # N x C
        return (F.softmax(logits, dim=1),)


def classifier_spec(backbone: nn.Module, class_names: Sequence[str], input_size: int | None = None) -> ExportSpec:
    """Spec of a registry classifier (its weights are used as they are; aux heads are removed in place).

    Args:
        backbone: a :class:`~gdet.backbones.Backbone` with ``len(class_names)`` outputs.
        class_names: the ``C`` classes.
        input_size: spatial size of the exported input (default: the backbone's ``input_size``).
    """
    size = int(input_size or backbone.input_size)
    net = backbone.eval()

    def reference(x: Tensor) -> tuple[Tensor]:
        return (F.softmax(net(x), dim=1),)  # gdet classify: softmax of the eval-mode forward

    meta = _metadata("classify", backbone, size, class_names, {"probs": "Tensor[batch, C] softmax over class_names"})
    return ExportSpec(ClassifierNet(backbone), reference, size, ("probs",), meta)


class DetectorNet(nn.Module):
    """R-CNN region scorer: warped crops ``Tensor[N, 3, S, S]`` -> ``(probs Tensor[N, C+1],)`` (background
    first) or ``(probs, deltas Tensor[N, C, 4])`` with box regression."""

    def __init__(self, backbone: nn.Module, bbox_head: nn.Module | None, num_classes: int):
        super().__init__()
        self.backbone = strip_aux(backbone).eval()
        self.bbox_head = bbox_head
        self.num_classes = int(num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        feats = self.backbone.forward_features(x)  # N x C' x s x s
        probs = F.softmax(self.backbone.forward_head(feats), dim=1)  # N x (C + 1)
        if self.bbox_head is None:
            return (probs,)
        pooled = torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1)  # N x C'
        return probs, self.bbox_head(pooled).view(-1, self.num_classes, 4)  # N x C x 4


def detector_spec(detector: nn.Module) -> ExportSpec:
    """Spec of a :class:`~gdet.detection.model.Detector`'s network (crops -> class probabilities [+ deltas]).

    The crops are cut as :mod:`gdet.detection.crops` does (context padding ``metadata["detector"]``); the
    exported file holds the network only, not proposals, cropping or NMS."""
    detector = detector.eval()

    def reference(x: Tensor) -> tuple[Tensor, ...]:
        out = detector(x)
        probs = F.softmax(out.logits.float(), dim=1)  # as Detector.score_regions
        return (probs,) if out.bbox_deltas is None else (probs, out.bbox_deltas)

    outputs = {"probs": "Tensor[batch, C+1] softmax, index 0 = background, then class_names"}
    names = ("probs",)
    if detector.bbox_reg:
        outputs["deltas"] = "Tensor[batch, C, 4] box regression (dx, dy, dw, dh) per class, R-CNN encoding"
        names = ("probs", "deltas")
    meta = _metadata("detect", detector.backbone, detector.input_size, detector.class_names, outputs,
                     detector={"context_pad": detector.context_pad, "input_size": detector.input_size,
                               "bbox_reg": detector.bbox_reg, "sampling_ratio": detector.sampling_ratio})
    net = DetectorNet(detector.backbone, detector.bbox_head, detector.num_classes)
    return ExportSpec(net, reference, detector.input_size, names, meta)


def adaptive_pool_matrix(size_in: int, size_out: int) -> Tensor:
    """``P Tensor[size_out, size_in]`` with ``P @ v`` = 1-D adaptive average pooling of ``v`` (PyTorch's bins:
    ``floor(i * n / m)`` to ``ceil((i + 1) * n / m)``)."""
    p = torch.zeros(size_out, size_in)
    for i in range(size_out):
        a, b = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
        p[i, a:b] = 1.0 / (b - a)
    return p


class MultiBoxNet(nn.Module):
    """MultiBox: normalised images ``Tensor[N, 3, S, S]`` -> ``(boxes Tensor[N, K, 4], scores Tensor[N, K])``:
    normalised (0-1) xyxy boxes, unclipped, and sigmoid objectness.

    The fully connected head's adaptive average pooling (a feature map not divisible by the grid, e.g. 7 -> 4 at
    224 px) has no ONNX equivalent; at a fixed input size it is a fixed linear map, applied here as two matrices.
    """

    def __init__(self, model: nn.Module, input_size: int):
        super().__init__()

        self.backbone = strip_aux(model.backbone).eval()
        self.head = model.head
        self.register_buffer("priors", model.priors.clone())
        self.fc_head = isinstance(model.head, MultiBoxHead)
        if self.fc_head:
            with torch.no_grad():
                h, w = self.backbone.forward_features(torch.zeros(1, 3, input_size, input_size)).shape[2:]
            self.register_buffer("pool_h", adaptive_pool_matrix(h, self.head.grid))
            self.register_buffer("pool_w", adaptive_pool_matrix(w, self.head.grid))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.backbone.forward_features(x)  # N x C x h x w
        if self.fc_head:
            y = F.relu(self.head.reduce(feats))  # N x hidden x h x w
            y = torch.einsum("nchw,gh,kw->ncgk", y, self.pool_h, self.pool_w)  # N x hidden x grid x grid
            y = self.head.fc(torch.flatten(y, 1)).view(y.shape[0], -1, 5)  # N x K x 5
            delta, logits = y[..., :4], y[..., 4]
        else:
            delta, logits = self.head(feats)
        return self.priors.unsqueeze(0) + delta, torch.sigmoid(logits)


def multibox_spec(model: nn.Module, input_size: int) -> ExportSpec:
    """Spec of a :class:`~gdet.proposals.multibox.MultiBox` network at the input size it was trained at."""
    model = model.eval()

    def reference(x: Tensor) -> tuple[Tensor, Tensor]:
        boxes, logits = model(x)
        return boxes, logits.float().sigmoid()  # as multibox.postprocess

    outputs = {"boxes": "Tensor[batch, K, 4] (x1, y1, x2, y2) in 0-1 image coordinates, unclipped",
               "scores": "Tensor[batch, K] objectness (sigmoid)"}
    meta = _metadata("multibox", model.backbone, input_size, [], outputs, num_priors=int(model.priors.shape[0]))
    return ExportSpec(MultiBoxNet(model, int(input_size)), reference, int(input_size), ("boxes", "scores"), meta)


def spec_from_checkpoint(path: str | os.PathLike, use_ema: bool = True, input_size: int | None = None) -> ExportSpec:
    """Load a gdet classification, detection or MultiBox checkpoint (or its fp16 export) as an export spec.

    Args:
        path: the checkpoint.
        use_ema: the Polyak-averaged weights when the checkpoint has them.
        input_size: override the classifier's input size (detectors and MultiBox keep the one they were trained at).
    """

    ckpt = load_checkpoint(path)
    task = ckpt.get("task")
    if task == "classify":

        clf = load_classifier(path, use_ema=use_ema)
        return classifier_spec(clf.model.float(), clf.class_names, input_size or clf.input_size)
    if task == "detect":

        det = load_detector(path, use_ema=use_ema)
        if det.mode == "shared":
            raise CheckpointError(f"{path}: a shared-mode detector exports as fp16 only (--format fp16, run by gdet); "
                                  "onnx and torchscript hold R-CNN mode's crop network, not the trunk, RoIAlign and "
                                  "per-region head")
        if input_size and int(input_size) != det.input_size:
            raise CheckpointError(f"{path}: a detector is exported at its crop size {det.input_size}, "
                                  f"not --input-size {input_size}")
        return detector_spec(det)
    if task == "multibox":

        model, ck = load_multibox(path, use_ema=use_ema)
        size = int(ck.get("input_size", 224))
        if input_size and int(input_size) != size:
            raise CheckpointError(f"{path}: MultiBox is exported at its training input size {size}, "
                                  f"not --input-size {input_size}")
        return multibox_spec(model, size)
    raise CheckpointError(f"{path}: not a gdet classification, detection or MultiBox checkpoint (task={task!r})")
