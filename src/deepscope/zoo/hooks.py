"""Scoped hooks on a module's layers, and how layers are addressed (``NAME`` for a module's output, ``NAME:input``
for its input): the one place where deepscope hooks layers. Hooks act on the forward passes of the thread that
set them only (:func:`in_this_thread`), so threads may share a model."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

INPUT_SUFFIX = ":input"  # "NAME:input" addresses the input of layer NAME instead of its output


def split_layer(name: str) -> tuple[str, bool]:
    """``("NAME", True)`` for ``"NAME:input"``, ``("NAME", False)`` for a plain layer name."""
    if name.endswith(INPUT_SUFFIX):
        return name[: -len(INPUT_SUFFIX)], True
    return name, False


def in_this_thread(hook: Callable[..., Any]) -> Callable[..., Any]:
    """``hook`` (a module or tensor hook) that acts only on calls from the thread that made it. Hooks live on
    the module, which threads may share: each caller's hooks must see its own forward pass, not another
    thread's running at the same time."""
    owner = threading.get_ident()

    def guarded(*args: Any) -> Any:
        if threading.get_ident() == owner:
            return hook(*args)
        return None

    return guarded


@contextmanager
def layer_hooks(
    module: nn.Module, layers: Sequence[str], record: Callable[[str, torch.Tensor], None]
) -> Iterator[None]:
    """Inside the block, ``record(name, tensor)`` receives each layer's output (its first tensor), or its input
    for ``NAME:input``, on every forward of ``module``; the hooks are removed on every exit path. ``capture``,
    the units' layer runner and :meth:`VisionModel.forward_only` (where no forward-only copy with taps can stand
    in for the model) build on it.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> seen = []
    >>> with layer_hooks(vm.module, ["conv1", "fc3:input"], lambda name, t: seen.append((name, t.shape[1]))):
    ...     _ = vm(torch.zeros(1, 1, 28, 28))
    >>> seen
    [('conv1', 6), ('fc3:input', 84)]
    """
    handles = []

    def deliver(name: str, value: Any) -> None:
        tensor = first_tensor(value)
        if tensor is not None:
            record(name, tensor)

    try:
        for name in layers:
            target, is_input = split_layer(name)
            sub = module.get_submodule(target)
            if is_input:
                hook = in_this_thread(lambda _, inputs, n=name: deliver(n, inputs))
                handles.append(sub.register_forward_pre_hook(hook))
            else:
                hook = in_this_thread(lambda _, inputs, output, n=name: deliver(n, output))
                handles.append(sub.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def first_tensor(output) -> torch.Tensor | None:
    """The tensor a layer produced: the output itself, or the first tensor of a tuple/list output."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None
