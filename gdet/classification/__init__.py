"""Classification: the paper's training recipe, 1/10/144-crop evaluation, prediction and ensembles."""
from gdet.classification.model import Classifier, Normalizer, load_classifier
from gdet.classification.multicrop import CROP_SCHEMES, Crop, apply_crops, crop_boxes
from gdet.classification.predict import evaluate_multicrop, image_probabilities, predict
from gdet.classification.train import DEFAULTS, evaluate, train
from gdet.classification.transforms import EvalTransform, Lighting, TrainTransform

__all__ = [
    "CROP_SCHEMES",
    "Classifier",
    "Crop",
    "DEFAULTS",
    "EvalTransform",
    "Lighting",
    "Normalizer",
    "TrainTransform",
    "apply_crops",
    "crop_boxes",
    "evaluate",
    "evaluate_multicrop",
    "image_probabilities",
    "load_classifier",
    "predict",
    "train",
]
