"""The classification ``torch.utils.data.Dataset``: image files with integer labels."""
from __future__ import annotations

from typing import Callable, Sequence

from torch.utils.data import Dataset

from gdet.data.image import read_image, to_chw


class ClassificationDataset(Dataset):
    """Images with integer labels.

    Args:
        paths: image files.
        labels: one int label per path.
        transform: called on the decoded ``[H, W, 3]`` uint8 RGB array; default :func:`~gdet.data.image.to_chw`
            (``Tensor[3, H, W]`` uint8). torchvision ``transforms.v2`` pipelines can follow ``to_chw``.

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
