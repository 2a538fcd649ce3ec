"""Running a model up to the layers a computation needs, and checking unit indices against a layer's shape."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass

import torch

from deepscope.errors import DeepscopeError, SettingError, UnitError
from deepscope.probe.capture import Recording, capture
from deepscope.probe.hooks import layer_hooks
from deepscope.probe.inference import forward_only
from deepscope.probe.layers import get_layer
from deepscope.zoo.state import evaluation_mode
from deepscope.zoo.vision_model import VisionModel


class _StopForward(Exception):
    """Raised by a hook once every layer a computation needs has run: the rest of the model is skipped."""


@dataclass
class LayerRun:
    """What one forward pass to some layers produced: their outputs and, when it was computed, the model output."""

    activations: dict[str, torch.Tensor]
    output: torch.Tensor | None


@contextmanager
def layer_runner(
    vm: VisionModel,
    layers: Sequence[str],
    *,
    need_output: bool = False,
    detach: bool = True,
) -> Iterator:
    """Inside the block, ``run(x) -> LayerRun`` forwards ``x`` only as far as needed: to the last of ``layers``
    (or the whole model when ``need_output``). The first run goes through the whole model, so that a layer that
    runs more than once (a reused module named without ``@N``) is an error instead of its first call. The model
    runs in eval mode and every hook is removed on exit.
    """
    names = list(dict.fromkeys(layers))
    for name in names:
        get_layer(vm, name)  # clear error with suggestions for a wrong name
    waiting: set[str] = set()
    checked = [False]  # set once a whole forward has shown every layer runs once

    def stop(name: str, tensor: torch.Tensor) -> None:
        waiting.discard(name)
        if not waiting and checked[0]:
            raise _StopForward

    stops = layer_hooks(vm.module, names, stop) if names and not need_output else nullcontext()
    recorder = capture(vm, names, detach=detach) if names else nullcontext()
    with evaluation_mode(vm.module), recorder as recording, stops:

        def run(x: torch.Tensor) -> LayerRun:
            if recording is not None:
                recording.clear()
                waiting.update(names)
            output = None
            with suppress(_StopForward):
                output = vm.module(x)
            activations = {name: _single(recording, name) for name in names} if recording else {}
            checked[0] = True
            if need_output and not isinstance(output, torch.Tensor):
                raise DeepscopeError(
                    f"{vm.name} returns a {type(output).__name__}, not a tensor of scores; "
                    "use a layer objective instead of logit:..."
                )
            return LayerRun(activations, output)

        yield run


@contextmanager
def streaming_runner(
    vm: VisionModel, layers: Sequence[str], on_output: Callable[[str, torch.Tensor], None]
) -> Iterator[Callable[[torch.Tensor], None]]:
    """Like :func:`layer_runner`, but each layer's output goes to ``on_output(name, tensor)`` the moment it is
    produced and is not kept, so a reduction needs no more memory than the forward pass itself; the pass stops
    once every layer has run. It is :func:`~deepscope.probe.inference.forward_only` (the folded copy with the layers tapped,
    channels-last), so call it under ``torch.inference_mode()``; each layer must run exactly once. Eval mode
    inside, the model left as found."""
    names = list(dict.fromkeys(layers))
    for name in names:
        get_layer(vm, name)
    waiting: set[str] = set()
    checked = [False]  # the first pass runs whole: forward_only refuses a layer that runs twice

    def record(name: str, tensor: torch.Tensor) -> None:
        on_output(name, tensor)
        waiting.discard(name)
        if not waiting and checked[0]:
            raise _StopForward

    def run(x: torch.Tensor) -> None:
        waiting.update(names)
        with suppress(_StopForward):
            forward_only(vm, x, names, record)
        checked[0] = True

    with evaluation_mode(vm.module):
        yield run


def _single(recording: Recording, name: str) -> torch.Tensor:
    calls = recording.activations.all(name)
    if not calls:
        raise DeepscopeError(f"layer {name!r} did not run in the forward pass (the model skips it)")
    if len(calls) > 1:
        raise DeepscopeError(
            f"layer {name!r} runs {len(calls)} times in one forward pass (a module reused, e.g. one activation "
            f"module applied twice); name one call as '{name}@N' with N in 0..{len(calls) - 1}"
        )
    return calls[0]


def example_input(vm: VisionModel, size: tuple[int, int] | None = None) -> torch.Tensor:
    """One all-zeros model input of the model's size (or ``size``) on its device."""
    size = size or vm.input_size
    if size is None:
        raise SettingError(f"{vm.name} sets no input size; pass size=(H, W)")
    return torch.zeros(1, vm.preprocessing.channels, *size, device=vm.device)


def layer_shapes(
    vm: VisionModel, layers: Sequence[str], x: torch.Tensor, need_output: bool = False
) -> tuple[dict[str, tuple[int, ...]], tuple[int, ...] | None]:
    """Output shape (batch dimension dropped) of each layer, and of the model output when asked for."""
    with torch.no_grad(), layer_runner(vm, layers, need_output=need_output) as run:
        result = run(x[:1])
    shapes = {name: tuple(t.shape[1:]) for name, t in result.activations.items()}
    output = tuple(result.output.shape[1:]) if result.output is not None else None
    return shapes, output


def check_unit(
    layer: str, shape: tuple[int, ...], unit: int, position: tuple[int, int] | None = None
) -> None:
    """A clear error when ``unit`` (and ``position``) are out of range for a layer whose output is ``shape``."""
    if isinstance(unit, bool) or not isinstance(unit, int):
        raise UnitError(f"a unit is an integer index, got {unit!r}")
    count = shape[0] if shape else 1
    kind = "channels" if len(shape) >= 2 else "units"
    if not 0 <= unit < count:
        raise UnitError(
            f"unit {unit} is out of range for layer {layer!r}, which has {count} {kind} (0..{count - 1})"
        )
    if position is not None:
        if len(shape) != 3:
            raise UnitError(
                f"layer {layer!r} has no spatial map (output shape {list(shape)}); a position "
                "(@y,x) only applies to [C,H,W] layers"
            )
        y, x = position
        height, width = shape[1:]
        if not (0 <= y < height and 0 <= x < width):
            raise UnitError(
                f"position ({y}, {x}) is outside layer {layer!r}'s {height}x{width} map "
                f"(y in 0..{height - 1}, x in 0..{width - 1})"
            )


def inputs_grad(loss: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """d loss / d inputs without touching any parameter's ``.grad`` (autograd.grad computes only what is asked)."""
    (gradient,) = torch.autograd.grad(loss, inputs)
    return gradient
