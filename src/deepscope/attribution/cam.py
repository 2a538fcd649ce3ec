"""CAM family: class activation maps from one layer's activations ``A`` (``[B,K,h,w]``).

Each method is ``sum_k w_k A_k`` for channel weights ``w`` that the method defines (:meth:`channel_weights`,
the one step a subclass overrides, as in pytorch-grad-cam's ``get_cam_weights``), except Layer-CAM, which
weights each position (:meth:`layer_map`). Gradient-based CAMs backpropagate only down to their layer
(``torch.autograd.grad`` with respect to the layer's output: no input gradient, no parameter gradients).

Maps are ``[B,1,H,W]`` upsampled bilinearly to the input (``upsample=False`` keeps the layer's ``h x w``),
raw and signed: the papers' final ReLU (``relu=True``) and any normalization belong to rendering. The layer
defaults to the last spatial layer (:mod:`deepscope.attribution.layers`), stored in ``method.layer`` after
the first call; transformer token grids are reshaped to maps with the class token dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deepscope.attribution.base import MethodError, register, upsample
from deepscope.attribution.gradient import ReluRule, modified_relus, require_relus
from deepscope.attribution.layers import spatial_layers_hint
from deepscope.attribution.passes import (
    Needs,
    Pass,
    Perturbations,
    SharedContext,
    SharedPassMethod,
    perturb,
    run_shared,
)
from deepscope.attribution.targets import Classes, TargetLike
from deepscope.probe.layers import parse_layer


class LayerMethod(SharedPassMethod):
    """Base of the layer-space methods: a layer (given or found) and the options ``upsample`` (bilinearly to
    the input size; False keeps the layer's resolution) and ``relu`` (rectify the map at the layer's
    resolution, the papers' final ReLU)."""

    uses_gradients = True
    needs_layer = True

    @dataclass(frozen=True, eq=False)
    class Options(SharedPassMethod.Options):
        upsample: bool = True
        relu: bool = False

    def prepare(self, inputs: torch.Tensor, context: SharedContext) -> None:
        if self.layer is None:
            self.layer = context.default_layer()

    def needs(self) -> Needs:
        return Needs(layers={self.layer}, layer_gradients={self.layer} if self.uses_gradients else set())

    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor, pass_: Pass
    ) -> torch.Tensor:
        """``[b,K]`` weights of the layer's channels (the step each CAM variant defines)."""
        raise NotImplementedError

    def layer_map(self, activations: torch.Tensor, gradients: torch.Tensor, pass_: Pass) -> torch.Tensor:
        """``[b,1,h,w]`` map at the layer's resolution."""
        weights = self.channel_weights(activations, gradients, pass_)
        return torch.einsum("bk,bkhw->bhw", weights, activations)[:, None]

    def from_pass(self, pass_: Pass) -> torch.Tensor:
        activations = pass_.activations[self.layer]
        gradients = pass_.gradients.get(self.layer)
        return self.finish(self.layer_map(activations, gradients, pass_), pass_.input_size)

    def finish(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.options.relu:
            maps = maps.clamp(min=0)
        return upsample(maps, size) if self.options.upsample else maps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.vm.name}, layer={self.layer!r})"


@register(
    "grad_cam",
    family="cam",
    space="layer",
    passes="1 forward + 1 backward to the layer (shared)",
    reference="Selvaraju et al. 2017, Grad-CAM: channel weights = spatial mean of the gradient",
)
class GradCAM(LayerMethod):
    """Grad-CAM (Selvaraju et al. 2017): ``sum_k mean_ij(dS/dA_k) A_k``; ``relu=True`` gives the paper's map.

    >>> import torch, deepscope as ds
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    >>> method = ds.attribution.GradCAM(net)
    >>> method.attribute(torch.rand(2, 3, 16, 16)).shape, method.layer  # the last spatial layer: the ReLU
    (torch.Size([2, 1, 16, 16]), '1')
    """

    def channel_weights(self, activations, gradients, pass_):
        return gradients.mean((2, 3))


@register(
    "grad_cam_pp",
    family="cam",
    space="layer",
    passes="1 forward + 1 backward to the layer (shared)",
    reference="Chattopadhay et al. 2018, Grad-CAM++: weights sum_ij alpha_ij relu(dS/dA), alpha from the "
    "closed form for an exponential output (Eq. 19), 0 where the gradient or the denominator is 0",
)
class GradCAMPlusPlus(LayerMethod):
    """Grad-CAM++ (Chattopadhay et al. 2018): ``w_k = sum_ij alpha_kij relu(g_kij)`` with
    ``alpha = g^2 / (2 g^2 + sum_ab A_kab g^3)`` (their Eq. 19, first derivatives of the score standing in
    for the higher ones of its exponential), set to 0 where ``g`` or the denominator is 0.

    >>> import torch, deepscope as ds
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    >>> ds.attribute(net, torch.rand(2, 3, 16, 16), "grad_cam_pp", upsample=False).shape
    torch.Size([2, 1, 14, 14])
    """

    def channel_weights(self, activations, gradients, pass_):
        squared = gradients.pow(2)
        denominator = 2 * squared + activations.sum((2, 3), keepdim=True) * squared * gradients
        usable = (gradients != 0) & (denominator != 0)
        alpha = torch.where(usable, squared / torch.where(usable, denominator, 1.0), 0.0)
        return (alpha * gradients.clamp(min=0)).sum((2, 3))


