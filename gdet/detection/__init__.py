"""R-CNN detection on a registry backbone (and its shared-feature mode): region labelling and sampling, region crops,
training and inference."""
from gdet.detection.crops import context_boxes, crop_regions, iter_region_chunks
from gdet.detection.labels import RegionLabels, decode_boxes, encode_boxes, label_regions
from gdet.detection.model import (Detector, DetectorOutput, EnsembleDetector, build_detector, detect_image,
                                  load_detector, load_detectors)
from gdet.detection.sampler import RegionSampler
from gdet.detection.shared import SharedDetectorNet, shared_loss

__all__ = [
    "Detector",
    "DetectorOutput",
    "EnsembleDetector",
    "RegionLabels",
    "RegionSampler",
    "SharedDetectorNet",
    "build_detector",
    "context_boxes",
    "crop_regions",
    "decode_boxes",
    "detect_image",
    "encode_boxes",
    "iter_region_chunks",
    "label_regions",
    "load_detector",
    "load_detectors",
    "shared_loss",
]
