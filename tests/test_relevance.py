"""LRP: equal to Zennit's composites, conservation, hand-computed rules, batch-norm folding, model state, errors."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm, SequentialMergeBatchNorm
from zennit.layer import Sum
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

import deepscope as ds
from deepscope.attribution.relevance import (
    AlphaBeta,
    Composite,
    Epsilon,
    Flat,
    Gamma,
    RelevanceError,
    WSquare,
    ZBox,
    ZPlus,
    input_bounds,
    lrp,
    trace_rules,
)
from deepscope.attribution.relevance.peers import zennit_composite

COMPOSITES = [info.name for info in ds.methods("relevance")]
IMAGENET = ds.Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=64, crop=(64, 64))


def test_registry_lists_the_composites():
    assert set(COMPOSITES) == {
        "lrp_epsilon",
        "lrp_zplus",
        "lrp_epsilon_plus",
        "lrp_epsilon_plus_flat",
        "lrp_epsilon_alpha2_beta1",
        "lrp_epsilon_alpha2_beta1_flat",
        "lrp_epsilon_gamma_box",
    }
    assert all(info.space == "pixel" and not info.needs_layer for info in ds.methods("relevance"))


# --- Zennit ----------------------------------------------------------------------------------------------


def test_every_registered_lrp_method_has_its_zennit_composite():
    low, high = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    for info in ds.methods("relevance"):
        assert zennit_composite(info.name, [SequentialMergeBatchNorm()], low, high).canonizers
    with pytest.raises(RelevanceError, match="no Zennit composite for 'saliency'"):
        zennit_composite("saliency")
    with pytest.raises(RelevanceError, match="needs the input bounds"):
        zennit_composite("lrp_epsilon_gamma_box")


def zennit_relevance(
    vm: ds.VisionModel, x: torch.Tensor, name: str, canonizers: list, target=None
) -> torch.Tensor:
    module = vm.module
    with torch.no_grad():
        output = module(x)
    target = output.argmax(1) if target is None else torch.as_tensor(target).expand(x.shape[0])
    low, high = input_bounds(vm, x)
    with Gradient(module, zennit_composite(name, canonizers, low, high)) as attributor:
        _, relevance = attributor(x, lambda out: F.one_hot(target, out.shape[1]) * out)
    return relevance


def randomize_batch_norms(module: nn.Module) -> nn.Module:
    """Random-init torchvision batch norms are identities; give them statistics so that folding matters."""
    generator = torch.Generator().manual_seed(0)
    for sub in module.modules():
        if isinstance(sub, nn.BatchNorm2d):
            n = sub.num_features
            sub.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            sub.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            sub.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            sub.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return module.eval()


def exact_twin(vm: ds.VisionModel, dtype: torch.dtype = torch.float64) -> ds.VisionModel:
    """The same function with each batch norm's eps moved into its running variance (in ``dtype``).

    Zennit's batch-norm canonizer leaves the merged batch norm dividing by sqrt(1 + eps), which scales every layer
    by 1 - eps/2 (a relative 5e-6 for torchvision's eps, 5e-4 for EfficientNet's); with eps = 0 the merge is exact,
    so Zennit computes the model's own function and the two implementations can be compared exactly.
    """
    module = copy.deepcopy(vm.module).to(dtype).eval()
    for sub in module.modules():
        if isinstance(sub, nn.BatchNorm2d):
            sub.running_var.add_(sub.eps)
            sub.eps = 0.0
    return vm.with_module(module)


def assert_same_relevance(ours: torch.Tensor, reference: torch.Tensor, rtol: float) -> None:
    """Equal to ``rtol``, elementwise, with an absolute floor of ``rtol`` times the map's largest magnitude
    (entries near zero are differences of large terms in either implementation)."""
    torch.testing.assert_close(ours, reference, rtol=rtol, atol=rtol * float(reference.abs().max()))


def _with_twins(module: nn.Module) -> tuple[ds.VisionModel, ds.VisionModel, ds.VisionModel]:
    vm = ds.as_vision_model(randomize_batch_norms(module), preprocessing=IMAGENET)
    return vm, exact_twin(vm, torch.float32), exact_twin(vm, torch.float64)


@pytest.fixture(scope="module")
def resnet18() -> tuple[ds.VisionModel, ds.VisionModel, ds.VisionModel]:
    torch.manual_seed(0)
    return _with_twins(torchvision.models.resnet18())


@pytest.fixture(scope="module")
def vgg11_bn() -> tuple[ds.VisionModel, ds.VisionModel, ds.VisionModel]:
    torch.manual_seed(0)
    return _with_twins(torchvision.models.vgg11_bn())


@pytest.fixture(scope="module")
def digits(lenet) -> torch.Tensor:
    return lenet.preprocess(ds.datasets.mnist5k().images[:4])


@pytest.fixture(scope="module")
def small_photos(photos) -> list:
    return [photos["coffee"], photos["astronaut"]]


@pytest.mark.parametrize("name", COMPOSITES)
def test_lenet_equals_zennit(lenet, digits, name):
    x = digits
    reference = zennit_relevance(lenet, x, name, [SequentialMergeBatchNorm()])
    assert_same_relevance(ds.attribute(lenet, x, name), reference, rtol=1e-5)
    # a class other than the top one
    reference = zennit_relevance(lenet, x, name, [SequentialMergeBatchNorm()], target=7)
    assert_same_relevance(ds.attribute(lenet, x, name, target=7), reference, rtol=1e-5)


TORCHVISION = [("resnet18", ResNetCanonizer), ("vgg11_bn", VGGCanonizer)]


@pytest.mark.parametrize("name", COMPOSITES)
@pytest.mark.parametrize(("model", "canonizer"), TORCHVISION)
def test_torchvision_equals_zennit(request, small_photos, name, model, canonizer):
    """Random-init torchvision models (batch norms with random statistics), a photo at 32x32, float32."""
    _, twin32, _ = request.getfixturevalue(model)
    x = twin32.preprocess(small_photos[:1])[..., 16:48, 16:48].contiguous()
    reference = zennit_relevance(twin32, x, name, [canonizer()])
    assert_same_relevance(ds.attribute(twin32, x, name), reference, rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPOSITES)
@pytest.mark.parametrize(("model", "canonizer"), TORCHVISION)
def test_torchvision_equals_zennit_to_float64_precision(request, small_photos, name, model, canonizer):
    """The same algorithm: equal to Zennit in float64 on the same function (eps moved into the variance, see
    exact_twin); and on the user's model as it is, in float32, within 1e-3 of that exact answer (Zennit's own
    merge is off by up to 2e-2 of the map's scale there for LRP-epsilon, from the eps it leaves in the merged
    batch norms)."""
    vm, _, twin64 = request.getfixturevalue(model)
    x = vm.preprocess(small_photos[:1])
    truth = zennit_relevance(twin64, x.double(), name, [canonizer()])
    assert_same_relevance(ds.attribute(twin64, x.double(), name), truth, rtol=1e-9)
    assert_same_relevance(ds.attribute(vm, x, name), truth.float(), rtol=1e-3)


# EfficientNet-Lite0 as Zennit can read it: Zennit merges batch norms by module order (but each convolution here
# has a padding child, so none is merged) and does not see the residual `x + inputs` in MBConvBlock.forward
# (gradient, not relevance, flows through it). The test re-expresses the same function for Zennit: batch norms
# merged by name (the pairs our engine found) and the skip connection as a Sum module.


def _mbconv_forward_with_sum(self, inputs, drop_connect_rate=None):
    x = inputs
    if self._block_args.expand_ratio != 1:
        x = self._swish(self._bn0(self._expand_conv(inputs)))
    x = self._swish(self._bn1(self._depthwise_conv(x)))
    x = self._bn2(self._project_conv(x))
    block = self._block_args
    if self.id_skip and block.stride == 1 and block.input_filters == block.output_filters:
        x = self.canonizer_sum(torch.stack([inputs, x], dim=-1))
    return x


def _residual_sum_canonizer() -> AttributeCanonizer:
    from efficientnet_lite_pytorch.model import MBConvBlock

    def attributes(name, module):
        if isinstance(module, MBConvBlock):
            return {"forward": _mbconv_forward_with_sum.__get__(module), "canonizer_sum": Sum()}
        return None

    return AttributeCanonizer(attributes)


@pytest.fixture(scope="module")
def efficientnet_twin(efficientnet) -> ds.VisionModel:
    return exact_twin(efficientnet)


@pytest.mark.slow
# one composite per code path: epsilon and the proportional sums; alpha-beta (z+ is alpha=1, beta=0) and flat
# behind padding; gamma and z-box behind padding, on signed inputs (the linear bottlenecks)
@pytest.mark.parametrize("name", ["lrp_epsilon", "lrp_epsilon_alpha2_beta1_flat", "lrp_epsilon_gamma_box"])
def test_efficientnet_equals_zennit_on_a_re_expressed_twin(efficientnet_twin, efficientnet, photos, name):
    twin = efficientnet_twin
    x = efficientnet.preprocess([photos["coffee"]]).double()
    records = trace_rules(twin, x, Composite(Epsilon(), Epsilon()))
    pairs = [((r.layer,), r.batch_norm) for r in records if r.batch_norm is not None]
    assert (
        len(records) == 50 and len(pairs) == 49
    )  # every convolution has its batch norm, the classifier none
    reference = zennit_relevance(twin, x, name, [NamedMergeBatchNorm(pairs), _residual_sum_canonizer()])
    assert_same_relevance(ds.attribute(twin, x, name), reference, rtol=1e-9)


# --- conservation ----------------------------------------------------------------------------------------


class StaticSamePaddingConv(nn.Conv2d):
    """Like EfficientNet's: a Conv2d subclass that pads with a ZeroPad2d child and calls F.conv2d itself."""

    def __init__(self, *args, pad=(1, 1, 1, 1), **kwargs):
        super().__init__(*args, bias=False, **kwargs)
        self.static_padding = nn.ZeroPad2d(pad)

    def forward(self, x):
        return F.conv2d(self.static_padding(x), self.weight, None, self.stride, 0, self.dilation, self.groups)


