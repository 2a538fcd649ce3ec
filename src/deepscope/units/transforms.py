"""Random transformations applied to the image at every feature-visualization step, so that the optimized
pattern must survive them (transformation robustness; Mordvintsev et al. 2015, Olah et al. 2017).

Each transformation draws its own random amount per image. Consecutive geometric ones (jitter, scale,
rotate) are fused into one affine resampling, so a whole chain costs one ``grid_sample``.

>>> import torch
>>> chain = standard_transforms((224, 224))
>>> chain
[pad(12), jitter(8), scale(0.9..1.1), rotate(-10..10), jitter(4)]
>>> apply(chain, torch.rand(2, 3, 224, 224), torch.Generator().manual_seed(0)).shape
torch.Size([2, 3, 248, 248])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from deepscope.errors import SettingError


class Transform:
    """Base: ``__call__(images, generator)``; geometric ones also give ``matrices(batch, h, w, generator)``."""

    geometric = False

    def matrices(self, batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return apply([self], images, generator)


class Pad(Transform):
    """Pad ``width`` pixels on every side with a constant (default mid-gray) or by reflection."""

    def __init__(self, width: int, mode: str = "constant", value: float = 0.5):
        if mode not in ("constant", "reflect", "replicate"):
            raise SettingError(f"pad mode must be 'constant', 'reflect' or 'replicate', got {mode!r}")
        self.width, self.mode, self.value = int(width), mode, value

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.width == 0:
            return images
        if self.mode == "constant":
            return F.pad(images, [self.width] * 4, mode="constant", value=self.value)
        return F.pad(images, [self.width] * 4, mode=self.mode)

    def __repr__(self) -> str:
        return f"pad({self.width})"


class Jitter(Transform):
    """Shift by a random whole number of pixels, ``-d..d`` in each direction."""

    geometric = True

    def __init__(self, d: int):
        self.d = int(d)

    def matrices(self, batch, height, width, generator):
        shift = torch.randint(-self.d, self.d + 1, (batch, 2), generator=generator).double()
        matrix = torch.eye(3, dtype=torch.float64).repeat(batch, 1, 1)
        matrix[:, 0, 2] = shift[:, 1]
        matrix[:, 1, 2] = shift[:, 0]
        return matrix

    def __repr__(self) -> str:
        return f"jitter({self.d})"


class Scale(Transform):
    """Zoom about the center by a factor drawn from ``factors``."""

    geometric = True

    def __init__(self, factors: Sequence[float]):
        self.factors = torch.tensor([float(f) for f in factors], dtype=torch.float64)

    def matrices(self, batch, height, width, generator):
        factor = self.factors[torch.randint(len(self.factors), (batch,), generator=generator)]
        return _about_center(
            torch.diag_embed(torch.stack([factor, factor, torch.ones(batch, dtype=torch.float64)], 1)),
            height,
            width,
        )

    def __repr__(self) -> str:
        return f"scale({self.factors.min().item():g}..{self.factors.max().item():g})"


class Rotate(Transform):
    """Rotate about the center by an angle (degrees) drawn from ``angles``."""

    geometric = True

    def __init__(self, angles: Sequence[float]):
        self.angles = torch.tensor([float(a) for a in angles], dtype=torch.float64)

    def matrices(self, batch, height, width, generator):
        angle = self.angles[torch.randint(len(self.angles), (batch,), generator=generator)] * math.pi / 180
        cos, sin = angle.cos(), angle.sin()
        matrix = torch.eye(3, dtype=torch.float64).repeat(batch, 1, 1)
        matrix[:, 0, 0], matrix[:, 0, 1] = cos, -sin
        matrix[:, 1, 0], matrix[:, 1, 1] = sin, cos
        return _about_center(matrix, height, width)

    def __repr__(self) -> str:
        return f"rotate({self.angles.min().item():g}..{self.angles.max().item():g})"


def _about_center(matrix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Conjugate a linear map (in pixel coordinates) so that it acts about the image center."""
    center = torch.eye(3, dtype=torch.float64)
    center[0, 2], center[1, 2] = (width - 1) / 2, (height - 1) / 2
    return center @ matrix @ torch.linalg.inv(center)


def pad(width: int, mode: str = "constant", value: float = 0.5) -> Pad:
    """Pad every side by ``width`` pixels."""
    return Pad(width, mode, value)


def jitter(d: int) -> Jitter:
    """Random shift of up to ``d`` pixels."""
    return Jitter(d)


def scale(factors: Sequence[float]) -> Scale:
    """Random zoom by one of ``factors``."""
    return Scale(factors)


def rotate(angles: Sequence[float]) -> Rotate:
    """Random rotation by one of ``angles`` (degrees)."""
    return Rotate(angles)


def standard_transforms(size: tuple[int, int]) -> list[Transform]:
    """Olah et al. 2017's chain for a 224-pixel image (pad 12, jitter 8, scale 0.9-1.1, rotate -10..10 degrees,
    jitter 4), with the pixel amounts scaled to ``size`` (at least 1 pixel)."""
    factor = min(size) / 224
    amount = lambda pixels: max(1, round(pixels * factor))  # noqa: E731
    return [
        pad(amount(12)),
        jitter(amount(8)),
        scale([1 + (i - 5) / 50 for i in range(11)]),
        rotate([*range(-10, 11), 0, 0, 0, 0, 0]),
        jitter(amount(4)),
    ]


def apply(transforms: Sequence[Transform], images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Run the chain on ``images`` ``[B,C,H,W]`` (differentiably), fusing runs of geometric transformations."""
    index = 0
    transforms = list(transforms)
    while index < len(transforms):
        if not transforms[index].geometric:
            images = transforms[index](images, generator)
            index += 1
            continue
        batch, _, height, width = images.shape
        matrix = torch.eye(3, dtype=torch.float64).repeat(batch, 1, 1)
        while index < len(transforms) and transforms[index].geometric:
            matrix = transforms[index].matrices(batch, height, width, generator) @ matrix
            index += 1
        images = _warp(images, matrix)
    return images


def _warp(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Resample so that output pixel p shows input pixel ``matrix^-1 p`` (pixel coordinates, bilinear,
    borders replicated)."""
    height, width = images.shape[-2:]
    # Normalized coordinates (align_corners=True): u = 2 x / (W - 1) - 1.
    to_unit = torch.tensor(
        [[2 / max(width - 1, 1), 0, -1], [0, 2 / max(height - 1, 1), -1], [0, 0, 1]], dtype=torch.float64
    )
    inverse = to_unit @ torch.linalg.inv(matrix) @ torch.linalg.inv(to_unit)
    theta = inverse[:, :2, :].to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
