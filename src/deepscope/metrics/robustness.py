"""Robustness: does the heat map stay put when the input barely changes? Max-sensitivity (Yeh et al. 2019)."""

from __future__ import annotations

import torch
from torch import nn

from deepscope.attribution.base import Method
from deepscope.attribution.targets import TargetLike
from deepscope.metrics._common import (
    DEFAULT_BATCH_SIZE,
    Explainer,
    MetricError,
    ModelRunner,
    check_count,
    check_maps,
    explain_chunks,
    generator_for,
    make_explainer,
    prepare,
)
from deepscope.metrics.faithfulness import PerturbationSource
from deepscope.metrics.registry import register
from deepscope.zoo.state import evaluation_mode
from deepscope.zoo.vision_model import VisionModel, as_vision_model


@register(
    "max_sensitivity",
    family="robustness",
    score="relative max-sensitivity",
    per_sample=None,
    higher_is_better=False,
    reference="Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations",
    needs_method=True,
)
def max_sensitivity(
    model: VisionModel | nn.Module,
    x: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetLike = None,
    *,
    method: str | Method | Explainer,
    radius: float = 0.2,
    samples: int = 10,
    perturbations: torch.Tensor | None = None,
    relative: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
) -> torch.Tensor:
    """Max-sensitivity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations"), per sample
    ``[B]``: ``max_{|d|_inf <= radius} ||map(x + d) - map(x)||`` estimated from ``samples`` draws of ``d``
    uniform in the L-infinity ball (in input space); lower is better.

    The perturbed inputs are explained by ``method`` (registry name or callable ``(model, x, target) -> maps``)
    for the same classes, ``batch_size`` inputs at a time. ``relative`` divides by ``||map(x)||`` (Frobenius),
    as Captum's ``sensitivity_max`` and Quantus do. ``perturbations``: explicit ``[S,B,C,H,W]`` offsets instead
    of random ones.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> x = vm.preprocess(ds.datasets.mnist5k("test").images[:2])
    >>> def gradient(model, inputs, target):
    ...     inputs = inputs.clone().requires_grad_()
    ...     (grad,) = torch.autograd.grad(target(model(inputs)).sum(), inputs)
    ...     return grad
    >>> target = ds.metrics.fixed_target(vm, x)
    >>> ds.metrics.max_sensitivity(vm, x, gradient(vm, x, target), target, method=gradient).shape
    torch.Size([2])
    """
    x, original = prepare(model, x, attributions)
    check_count("batch_size", batch_size)
    vm = as_vision_model(model)
    explain = make_explainer(method, batch_size)
    batch = x.shape[0]
    if perturbations is None:
        check_count("samples", samples)
        if radius <= 0:
            raise MetricError(f"radius must be > 0, got {radius}")
        generator = generator_for(x.device, seed)

        def draw(_: int) -> torch.Tensor:
            unit = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return (2 * unit - 1) * radius

        source = PerturbationSource(samples, draw)
    else:
        given = perturbations.to(x.device, x.dtype)
        if given.ndim != 5 or given.shape[1:] != x.shape:
            raise MetricError(
                f"perturbations must be [S,B,C,H,W] for inputs {list(x.shape)}, got {list(perturbations.shape)}"
            )
        source = PerturbationSource.explicit(given)
    # The explanations run the model in eval mode, as every forward of a metric does.
    with evaluation_mode(vm.module):
        # The perturbed inputs are explained for the classes of the unperturbed ones: resolved once (a callable
        # target such as ds.targets.Classes is used as given, with no forward).
        target_fn = ModelRunner(vm, batch_size, softmax=False).resolve(x, target)
        norm = original.flatten(1).norm(dim=1)
        differences = []
        # Blocks of about batch_size perturbed inputs: memory does not grow with the number of samples.
        for block in source.blocks(max(1, batch_size // batch)):
            count = block.shape[0]
            inputs = (x[None] + block).flatten(0, 1)  # sample-major: [count*B, C, H, W]
            rows = torch.arange(batch, device=x.device).repeat(count)
            maps = check_maps(inputs, explain_chunks(explain, vm, inputs, rows, target_fn, batch, batch_size))
            if maps.shape[1] != original.shape[1]:
                raise MetricError(
                    f"the method returns {maps.shape[1]}-channel maps, the attributions have {original.shape[1]}"
                )
            difference = (maps.view(count, batch, -1) - original.flatten(1)[None]).norm(dim=2)  # [count, B]
            differences.append(difference / norm[None] if relative else difference)
    difference = torch.cat(differences)
    return difference.amax(0)