class Block(nn.Module):
    """Inverted residual block with one ReLU6 module used twice and the skip added in forward."""

    def __init__(self, channels: int):
        super().__init__()
        self.expand = nn.Conv2d(channels, 2 * channels, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(2 * channels)
        self.depthwise = StaticSamePaddingConv(2 * channels, 2 * channels, 3, groups=2 * channels)
        self.bn1 = nn.BatchNorm2d(2 * channels)
        self.project = nn.Conv2d(2 * channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act = nn.ReLU6()

    def forward(self, inputs):
        x = self.act(self.bn0(self.expand(inputs)))
        x = self.act(self.bn1(self.depthwise(x)))
        x = self.bn2(self.project(x))
        return x + inputs


class TinyResidualNet(nn.Module):
    """EfficientNet's quirks in small: functional padded convolutions, a shared activation, residual sums,
    depthwise convolutions, batch norms, average pooling."""

    def __init__(self):
        super().__init__()
        self.stem = StaticSamePaddingConv(3, 8, 3, stride=2, pad=(0, 1, 0, 1))
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5, bias=False)

    def forward(self, x):
        x = self.blocks(self.act(self.bn(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def without_biases(module: nn.Module) -> nn.Module:
    """The network with every bias zero, batch norms included (shift and running mean), so that LRP's
    conservation holds exactly: all input relevance sums to the explained logit."""
    module = copy.deepcopy(module)
    for sub in module.modules():
        if isinstance(sub, nn.BatchNorm2d):
            sub.running_mean.zero_()
            sub.bias.data.zero_()
        elif getattr(sub, "bias", None) is not None and isinstance(sub.bias, nn.Parameter):
            sub.bias.data.zero_()
    return module.eval()


def bias_free_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1, bias=False),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(8, 16, 3, padding=1, bias=False),
            relu2=nn.ReLU(inplace=True),
            pool2=nn.AvgPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16 * 4 * 4, 32, bias=False),
            relu3=nn.ReLU(),
            fc2=nn.Linear(32, 5, bias=False),
        )
    ).eval()


