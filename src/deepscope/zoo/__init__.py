"""Models and data: specs -> VisionModel, bundled offline models, photos and digits."""

from deepscope.zoo import datasets
from deepscope.zoo.datasets import load_dataset
from deepscope.zoo.images import load_images, samples
from deepscope.zoo.loaders import imagenet_labels, list_models, load_model
from deepscope.zoo.vision_model import Preprocessing, VisionModel, as_vision_model

__all__ = [
    "Preprocessing",
    "VisionModel",
    "as_vision_model",
    "datasets",
    "imagenet_labels",
    "list_models",
    "load_dataset",
    "load_images",
    "load_model",
    "samples",
]
