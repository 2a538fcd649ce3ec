"""Where layer-space methods look: the default layer, spatial and token layouts, taps on one call of a module.

A layer is named by its dotted ``named_modules()`` path; a module that runs more than once in the forward
(EfficientNet-Lite0 applies one ``ReLU6`` module ``_swish`` in the stem and again in the head) is named per
call as ``'path@N'`` (N counted from 0), the convention of :func:`deepscope.graph`.

A layer output is *spatial* when it is ``[B,C,h,w]`` with ``h*w > 1`` and no larger than the input, or a
*token grid* ``[B,N,D]`` where ``N = p + h*w`` for ``p <= 8`` leading tokens (class, distillation or register
tokens, dropped) and ``h = H/s``, ``w = W/s`` for one integer patch size ``s``: the grid of a vision
transformer, worked out from the token count and the input size. Once a model has produced a token grid,
later 4-d outputs are attention internals (``[B, heads, N, d]``), not images, and are not spatial.

The default layer of the CAM family is the last spatial layer whose map can reach the target: for CNNs the
last spatial output (``layer4`` of a ResNet, ``_swish@1`` of EfficientNet-Lite0); for transformers the last
token grid whose patch tokens still get a gradient from the output (in a class-token ViT the input of the
last attention, since after it only the class token is read).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deepscope.attribution.base import MethodError, PassCount
from deepscope.probe.hooks import first_tensor, hooks
from deepscope.probe.layers import LayerAddress
from deepscope.zoo.state import evaluation_mode
from deepscope.zoo.vision_model import VisionModel, as_vision_model

MAX_PREFIX_TOKENS = 8


@dataclass(frozen=True)
class Layout:
    """How a layer's output maps onto the image: ``kind`` is 'map' (``[B,C,h,w]``) or 'tokens'
    (``[B,N,D]`` with ``prefix`` leading tokens before an ``h x w`` grid)."""

    kind: str
    grid: tuple[int, int]
    prefix: int = 0

    def to_map(self, tensor: torch.Tensor) -> torch.Tensor:
        """The layer output (or its gradient) as ``[B,C,h,w]``."""
        if self.kind == "map":
            return tensor
        batch, _, dim = tensor.shape
        return tensor[:, self.prefix :].reshape(batch, *self.grid, dim).permute(0, 3, 1, 2)


def layout_of(
    shape: tuple[int, ...], input_size: tuple[int, int], tokens_seen: bool = False
) -> Layout | None:
    """The spatial layout of an output of this shape for inputs of ``input_size`` (H, W), or None."""
    height, width = input_size
    if len(shape) == 4 and not tokens_seen:
        h, w = shape[-2:]
        if h * w > 1 and h <= height and w <= width:
            return Layout("map", (h, w))
    if len(shape) == 3:
        tokens = shape[1]
        for prefix in range(min(MAX_PREFIX_TOKENS, tokens - 2) + 1):
            grid = _token_grid(tokens - prefix, height, width)
            if grid is not None:
                return Layout("tokens", grid, prefix)
    return None


def _token_grid(count: int, height: int, width: int) -> tuple[int, int] | None:
    for patch in range(1, min(height, width) + 1):
        if height % patch or width % patch:
            continue
        h, w = height // patch, width // patch
        if h * w == count and h * w > 1:
            return (h, w)
        if h * w < count:
            return None
    return None


@dataclass
class Call:
    """One module call seen by the probe, in the order the calls finished."""

    module: str
    index: int
    shape: tuple[int, ...] | None
    layout: Layout | None

    @property
    def name(self) -> str:
        return self.module if self.index == 0 else f"{self.module}@{self.index}"


@dataclass
class Probe:
    """What one forward of a single sample showed: every module call, how often each module ran, the last
    ``nn.Linear`` call (module name, input, output), the model output, and the outputs of the calls asked
    for plus that of the last spatial call, by call name."""

    calls: list[Call]
    counts: dict[str, int]
    last_linear: tuple[str, torch.Tensor, torch.Tensor] | None
    output: Any
    activations: dict[str, torch.Tensor] = field(default_factory=dict)

    def spatial(self) -> list[Call]:
        return [call for call in self.calls if call.layout is not None]

    def call_name(self, module: str, index: int) -> str:
        """'module' for a module that ran once, 'module@N' otherwise."""
        return module if self.counts.get(module, 0) <= 1 else f"{module}@{index}"


def probe(model: VisionModel | nn.Module, example: torch.Tensor, keep: set[str] | None = None) -> Probe:
    """Run one sample through the model in eval mode without gradients, recording every module call.

    ``keep`` names calls ('module' or 'module@N') whose outputs are kept in ``Probe.activations``.
    """
    vm = as_vision_model(model)
    input_size = (int(example.shape[-2]), int(example.shape[-1]))
    calls: list[Call] = []
    counts: dict[str, int] = {}
    tokens_seen = [False]
    last_linear: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    kept: dict[str, torch.Tensor] = {}
    # the last spatial call: the default layer of CNNs, kept for cam's head check
    last_spatial: list[tuple[str, int, torch.Tensor]] = []

    def make_hook(name: str, linear: bool):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            index = counts.get(name, 0)
            counts[name] = index + 1
            tensor = first_tensor(output)
            shape = tuple(tensor.shape) if tensor is not None else None
            layout = layout_of(shape, input_size, tokens_seen[0]) if shape is not None else None
            if layout is not None and layout.kind == "tokens":
                tokens_seen[0] = True
            calls.append(Call(name, index, shape, layout))
            if layout is not None:
                last_spatial[:] = [(name, index, tensor)]
            if keep and tensor is not None:
                for key in (f"{name}@{index}", name if index == 0 else None):
                    if key in keep:
                        kept[key] = tensor
            if linear and inputs and isinstance(inputs[0], torch.Tensor) and tensor is not None:
                last_linear[:] = [(name, inputs[0], tensor)]

        return hook

    with hooks(vm.module) as hooked:
        for name, module in vm.module.named_modules():
            if name:
                hooked.after(module, make_hook(name, isinstance(module, nn.Linear)))
        with torch.inference_mode(), evaluation_mode(vm.module):
            output = vm.module(example[:1])
    found = Probe(calls, counts, last_linear[0] if last_linear else None, output, kept)
    if last_spatial:
        name, index, tensor = last_spatial[0]
        kept.setdefault(found.call_name(name, index), tensor)
    return found


def default_layer(
    model: VisionModel | nn.Module,
    example: torch.Tensor,
    found: Probe | None = None,
    passes: PassCount | None = None,
) -> str:
    """The layer the CAM family uses when none is given: the last spatial layer (see the module docs).

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:efficientnet_lite0")
    >>> ds.attribution.default_layer(vm, vm.preprocess(ds.samples(["coffee"])["coffee"]))  # a reused ReLU6
    '_swish@1'
    """
    vm = as_vision_model(model)
    found = found or probe(vm, example)
    spatial = found.spatial()
    if not spatial:
        raise MethodError(
            f"{vm.name} has no spatial layer for inputs of size {tuple(example.shape[-2:])}: no module "
            "outputs a [B,C,h,w] map with h*w > 1 or a transformer token grid"
        )
    last = spatial[-1]
    if last.layout.kind == "map":
        return found.call_name(last.module, last.index)
    if passes is not None:  # one sample forward and backward
        passes.add(1, example.shape[0], backward=True)
    return _last_token_grid_with_gradient(vm, example, spatial)


def _last_token_grid_with_gradient(vm: VisionModel, example: torch.Tensor, spatial: list[Call]) -> str:
    """Among the trailing token-grid layers of the residual stream's width, the last whose grid tokens get a
    gradient from the top-1 score (one extra forward and backward of a single sample, only for transformers)."""
    tokens = [call for call in spatial if call.layout.kind == "tokens"]
    # The residual stream's width (the commonest token width): leaves out fused q|k|v and MLP-hidden outputs.
    widths = [call.shape[-1] for call in tokens]
    width = max(set(widths), key=widths.count)
    candidates = [call for call in tokens if call.shape[-1] == width][-64:]
    wanted = {(call.module, call.index): call for call in candidates}
    captured: dict[tuple[str, int], torch.Tensor] = {}
    counts: dict[str, int] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            index = counts.get(name, 0)
            counts[name] = index + 1
            tensor = first_tensor(output)
            if (name, index) in wanted and tensor is not None and tensor.requires_grad:
                captured[(name, index)] = tensor

        return hook

    with hooks(vm.module) as hooked:
        for name in {call.module for call in candidates}:
            hooked.after(name, make_hook(name))
        with torch.enable_grad(), evaluation_mode(vm.module):
            x = example[:1].detach().requires_grad_(True)
            output = vm.module(x)
            if not isinstance(output, torch.Tensor) or output.ndim != 2:
                raise MethodError(
                    f"cannot find a default layer of {vm.name}: its output is not [B, classes]; pass layer="
                )
            keys = [key for key in wanted if key in captured]
            grads = torch.autograd.grad(output[0].max(), [captured[k] for k in keys], allow_unused=True)
    total_counts: dict[str, int] = {}
    for call in spatial:
        total_counts[call.module] = max(total_counts.get(call.module, 0), call.index + 1)
    for key, grad in reversed(list(zip(keys, grads, strict=True))):
        layout = wanted[key].layout
        if grad is not None and layout.to_map(grad).abs().amax() > 0:
            module, index = key
            return module if total_counts[module] <= 1 else f"{module}@{index}"
    raise MethodError(
        f"no token-grid layer of {vm.name} gets a non-zero gradient from its top-1 score (a zero-initialized "
        "head gives none), so there is no default layer; pass layer="
    )


def spatial_layers_hint(found: Probe, count: int = 6) -> str:
    names = [found.call_name(c.module, c.index) for c in found.spatial()][-count:]
    return f" Spatial layers near the output: {', '.join(names)}." if names else ""


class Tap:
    """The output (or input) of one call of one module during a forward, kept attached to the autograd graph."""

    def __init__(self, name: str, address: LayerAddress):
        self.name = name
        self.module = address.path
        self.call = address.call
        self.input = address.input
        self.calls = 0
        self.raw: torch.Tensor | None = None
        self.version = 0
        self.layout: Layout | None = None

    def reset(self) -> None:
        self.calls, self.raw, self.layout = 0, None, None

    def record(self, tensor: torch.Tensor | None, input_size: tuple[int, int]) -> None:
        index = self.calls
        self.calls += 1
        if tensor is None or (self.call is not None and index != self.call):
            return
        if self.call is None and index > 0:
            return
        self.raw = tensor
        self.version = tensor._version
        self.layout = layout_of(tuple(tensor.shape), input_size)

    def check(self, vm: VisionModel, example: torch.Tensor) -> None:
        """After the forward: the call happened once as named, the output is spatial and was not changed in
        place later in the forward."""
        if self.call is None and self.calls > 1:
            raise MethodError(
                f"layer {self.module!r} runs {self.calls} times in the forward of {vm.name} (a reused module); "
                f"name one call as '{self.module}@N' with N in 0..{self.calls - 1}, e.g. "
                f"'{self.module}@{self.calls - 1}' for the last"
            )
        if self.raw is None:
            if self.call is not None and self.calls:
                raise MethodError(
                    f"layer {self.module!r} runs {self.calls} times; there is no call {self.call} "
                    f"(calls count from 0)"
                )
            raise MethodError(f"layer {self.name!r} did not run in the forward of {vm.name}")
        if self.layout is None:
            hint = spatial_layers_hint(probe(vm, example))
            raise MethodError(
                f"layer {self.name!r} outputs shape {list(self.raw.shape)}, not a spatial [B,C,h,w] map "
                f"(h*w > 1) or a token grid, so a layer-space method cannot make a map from it.{hint}"
            )
        if self.raw._version != self.version:
            raise MethodError(
                f"the output of layer {self.name!r} is modified in place later in the forward (e.g. "
                "`out += identity` or an in-place activation), so its value and gradient there are not the "
                "layer's; pick the module after that operation"
            )

    def as_map(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.layout.to_map(tensor)


@contextmanager
def taps(
    vm: VisionModel, layers: dict[str, LayerAddress], input_size: tuple[int, int]
) -> Iterator[dict[str, Tap]]:
    """Hooks recording, for each ``name -> address``, that call's output (or input), attached to the graph."""
    tapped = {name: Tap(name, address) for name, address in layers.items()}
    by_module: dict[tuple[str, bool], list[Tap]] = {}
    for tap in tapped.values():
        by_module.setdefault((tap.module, tap.input), []).append(tap)

    def make_hook(module_taps: list[Tap]):
        def hook(module: nn.Module, inputs: tuple, output: Any = None) -> None:
            tensor = first_tensor(inputs if module_taps[0].input else output)
            for tap in module_taps:
                tap.record(tensor, input_size)

        return hook

    with hooks(vm.module) as hooked:
        for (module, is_input), module_taps in by_module.items():
            if is_input:
                hooked.before(module, make_hook(module_taps))
            else:
                hooked.after(module, make_hook(module_taps))
        yield tapped