def bias_free_residual_net() -> nn.Module:
    torch.manual_seed(0)
    return without_biases(randomize_batch_norms(TinyResidualNet()))


CONSERVATION = [
    *((bias_free_cnn, name) for name in COMPOSITES),
    # z+ and alpha-beta lose relevance that reaches a neuron with no positive (negative) contribution, which
    # happens where a linear bottleneck feeds a sum; epsilon and gamma conserve it there too
    *((bias_free_residual_net, name) for name in ("lrp_epsilon", "lrp_epsilon_gamma_box")),
]


@pytest.mark.parametrize(
    ("factory", "name"), CONSERVATION, ids=[f"{f.__name__}-{n}" for f, n in CONSERVATION]
)
def test_relevance_is_conserved_without_biases(factory, name, unchanged):
    torch.manual_seed(0)
    module = factory()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        logits = module(x)
    with unchanged(module):
        relevance = ds.attribute(module, x, name, target=[0, 1, 2])
    explained = logits[torch.arange(3), torch.tensor([0, 1, 2])]
    torch.testing.assert_close(
        relevance.sum((1, 2, 3)), explained, rtol=0.01, atol=1e-4 * float(explained.abs().max())
    )


def test_conservation_through_residual_sums_on_efficientnet(efficientnet, photos, unchanged):
    bias_free = efficientnet.with_module(without_biases(efficientnet.module))
    x = efficientnet.preprocess([photos["coffee"]])
    with torch.no_grad():
        logit = bias_free.module(x).max(1).values
    rules = trace_rules(bias_free, x, Composite(Epsilon(), Epsilon()))
    assert [r.layer for r in rules][:2] == ["_conv_stem", "_blocks.0._depthwise_conv"]
    with unchanged(efficientnet.module):
        relevance = ds.attribute(bias_free, x, "lrp_epsilon")
    torch.testing.assert_close(relevance.sum((1, 2, 3)), logit, rtol=0.01, atol=0)


