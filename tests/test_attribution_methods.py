"""Method-specific checks: guided backprop on reused and functional ReLUs, RISE, prediction difference against
hand-computed cases, attention rollout and CAMs on vision transformers (torchvision and timm)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepscope as ds
from deepscope.attribution.base import MethodError
from deepscope.attribution.perturbation import ConditionalPatchSampler

# ----------------------------------------------------------------------------------------------------------
# guided backpropagation and deconvnet


class Reusing(nn.Module):
    """One in-place ReLU module used twice, a functional ReLU and an in-place tensor ReLU whose result is
    read from the input (not from the return value)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3)
        self.conv4 = nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.conv3(x)
        x.relu_()
        x = self.act(self.conv4(x))
        return self.fc(x.flatten(1))


class Separate(nn.Module):
    """The same network with one ReLU module per call (what Captum needs)."""

    def __init__(self, reusing: Reusing):
        super().__init__()
        self.reusing = reusing
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(4))

    def forward(self, x):
        r = self.reusing
        x = self.relus[0](r.conv1(x))
        x = self.relus[1](r.conv2(x))
        x = self.relus[2](r.conv3(x))
        x = self.relus[3](r.conv4(x))
        return r.fc(x.flatten(1))


@pytest.mark.parametrize(
    ("method", "peer"), [("guided_backprop", "GuidedBackprop"), ("deconvnet", "Deconvolution")]
)
def test_reused_functional_and_in_place_relus_are_all_modified(method, peer, unchanged):
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    reusing = Reusing().eval()
    x = torch.randn(2, 3, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = getattr(captum_attr, peer)(Separate(reusing)).attribute(x, target=[0, 2])
    with unchanged(reusing):
        ours = ds.attribute(reusing, x, method, target=[0, 2])
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(ours, ds.attribute(reusing, x, "saliency", target=[0, 2]))


def test_relu6_rules_by_hand():
    class Clipped(nn.Module):
        def forward(self, x):
            return (F.relu6(2 * x) * torch.tensor([1.0, -1.0, 2.0, -3.0])).sum(1, keepdim=True)

    x = torch.tensor([[1.0, 2.0, -1.0, 4.0]]).view(1, 4)  # 2x = 2 (inside), 4 (inside), -2 (below), 8 (above)
    model = nn.Sequential(nn.Flatten(), Clipped())
    x = x.view(1, 1, 2, 2)
    guided = ds.attribute(model, x, "guided_backprop", target=0).flatten()
    deconv = ds.attribute(model, x, "deconvnet", target=0).flatten()
    # d/dx = 2 * backward(relu6) of the weight: guided keeps positive weights where 0 < 2x < 6
    torch.testing.assert_close(guided, torch.tensor([2.0, 0.0, 0.0, 0.0]))
    # deconvnet rectifies the backward signal and ignores the forward mask
    torch.testing.assert_close(deconv, torch.tensor([2.0, 0.0, 4.0, 0.0]))


def test_every_reused_relu6_call_of_efficientnet_is_modified(efficientnet, photos):
    from deepscope.attribution.gradient import ReluRule, modified_relus

    calls = []
    handles = [
        m.register_forward_hook(lambda *_: calls.append(1))
        for m in efficientnet.module.modules()
        if isinstance(m, nn.ReLU6)
    ]
    state = ReluRule("guided")
    x = efficientnet.preprocess(photos["chelsea"]).requires_grad_()
    try:
        with modified_relus(state):
            efficientnet.module(x)
    finally:
        for handle in handles:
            handle.remove()
    assert state.count == len(calls) == 33  # 17 ReLU6 modules, most run two or three times


def test_a_model_without_relus_is_refused_not_explained_by_plain_gradients():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 6, 6))
    with pytest.raises(MethodError, match="made no ReLU call deepscope can intercept"):
        ds.attribute(model, torch.zeros(1, 3, 6, 6), "guided_backprop")


# ----------------------------------------------------------------------------------------------------------
# RISE


def test_rise_with_every_cell_kept_is_the_probability_everywhere(lenet):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:2])
    maps = ds.attribute(lenet, x, "rise", masks=5, p=1.0)
    probability = lenet.module(x).softmax(1).max(1).values.detach()
    torch.testing.assert_close(maps, probability.view(2, 1, 1, 1).expand_as(maps), rtol=1e-5, atol=1e-6)


