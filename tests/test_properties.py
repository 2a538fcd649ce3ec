"""Property-based tests of the public API: generated shapes, dtypes, value ranges (NaN and infinity included),
targets and options. Every call returns finite maps of the documented shape or raises a DeepscopeError with a
message, and leaves the model as found."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import deepscope as ds
from deepscope.errors import DeepscopeError

CLASSES = 3
METHODS = [info.name for info in ds.methods()]


class Tiny(nn.Module):
    """Padded convolutions and an adaptive pool: any image of at least one pixel goes through."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, CLASSES)

    def forward(self, x):
        x = self.relu(self.bn(self.conv1(x)))
        return self.fc(self.pool(torch.relu(self.conv2(x))).flatten(1))


@pytest.fixture(scope="module")
def tiny() -> ds.VisionModel:
    return ds.VisionModel(Tiny().eval(), "tiny", ds.Preprocessing())


def special_values(draw, shape) -> torch.Tensor:
    values = torch.from_numpy(
        np.random.default_rng(draw(st.integers(0, 2**16))).normal(size=shape).astype(np.float32)
    )
    if values.numel() and draw(st.sampled_from([False] * 4 + [True])):
        flat = values.view(-1)
        flat[draw(st.integers(0, values.numel() - 1))] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf])
        )
    return values


# Mostly valid, so that maps are made as often as errors are checked; each bad case still comes up.
@st.composite
def inputs(draw):
    batch = draw(st.sampled_from([1, 2, 3, 1, 2, 0]))
    channels = draw(st.sampled_from([3] * 16 + [1, 4]))
    height = draw(st.sampled_from([5, 9, 12, 2, 1, 0]))
    width = draw(st.sampled_from([8, 11, 3, 1, 0]))
    values = special_values(draw, (batch, channels, height, width))
    kind = draw(st.sampled_from(["float32"] * 24 + ["float64", "uint8", "int64", "3d", "list", "array"]))
    if kind == "float64":
        return values.double()
    if kind == "uint8":
        return values.nan_to_num().clamp(0, 255).to(torch.uint8)
    if kind == "int64":
        return values.nan_to_num().to(torch.int64)
    if kind == "3d":
        return values[0] if batch else values.view(channels, height, width * 0)
    if kind == "list":
        return list(values)
    if kind == "array":
        return values.numpy()
    return values


targets = st.one_of(
    st.none(),
    st.none(),
    st.integers(0, CLASSES - 1),
    st.integers(-2, CLASSES + 1),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=2),
    st.lists(st.integers(-1, CLASSES), max_size=4),
)


@st.composite
def options(draw, method: str, size: tuple[int, int]):
    """The method's quick options, sometimes with an unknown option or a wrong value."""
    info = ds.attribution.method_info(method)
    chosen = dict(info.quick_options(size)) if min(size) > 0 else {}
    if method == "prediction_difference":
        chosen["data"] = torch.rand(4, 3, *size) if min(size) > 0 else torch.rand(4, 3, 4, 4)
    mischief = draw(st.sampled_from(["none"] * 6 + ["unknown", "wrong_value"]))
    if mischief == "unknown":
        chosen[draw(st.sampled_from(["step", "windows", "relu6", "x"]))] = 1
    elif mischief == "wrong_value" and info.options:
        option = draw(st.sampled_from(info.options))
        chosen[option.name] = draw(st.sampled_from([-1, 0, "three", 2.5, None, [1, 2]]))
    return chosen


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(data=st.data())
def test_attribute_returns_finite_maps_or_a_deepscope_error(tiny, data):
    method = data.draw(st.sampled_from(METHODS), label="method")
    x = data.draw(inputs(), label="inputs")
    target = data.draw(targets, label="target")
    size = tuple(x.shape[-2:]) if isinstance(x, torch.Tensor) and x.ndim == 4 else (0, 0)
    chosen = data.draw(options(method, size), label="options")
    before = _state(tiny.module)
    try:
        maps = ds.attribute(tiny, x, method, target=target, **chosen)
    except DeepscopeError as error:
        event(f"refused: {type(error).__name__}")
        assert str(error).strip(), f"{type(error).__name__} without a message"
    else:
        event("maps")
        batch, _, height, width = x.shape
        pixel = ds.attribution.method_info(method).space == "pixel"
        assert maps.shape == ((batch, 3, height, width) if pixel else (batch, 1, height, width))
        assert torch.isfinite(maps).all(), "a map holds NaN or infinity"
    assert _state(tiny.module) == before, "the model changed"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    x=inputs(), layer=st.sampled_from(["conv1", "relu", "fc", "fc:input", "conv9", "relu@1", "pool@0", ""])
)
def test_units_and_predictions_return_or_raise_a_deepscope_error(tiny, x, layer):
    before = _state(tiny.module)
    for call in (
        lambda: ds.units.activations(tiny, x, layer),
        lambda: tiny.predict(x, k=2),
        lambda: ds.metrics.deletion(tiny, x, torch.rand(*x.shape) if hasattr(x, "shape") else x, per_step=50),
    ):
        try:
            result = call()
        except DeepscopeError as error:
            assert str(error).strip()
        else:
            values = result[0] if isinstance(result, tuple) else getattr(result, "curve", result)
            assert torch.isfinite(values).all()
    assert _state(tiny.module) == before


def _state(module: nn.Module) -> tuple:
    return (
        [
            (name, sub.training, len(sub._forward_hooks), len(sub._forward_pre_hooks))
            for name, sub in module.named_modules()
        ],
        [(p.requires_grad, p.grad is None, float(p.detach().double().sum())) for p in module.parameters()],
        [float(b.double().sum()) for b in module.buffers()],
    )


def test_a_stabilizer_of_zero_is_refused_and_a_map_is_never_nan(tiny):
    """Found by the property test: lrp_zplus with stabilizer=0 returned a NaN map where contributions cancel."""
    with pytest.raises(ds.attribution.MethodError, match="stabilizer must be > 0"):
        ds.method("lrp_zplus", stabilizer=0.0)
    x = torch.randn(3, 3, 5, 8, generator=torch.Generator().manual_seed(4))
    assert torch.isfinite(ds.attribute(tiny, x, "lrp_zplus")).all()