def test_residual_sum_splits_relevance_in_proportion():
    class Residual(nn.Module):
        def forward(self, x):
            return (F.linear(x, torch.eye(2)) + 3 * x).sum(1, keepdim=True)

    x = torch.tensor([[1.0, 2.0]])
    relevance = lrp(Residual(), x, Composite(Epsilon(0), Epsilon(0)), target=0)
    # z = x + 3x = 4x per entry, output 4*(1 + 2) = 12, relevance of each input its share: 4 and 8
    torch.testing.assert_close(relevance, torch.tensor([[4.0, 8.0]]))


# --- rules against hand-computed values ------------------------------------------------------------------


def _dense(weight: list[list[float]], bias: list[float] | None) -> nn.Module:
    layer = nn.Linear(len(weight[0]), len(weight), bias=bias is not None)
    layer.weight.data = torch.tensor(weight)
    if bias is not None:
        layer.bias.data = torch.tensor(bias)
    return nn.Sequential(nn.Flatten(), layer).eval()


W = [[1.0, -2.0, 0.5], [-1.0, 0.5, 2.0]]
B = [0.5, -0.25]
X = [1.0, 0.5, -2.0]


def _by_hand(rule: str, target: int, low=None, high=None) -> list[float]:
    """Relevance of each input of y = W x + b for output ``target`` (its relevance: y_target), from the
    formulas in Bach et al. 2015, Montavon et al. 2017 and 2019, Zennit's variants for signed inputs."""
    w, b, x = W[target], B[target], X
    y = sum(wi * xi for wi, xi in zip(w, x, strict=True)) + b
    pos = lambda v: max(v, 0.0)  # noqa: E731
    neg = lambda v: min(v, 0.0)  # noqa: E731
    if rule == "epsilon":
        return [xi * wi * y / y for xi, wi in zip(x, w, strict=True)]
    if rule in ("zplus", "alpha2beta1"):
        p = [pos(xi) * pos(wi) + neg(xi) * neg(wi) for xi, wi in zip(x, w, strict=True)]
        n = [pos(xi) * neg(wi) + neg(xi) * pos(wi) for xi, wi in zip(x, w, strict=True)]
        share_p = [pi * y / (sum(p) + pos(b)) for pi in p]
        if rule == "zplus":
            return share_p
        share_n = [ni * y / (sum(n) + neg(b)) for ni in n]
        return [2 * sp - 1 * sn for sp, sn in zip(share_p, share_n, strict=True)]
    if rule == "gamma":
        g = 0.25
        if y > 0:
            c = [
                pos(xi) * (wi + g * pos(wi)) + neg(xi) * (wi + g * neg(wi))
                for xi, wi in zip(x, w, strict=True)
            ]
            return [ci * y / (sum(c) + b + g * pos(b)) for ci in c]
        c = [pos(xi) * (wi + g * neg(wi)) + neg(xi) * (wi + g * pos(wi)) for xi, wi in zip(x, w, strict=True)]
        return [ci * y / (sum(c) + b + g * neg(b)) for ci in c]
    if rule == "flat":
        return [y / len(x)] * len(x)
    if rule == "wsquare":
        return [wi**2 * y / (sum(v**2 for v in w) + b**2) for wi in w]
    if rule == "zbox":
        c = [xi * wi - li * pos(wi) - hi * neg(wi) for xi, wi, li, hi in zip(x, w, low, high, strict=True)]
        return [ci * y / sum(c) for ci in c]
    raise ValueError(rule)


