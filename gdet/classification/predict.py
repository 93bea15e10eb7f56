"""Prediction and multi-crop evaluation with one model or an ensemble (softmax averaged over crops and models)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from gdet.classification.model import Classifier
from gdet.classification.multicrop import apply_crops, crop_boxes
from gdet.data import ClassificationDataset, read_image, read_image_folder, to_chw
from gdet.engine import erase_on_error, progress
from gdet.ensemble import average_probabilities, common_classes, crop_probabilities


def check_compatible(models: Sequence[Classifier]) -> list[str]:
    """The shared class list of an ensemble; models trained on different label sets cannot be averaged."""
    return common_classes([(str(m.path), m.class_names) for m in models])


def image_probabilities(image: Tensor, model: Classifier, crops: int) -> Tensor:
    """Class probabilities of one image, averaged over its test crops.

    Args:
        image: Tensor[3, H, W] uint8 RGB.
        crops: 1, 10 or 144 (see :func:`gdet.classification.multicrop.crop_boxes`).

    Returns:
        Tensor[C] on the CPU.
    """
    device = next(model.model.parameters()).device
    img = image.to(device, non_blocking=True)
    batch = apply_crops(img, crop_boxes(img.shape[2], img.shape[1], crops, model.input_size), model.input_size)
    return crop_probabilities(model.logits(batch), batch.shape[0])[0].cpu()


def predict(images: Sequence[str | os.PathLike | np.ndarray | Tensor], models: Sequence[Classifier], crops: int = 1,
            topk: int = 5, weights: Sequence[float] | None = None) -> list[list[tuple[str, float]]]:
    """Top-k classes of each image: softmax averaged over ``crops`` test crops and over the ``models``.

    Args:
        images: file paths, ``[H, W, 3]`` uint8 RGB arrays or ``Tensor[3, H, W]`` uint8.
        models: classifiers from :func:`gdet.classification.load_classifier` sharing one class list.
        weights: optional per-model weights of the ensemble average.

    Returns:
        per image, ``topk`` ``(class_name, probability)`` pairs, most probable first.
    """
    names = check_compatible(models)
    out = []
    for im in images:
        arr = read_image(im) if isinstance(im, (str, os.PathLike)) else im
        img = to_chw(arr)
        probs = average_probabilities([image_probabilities(img, m, crops) for m in models], weights)
        p, idx = probs.topk(min(topk, len(names)))
        out.append([(names[i], float(v)) for v, i in zip(p.tolist(), idx.tolist())])
    return out


def evaluate_multicrop(root: str | os.PathLike, models: Sequence[Classifier], crop_schemes: Sequence[int] = (1, 10, 144),
                       workers: int = 2, limit: int | None = None) -> list[dict]:
    """Top-1/top-5 error of every (first k models, crops) combination on an image folder ``root/<class>/*``,
    like Table 3 of the paper. Each model's per-crop-scheme probabilities are computed once per image and
    the ensembles of the first k models are averages of them. ``limit`` evaluates an evenly spaced subset.

    Returns:
        rows ``{"models": k, "crops": n, "top1_error", "top5_error", "images"}``.
    """
    names = check_compatible(models)
    paths, labels, _ = read_image_folder(root, names)
    if limit and limit < len(paths):  # evenly spaced, so every class stays represented
        keep = np.linspace(0, len(paths) - 1, limit).round().astype(int)
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    loader = torch.utils.data.DataLoader(ClassificationDataset(paths, labels), batch_size=None, num_workers=workers)
    M, S = len(models), list(crop_schemes)
    probs = torch.zeros(len(paths), M, len(S), len(names))
    targets = torch.tensor(labels)
    for i, (img, _) in enumerate(erase_on_error(progress(loader, total=len(paths), desc="multi-crop eval"))):
        for m, model in enumerate(models):
            for s, n in enumerate(S):
                probs[i, m, s] = image_probabilities(img, model, n)
    rows = []
    kmax = min(5, len(names))
    for k in range(1, M + 1):
        for s, n in enumerate(S):
            p = probs[:, :k, s].mean(1)
            top = p.topk(kmax, dim=1).indices
            hit = top.eq(targets.view(-1, 1))
            rows.append({"models": k, "crops": n, "top1_error": 1 - float(hit[:, 0].float().mean()),
                         "top5_error": 1 - float(hit.any(1).float().mean()), "images": len(paths)})
    return rows
