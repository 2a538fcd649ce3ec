"""How feature visualization represents the image it optimizes (Olah, Mordvintsev & Schubert 2017, Distill).

- :class:`PixelImage`: the pixels themselves, kept in [0, 1] by clamping after every step (Simonyan et al. 2014,
  Yosinski et al. 2015).
- :class:`FourierImage`: a spectrum scaled by 1/frequency (so that every frequency moves at the same speed),
  transformed back by an inverse real FFT, with colors decorrelated by the square root of ImageNet's color
  correlation matrix, and squashed into [0, 1] by a sigmoid.

Both map to a pixel image ``[B,C,H,W]`` in [0, 1] and can start from a given image (:meth:`from_pixels`).
"""

from __future__ import annotations

import torch

# Square root of the color correlation matrix of ImageNet photos (RGB), from Olah et al. 2017's reference code
# (lucid's ``color_correlation_svd_sqrt``); normalized so that its largest column has unit norm.
_COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
)
COLOR_CORRELATION = _COLOR_CORRELATION_SVD_SQRT / _COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()

# Olah et al.'s reference code divides the inverse FFT by 4 so that the initial image is not saturated.
_FOURIER_SCALE = 4.0


class PixelImage:
    """Pixels as the parameter. ``project()`` clamps them to [0, 1] after each optimizer step."""

    def __init__(self, pixels: torch.Tensor):
        self.parameter = pixels.detach().clone().requires_grad_(True)

    @classmethod
    def random(
        cls,
        shape: tuple[int, int, int, int],
        generator: torch.Generator,
        device: torch.device,
        sd: float = 0.01,
    ) -> PixelImage:
        noise = torch.randn(shape, generator=generator, device="cpu").to(device)
        return cls(0.5 + sd * noise)

    @classmethod
    def from_pixels(cls, pixels: torch.Tensor) -> PixelImage:
        return cls(pixels.clamp(0, 1))

    def image(self) -> torch.Tensor:
        return self.parameter

    @torch.no_grad()
    def project(self) -> None:
        self.parameter.clamp_(0, 1)


class FourierImage:
    """A real spectrum ``[B,C,H,W//2+1,2]`` scaled by ``1/max(f, 1/max(H,W))^decay_power``, inverse FFT,
    color decorrelation (3 channels, optional) and a sigmoid."""

    def __init__(
        self,
        spectrum: torch.Tensor,
        size: tuple[int, int],
        decorrelate: bool = True,
        decay_power: float = 1.0,
    ):
        height, width = size
        self.size = size
        self.parameter = spectrum.detach().clone().requires_grad_(True)
        device = spectrum.device
        fy = torch.fft.fftfreq(height, device=device)[:, None]
        fx = torch.fft.rfftfreq(width, device=device)[None, :]
        frequencies = (fx * fx + fy * fy).sqrt()
        self.scale = (1.0 / frequencies.clamp_min(1.0 / max(height, width)) ** decay_power)[..., None]
        channels = spectrum.shape[1]
        self.decorrelate = decorrelate and channels == 3
        self.color = COLOR_CORRELATION.to(device, torch.float32)

    @classmethod
    def random(
        cls,
        shape: tuple[int, int, int, int],
        generator: torch.Generator,
        device: torch.device,
        sd: float = 0.01,
        decorrelate: bool = True,
        decay_power: float = 1.0,
    ) -> FourierImage:
        batch, channels, height, width = shape
        spectrum = torch.randn((batch, channels, height, width // 2 + 1, 2), generator=generator) * sd
        return cls(spectrum.to(device), (height, width), decorrelate, decay_power)

    @classmethod
    def from_pixels(
        cls, pixels: torch.Tensor, decorrelate: bool = True, decay_power: float = 1.0
    ) -> FourierImage:
        """The spectrum whose image is ``pixels`` (clamped into (0, 1) so that the sigmoid can be inverted)."""
        height, width = pixels.shape[-2:]
        probe = cls(
            torch.zeros(1, pixels.shape[1], height, width // 2 + 1, 2, device=pixels.device),
            (height, width),
            decorrelate,
            decay_power,
        )
        signal = torch.logit(pixels.detach().float().clamp(1e-4, 1 - 1e-4))
        if probe.decorrelate:
            signal = torch.einsum("bchw,dc->bdhw", signal, torch.linalg.inv(probe.color))
        spectrum = torch.fft.rfft2(signal * _FOURIER_SCALE, norm="ortho")
        spectrum = torch.view_as_real(spectrum) / probe.scale
        return cls(spectrum, (height, width), decorrelate, decay_power)

    def image(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.parameter * self.scale)
        signal = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / _FOURIER_SCALE
        if self.decorrelate:
            signal = torch.einsum("bchw,cd->bdhw", signal, self.color.T)
        return torch.sigmoid(signal)

    def project(self) -> None:
        pass
