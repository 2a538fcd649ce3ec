"""Scoped hooks: the one place where deepscope hooks a model.

:func:`hooks` opens a block inside which hooks are registered on a model's submodules (after or before a call) and
on tensors (their gradient); each acts on the forward passes of the thread that registered it only, so threads may
share a model, and every one is removed when the block exits, errors included. :func:`layer_hooks` builds on it
to hand the tensors of named layers (``NAME``, ``NAME@N``, ``NAME:input``, see :mod:`deepscope.probe.layers`) to a
callback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from deepscope.probe.layers import LayerAddress, split_address

AfterHook = Callable[[nn.Module, tuple, Any], None]
BeforeHook = Callable[[nn.Module, tuple], None]


def _in_this_thread(hook: Callable[..., Any]) -> Callable[..., Any]:
    """``hook`` acting only on calls from the thread that made it: hooks live on the module, which threads may
    share, and each caller's hooks must see its own forward pass, not another thread's running at the same
    time."""
    owner = threading.get_ident()

    def guarded(*args: Any) -> Any:
        if threading.get_ident() == owner:
            return hook(*args)
        return None

    return guarded


class Hooks:
    """The hooks of one :func:`hooks` block on ``module``. Submodules are named by their dotted path ('' is the
    root) or given as modules."""

    def __init__(self, module: nn.Module):
        self.module = module
        self._handles: list[RemovableHandle] = []

    def _submodule(self, target: str | nn.Module) -> nn.Module:
        return target if isinstance(target, nn.Module) else self.module.get_submodule(target)

    def after(self, target: str | nn.Module, hook: AfterHook) -> None:
        """``hook(module, inputs, output)`` after each call of ``target`` (its return value is ignored)."""

        def observe(module: nn.Module, inputs: tuple, output: Any) -> None:
            hook(module, inputs, output)

        self._handles.append(self._submodule(target).register_forward_hook(_in_this_thread(observe)))

    def before(self, target: str | nn.Module, hook: BeforeHook) -> None:
        """``hook(module, inputs)`` before each call of ``target`` (its return value is ignored)."""

        def observe(module: nn.Module, inputs: tuple) -> None:
            hook(module, inputs)

        self._handles.append(self._submodule(target).register_forward_pre_hook(_in_this_thread(observe)))

    def gradient(self, tensor: torch.Tensor, hook: Callable[[torch.Tensor], None]) -> None:
        """``hook(gradient)`` when the gradient of ``tensor`` is computed (a tensor belongs to one pass, so this
        needs no thread guard; on an accelerator autograd calls it from its own thread)."""

        def observe(gradient: torch.Tensor) -> None:
            hook(gradient)

        self._handles.append(tensor.register_hook(observe))

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


@contextmanager
def hooks(module: nn.Module) -> Iterator[Hooks]:
    """A block for hooks on ``module``: every hook registered through the :class:`Hooks` it yields is removed on
    exit, also when the block raises.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
    >>> seen = []
    >>> with hooks(net) as hooked:
    ...     hooked.after("0", lambda module, inputs, output: seen.append(tuple(output.shape)))
    ...     _ = net(torch.zeros(4, 2))
    >>> _ = net(torch.zeros(4, 2))  # after the block: no hook left
    >>> seen, len(net[0]._forward_hooks)
    ([(4, 3)], 0)
    """
    hooked = Hooks(module)
    try:
        yield hooked
    finally:
        hooked._remove()


@contextmanager
def layer_hooks(
    module: nn.Module,
    layers: Sequence[str | LayerAddress],
    record: Callable[[str, torch.Tensor], None],
) -> Iterator[None]:
    """Inside the block, ``record(name, tensor)`` receives, on every forward of ``module``, each layer's output (its
    first tensor), its input for ``NAME:input``, and for ``NAME@N`` only the N-th call of the module in that
    forward (counted from 0 at each call of ``module``). Names are passed back as given. ``capture``, the units'
    layer runner and the forward-only copy's fallback build on it.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> seen = []
    >>> with layer_hooks(vm.module, ["conv1", "fc3:input"], lambda name, t: seen.append((name, t.shape[1]))):
    ...     _ = vm(torch.zeros(1, 1, 28, 28))
    >>> seen
    [('conv1', 6), ('fc3:input', 84)]
    """
    wanted: dict[tuple[str, bool], list[tuple[str, int | None]]] = {}
    for layer in layers:
        address = layer if isinstance(layer, LayerAddress) else split_address(layer)
        wanted.setdefault((address.path, address.input), []).append((str(layer), address.call))
    calls: dict[tuple[str, bool], int] = {}

    def deliver(key: tuple[str, bool], value: Any) -> None:
        index = calls.get(key, 0)
        calls[key] = index + 1
        tensor = first_tensor(value)
        if tensor is None:
            return
        for name, call in wanted[key]:
            if call is None or call == index:
                record(name, tensor)

    with hooks(module) as hooked:
        if any(call is not None for entries in wanted.values() for _, call in entries):
            hooked.before("", lambda _, inputs: calls.clear())
        for path, is_input in wanted:
            key = (path, is_input)
            if is_input:
                hooked.before(path, lambda _, inputs, key=key: deliver(key, inputs))
            else:
                hooked.after(path, lambda _, inputs, output, key=key: deliver(key, output))
        yield


def first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a layer produced: the output itself, or the first tensor of a tuple/list output."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None
