"""The gradient family and occlusion against Captum, on random-init resnet18 and vgg11_bn and the trained LeNet.

Everything is compared in float64, elementwise at rtol 1e-4 with an absolute floor of 1e-6 of the map's
largest value for elements that are zero up to roundoff. Our passes run multi-channel images channels-last
(faster convolution kernels, see ``VisionModel.in_fast_layout``) and Captum does not, so in float32 the two
differ by kernel roundoff: up to 6e-4 of the largest value on random-init resnet18, whose gradients cancel
heavily. Occlusion maps are differences of nearly equal scores, so even the same kernels composed into
differently sized batches differ by more than rtol 1e-4 in float32.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import deepscope as ds

captum_attr = pytest.importorskip("captum.attr")


def assert_equal_maps(ours: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-4) -> None:
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=rtol, atol=1e-6 * float(reference.detach().abs().max()))


@pytest.fixture(scope="module")
def cases(resnet18, vgg11_bn, lenet):
    """model name -> (module, inputs, explicit targets)."""
    generator = torch.Generator().manual_seed(0)
    digits = ds.datasets.mnist5k("test")
    cases = {
        "resnet18": (resnet18, torch.randn(2, 3, 48, 48, generator=generator), [3, 812]),
        "vgg11_bn": (vgg11_bn, torch.randn(2, 3, 32, 32, generator=generator), [7, 0]),
        "lenet": (lenet.module, lenet.preprocess(digits.images[:2]), [int(digits.labels[0]), 4]),
    }
    return {name: (copy.deepcopy(model).double(), x.double(), t) for name, (model, x, t) in cases.items()}


MODELS = ["resnet18", "vgg11_bn", "lenet"]


def captum(name: str, model: torch.nn.Module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "saliency": lambda x, t: captum_attr.Saliency(model).attribute(x, target=t, abs=False),
            "input_x_gradient": lambda x, t: captum_attr.InputXGradient(model).attribute(x, target=t),
            "guided_backprop": lambda x, t: captum_attr.GuidedBackprop(model).attribute(x, target=t),
            "deconvnet": lambda x, t: captum_attr.Deconvolution(model).attribute(x, target=t),
        }[name]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "guided_backprop", "deconvnet"])
def test_single_pass_gradient_methods_equal_captum(cases, model_name, method):
    model, x, targets = cases[model_name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = captum(method, model)(x, targets)
    assert_equal_maps(ds.attribute(model, x, method, target=targets), reference)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize(
    "rule", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
)
def test_integrated_gradients_equals_captum_for_each_rule(cases, model_name, rule):
    model, x, targets = cases[model_name]
    steps = 8
    reference = captum_attr.IntegratedGradients(model).attribute(
        x, target=targets, n_steps=steps, method=rule, internal_batch_size=8
    )
    if rule == "riemann_trapezoid":
        # Captum weights the trapezoid nodes 1/steps (summing to (steps-1)/steps); ours 1/(steps-1).
        reference = reference * steps / (steps - 1)
    ours = ds.attribute(
        model, x, "integrated_gradients", target=targets, steps=steps, rule=rule, batch_size=5
    )
    assert_equal_maps(ours, reference)


def test_integrated_gradients_with_a_baseline_tensor_equals_captum(cases):
    model, x, targets = cases["lenet"]
    baseline = torch.rand_like(x)
    reference = captum_attr.IntegratedGradients(model).attribute(x, baseline, target=targets, n_steps=12)
    ours = ds.attribute(model, x, "integrated_gradients", target=targets, steps=12, baseline=baseline)
    assert_equal_maps(ours, reference)


@pytest.mark.parametrize("model_name", MODELS)
def test_occlusion_equals_captum(cases, model_name):
    model, x, targets = cases[model_name]
    window, stride = {"resnet18": (12, 9), "vgg11_bn": (8, 6), "lenet": (6, 4)}[model_name]
    reference = captum_attr.Occlusion(model).attribute(
        x,
        sliding_window_shapes=(x.shape[1], window, window),
        strides=(x.shape[1], stride, stride),
        baselines=0.25,
        target=targets,
        perturbations_per_eval=8,
    )
    ours = ds.attribute(model, x, "occlusion", target=targets, window=window, stride=stride, fill=0.25)
    # Captum repeats the map over the channels it occluded together, and returns float32 maps.
    assert reference.dtype == torch.float32
    assert_equal_maps(ours.float(), reference[:, :1])
    assert torch.equal(reference[:, :1].expand_as(reference), reference)


def test_none_target_explains_the_top_class(cases):
    model, x, _ = cases["lenet"]
    top = model(x).argmax(1).tolist()
    assert torch.equal(ds.attribute(model, x, "saliency"), ds.attribute(model, x, "saliency", target=top))
    assert torch.equal(
        ds.attribute(model, x, "integrated_gradients", steps=4),
        ds.attribute(model, x, "integrated_gradients", steps=4, target=top),
    )
