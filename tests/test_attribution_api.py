"""The heat-map API as a whole: every registered method leaves the model as found (also when it raises),
explain() shares one forward and one backward, sub-batching does not change results, bad input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepscope as ds
from deepscope.attribution.base import MethodError
from deepscope.attribution.targets import TargetError
from deepscope.errors import DeepscopeError, ImageError

SHARED = ["saliency", "input_x_gradient", "grad_cam", "grad_cam_pp", "layer_cam", "cam"]


class SmallNet(nn.Module):
    """Convolutions with batch norm, one ReLU module reused, a functional ReLU, dropout, GAP + linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.drop = nn.Dropout(0.2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.act(self.conv3(x))
        return self.fc(self.drop(self.pool(x).flatten(1)))


def tiny_vit() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        16, 4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=5
    )
    nn.init.normal_(vit.heads.head.weight, std=0.5)  # torchvision starts the head at zero
    return vit


def settings(name: str, x: torch.Tensor) -> dict:
    """The method's quick options for inputs like ``x``, and reference images for the method that needs them."""
    options = ds.attribution.method_info(name).quick_options(tuple(x.shape[-2:]))
    if name == "prediction_difference":
        options["data"] = torch.randn(6, *x.shape[1:], generator=torch.Generator().manual_seed(2))
    return options


def model_for(name: str) -> nn.Module:
    return tiny_vit() if ds.attribution.method_info(name).family == "transformer" else SmallNet()


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", [info.name for info in ds.methods()])
def test_every_method_leaves_the_model_as_found(name, training, unchanged):
    torch.manual_seed(0)
    model = model_for(name).train(training)
    model.fc.weight.requires_grad_(False) if hasattr(model, "fc") else None
    x = torch.randn(3, 3, 16, 16)
    with unchanged(model):
        result = ds.attribute(model, x, name, **settings(name, x))
    assert result.shape[0] == 3 and result.shape[-2:] == (16, 16)
    assert torch.isfinite(result).all()
    if ds.attribution.method_info(name).method.uses_target:
        with unchanged(model), pytest.raises(DeepscopeError):
            ds.attribute(
                model, x, name, target=99, **settings(name, x)
            )  # out of range, raised after a forward
    with unchanged(model), pytest.raises(RuntimeError):
        ds.attribute(model, x[:, :2], name, **settings(name, x[:, :2]))  # the model itself fails mid-forward
    assert torch._C._len_torch_function_stack() == 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", [info.name for info in ds.methods()])
def test_a_train_mode_model_gives_the_maps_of_the_same_model_in_eval_mode(name):
    # Batch norm with batch statistics and dropout would change the maps (and the batch-norm buffers):
    # every method runs the model in eval mode for the call.
    torch.manual_seed(0)
    model = model_for(name)
    x = torch.randn(3, 3, 16, 16)
    if hasattr(model, "bn1"):
        with torch.no_grad():  # running statistics unlike the batch's own, so that the two modes differ
            model.train()(x + 1.0)
        model.drop.p = 0.5
    options = settings(name, x)
    evaluated = ds.attribute(model.eval(), x, name, **options)
    model.train()
    trained = ds.attribute(model, x, name, **options)
    assert model.training and all(module.training for module in model.modules())
    torch.testing.assert_close(trained, evaluated, rtol=0, atol=0)
    if hasattr(model, "bn1"):
        with torch.no_grad():
            assert not torch.allclose(model(x), model.eval()(x))  # the modes do differ for this model


def test_explain_runs_one_forward_and_one_backward_for_the_shared_methods():
    torch.manual_seed(0)
    model = SmallNet().eval()
    calls = {"forward": [], "backward": 0}

    def count_forward(module, inputs, output):
        calls["forward"].append(inputs[0].shape[0])
        if output.requires_grad:
            output.register_hook(lambda grad: calls.__setitem__("backward", calls["backward"] + 1))

    x = torch.randn(4, 3, 16, 16)
    handle = model.register_forward_hook(count_forward)
    try:
        explanation = ds.explain(model, x, SHARED)
    finally:
        handle.remove()
    assert calls == {"forward": [1, 4], "backward": 1}  # the one-sample probe, then the shared pass
    assert explanation.shared == SHARED
    assert str(explanation.method_passes["shared"]) == "1 forward + 1 backward"
    assert str(explanation.passes) == "1.25 forward + 1 backward"
    for name in SHARED:
        torch.testing.assert_close(explanation[name], ds.attribute(model, x, name), rtol=1e-5, atol=1e-6)


