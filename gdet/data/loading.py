"""``torch.utils.data.Dataset`` classes and collate functions for classification and detection."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from gdet.data.image import read_image, to_chw
from gdet.structures import ImageRecord

# The data loaders' default transform: ``[H, W, 3]`` uint8 RGB -> ``Tensor[3, H, W]`` uint8.
to_tensor = to_chw


class ClassificationDataset(Dataset):
    """Images with integer labels.

    Args:
        paths: image files.
        labels: one int label per path.
        transform: called on the decoded ``[H, W, 3]`` uint8 RGB array; default :func:`~gdet.data.image.to_chw`
            (``Tensor[3, H, W]`` uint8). torchvision ``transforms.v2`` pipelines can follow ``to_tensor``.

    Items are ``(image, label)``.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], transform: Callable | None = None):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = list(map(str, paths))
        self.labels = [int(v) for v in labels]
        self.transform = transform or to_chw

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(read_image(self.paths[i])), self.labels[i]


class DetectionImageDataset(Dataset):
    """Images of detection records.

    Args:
        records: :class:`~gdet.structures.ImageRecord` list (e.g. ``DetectionSet.records``).
        transform: ``transform(image, record) -> (image, record)`` on the decoded ``[H, W, 3]`` uint8 array;
            default: the image becomes a ``Tensor[3, H, W]`` uint8 and the record is returned unchanged.

    Items are ``(image, record)``.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable | None = None):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        rec = self.records[i]
        image = read_image(rec.path)
        if self.transform is not None:
            return self.transform(image, rec)
        return to_chw(image), rec


def collate_classification(batch):
    """``[(image, label)]`` -> ``(Tensor[B, ...], Tensor[B] int64)``; images must share one shape."""
    images, labels = zip(*batch)
    return torch.stack(list(images)), torch.tensor(labels, dtype=torch.int64)


def collate_detection(batch):
    """``[(image, record)]`` -> ``(list of images, list of records)``: sizes differ, so nothing is stacked."""
    images, records = zip(*batch) if batch else ((), ())
    return list(images), list(records)
