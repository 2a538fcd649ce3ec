"""Scoped hooks: record layer activations (and their gradients) inside a ``with`` block, remove every hook on exit."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from deepscope.errors import DeepscopeError, LayerNotFoundError, suggestion
from deepscope.probe.hooks import hooks, layer_hooks
from deepscope.probe.layers import find_layers
from deepscope.zoo.vision_model import VisionModel, as_vision_model


class LayerTensors(Mapping[str, torch.Tensor]):
    """Layer name -> the tensor recorded there. A layer that ran more than once (a shared module) must be
    read with :meth:`all` so that no call is mistaken for another."""

    def __init__(self, kind: str, names: Sequence[str]):
        self._kind = kind
        self._calls: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def __getitem__(self, name: str) -> torch.Tensor:
        calls = self.all(name)
        if not calls:
            raise DeepscopeError(self._missing(name))
        if len(calls) > 1:
            raise DeepscopeError(
                f"layer {name!r} ran {len(calls)} times (a module reused in the forward); "
                f"read every call with .{self._kind}.all({name!r})"
            )
        return calls[0]

    def all(self, name: str) -> list[torch.Tensor]:
        """Every tensor recorded at ``name``, in call order."""
        if name not in self._calls:
            raise LayerNotFoundError(
                f"{name!r} was not captured.{suggestion(name, self._calls)} Captured layers: {', '.join(self._calls)}"
            )
        return self._calls[name]

    def __contains__(self, name: object) -> bool:
        return name in self._calls

    def __iter__(self) -> Iterator[str]:
        return iter(self._calls)

    def __len__(self) -> int:
        return len(self._calls)

    def _append(self, name: str, tensor: torch.Tensor) -> None:
        self._calls[name].append(tensor)

    def _clear(self) -> None:
        for calls in self._calls.values():
            calls.clear()

    def _missing(self, name: str) -> str:
        if self._kind == "gradients":
            return (
                f"no gradient reached layer {name!r}: run backward inside the capture block, with autograd "
                "enabled and an output that depends on this layer"
            )
        return f"layer {name!r} did not run: the forward pass was not called inside the capture block, or skips it"


class Recording:
    """What :func:`capture` saw: ``activations[name]`` and, when asked for, ``gradients[name]``."""

    def __init__(self, names: Sequence[str], gradients: bool):
        self.layers = list(names)
        self.activations = LayerTensors("activations", names)
        self.gradients = LayerTensors("gradients", names) if gradients else None

    def clear(self) -> None:
        """Forget what was recorded (e.g. between two forward passes in one block)."""
        self.activations._clear()
        if self.gradients is not None:
            self.gradients._clear()


@contextmanager
def capture(
    model: VisionModel | nn.Module,
    layers: str | Sequence[str],
    gradients: bool = False,
    detach: bool = True,
) -> Iterator[Recording]:
    """Record the outputs of ``layers`` (names or globs) during forward passes run inside the block.

    With ``gradients=True`` the gradient of whatever is backpropagated with respect to each output is recorded
    too. ``detach=False`` keeps activations attached to the autograd graph (for methods that differentiate
    with respect to them). Every hook is removed when the block exits, also on an exception.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> with ds.capture(vm, ["conv1", "fc3"]) as rec:
    ...     _ = vm(torch.zeros(1, 1, 28, 28))
    >>> rec.activations["conv1"].shape
    torch.Size([1, 6, 28, 28])
    """
    vm = as_vision_model(model)
    names = find_layers(vm, layers)
    recording = Recording(names, gradients)
    with hooks(vm.module) as hooked:

        def record(name: str, tensor: torch.Tensor) -> None:
            recording.activations._append(name, tensor.detach() if detach else tensor)
            if recording.gradients is not None and tensor.requires_grad:
                hooked.gradient(tensor, lambda grad: recording.gradients._append(name, grad))

        with layer_hooks(vm.module, names, record):
            yield recording