def test_rise_is_the_mask_weighted_mean_score():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 12 * 12, 3))
    x = torch.randn(2, 2, 12, 12)
    method = ds.attribution.RISE(model, masks=7, cells=3, p=0.4, softmax=False, batch_size=5)
    maps = method.attribute(x, target=[1, 2])
    grids, shifts = method.grids(12, 12, x.device)
    masks = method.masks(grids, shifts, 12, 12)
    assert masks.shape == (7, 1, 12, 12) and masks.min() >= 0 and masks.max() <= 1
    expected = torch.zeros(2, 1, 12, 12)
    with torch.no_grad():
        for mask in masks:
            scores = model(x * mask)[[0, 1], [1, 2]]
            expected += scores.view(2, 1, 1, 1) * mask
    torch.testing.assert_close(maps, expected / (7 * 0.4), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# prediction difference analysis


def weight_of_evidence(p: float, q: float, train_size: int, classes: int) -> float:
    def log_odds(value: float) -> float:
        corrected = (value * train_size + 1) / (train_size + classes)
        return math.log2(corrected / (1 - corrected))

    return log_odds(p) - log_odds(q)


def test_prediction_difference_marginal_by_hand():
    torch.manual_seed(0)
    linear = nn.Linear(9, 3).double()
    model = nn.Sequential(nn.Flatten(), linear)
    x = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    data = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    train_size, k, target = 50, 2, 1

    def probability(image: torch.Tensor) -> float:
        with torch.no_grad():
            return float(torch.softmax(linear(image.flatten()), 0)[target])

    windows = [(top, left) for top in range(2) for left in range(2)]  # a 2x2 window sliding by 1 on 3x3
    evidence = {}
    for top, left in windows:
        replaced = []
        for sample in range(2):  # the first `samples` images of data
            image = x[0, 0].clone()
            image[top : top + k, left : left + k] = data[sample, 0, top : top + k, left : left + k]
            replaced.append(probability(image))
        evidence[(top, left)] = weight_of_evidence(
            probability(x[0, 0]), float(np.mean(replaced)), train_size, 3
        )
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            covering = [evidence[w] for w in windows if w[0] <= i < w[0] + k and w[1] <= j < w[1] + k]
            expected[i, j] = float(np.mean(covering))
    ours = ds.attribute(
        model,
        x,
        "prediction_difference",
        target=target,
        data=data,
        sampling="marginal",
        window=k,
        stride=1,
        samples=2,
        train_size=train_size,
        batch_size=3,
    )
    torch.testing.assert_close(ours[0, 0], expected)


def test_prediction_difference_conditional_by_hand():
    # Every reference image obeys center = mean of its 8 neighbors exactly, so each pixel's conditional
    # distribution given the others is a point: the sampler restores that relation. The model's logit is
    # a * (center - mean of neighbors): every window then scores 0 (probability 1/2), the input a * 0.3.
    generator = torch.Generator().manual_seed(0)
    data = (
        torch.rand(200, 1, 3, 3, generator=generator, dtype=torch.float64) * 10
    )  # room: samples are clipped
    neighbors = torch.ones(3, 3, dtype=torch.bool)
    neighbors[1, 1] = False
    data[:, 0, 1, 1] = data[:, 0][:, neighbors].mean(1)
    x = torch.tensor([[1.0, 2.0, 1.5], [2.5, 0.0, 1.0], [2.0, 1.5, 2.5]], dtype=torch.float64)
    x[1, 1] = x[neighbors].mean() + 0.3

    class Contrast(nn.Module):
        def forward(self, images):
            flat = images[:, 0]
            logit = 4 * (flat[:, 1, 1] - flat[:, neighbors].mean(1))
            return torch.stack([logit, torch.zeros_like(logit)], 1)

    ours = ds.attribute(
        Contrast(),
        x.view(1, 1, 3, 3),
        "prediction_difference",
        target=0,
        data=data,
        sampling="conditional",
        window=1,
        padding=1,
        stride=1,
        samples=3,
        train_size=1000,
        fit_patches=200,
    )
    expected = weight_of_evidence(1 / (1 + math.exp(-4 * 0.3)), 0.5, 1000, 2)
    torch.testing.assert_close(ours, torch.full_like(ours, expected), rtol=1e-4, atol=1e-6)


def test_conditional_sampler_is_the_gaussian_conditional():
    generator = torch.Generator().manual_seed(1)
    mixing = torch.randn(16, 16, generator=generator, dtype=torch.float64)
    data = (torch.randn(500, 16, generator=generator, dtype=torch.float64) @ mixing).view(500, 1, 4, 4)
    sampler = ConditionalPatchSampler(data, window=2, padding=1, patches=2000, seed=0)
    inner, outer, regression, factor = sampler.conditional(1, 1)
    cov = sampler.covariance[0].numpy()
    s_io, s_oo, s_ii = cov[np.ix_(inner, outer)], cov[np.ix_(outer, outer)], cov[np.ix_(inner, inner)]
    np.testing.assert_allclose(regression[0].numpy(), s_io @ np.linalg.inv(s_oo), rtol=1e-6, atol=1e-9)
    conditional = s_ii - s_io @ np.linalg.inv(s_oo) @ s_io.T
    np.testing.assert_allclose((factor[0] @ factor[0].T).numpy(), conditional, rtol=1e-5, atol=1e-8)
    # at the top-left corner the frame is shifted inside the image: the window sits at offset (0, 0)
    assert sampler.frame(0, 0, 4, 4) == (0, 0) and sampler.frame(2, 2, 4, 4) == (0, 0)


def test_prediction_difference_rejects_non_class_targets(lenet):
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(MethodError, match="explains a class probability"):
        ds.attribute(lenet, x, "prediction_difference", data=x, target=lambda output: output[:, 0])
    with pytest.raises(MethodError, match="first 10 images of data; data has 1"):
        ds.attribute(lenet, x, "prediction_difference", data=x, sampling="marginal")


# ----------------------------------------------------------------------------------------------------------
# transformers


@pytest.fixture(scope="module")
def vits():
    import timm
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.VisionTransformer(
        32, 8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    ).eval()
    nn.init.normal_(tv.heads.head.weight, std=0.5)  # torchvision starts the head at zero
    tm = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3, num_classes=10
    ).eval()
    return {"torchvision": tv, "timm": tm}


