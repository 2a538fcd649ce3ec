"""Leaving the user's model as found: scoped, reversible changes to train/eval mode."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

_LOCK = threading.Lock()
# module -> (blocks inside evaluation_mode, each submodule's own flag from before the first of them)
_ACTIVE: dict[nn.Module, tuple[int, list[tuple[nn.Module, bool]]]] = {}


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode inside the block and restore each one's own flag afterwards.

    Used where deepscope must run the model without side effects on its buffers (batch-norm running
    statistics update in train mode) and the result must not depend on dropout. Blocks on one module that
    overlap (nested, or in threads sharing the model) keep it in eval mode until the last one ends, which
    restores the flags from before the first.
    """
    with _LOCK:
        depth, flags = _ACTIVE.get(module, (0, []))
        if depth == 0:
            flags = [(sub, sub.training) for sub in module.modules()]
            module.eval()
        _ACTIVE[module] = (depth + 1, flags)
    try:
        yield module
    finally:
        with _LOCK:
            depth, flags = _ACTIVE.pop(module)
            if depth > 1:
                _ACTIVE[module] = (depth - 1, flags)
            else:
                for sub, training in flags:
                    sub.training = training