@register(
    "layer_cam",
    family="cam",
    space="layer",
    passes="1 forward + 1 backward to the layer (shared)",
    reference="Jiang et al. 2021, LayerCAM: each position weighted by its own positive gradient",
)
class LayerCAM(LayerMethod):
    """LayerCAM (Jiang et al. 2021): ``sum_k relu(dS/dA_kij) A_kij``, a weight per position, not per channel.

    >>> import torch, deepscope as ds
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    >>> ds.attribute(net, torch.rand(2, 3, 16, 16), "layer_cam", upsample=False).shape
    torch.Size([2, 1, 14, 14])
    """

    def layer_map(self, activations, gradients, pass_):
        return (gradients.clamp(min=0) * activations).sum(1, keepdim=True)


@register(
    "cam",
    family="cam",
    space="layer",
    passes="1 forward (shared)",
    reference="Zhou et al. 2016, Learning Deep Features for Discriminative Localization: CAM for a global "
    "average pool + linear head, weights = the class's row of the linear layer (bias left out)",
)
class CAM(LayerMethod):
    """CAM (Zhou et al. 2016) for models whose head is global average pooling then one linear layer:
    ``sum_k W[c, k] A_k`` with ``A`` the pooled layer and ``W`` the linear weights, so that the map's mean
    plus the bias is the class logit. The head is checked numerically on one sample (the linear layer's
    input must be the spatial mean of the layer and its output the model's output); other heads raise.

    >>> import torch, deepscope as ds
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    >>> x = torch.rand(2, 3, 16, 16)
    >>> maps = ds.attribute(net, x, "cam", target=4, upsample=False)
    >>> torch.allclose(maps.mean((1, 2, 3)) + net[4].bias[4], net(x)[:, 4])  # mean + bias = the logit
    True
    """

    uses_gradients = False

    def prepare(self, inputs: torch.Tensor, context: SharedContext) -> None:
        super().prepare(inputs, context)
        self.head = gap_linear_head(context, self.layer)

    def channel_weights(self, activations, gradients, pass_):
        if not isinstance(pass_.target, Classes):
            raise MethodError(
                "cam explains a class of a linear head: the target must be a class index (or None)"
            )
        return self.head.weight.detach()[pass_.target.indices.to(activations.device)].to(activations.dtype)


def gap_linear_head(context: SharedContext, layer: str) -> torch.nn.Linear:
    """The ``nn.Linear`` that reads the global average of ``layer`` and gives the model output, or a clear
    error saying what the head is instead."""
    found = context.probe(keep={layer})
    vm = context.vm
    advice = "; grad_cam works with any head"
    if layer not in found.activations:
        raise MethodError(f"layer {layer!r} did not run in the forward of {vm.name}")
    module = parse_layer(vm, layer).path
    features = found.activations[layer]
    call = next(c for c in found.calls if c.module == module)
    if found.last_linear is None:
        raise MethodError(
            f"cam needs a global-average-pool + linear head, but {vm.name} has no nn.Linear{advice}"
        )
    name, linear_input, linear_output = found.last_linear
    output = found.output
    if (
        not isinstance(output, torch.Tensor)
        or output.shape != linear_output.shape
        or not torch.allclose(linear_output, output)
    ):
        raise MethodError(
            f"cam needs a global-average-pool + linear head, but the output of {vm.name} is not the output "
            f"of its last linear layer {name!r}{advice}"
        )
    layout = next((c.layout for c in found.calls if c.module == module and c.layout is not None), call.layout)
    if layout is None:
        raise MethodError(
            f"layer {layer!r} outputs {list(features.shape)}, not a spatial map.{spatial_layers_hint(found)}"
        )
    pooled = layout.to_map(features).mean((2, 3))
    flat = linear_input.flatten(1)
    scale = float(pooled.abs().max()) or 1.0
    if flat.shape != pooled.shape or not torch.allclose(flat, pooled, rtol=1e-4, atol=1e-5 * scale):
        raise MethodError(
            f"cam needs a global-average-pool + linear head on its layer, but the input of {vm.name}'s last "
            f"linear layer {name!r} ({list(flat.shape)}) is not the spatial mean of layer {layer!r} "
            f"({list(features.shape)}){advice}"
        )
    return vm.module.get_submodule(name)


