"""Yosinski et al. 2015's regularized gradient ascent in pixel space, and the Gaussian blur it uses.

After each gradient step ``x += lr * grad`` on the mean-subtracted image ``x`` (0-255 scale, as in the paper's
Caffe setting), the regularizer ``r_theta`` applies, in this order:

1. L2 decay: ``x *= 1 - decay``;
2. every ``blur_every`` steps, a Gaussian blur of standard deviation ``blur_radius`` pixels;
3. clipping pixels with small norm: pixels whose norm over color channels is below the ``norm_percentile``-th
   percentile are set to zero (the mean color);
4. clipping pixels with small contribution: pixels whose ``|sum_c x * grad|`` (the first-order estimate of how
   much the objective would change if the pixel were set to zero) is below the ``contribution_percentile``-th
   percentile are set to zero.

Before each forward pass the image is clipped to the valid pixel range. :func:`yosinski` gives the paper's four
published settings (its Table 1, with the learning-rate policies and iteration counts of the authors' toolbox).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from deepscope.errors import SettingError


@dataclass(frozen=True)
class Yosinski:
    """One setting of Yosinski et al. 2015's regularization and step-size policy.

    ``lr_policy='constant'`` steps by ``lr``; ``'progress'`` by ``min(max_lr, desired_progress / |grad|^2)``,
    the step that would raise a linear objective by ``desired_progress``.
    """

    decay: float = 0.0
    blur_radius: float = 0.0
    blur_every: int = 0
    norm_percentile: float = 0.0
    contribution_percentile: float = 0.0
    lr_policy: str = "constant"
    lr: float = 100.0
    max_lr: float = 100.0
    desired_progress: float = 2.0
    steps: int = 500

    def __post_init__(self) -> None:
        if self.lr_policy not in ("constant", "progress"):
            raise SettingError(f"lr_policy must be 'constant' or 'progress', got {self.lr_policy!r}")
        for name in ("norm_percentile", "contribution_percentile"):
            if not 0 <= getattr(self, name) < 100:
                raise SettingError(f"{name} must be in [0, 100), got {getattr(self, name)}")
        if not 0 <= self.decay < 1:
            raise SettingError(f"decay must be in [0, 1), got {self.decay}")

    def step_size(self, gradient: torch.Tensor) -> torch.Tensor:
        """Per-image step size ``[B,1,1,1]`` for this gradient."""
        batch = gradient.shape[0]
        if self.lr_policy == "constant":
            return torch.full((batch, 1, 1, 1), self.lr, device=gradient.device, dtype=gradient.dtype)
        squared = gradient.flatten(1).pow(2).sum(1).clamp_min(1e-30)
        return (self.desired_progress / squared).clamp(max=self.max_lr).view(batch, 1, 1, 1)

    @torch.no_grad()
    def regularize(self, x: torch.Tensor, gradient: torch.Tensor, step: int) -> torch.Tensor:
        """Apply decay, blur, and the two clippings to the mean-subtracted image ``x`` after step ``step``."""
        if self.decay:
            x = x * (1 - self.decay)
        if self.blur_every and self.blur_radius > 0 and step % self.blur_every == 0:
            x = gaussian_blur(x, self.blur_radius)
        if self.norm_percentile > 0:
            norms = x.norm(dim=1)
            x = x * (norms >= _percentile(norms, self.norm_percentile))[:, None]
        if self.contribution_percentile > 0:
            contribution = (gradient * -x).sum(1).abs()
            x = x * (contribution >= _percentile(contribution, self.contribution_percentile))[:, None]
        return x


def _percentile(values: torch.Tensor, percent: float) -> torch.Tensor:
    """Per-image percentile (linear interpolation, as numpy) of ``[B,H,W]`` values, shaped ``[B,1,1]``."""
    return torch.quantile(values.flatten(1).float(), percent / 100, dim=1).to(values.dtype)[:, None, None]


# Table 1 of Yosinski et al. 2015 (columns decay, blur radius, blur every, norm percentile, contribution
# percentile), with each row's learning-rate policy and iteration count from the authors' deep visualization
# toolbox (doc/running-optimize-image.md). Setting 3 made most of the paper's images.
_PUBLISHED = {
    1: Yosinski(0.0, 0.5, 4, 50, 0, "progress", max_lr=100.0, desired_progress=2.0, steps=500),
    2: Yosinski(0.3, 0.0, 0, 20, 0, "constant", lr=100.0, steps=750),
    3: Yosinski(0.0001, 1.0, 4, 0, 0, "constant", lr=100.0, steps=1000),
    4: Yosinski(0.0, 0.5, 4, 0, 90, "progress", max_lr=1e8, desired_progress=2.0, steps=1000),
}


def yosinski(setting: int = 3, **changes) -> Yosinski:
    """One of the four published settings of Yosinski et al. 2015 (1-4), optionally with fields changed.

    >>> yosinski(3)
    Yosinski(decay=0.0001, blur_radius=1.0, blur_every=4, norm_percentile=0, contribution_percentile=0, lr_policy='constant', lr=100.0, max_lr=100.0, desired_progress=2.0, steps=1000)
    >>> yosinski(1, steps=50).steps
    50
    """
    if setting not in _PUBLISHED:
        raise SettingError(f"Yosinski et al. 2015 published settings 1, 2, 3 and 4; got {setting!r}")
    return replace(_PUBLISHED[setting], **changes)


def gaussian_blur(images: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Blur each channel of ``[B,C,H,W]`` by a Gaussian of standard deviation ``sigma`` pixels, with the kernel
    cut at ``truncate`` standard deviations and borders mirrored about the edge (``scipy.ndimage`` 'reflect')."""
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return images
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.device, images.dtype)
    channels = images.shape[1]
    blurred = images
    for axis in (-1, -2):
        blurred = _symmetric_pad(blurred, radius, axis)
        shape = (channels, 1, 1, 2 * radius + 1) if axis == -1 else (channels, 1, 2 * radius + 1, 1)
        blurred = F.conv2d(blurred, kernel.view(1, 1, *shape[2:]).expand(shape), groups=channels)
    return blurred


def _symmetric_pad(images: torch.Tensor, radius: int, axis: int) -> torch.Tensor:
    """Pad ``radius`` samples on both ends of ``axis`` by mirroring about the edge (d c b a | a b c d | d c b a)."""
    size = images.shape[axis]
    index = torch.arange(-radius, size + radius, device=images.device) % (2 * size)
    index = torch.where(index >= size, 2 * size - 1 - index, index)
    return images.index_select(axis % images.ndim, index)
