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


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of many tiny ops: on a shared 2-core machine several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def _randomize_batch_norm(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Random running statistics and affine parameters, so that a random-init network is not positively
    homogeneous (with fresh batch norm, IG would equal input x gradient and hide mistakes)."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.BatchNorm2d):
                size = sub.num_features
                sub.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
                sub.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                sub.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                sub.bias.copy_(torch.rand(size, generator=generator) - 0.5)
    return module


@pytest.fixture(scope="session")
def resnet18() -> nn.Module:
    """Random-init torchvision resnet18 (eval mode, batch norm randomized)."""
    import torchvision

    torch.manual_seed(0)
    return _randomize_batch_norm(torchvision.models.resnet18().eval(), torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def vgg11_bn() -> nn.Module:
    """Random-init torchvision vgg11_bn (eval mode, batch norm randomized); use small inputs (>= 32 px)."""
    import torchvision

    torch.manual_seed(0)
    return _randomize_batch_norm(torchvision.models.vgg11_bn().eval(), torch.Generator().manual_seed(2))


class _Flattening(nn.Module):
    """Conv layers, then a head that flattens its [B,4,8,8] map with .view() (which refuses a channels-last map)
    or with .reshape() (which takes any layout)."""

    def __init__(self, view: bool):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)
        self.view = view

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.view(x.shape[0], -1) if self.view else x.reshape(x.shape[0], -1))


@pytest.fixture
def flattening() -> type[nn.Module]:
    """``flattening(view=True)``: a model that cannot take channels-last feature maps (same weights either way)."""
    return _Flattening
