"""The CAM family against pytorch-grad-cam and Captum, CAM's defining identity, default layers and errors.

pytorch-grad-cam returns maps ReLU'd at the layer's resolution, then upsampled bilinearly (OpenCV) and
min-max normalized per image; deepscope returns raw signed maps. The comparison asks deepscope for the same
convention (``relu=True`` rectifies before upsampling), normalizes it the same way and asks for a per-image
correlation >= 0.999.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import deepscope as ds
from deepscope.attribution.base import MethodError

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

PEERS = {
    "grad_cam": pgc.GradCAM,
    "grad_cam_pp": pgc.GradCAMPlusPlus,
    "layer_cam": pgc.LayerCAM,
    "score_cam": pgc.ScoreCAM,
}


def peer_maps(method: str, model, layer: str, x: torch.Tensor, targets: list[int], **kwargs) -> np.ndarray:
    with warnings.catch_warnings(), PEERS[method](model, [model.get_submodule(layer)], **kwargs) as cam:
        warnings.simplefilter("ignore")
        cam.batch_size = 64
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])


def correlations(ours: torch.Tensor, theirs: np.ndarray) -> list[float]:
    """Per-image correlation after the peer's min-max normalization."""
    found = []
    for mine, peer in zip(ours[:, 0].double().numpy(), theirs, strict=True):
        mine = (mine - mine.min()) / (mine.max() - mine.min() + 1e-12)
        found.append(float(np.corrcoef(mine.ravel(), peer.ravel())[0, 1]))
    return found


@pytest.fixture(scope="module")
def cases(resnet18, vgg11_bn, lenet):
    generator = torch.Generator().manual_seed(3)
    digits = ds.datasets.mnist5k("test")
    # pytorch-grad-cam's Grad-CAM++ adds 1e-6 to a denominator of squared gradients; a random-init resnet18
    # has layer4 gradients near 1e-3, where that constant changes the weights. Larger head weights (a
    # different random init) make the gradients large enough for the constant not to matter.
    # pytorch-grad-cam calls backward() (parameters get .grad), so the peers see copies of the session's models.
    resnet18, vgg11_bn, lenet_module = (
        copy.deepcopy(resnet18),
        copy.deepcopy(vgg11_bn),
        copy.deepcopy(lenet.module),
    )
    with torch.no_grad():
        resnet18.fc.weight.mul_(100)
    return {
        "resnet18": (resnet18, torch.randn(2, 3, 128, 128, generator=generator), [3, 812], "layer4"),
        "vgg11_bn": (vgg11_bn, torch.randn(2, 3, 64, 64, generator=generator), [7, 0], "features.20"),
        "lenet": (lenet_module, lenet.preprocess(digits.images[:2]), [int(digits.labels[0]), 4], "relu2"),
    }


@pytest.mark.parametrize("model_name", ["resnet18", "vgg11_bn", "lenet"])
@pytest.mark.parametrize("method", ["grad_cam", "grad_cam_pp", "layer_cam"])
def test_gradient_cams_correlate_with_pytorch_grad_cam(cases, unchanged, model_name, method):
    model, x, targets, layer = cases[model_name]
    with unchanged(model):
        ours = ds.attribute(model, x, method, target=targets, layer=layer, relu=True)
    theirs = peer_maps(method, model, layer, x, targets)
    assert min(correlations(ours, theirs)) >= 0.999


@pytest.mark.parametrize(("model_name", "layer"), [("resnet18", "layer1"), ("lenet", "conv2")])
def test_score_cam_correlates_with_pytorch_grad_cam(cases, monkeypatch, model_name, layer):
    # pytorch-grad-cam upsamples the masks with align_corners=True; the Score-CAM authors' code and deepscope
    # with align_corners=False. The softmax over channels amplifies that difference on a trained model's
    # peaked scores, so the peer's upsampling is aligned to compare the algorithm itself.
    monkeypatch.setattr(
        torch.nn,
        "UpsamplingBilinear2d",
        lambda size: torch.nn.Upsample(size=size, mode="bilinear", align_corners=False),
    )
    model, x, targets, _ = cases[model_name]
    x = x[:, :, :64, :64]
    ours = ds.attribute(model, x, "score_cam", target=targets, layer=layer, batch_size=40, relu=True)
    theirs = peer_maps("score_cam", model, layer, x, targets)
    assert min(correlations(ours, theirs)) >= 0.999


