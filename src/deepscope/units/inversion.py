"""Representation inversion: the image whose features at a layer match a given image's (Mahendran & Vedaldi 2015,
"Understanding Deep Image Representations by Inverting Them", CVPR).

The pre-image minimizes, over the mean-subtracted image ``x`` on the 0-255 scale (the paper's setting,
``x = 255 * (pixels - mean)`` with the model's normalization mean),

    sigma^2 * |phi(x) - phi_0|^2 / |phi_0|^2  +  lambda_tv / 2 * TV_beta(x)  +  lambda_alpha / 2 * N_alpha(x)

with ``N_alpha(x) = sum x^alpha`` and ``TV_beta(x) = sum over channels and pixels of
((x[i,j+1]-x[i,j])^2 + (x[i+1,j]-x[i,j])^2)^(beta/2)``. The weights and optimizer are those of the authors' code
for their CNN experiments (deep-goggle, experiment_cnn.m, on 227x227 AlexNet inputs): alpha = 6,
lambda_alpha = 8e-10, beta = 2, lambda_tv = 1, 10 or 100 for layers in the first, middle and last part of the
network (AlexNet's layers 1-6, 7-12, 13-20; here by the layer's position among the model's leaf modules);
``sigma`` = 2.7098e4, the average norm of natural 227x227 RGB images, i.e. 68.9 per pixel value; gradient descent
with momentum 0.9, learning rate 0.004 for 100 steps, 0.0004 for 200 and 0.00004 for 100, momentum reset when
the rate changes, from Gaussian noise of norm ``sigma``.

Two adaptations carry those numbers to other image sizes: ``sigma`` is 68.9 times the square root of the number
of pixel values, and lambda_tv is multiplied by ``(H*W / 227^2)^(beta/2)`` (with sigma growing with the pixel
count, this keeps the TV prior as strong per unit of image area as at 227x227; the factor is 0.97 at 224x224).
The data term and the alpha prior both grow with the pixel count, so lambda_alpha needs no change.

Two safeguards the authors' code does not have keep deep layers from diverging: the rate is capped at
``(1 + momentum) / (8 * lambda_tv)`` (heavy-ball descent on the TV^2 term, whose curvature reaches
``8 * lambda_tv``, is unstable beyond twice that), and an image whose energy turns non-finite or exceeds 4 times
its best goes back to its best, loses its momentum and continues at half its rate.

The alpha prior was calibrated on natural photos, whose pixels rarely stray more than ~130 from the mean. Images
that live at the ends of the range pay for it: MNIST strokes sit 222 above the digits' mean, and with the
published lambda_alpha a LeNet conv1 inversion stays near 0.35 relative error, against 0.03 with
``alpha_weight=0`` and ``schedule=[(300, 1.0), (200, 0.1)]``. Pass weights explicitly for such data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from deepscope.probe.layers import find_layers, get_layer
from deepscope.units._forward import layer_runner
from deepscope.units.objectives import tv_beta
from deepscope.zoo.vision_model import VisionModel, as_vision_model

# (fraction of the network's leaf modules up to the layer, lambda_tv): AlexNet's layers 1-6, 7-12, 13-20.
TV_BANDS = ((6 / 20, 1.0), (12 / 20, 10.0), (1.0, 100.0))
SCHEDULE = ((100, 1.0), (200, 0.1), (100, 0.01))
# The authors' x0_sigma (2.7098e4, average norm of natural 227x227x3 images) per pixel value.
NATURAL_PIXEL_RMS = 2.7098e4 / (227 * 227 * 3) ** 0.5
REFERENCE_AREA = 227 * 227


@dataclass
class Inversion:
    """The result of :func:`invert`, per image of the batch.

    - ``image``: the pre-image ``[B,C,H,W]`` in pixel space [0, 1];
    - ``error``: ``[B]`` relative feature error ``|phi(image) - phi_0| / |phi_0|`` at ``layer`` (the paper's
      measure of how well the representation is matched), on the returned image;
    - ``image_error``: ``[B]`` relative image error ``|image - x_0| / |x_0 - mean|`` (pixel space; how much of
      the image the representation lets one recover: it grows as layers become invariant);
    - ``energy``: ``[B, steps]`` the objective at each step; ``tv_weight``: the lambda_tv used.
    """

    layer: str
    image: torch.Tensor
    error: torch.Tensor
    image_error: torch.Tensor
    energy: torch.Tensor
    tv_weight: float


def invert(
    model: VisionModel | nn.Module,
    x: torch.Tensor,
    layer: str,
    *,
    alpha: float = 6.0,
    alpha_weight: float = 8e-10,
    beta: float = 2.0,
    tv_weight: float | None = None,
    lr: float = 0.004,
    momentum: float = 0.9,
    schedule: Sequence[tuple[int, float]] = SCHEDULE,
    seed: int = 0,
) -> Inversion:
    """Reconstruct each image of ``x`` (model inputs ``[B,C,H,W]``) from its features at ``layer``.

    Defaults are Mahendran & Vedaldi 2015's (see the module docstring); ``tv_weight=None`` picks 1, 10 or 100 by
    the layer's depth, scaled to the image size. ``schedule``: ``(steps, lr multiplier)`` phases. The model runs in eval mode, only up to
    ``layer``; its parameters get no gradient.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> x = vm.preprocess(ds.datasets.mnist5k().images[:1])
    >>> result = ds.units.invert(vm, x, "conv1", schedule=[(50, 1.0)])
    >>> result.image.shape, round(result.tv_weight, 4)  # lambda_tv = 1 (first layers) * 28^2 / 227^2
    (torch.Size([1, 1, 28, 28]), 0.0152)
    """
    vm = as_vision_model(model)
    get_layer(vm, layer)
    x = vm.check_inputs(x)
    if tv_weight is None:
        area = x.shape[-2] * x.shape[-1]
        tv_weight = depth_tv_weight(vm, layer) * (area / REFERENCE_AREA) ** (beta / 2)
    mean, std = pixel_normalization(vm, x.shape[1], x.device)
    # x_model = (pixels - mean) / std and x255 = 255 * (pixels - mean), so x_model = x255 / (255 * std).
    to_model = 1.0 / (255.0 * std)
    reference = x.detach().float() / to_model
    batch = x.shape[0]
    sigma = torch.full((batch, 1, 1, 1), NATURAL_PIXEL_RMS * reference[0].numel() ** 0.5, device=x.device)
    generator = torch.Generator().manual_seed(seed)

    with layer_runner(vm, [layer], detach=False) as run:
        with torch.no_grad():
            target = run(x.detach()).activations[layer].detach()
        target_norm = target.flatten(1).pow(2).sum(1).clamp_min(1e-12)

        def energy(image: torch.Tensor) -> torch.Tensor:
            features = run(image * to_model).activations[layer]
            data = (features - target).flatten(1).pow(2).sum(1) / target_norm
            prior_tv = tv_beta(image, beta).flatten(1).sum(1)
            prior_alpha = image.abs().pow(alpha).flatten(1).sum(1)
            return sigma.flatten() ** 2 * data + tv_weight / 2 * prior_tv + alpha_weight / 2 * prior_alpha

        # Heavy-ball descent is stable on a quadratic of curvature L while lr * L < 2 * (1 + momentum); the TV^2
        # term alone has curvature up to 8 * lambda_tv, and at lambda_tv = 100 the published rate sits at that
        # edge, so the rate is capped at half of it.
        if beta == 2 and tv_weight > 0:
            lr = min(lr, (1 + momentum) / (8 * tv_weight))
        noise = torch.randn(reference.shape, generator=generator).to(x.device)
        image = noise / noise.flatten(1).norm(dim=1).view(batch, 1, 1, 1) * sigma
        velocity = torch.zeros_like(image)
        energies = []
        # Divergence guard (not in the authors' code): an image whose energy turns non-finite or exceeds 4 times
        # its best so far goes back to its best, loses its momentum and continues at half its rate.
        best = torch.full((batch,), torch.inf, device=x.device)
        best_image = image.clone()
        rate = torch.ones(batch, 1, 1, 1, device=x.device)
        for steps, multiplier in schedule:
            velocity.zero_()  # the authors reset momentum when the rate changes
            for _ in range(steps):
                image.requires_grad_(True)
                value = energy(image)
                (gradient,) = torch.autograd.grad(value.sum(), image)
                with torch.no_grad():
                    image = image.detach()
                    finite = value.isfinite() & gradient.flatten(1).isfinite().all(1)
                    improved = finite & (value < best)
                    best = torch.where(improved, value, best)
                    best_image = torch.where(improved.view(-1, 1, 1, 1), image, best_image)
                    failed = (~finite | (value > 4 * best)).view(-1, 1, 1, 1)
                    rate = torch.where(failed, rate / 2, rate)
                    image = torch.where(failed, best_image, image)
                    gradient = torch.where(failed, 0.0, gradient)
                    velocity = torch.where(failed, 0.0, velocity)
                    velocity = momentum * velocity - lr * multiplier * rate * gradient
                    image = image + velocity
                energies.append(value.detach())
        with torch.no_grad():
            pixels = (image / 255 + mean).clamp(0, 1)
            features = run((pixels - mean) / std).activations[layer]
            error = (features - target).flatten(1).norm(dim=1) / target_norm.sqrt()
            image_error = relative_image_error(vm, pixels, x.detach().float())
    history = torch.stack(energies, 1) if energies else torch.zeros(batch, 0, device=x.device)
    return Inversion(layer, pixels.detach(), error.detach(), image_error.detach(), history, float(tv_weight))


def pixel_normalization(
    vm: VisionModel, channels: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's normalization ``(mean, std)``, each ``[1, channels, 1, 1]`` float32, for images of
    ``channels`` channels (zeros and ones where the preprocessing speaks of another channel count: a plain module
    whose inputs deepscope does not know)."""
    mean = torch.as_tensor(vm.preprocessing.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.as_tensor(vm.preprocessing.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    if mean.shape[1] != channels:
        return torch.zeros(1, channels, 1, 1, device=device), torch.ones(1, channels, 1, 1, device=device)
    return mean, std


def relative_image_error(
    model: VisionModel | nn.Module, pixels: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """``[B]`` how far reconstructed ``pixels`` ([0, 1]) lie from the images of model inputs ``x``, relative to
    those images' own size: ``|pixels - x_0| / |x_0 - mean|``, with ``x_0`` the pixels of ``x`` and ``mean``
    the normalization's mean (Mahendran & Vedaldi's and Dosovitskiy & Brox's measure; 1 is no better than the
    mean, 0 exact).

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> digits = ds.datasets.mnist5k().images[:2]
    >>> pixels, x = vm.pixels(digits), vm.preprocess(digits)
    >>> [round(float(e), 4) for e in relative_image_error(vm, pixels, x)]
    [0.0, 0.0]
    >>> mean = torch.full_like(pixels, vm.preprocessing.mean[0])
    >>> [round(float(e), 4) for e in relative_image_error(vm, mean, x)]
    [1.0, 1.0]
    """
    vm = as_vision_model(model)
    mean, std = pixel_normalization(vm, x.shape[1], x.device)
    original = x.float() * std  # x_0 - mean
    difference = (pixels.float() - mean - original).flatten(1).norm(dim=1)
    return difference / original.flatten(1).norm(dim=1).clamp_min(1e-12)


def invert_layers(
    model: VisionModel | nn.Module, x: torch.Tensor, layers: str | Sequence[str], **options
) -> list[Inversion]:
    """:func:`invert` the same images from each of ``layers`` (names or globs, in model order): the per-layer
    inversion strip of Mahendran & Vedaldi's figures.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> x = vm.preprocess(ds.datasets.mnist5k().images[:1])
    >>> [r.layer for r in ds.units.invert_layers(vm, x, ["conv1", "conv2"], schedule=[(5, 1.0)])]
    ['conv1', 'conv2']
    """
    return [invert(model, x, name, **options) for name in find_layers(model, layers)]


def depth_tv_weight(model: VisionModel | nn.Module, layer: str) -> float:
    """lambda_tv for ``layer``: 1, 10 or 100 by the share of the model's leaf modules up to and including it."""
    module = as_vision_model(model).module
    leaves = [name for name, sub in module.named_modules() if name and not any(True for _ in sub.children())]
    inside = [i for i, name in enumerate(leaves) if name == layer or name.startswith(layer + ".")]
    if not inside or not leaves:
        return TV_BANDS[-1][1]
    fraction = (inside[-1] + 1) / len(leaves)
    for bound, weight in TV_BANDS:
        if fraction <= bound + 1e-9:
            return weight
    return TV_BANDS[-1][1]