@pytest.mark.parametrize(
    ("rule", "ours"),
    [
        ("epsilon", Epsilon(0)),
        ("zplus", ZPlus(0)),
        ("alpha2beta1", AlphaBeta(2, 1, 0)),
        ("gamma", Gamma(0.25, 0)),
        ("flat", Flat(0)),
        ("wsquare", WSquare(0)),
        (
            "zbox",
            ZBox(low=torch.tensor([-1.0, -1.0, -3.0]), high=torch.tensor([2.0, 1.0, 3.0]), stabilizer=0),
        ),
    ],
)
@pytest.mark.parametrize("target", [0, 1])
def test_rules_match_hand_computed_values(rule, ours, target):
    x = torch.tensor([X])[:, :, None, None]
    relevance = lrp(_dense(W, B), x, Composite(conv=ours, linear=ours), target=target)
    expected = _by_hand(rule, target, [-1.0, -1.0, -3.0], [2.0, 1.0, 3.0])
    torch.testing.assert_close(relevance.flatten(), torch.tensor(expected), rtol=1e-6, atol=1e-6)


# --- batch-norm folding ----------------------------------------------------------------------------------


def test_folded_batch_norm_equals_a_hand_folded_network(unchanged):
    torch.manual_seed(0)
    model = randomize_batch_norms(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 64, 4),
        )
    )
    folded = copy.deepcopy(model)
    for conv_index, bn_index in ((0, 1), (3, 4)):
        conv, bn = folded[conv_index], folded[bn_index]
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        bias = conv.bias if conv.bias is not None else torch.zeros(8)
        conv.weight.data = conv.weight * scale[:, None, None, None]
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
        folded[bn_index] = nn.Identity()
    x = torch.randn(2, 3, 8, 8)
    records = trace_rules(model, x, Composite(Epsilon(), Epsilon()))
    assert [(r.layer, r.batch_norm) for r in records] == [("0", "1"), ("3", "4"), ("7", None)]
    for name in COMPOSITES:
        with unchanged(model):
            ours = ds.attribute(model, x, name, target=2)
        torch.testing.assert_close(ours, ds.attribute(folded, x, name, target=2), rtol=1e-4, atol=1e-6)


def test_batch_norm_without_a_linear_layer_before_it_passes_relevance():
    model = randomize_batch_norms(
        nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1, bias=False), nn.Flatten())
    )
    x = torch.randn(1, 3, 2, 2)
    records = trace_rules(model, x, Composite(Epsilon(), Epsilon()))
    assert [(r.layer, r.batch_norm) for r in records] == [("1", None)]
    relevance = lrp(model, x, Composite(Epsilon(0), Epsilon(0)), target=0)
    with torch.no_grad():
        assert torch.isclose(relevance.sum(), model(x)[0, 0])


# --- z-box bounds and the first layer --------------------------------------------------------------------


def test_z_box_bounds_follow_the_model_normalization(lenet, digits):
    x = digits[:1]
    low, high = input_bounds(lenet, x)
    mean, std = lenet.preprocessing.mean[0], lenet.preprocessing.std[0]
    assert torch.allclose(low, torch.full_like(x, -mean / std))
    assert torch.allclose(high, torch.full_like(x, (1 - mean) / std))
    default = ds.attribute(lenet, x, "lrp_epsilon_gamma_box")
    given = ds.attribute(lenet, x, "lrp_epsilon_gamma_box", low=-mean / std, high=(1 - mean) / std)
    assert torch.equal(default, given)
    wider = ds.attribute(lenet, x, "lrp_epsilon_gamma_box", low=-5.0, high=5.0)
    assert not torch.allclose(default, wider)


def test_first_layer_rule_goes_through_padding_and_reshaping():
    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.pad = nn.ZeroPad2d(1)
            self.conv = nn.Conv2d(3, 4, 3)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 2)

        def forward(self, x):
            x = self.conv2(F.relu(self.conv(self.pad(x))))
            return self.fc(x.view(x.shape[0], -1))

    torch.manual_seed(0)
    model = Padded().eval()
    x = torch.rand(2, 3, 8, 8)
    composite = Composite(conv=ZPlus(), linear=Epsilon(), first=Flat())
    assert [(r.layer, r.first) for r in trace_rules(model, x, composite)] == [
        ("conv", True),
        ("conv2", False),
        ("fc", False),
    ]
    relevance = lrp(model, x, composite, target=0)
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()


