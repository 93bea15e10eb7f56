"""Datasets: VOC / COCO / image-folder readers and writers, image decoding, torch Datasets, synthetic data.

Public API::

    DetectionSet(records, class_names, category_ids, format, root, split, stats)
    load_detection_set(path, split="val", class_names=None, check_images=True, image_root=None, clip=True)
    read_voc(root, split="val", class_names=None, check_images=True, clip=True) -> DetectionSet
    write_voc(dset, out_root, split, copy_images=True) -> Path
    read_coco(json_path, image_root=None, check_images=True, clip=True) -> DetectionSet
    write_coco(dset, json_path, image_dir=None) -> Path ;  to_coco(dset) -> dict
    read_image_folder(root, class_names=None) -> (paths, labels, class_names)
    read_image(path) -> np.ndarray [H, W, 3] uint8 RGB ;  image_size(path) -> (width, height)
    to_chw(image [H, W, 3]) -> Tensor[3, H, W] uint8
    ClassificationDataset(paths, labels, transform=None)
"""
from gdet.data.coco import read_coco, to_coco, write_coco
from gdet.data.dataset import load_detection_set
from gdet.data.folder import read_image_folder
from gdet.data.image import IMAGE_EXTENSIONS, image_size, read_image, to_chw
from gdet.data.loading import ClassificationDataset
from gdet.data.records import DataWarning, DetectionSet, object_extra
from gdet.data.voc import VOC_CLASSES, read_voc, voc_splits, write_voc

__all__ = [
    "IMAGE_EXTENSIONS",
    "VOC_CLASSES",
    "ClassificationDataset",
    "DataWarning",
    "DetectionSet",
    "image_size",
    "load_detection_set",
    "object_extra",
    "read_coco",
    "read_image",
    "read_image_folder",
    "read_voc",
    "to_coco",
    "to_chw",
    "voc_splits",
    "write_coco",
    "write_voc",
]