@register(
    "score_cam",
    family="cam",
    space="layer",
    passes="1 + K forwards (K channels of the layer), no backward",
    reference="Wang et al. 2020, Score-CAM: channel weights = softmax over channels of the target score of "
    "the input masked by each upsampled, min-max normalized channel (Algorithm 1)",
)
class ScoreCAM(LayerMethod):
    """Score-CAM (Wang et al. 2020, Algorithm 1): each channel ``A_k``, upsampled to the input and scaled to
    [0, 1], masks the input; ``w = softmax_k(S(x * mask_k))``; the map is ``sum_k w_k A_k``. The ``B x K``
    masked inputs run ``batch_size`` at a time under ``torch.inference_mode()``.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, torch.rand(1, 1, 28, 28), "score_cam", layer="conv2").shape
    torch.Size([1, 1, 28, 28])
    """

    uses_gradients = False
    shares_pass = False

    def compute(self, inputs: torch.Tensor, target: TargetLike) -> torch.Tensor:
        context = self.context or SharedContext(self.vm, inputs)
        self.prepare(inputs, context)
        size = self.chunk_size(inputs)
        # The clean forward: the layer's activations and the target (top-1 class when None).
        reader = _Activations(self)
        activations = run_shared([reader], inputs, target, size, context)[0]
        self.passes = self.passes + reader.passes
        classes = target if target is not None else Classes(torch.cat([t.indices for t in reader.targets]))
        masks = ChannelMasks(inputs, activations)
        return self.finish(perturb(self.vm, masks, classes, size, self.passes), masks.size)


class ChannelMasks(Perturbations):
    """Input ``b * K + k`` is sample ``b`` masked by its channel ``k``, upsampled to the input and scaled to
    [0, 1]; the map weighs the channels by the softmax over channels of their scores."""

    def __init__(self, inputs: torch.Tensor, activations: torch.Tensor):
        super().__init__(inputs, inputs.shape[0] * activations.shape[1])
        self.activations = activations
        self.size = (int(inputs.shape[-2]), int(inputs.shape[-1]))

    def build(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channels = self.activations.shape[1]
        rows, channel = points // channels, points % channels
        masks = upsample(self.activations[rows, channel][:, None], self.size)
        low = masks.flatten(1).amin(1).view(-1, 1, 1, 1)
        high = masks.flatten(1).amax(1).view(-1, 1, 1, 1)
        masks = (masks - low) / torch.where(high > low, high - low, 1.0)
        return self.inputs[rows] * masks, rows

    def maps(self, scores: torch.Tensor) -> torch.Tensor:
        weights = scores.view(self.batch, self.activations.shape[1]).softmax(1)
        return torch.einsum("bk,bkhw->bhw", weights, self.activations)[:, None]


class _Activations(SharedPassMethod):
    """The activations of another method's layer from a forward without backward, and the resolved targets."""

    def __init__(self, owner: LayerMethod):
        super().__init__(owner.vm)
        self.owner = owner
        self.targets: list = []

    def needs(self) -> Needs:
        return Needs(layers={self.owner.layer})

    def from_pass(self, pass_: Pass) -> torch.Tensor:
        self.targets.append(pass_.target)
        return pass_.activations[self.owner.layer]


@register(
    "guided_grad_cam",
    family="cam",
    space="pixel",
    passes="1 forward + 1 backward to the layer + 1 guided backward to the input",
    reference="Selvaraju et al. 2017, Grad-CAM: guided backpropagation times the upsampled, rectified "
    "Grad-CAM",
)
class GuidedGradCAM(LayerMethod):
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation ``[B,C,H,W]`` times ``relu(Grad-CAM)``
    upsampled bilinearly to the input. One forward serves both: a plain backward to the layer, then a guided
    one to the input (see :mod:`deepscope.attribution.gradient` for which ReLUs are modified).

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, torch.rand(1, 1, 28, 28), "guided_grad_cam", layer="relu2").shape
    torch.Size([1, 1, 28, 28])
    """

    sensitivity = True

    shares_pass = False
    Options = SharedPassMethod.Options  # a pixel-space map: neither upsample nor relu applies

    def needs(self) -> Needs:
        return Needs(input_gradient=True, layers={self.layer}, layer_gradients={self.layer})

    def from_pass(self, pass_: Pass) -> torch.Tensor:
        activations, gradients = pass_.activations[self.layer], pass_.gradients[self.layer]
        cam = torch.einsum("bk,bkhw->bhw", gradients.mean((2, 3)), activations)[:, None].clamp(min=0)
        return pass_.input_gradient * upsample(cam, pass_.input_size)

    def compute(self, inputs: torch.Tensor, target: TargetLike) -> torch.Tensor:
        state = ReluRule("plain")
        result = run_shared(
            [self],
            inputs,
            target,
            self.batch_size,
            self.context,
            forward_context=lambda: modified_relus(state),
            between_backwards=lambda: setattr(state, "rule", "guided"),
        )[0]
        require_relus(state, self)
        return result