@pytest.mark.parametrize("rule", [Flat(), WSquare(), ZBox(low=-1.0, high=2.0)], ids=repr)
def test_explicit_padding_is_not_an_input(rule):
    """A first layer behind an explicit ZeroPad2d gets the relevance a convolution with the same built-in
    padding gets: padded entries are not inputs, so no relevance is lost to them."""
    torch.manual_seed(0)
    builtin = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    explicit = nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(3, 4, 3, bias=False))
    explicit[1].load_state_dict(builtin.state_dict())
    x = torch.rand(2, 3, 6, 6)
    whole = lambda out: out.sum((1, 2, 3))  # noqa: E731
    composite = Composite(conv=Epsilon(), linear=Epsilon(), first=rule)
    ours = lrp(explicit, x, composite, target=whole)
    torch.testing.assert_close(ours, lrp(builtin, x, composite, target=whole))
    with torch.no_grad():
        torch.testing.assert_close(ours.sum((1, 2, 3)), whole(builtin(x)), rtol=1e-5, atol=1e-5)


# --- targets, batching, devices --------------------------------------------------------------------------


def test_targets_and_batch_size(lenet):
    x = lenet.preprocess(ds.datasets.mnist5k().images[:5])
    full = ds.attribute(lenet, x, "lrp_epsilon_plus_flat", target=[1, 2, 3, 4, 5])
    chunked = ds.attribute(lenet, x, "lrp_epsilon_plus_flat", target=[1, 2, 3, 4, 5], batch_size=2)
    torch.testing.assert_close(full, chunked)
    by_callable = ds.attribute(lenet, x, "lrp_epsilon_plus_flat", target=lambda out: out[:, 3])
    torch.testing.assert_close(by_callable, ds.attribute(lenet, x, "lrp_epsilon_plus_flat", target=3))
    top = ds.attribute(lenet, x, "lrp_epsilon", batch_size=2)
    torch.testing.assert_close(top, ds.attribute(lenet, x, "lrp_epsilon", target=lenet(x).argmax(1)))


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[] if n == "lrp_epsilon_gamma_box" else pytest.mark.slow) for n in COMPOSITES],
)
def test_efficientnet_runs_every_composite(efficientnet, photos, unchanged, name):
    x = efficientnet.preprocess([photos["coffee"]])
    with unchanged(efficientnet.module):
        relevance = ds.attribute(efficientnet, x, name)
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()
    assert relevance.abs().sum() > 0


# --- model state and errors ------------------------------------------------------------------------------


def test_model_left_as_found_in_train_mode_and_with_its_own_hooks(unchanged):
    model = randomize_batch_norms(TinyResidualNet()).train()
    model.fc.register_forward_hook(lambda *args: None)
    x = torch.randn(2, 3, 16, 16)
    for name in COMPOSITES:
        with unchanged(model):
            ds.attribute(model, x, name)
    assert model.training and model.bn.training
    assert all(p.grad is None for p in model.parameters())