def test_explain_runs_the_other_methods_on_their_own_with_their_settings():
    torch.manual_seed(0)
    model = SmallNet().eval()
    x = torch.randn(2, 3, 16, 16)
    integrated_gradients = ds.method("integrated_gradients", steps=3)
    occlusion = ds.method("occlusion", window=8, stride=8)
    explanation = ds.explain(model, x, ["saliency", integrated_gradients, occlusion])
    assert list(explanation) == ["saliency", "integrated_gradients", "occlusion"]
    assert (
        str(explanation.method_passes["integrated_gradients"]) == "4 forward + 3 backward"
    )  # + top-1 forward
    assert str(explanation.method_passes["occlusion"]) == "5 forward + 0 backward"
    assert "shared: saliency" in explanation.summary()
    torch.testing.assert_close(explanation["integrated_gradients"], integrated_gradients(model, x))
    torch.testing.assert_close(explanation["occlusion"], ds.attribute(model, x, occlusion))
    with pytest.raises(MethodError, match="listed twice"):
        ds.explain(model, x, ["saliency", ds.method("saliency")])


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("saliency", {}),
        ("grad_cam", {}),
        ("integrated_gradients", {"steps": 5}),
        ("smoothgrad", {"samples": 5}),
        ("occlusion", {"window": 6, "stride": 3}),
        ("rise", {"masks": 20}),
        ("score_cam", {}),
    ],
)
def test_sub_batches_do_not_change_the_maps(name, config):
    torch.manual_seed(0)
    model = SmallNet().eval()
    x = torch.randn(3, 3, 16, 16)
    whole = ds.attribute(model, x, name, batch_size=64, **config)
    pieces = ds.attribute(model, x, name, batch_size=2, **config)
    torch.testing.assert_close(pieces, whole, rtol=1e-4, atol=1e-5 * float(whole.abs().max()))


@pytest.mark.parametrize(
    "name", ["saliency", "integrated_gradients", "grad_cam", "guided_backprop", "occlusion"]
)
def test_models_that_refuse_channels_last_maps_get_the_same_maps(name, flattening):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    viewing = ds.as_vision_model(flattening(view=True))
    reshaping = ds.as_vision_model(flattening(view=False))
    config = settings(name, x)
    refused = ds.attribute(viewing, x, name, target=2, **config)
    assert not viewing.channels_last  # the first forward fell back to the standard layout
    taken = ds.attribute(reshaping, x, name, target=2, **config)
    assert reshaping.channels_last
    torch.testing.assert_close(taken, refused, rtol=1e-5, atol=1e-6 * float(refused.abs().max()))
    assert taken.is_contiguous()


def test_integrated_gradients_completeness_within_one_percent_at_64_steps(lenet, resnet18):
    digits = ds.datasets.mnist5k("test")
    cases = [(lenet.module, lenet.preprocess(digits.images[:4])), (resnet18, torch.randn(2, 3, 64, 64))]
    for model, x in cases:
        attributions = ds.attribute(model, x, "integrated_gradients", steps=64)
        with torch.no_grad():
            output = model(x)
            top = output.argmax(1)
            difference = output.gather(1, top[:, None])[:, 0] - model(torch.zeros_like(x))[:, top].diagonal()
        error = (attributions.flatten(1).sum(1) - difference).abs() / difference.abs()
        assert error.max() < 0.01, error


def test_smoothgrad_without_noise_is_the_gradient(lenet):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:2])
    smooth = ds.attribute(lenet, x, "smoothgrad", samples=4, noise_level=0.0)
    saliency = ds.attribute(lenet, x, "saliency")
    torch.testing.assert_close(smooth, saliency, rtol=1e-4, atol=1e-5 * float(saliency.abs().max()))


def test_smoothgrad_of_a_linear_model_is_its_weight():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.randn(2, 3, 2, 2)
    smooth = ds.attribute(model, x, "smoothgrad", target=1, samples=6, noise_level=0.5)
    torch.testing.assert_close(smooth, model[1].weight.detach()[1].view(1, 3, 2, 2).expand(2, -1, -1, -1))