def reference_rollout(vit, x: torch.Tensor) -> torch.Tensor:
    """Rollout from attention weights read independently: torchvision's need_weights=True, timm's explicit
    softmax (fused attention off) read at attn_drop."""
    weights = []
    if hasattr(vit, "encoder"):
        handles = [
            layer.ln_1.register_forward_hook(
                lambda module, inputs, out, layer=layer: weights.append(
                    layer.self_attention(out, out, out, need_weights=True)[1]
                )
            )
            for layer in vit.encoder.layers
        ]
    else:
        for block in vit.blocks:
            block.attn.fused_attn = False
        handles = [
            b.attn.attn_drop.register_forward_hook(lambda m, i, o: weights.append(o.mean(1)))
            for b in vit.blocks
        ]
    try:
        with torch.no_grad():
            vit(x)
    finally:
        for handle in handles:
            handle.remove()
        for block in getattr(vit, "blocks", []):
            block.attn.fused_attn = True
    rollout = torch.eye(weights[0].shape[-1])
    for weight in weights:
        rollout = (0.5 * weight + 0.5 * torch.eye(weight.shape[-1])) @ rollout
    return rollout[:, 0, 1:].reshape(len(x), 1, 4, 4)


@pytest.mark.parametrize("kind", ["torchvision", "timm"])
def test_attention_rollout_matches_attention_read_independently(vits, kind, unchanged):
    vit = vits[kind]
    x = torch.randn(2, 3, 32, 32)
    with unchanged(vit):
        ours = ds.attribute(vit, x, "attention_rollout", upsample=False)
    torch.testing.assert_close(ours, reference_rollout(vit, x), rtol=1e-4, atol=1e-6)
    assert ds.attribute(vit, x, "attention_rollout").shape == (2, 1, 32, 32)


@pytest.mark.parametrize(
    ("kind", "layer"), [("torchvision", "encoder.layers.encoder_layer_2.ln_1"), ("timm", "blocks.2.norm1")]
)
@pytest.mark.parametrize("method", ["grad_cam", "layer_cam"])
def test_cams_on_vision_transformers_match_pytorch_grad_cam(vits, kind, layer, method):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    vit = vits[kind]
    x = torch.randn(2, 3, 32, 32)
    assert ds.attribution.default_layer(vit, x) == layer  # the input of the last attention

    def reshape(tensor):  # the reshape pytorch-grad-cam's ViT tutorial writes by hand
        return tensor[:, 1:, :].reshape(tensor.shape[0], 4, 4, tensor.shape[2]).permute(0, 3, 1, 2)

    peer = {"grad_cam": pgc.GradCAM, "layer_cam": pgc.LayerCAM}[method]
    with peer(vit, [vit.get_submodule(layer)], reshape_transform=reshape) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(4)])
    ours = ds.attribute(vit, x, method, target=[1, 4], relu=True)
    for mine, peer_map in zip(ours[:, 0].numpy(), theirs, strict=True):
        mine = (mine - mine.min()) / (mine.max() - mine.min())
        assert np.corrcoef(mine.ravel(), peer_map.ravel())[0, 1] >= 0.999


def test_a_zero_initialized_vit_head_has_no_default_layer():
    import torchvision

    vit = torchvision.models.VisionTransformer(16, 4, num_layers=1, num_heads=1, hidden_dim=4, mlp_dim=8)
    with pytest.raises(MethodError, match="zero-initialized"):
        ds.attribute(vit, torch.randn(1, 3, 16, 16), "grad_cam")