class Gated(nn.Module):
    """A squeeze-and-excitation gate: a product of two activations."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1), nn.Sigmoid())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(x)
        x = x * self.se(x)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (Gated(), r"no rule for `mul` in layer '<model>' \(Gated\): a product of two activations"),
        (
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LayerNorm(4 * 6 * 6), nn.Linear(4 * 6 * 6, 2)),
            r"no rule for `layer_norm` in layer '2' \(LayerNorm\)",
        ),
        (
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2), nn.Softmax(1)),
            r"no rule for `softmax` in layer '3' \(Softmax\): LRP explains a score; make the model return logits",
        ),
        (
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2), nn.Flatten()),
            r"no rule for `interpolate` in layer '1' \(Upsample\)",
        ),
    ],
    ids=["gate", "layer_norm", "softmax", "upsample"],
)
def test_unsupported_layers_name_the_layer_and_its_type(model, message, unchanged):
    x = torch.randn(1, 3, 8, 8)
    with unchanged(model), pytest.raises(RelevanceError, match=message):
        ds.attribute(model, x, "lrp_epsilon_gamma_box", target=0)
    assert torch._C._len_torch_function_stack() == 0  # the tracing mode is gone


def test_bad_settings_are_clear(lenet, digits):
    x = digits[:1]
    with pytest.raises(ds.attribution.MethodError, match="lrp_epsilon has no option 'gamma'"):
        ds.attribute(lenet, x, "lrp_epsilon", gamma=0.5)
    with pytest.raises(ds.attribution.MethodError, match="lrp_epsilon reads no layer, so it takes none"):
        ds.attribute(lenet, x, "lrp_epsilon", layer="conv1")
    with pytest.raises(
        ds.errors.SettingTypeError, match=r"option layers must be Mapping\[str, Rule\] \| None"
    ):
        ds.attribute(lenet, x, "lrp_epsilon", layers={"conv1": "flat"})
    with pytest.raises(ds.attribution.MethodError, match="give both low and high, or neither"):
        ds.method("lrp_epsilon_gamma_box", low=0.0)
    with pytest.raises(ds.errors.LayerNotFoundError, match="conv3"):
        ds.attribute(lenet, x, "lrp_epsilon", layers={"conv3": Flat()})
    with pytest.raises(ds.errors.SettingError, match="alpha - beta must be 1"):
        AlphaBeta(3, 1)
    with pytest.raises(ds.errors.SettingError, match="low must not exceed high"):
        ds.attribute(lenet, x, "lrp_epsilon_gamma_box", low=1.0, high=-1.0)
    with pytest.raises(ds.attribution.targets.TargetError, match="out of range"):
        ds.attribute(lenet, x, "lrp_epsilon", target=10)
    with pytest.raises(
        RelevanceError, match=r"ZBox\(low=None, high=None, stabilizer=1e-06\) at layer .conv2. has no bounds"
    ):
        ds.attribute(lenet, x, "lrp_epsilon", layers={"conv2": ZBox()})
    no_first = nn.Sequential(nn.ReLU(), nn.Conv2d(1, 2, 3), nn.Flatten()).eval()
    with pytest.raises(RelevanceError, match="no convolution or dense layer takes the model input directly"):
        ds.attribute(no_first, torch.randn(1, 1, 5, 5), "lrp_epsilon_plus_flat", target=0)


def test_layer_overrides_by_glob(lenet, digits):
    x = digits[:2]
    method = ds.attribution.method_info("lrp_epsilon").method(
        lenet, layers={"fc*": ZPlus(), "conv1": WSquare()}
    )
    rules = {r.layer: type(r.rule).__name__ for r in method.rules(x)}
    assert rules == {"conv1": "WSquare", "conv2": "Epsilon", "fc1": "ZPlus", "fc2": "ZPlus", "fc3": "ZPlus"}
    custom = lrp(lenet, x, Composite(conv=Epsilon(), linear=ZPlus(), first=WSquare()))
    torch.testing.assert_close(method.attribute(x), custom)


# --- CUDA (skipped where there is none) ------------------------------------------------------------------


@pytest.fixture
def exact_cuda_float32():
    """Full float32 on the GPU (no TF32 convolutions or products) inside the test, the flags restored after."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", COMPOSITES)
def test_cuda_equals_cpu_and_zennit(
    name, resnet18, efficientnet, small_photos, unchanged, exact_cuda_float32
):
    cuda = torch.device("cuda")
    vm, twin32, _ = resnet18
    x = vm.preprocess(small_photos)
    gpu = vm.with_module(copy.deepcopy(vm.module).to(cuda))
    with unchanged(gpu.module):
        ours = ds.attribute(gpu, x.to(cuda), name)
    assert ours.device.type == "cuda"
    assert_same_relevance(ours.cpu(), ds.attribute(vm, x, name), rtol=1e-3)
    twin = twin32.with_module(copy.deepcopy(twin32.module).to(cuda))
    reference = zennit_relevance(twin, x.to(cuda), name, [ResNetCanonizer()])
    assert_same_relevance(ds.attribute(twin, x.to(cuda), name), reference, rtol=1e-3)
    x = efficientnet.preprocess(small_photos[:1])
    gpu = efficientnet.with_module(copy.deepcopy(efficientnet.module).to(cuda))
    assert_same_relevance(
        ds.attribute(gpu, x.to(cuda), name).cpu(), ds.attribute(efficientnet, x, name), rtol=1e-3
    )
