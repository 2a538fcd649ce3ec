"""Feature visualization by activation maximization: find an image that makes an objective large.

Two optimizers:

- the default: Adam on a parameterized image (Fourier with decorrelated colors, or pixels) under random
  transformations (Olah et al. 2017, Distill "Feature Visualization"; Mordvintsev et al. 2015);
- Yosinski et al. 2015's regularized gradient ascent in pixel space (``regularization=yosinski(1..4)``): L2
  decay, Gaussian blur every n steps, clipping of small-norm and small-contribution pixels.

The model runs in eval mode, only as far as the objective's deepest layer, and gradients are taken with respect
to the image alone: the model's parameters never get a ``.grad``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from deepscope.errors import ImageError, SettingError, SettingTypeError, UnitError
from deepscope.units._forward import layer_runner
from deepscope.units.objectives import Context, Objective, per_image
from deepscope.units.objectives import objective as as_objective
from deepscope.units.parameterizations import FourierImage, PixelImage
from deepscope.units.regularizers import Yosinski
from deepscope.units.transforms import Transform, apply, standard_transforms
from deepscope.zoo.vision_model import VisionModel, as_vision_model


@dataclass
class Visualization:
    """The result of :func:`visualize`.

    ``image``: ``[B,C,H,W]`` pixels in [0, 1] (before the model's normalization). ``value``: ``[B]`` the
    objective of each image, computed by running the model on ``image`` as returned (no transformation).
    ``history``: ``[steps]`` the batch-mean objective at each step, on the transformed images it optimized.
    """

    image: torch.Tensor
    value: torch.Tensor
    objective: str
    history: torch.Tensor


def visualize(
    model: VisionModel | nn.Module,
    objective: str | Objective | Sequence[str | Objective],
    *,
    images: int = 1,
    size: tuple[int, int] | int | None = None,
    param: str = "fourier",
    decorrelate: bool = True,
    steps: int | None = None,
    lr: float | None = None,
    transforms: str | Sequence[Transform] | None = "standard",
    regularization: Yosinski | None = None,
    init: torch.Tensor | None = None,
    keep_size: bool | None = None,
    seed: int = 0,
) -> Visualization:
    """Optimize ``images`` images together to maximize ``objective`` (a string like ``"conv2:3"`` or an :class:`Objective`;
    a list of them optimizes one image per objective in one batched run).

    ``param``: ``"fourier"`` (Olah et al. 2017: 1/f-scaled spectrum, ``decorrelate`` colors, sigmoid) or
    ``"pixel"`` (pixels clamped to [0, 1]). ``transforms``: ``"standard"`` (pad, jitter, scale, rotate, jitter;
    pixel amounts scaled to the image size), a list of transformations from ``deepscope.units.transforms``,
    or None. ``regularization``: a :class:`Yosinski` setting (``yosinski(1..4)``) switches to that paper's
    regularized gradient ascent on pixels; its steps and step size apply unless ``steps``/``lr`` are given.
    ``init``: starting pixels ``[B,C,H,W]`` in [0, 1] (e.g. from :func:`multifaceted_init`). ``keep_size``:
    crop transformed images back to ``size`` before the model (None: only when the model cannot take the
    padded size, e.g. a fixed-size linear head). Defaults: ``size`` is the model's input size, 256 steps of
    Adam with ``lr=0.05``.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> result = ds.units.visualize(vm, "conv2:3", steps=16)
    >>> result.image.shape, bool(result.value[0] > 0)
    (torch.Size([1, 1, 28, 28]), True)
    """
    vm = as_vision_model(model)
    if isinstance(objective, (list, tuple)):
        goal = per_image(objective)
        if init is None and images not in (1, len(objective)):
            raise UnitError(f"{len(objective)} objectives, one per image, but images={images}")
        images = len(objective)
    else:
        goal = as_objective(objective)
    size = _size(vm, size, init)
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise SettingError(f"images must be an int >= 1, got {images!r}")
    if init is not None:
        init = _check_init(vm, init, size)
        images = init.shape[0]
    if param not in ("fourier", "pixel"):
        raise SettingError(f"param must be 'fourier' or 'pixel', got {param!r}")
    if regularization is not None and param != "pixel":
        raise SettingError("Yosinski et al.'s regularization acts on pixels: use param='pixel' with it")
    chain = _transforms(transforms, size)
    steps = steps if steps is not None else (regularization.steps if regularization is not None else 256)
    if steps < 0:
        raise SettingError(f"steps must be >= 0, got {steps}")
    device = vm.device
    generator = torch.Generator().manual_seed(seed)
    shape = (images, vm.preprocessing.channels, *size)

    with layer_runner(vm, sorted(goal.layers), need_output=goal.needs_output, detach=False) as run:
        with torch.no_grad():
            probe = torch.full(shape[1:], 0.5, device=device)[None]
            result = run(vm.normalize(probe))
            goal.check(
                {name: tuple(t.shape[1:]) for name, t in result.activations.items()},
                tuple(result.output.shape[1:]) if result.output is not None else None,
            )
            if keep_size is None:
                keep_size = _needs_fixed_size(run, vm, apply(chain, probe, torch.Generator().manual_seed(0)))

        def score(image: torch.Tensor, transform: bool) -> torch.Tensor:
            seen = apply(chain, image, generator) if transform and chain else image
            if keep_size and seen.shape[-2:] != image.shape[-2:]:
                seen = _center_crop(seen, size)
            outcome = run(vm.normalize(seen))
            return goal(Context(outcome.activations, outcome.output, image))

        if regularization is None:
            image, history = _adam(
                score, shape, param, decorrelate, steps, lr or 0.05, init, generator, device
            )
        else:
            image, history = _yosinski(score, vm, shape, steps, lr, regularization, init, generator, device)
        with torch.no_grad():
            value = score(image, transform=False)
    return Visualization(image.detach(), value.detach(), goal.name, history)


def _adam(score, shape, param, decorrelate, steps, lr, init, generator, device):
    if param == "fourier":
        image_param = (
            FourierImage.from_pixels(init, decorrelate)
            if init is not None
            else FourierImage.random(shape, generator, device, decorrelate=decorrelate)
        )
    else:
        image_param = (
            PixelImage.from_pixels(init) if init is not None else PixelImage.random(shape, generator, device)
        )
    optimizer = torch.optim.Adam([image_param.parameter], lr=lr)
    history = torch.zeros(steps, device=device)
    for step in range(steps):
        values = score(image_param.image(), transform=True)
        (gradient,) = torch.autograd.grad(-values.sum(), image_param.parameter)
        image_param.parameter.grad = gradient
        optimizer.step()
        image_param.project()
        history[step] = values.detach().mean()
    with torch.no_grad():
        return image_param.image().detach(), history


def _yosinski(score, vm: VisionModel, shape, steps, lr, setting: Yosinski, init, generator, device):
    """Gradient ascent on x = 255 * (pixels - mean), the paper's mean-subtracted 0-255 image."""
    mean = torch.as_tensor(vm.preprocessing.mean, device=device, dtype=torch.float32).view(1, -1, 1, 1) * 255
    if init is not None:
        x = init.to(device, torch.float32) * 255 - mean
    else:  # the toolbox's 'mean_plus_rand' start: the mean image plus N(0, 10^2) noise
        x = torch.randn(shape, generator=generator).to(device) * 10
    if lr is not None:
        setting = Yosinski(**{**setting.__dict__, "lr_policy": "constant", "lr": lr})
    history = torch.zeros(steps, device=device)
    for step in range(steps):
        x = (x + mean).clamp(0, 255) - mean
        x.requires_grad_(True)
        values = score((x + mean) / 255, transform=True)
        (gradient,) = torch.autograd.grad(values.sum(), x)
        x = x.detach()
        history[step] = values.detach().mean()
        if step < steps - 1:  # as in the toolbox, the last step only evaluates
            x = x + setting.step_size(gradient) * gradient
            x = setting.regularize(x, gradient, step)
    x = (x + mean).clamp(0, 255) - mean
    return ((x + mean) / 255).detach(), history


def _size(vm: VisionModel, size, init) -> tuple[int, int]:
    if size is None and init is not None:
        return tuple(init.shape[-2:])
    if size is None:
        size = vm.input_size
    if size is None:
        raise SettingError(f"{vm.name} sets no input size; pass size=(H, W)")
    if isinstance(size, int):
        size = (size, size)
    return (int(size[0]), int(size[1]))


def _check_init(vm: VisionModel, init: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    channels = vm.preprocessing.channels
    if not isinstance(init, torch.Tensor) or init.ndim != 4 or init.shape[1] != channels:
        raise ImageError(
            f"init must be pixels [B,{channels},H,W] in [0,1], got {getattr(init, 'shape', init)}"
        )
    if tuple(init.shape[-2:]) != size:
        raise ImageError(f"init is {tuple(init.shape[-2:])} but size is {size}")
    return init.detach().to(vm.device, torch.float32)


def _transforms(transforms, size) -> list[Transform]:
    if transforms is None:
        return []
    if isinstance(transforms, str):
        if transforms != "standard":
            raise SettingError(
                f"transforms must be 'standard', None or a list of transformations, got {transforms!r}"
            )
        return standard_transforms(size)
    chain = list(transforms)
    for item in chain:
        if not isinstance(item, Transform):
            raise SettingTypeError(f"transforms must come from deepscope.units.transforms, got {item!r}")
    return chain


def _needs_fixed_size(run, vm: VisionModel, transformed: torch.Tensor) -> bool:
    """True when the model (as far as the objective reads it) cannot run on the transformed image's size."""
    try:
        run(vm.normalize(transformed))
    except RuntimeError:
        return True
    return False


def _center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    height, width = images.shape[-2:]
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return images[..., top : top + size[0], left : left + size[1]]
