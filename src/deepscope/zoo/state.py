"""Leaving the user's model as found: scoped, reversible changes to train/eval mode.

The policy everywhere in deepscope: a model runs in eval mode for the duration of a call (batch norms use their
running statistics, dropout is off), and each submodule's own train/eval flag is restored afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

_LOCK = threading.Lock()
# submodule -> (blocks inside evaluation_mode that hold it, its own flag from before the first of them)
_HELD: dict[nn.Module, tuple[int, bool]] = {}


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode inside the block and restore each one's own flag afterwards.

    Used where deepscope must run the model without side effects on its buffers (batch-norm running
    statistics update in train mode) and the result must not depend on dropout. Blocks that overlap (nested,
    or in threads sharing the model, on the model or on parts of it) keep each submodule in eval mode until the
    last block holding it ends, which restores its flag from before the first.
    """
    subs = list(module.modules())
    with _LOCK:
        for sub in subs:
            count, flag = _HELD.get(sub, (0, sub.training))
            _HELD[sub] = (count + 1, flag)
            sub.training = False
    try:
        yield module
    finally:
        with _LOCK:
            for sub in subs:
                count, flag = _HELD.pop(sub)
                if count > 1:
                    _HELD[sub] = (count - 1, flag)
                else:
                    sub.training = flag
