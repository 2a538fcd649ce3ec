"""Shared fixtures: the bundled models, tiny random models, and a check that a call leaves a model as found."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

import deepscope as ds

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)
GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def model_state(module: nn.Module) -> dict:
    """Everything deepscope promises not to change: modes, hooks, requires_grad, grads, parameter and
    buffer values, and the module tree itself."""
    import torch.nn.modules.module as module_globals

    digest = hashlib.sha256()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {
        "modules": [(name, type(sub).__name__, sub.training) for name, sub in module.named_modules()],
        "hooks": [
            (name, attribute, len(getattr(sub, attribute, {})))
            for name, sub in module.named_modules()
            for attribute in HOOK_DICTS
        ],
        "global_hooks": [len(getattr(module_globals, attribute, {})) for attribute in GLOBAL_HOOKS],
        "requires_grad": [(name, p.requires_grad) for name, p in module.named_parameters()],
        "grads": [(name, p.grad is None) for name, p in module.named_parameters()],
        "values": digest.hexdigest(),
    }


@contextmanager
def _unchanged(module: nn.Module) -> Iterator[None]:
    before = model_state(module)
    yield
    after = model_state(module)
    for key in before:
        assert after[key] == before[key], f"the call changed the model's {key}"


@pytest.fixture
def unchanged() -> Callable:
    """``with unchanged(module): ...`` fails if the block changes the module's state, exceptions included."""
    return _unchanged


@pytest.fixture(scope="session")
def lenet() -> ds.VisionModel:
    return ds.load_model("zoo:lenet_mnist")


@pytest.fixture(scope="session")
def efficientnet() -> ds.VisionModel:
    return ds.load_model("zoo:efficientnet_lite0")


@pytest.fixture(scope="session")
def photos() -> dict:
    return ds.samples()


@pytest.fixture
def seeded() -> None:
    torch.manual_seed(0)