def test_grad_cam_and_guided_grad_cam_equal_captum(cases):
    captum_attr = pytest.importorskip("captum.attr")
    model, x, targets, layer = cases["resnet18"]
    module = model.get_submodule(layer)
    reference = captum_attr.LayerGradCam(model, module).attribute(x, target=targets)
    ours = ds.attribute(model, x, "grad_cam", target=targets, layer=layer, upsample=False)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6 * float(reference.detach().abs().max()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = captum_attr.GuidedGradCam(model, module).attribute(
            x, target=targets, interpolate_mode="bilinear"
        )
    ours = ds.attribute(model, x, "guided_grad_cam", target=targets, layer=layer)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6 * float(reference.detach().abs().max()))


def test_cam_mean_plus_bias_is_the_logit(resnet18):
    x = torch.randn(2, 3, 64, 64)
    maps = ds.attribute(resnet18, x, "cam", target=[5, 9], upsample=False)
    logits = resnet18(x).detach()
    expected = logits[[0, 1], [5, 9]] - resnet18.fc.bias.detach()[[5, 9]]
    torch.testing.assert_close(maps.mean((1, 2, 3)), expected, rtol=1e-4, atol=1e-5)
    # with a GAP + linear head, Grad-CAM is CAM divided by the number of positions
    grad_cam = ds.attribute(resnet18, x, "grad_cam", target=[5, 9], upsample=False)
    torch.testing.assert_close(grad_cam * maps[0, 0].numel(), maps, rtol=1e-4, atol=1e-5)


def test_default_layers_are_found_and_reported(resnet18, efficientnet, photos):
    method = ds.attribution.GradCAM(resnet18)
    assert method.layer is None
    method.attribute(torch.randn(1, 3, 64, 64))
    assert method.layer == "layer4"
    x = efficientnet.preprocess(photos["coffee"])
    assert ds.attribution.default_layer(efficientnet, x) == "_swish@1"
    explanation = ds.explain(efficientnet, x, ["cam", "grad_cam"])
    assert explanation.layers == {"cam": "_swish@1", "grad_cam": "_swish@1"}
    assert explanation["cam"].shape == (1, 1, 224, 224)


def test_a_reused_module_must_be_named_per_call(efficientnet, photos):
    x = efficientnet.preprocess(photos["coffee"])
    with pytest.raises(MethodError, match=r"layer '_swish' runs 2 times .* '_swish@1' for the last"):
        ds.attribute(efficientnet, x, "grad_cam", layer="_swish")
    stem = ds.attribute(efficientnet, x, "grad_cam", layer="_swish@0", upsample=False)
    assert stem.shape == (1, 1, 112, 112)


def test_layer_without_spatial_output_is_refused(resnet18, unchanged):
    with (
        unchanged(resnet18),
        pytest.raises(MethodError, match=r"layer 'fc' outputs shape \[1, 1000\], not a spatial"),
    ):
        ds.attribute(resnet18, torch.randn(1, 3, 64, 64), "grad_cam", layer="fc")
    with unchanged(resnet18), pytest.raises(MethodError, match="Spatial layers near the output: .*layer4"):
        ds.attribute(resnet18, torch.randn(1, 3, 64, 64), "grad_cam", layer="avgpool")


def test_cam_needs_a_global_average_pool_and_linear_head(lenet, vgg11_bn, unchanged):
    x = torch.zeros(1, 1, 28, 28)
    with unchanged(lenet.module), pytest.raises(MethodError, match="global-average-pool \\+ linear head"):
        ds.attribute(lenet, x, "cam")
    with unchanged(vgg11_bn), pytest.raises(MethodError, match="is not the spatial mean of layer"):
        ds.attribute(vgg11_bn, torch.randn(1, 3, 32, 32), "cam")
    convolutional = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(MethodError, match="has no nn.Linear"):
        ds.attribute(convolutional, torch.randn(1, 3, 8, 8), "cam")


def test_wrong_layer_names_suggest_close_ones(resnet18):
    with pytest.raises(ds.errors.LayerNotFoundError, match="Closest: layer4"):
        ds.attribute(resnet18, torch.randn(1, 3, 32, 32), "grad_cam", layer="layer5")


def test_in_place_changes_to_the_layer_output_are_caught(resnet18):
    # BasicBlock adds the identity into bn2's output in place: its value is no longer bn2's.
    with pytest.raises(MethodError, match="modified in place later in the forward"):
        ds.attribute(resnet18, torch.randn(1, 3, 64, 64), "grad_cam", layer="layer4.1.bn2")