def test_smoothgrad_noise_level_scales_with_each_image_range():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    quadratic = lambda output: output[:, 0] ** 2  # noqa: E731  (a callable target)
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    one = ds.attribute(model, x, "smoothgrad", target=quadratic, samples=8, noise_level=0.1, seed=3)
    scaled = ds.attribute(model, 10 * x, "smoothgrad", target=quadratic, samples=8, noise_level=0.1, seed=3)
    # the gradient of (w.x)^2 is 2 (w.x) w: linear in x, so with noise proportional to the range it scales too
    torch.testing.assert_close(scaled, 10 * one, rtol=1e-4, atol=1e-5)


def test_bad_inputs_get_clear_errors(lenet, unchanged):
    x = torch.zeros(2, 1, 28, 28)
    with unchanged(lenet.module):
        for name in ("saliency", "grad_cam", "integrated_gradients", "occlusion"):
            with pytest.raises(TargetError, match="target 10 out of range for a model with 10 classes"):
                ds.attribute(lenet, x, name, target=10)
        with pytest.raises(TargetError, match="3 targets for a batch of 2"):
            ds.attribute(lenet, x, "integrated_gradients", target=[1, 2, 3], steps=2)
        with pytest.raises(ImageError, match="mixed sizes"):
            ds.attribute(lenet, [torch.zeros(1, 28, 28), torch.zeros(1, 32, 32)], "saliency")
        with pytest.raises(ImageError, match="mixed sizes"):
            ds.explain(lenet, [torch.zeros(1, 28, 28), torch.zeros(1, 32, 32)], ["saliency"])
        with pytest.raises(MethodError, match="saliency has no option 'steps'"):
            ds.attribute(lenet, x, "saliency", steps=3)
        with pytest.raises(MethodError, match="Did you mean: steps"):
            ds.attribute(lenet, x, "integrated_gradients", stpes=3)
        with pytest.raises(MethodError, match="unknown integration rule 'simpson'"):
            ds.attribute(lenet, x, "integrated_gradients", rule="simpson")
        with pytest.raises(MethodError, match="larger than the window"):
            ds.attribute(lenet, x, "occlusion", window=4, stride=5)
        with pytest.raises(MethodError, match="pass data="):
            ds.attribute(lenet, x, "prediction_difference")
        with pytest.raises(MethodError, match="saw no attention"):
            ds.attribute(lenet, x, "attention_rollout")
        with pytest.raises(TargetError, match="one score per sample"):
            ds.attribute(lenet, x, "saliency", target=lambda output: output.sum())


def test_region_and_callable_targets_work_with_gradient_and_cam_methods():
    segmenter = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 8, 8)
    mask = torch.zeros(8, 8)
    mask[2:5, 2:5] = 1
    region = ds.targets.Region(1, mask)
    saliency = ds.attribute(segmenter, x, "saliency", target=region)
    # outside the receptive field of the region (3x3 then 1x1 convolutions) the gradient is zero
    assert saliency[:, :, 7, 7].abs().max() == 0 and saliency[:, :, 3, 3].abs().max() > 0
    grad_cam = ds.attribute(segmenter, x, "grad_cam", target=region, layer="1", batch_size=1)
    assert grad_cam.shape == (2, 1, 8, 8)
    rise = ds.attribute(segmenter, x, "rise", target=region, masks=10, softmax=False, batch_size=3)
    assert rise.shape == (2, 1, 8, 8)


class Overflowing(nn.Module):
    """A classifier whose scores overflow float32 for inputs of large values (weights of 1e38 in the head)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.weight.abs_()
            self.conv.bias.zero_()
            self.fc.weight.fill_(1e38)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


@pytest.mark.parametrize("name", [info.name for info in ds.methods() if info.family != "transformer"])
def test_non_finite_inputs_and_scores_are_errors_that_name_the_sample(name, unchanged):
    """NaN inputs gave NaN maps, and saliency even a finite map for NaN logits; both are errors naming samples."""
    model = Overflowing().eval()
    x = torch.rand(3, 3, 16, 16) * 1e-3
    options = ds.attribution.method_info(name).quick_options((16, 16))
    if name == "prediction_difference":
        options["data"] = torch.rand(6, 3, 16, 16) * 1e-3
    with unchanged(model):
        nan = x.clone()
        nan[1, 0, 2, 2] = float("nan")
        with pytest.raises(ImageError, match=r"sample 1 \(of 3\)"):
            ds.attribute(model, nan, name, **options)
        huge = x.clone()
        huge[2] += 100.0  # the head overflows for sample 2 only
        with pytest.raises(ds.errors.NonFiniteError, match="sample 2"):
            ds.attribute(model, huge, name, target=0, **options)
