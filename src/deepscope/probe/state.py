"""Leaving the user's model as found: scoped, reversible changes to train/eval mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode inside the block and restore each one's own flag afterwards.

    Used where deepscope must run the model without side effects on its buffers (batch-norm running
    statistics update in train mode) and the result must not depend on dropout.
    """
    flags = [(sub, sub.training) for sub in module.modules()]
    try:
        module.eval()
        yield module
    finally:
        for sub, training in flags:
            sub.training = training
