"""The forward-only copy (deepscope.zoo.inference): the same function as the model, less work, the model untouched."""

import copy
import warnings

import pytest
import torch
from torch import fx, nn

import deepscope as ds
from deepscope.errors import DeepscopeError
from deepscope.probe import inference
from deepscope.probe.hooks import layer_hooks
from deepscope.probe.inference import fold_for_inference, forward_only


def modules_of(graph_module: fx.GraphModule) -> list[type]:
    return [
        type(graph_module.get_submodule(node.target))
        for node in graph_module.graph.nodes
        if node.op == "call_module"
    ]


def test_efficientnet_folds_every_batch_norm_and_depthwise_padding(efficientnet, unchanged):
    module = efficientnet.module
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with unchanged(module), torch.inference_mode():
        folded = fold_for_inference(module)
        expected, got = module(x), folded(x)
    kinds = modules_of(folded)
    assert nn.BatchNorm2d not in kinds and nn.ReLU6 not in kinds
    # what stays: the stem's uneven padding in front of a dense convolution (cheaper than a 4x4 kernel)
    assert kinds.count(nn.ZeroPad2d) == 1
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert sum(p.numel() for p in module.parameters()) == sum(
        p.numel() for p in efficientnet.module.parameters()
    )


def test_folding_is_exact_in_float64_on_a_hand_built_network():
    class SamePadded(nn.Conv2d):
        """A Conv2d subclass with its padding module in front, as TensorFlow ports write 'same' convolutions."""

        def __init__(self, *args, padding: tuple[int, int, int, int], **kwargs):
            super().__init__(*args, **kwargs)
            self.static_padding = nn.ZeroPad2d(padding)

        def forward(self, x):
            return nn.functional.conv2d(
                self.static_padding(x), self.weight, self.bias, self.stride, 0, 1, self.groups
            )

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=True)
            self.stem_norm = nn.BatchNorm2d(8)
            self.depthwise = SamePadded(8, 8, 3, stride=2, groups=8, bias=False, padding=(0, 1, 0, 1))
            self.depthwise_norm = nn.BatchNorm2d(8)
            self.wide = SamePadded(8, 8, 5, groups=8, bias=False, padding=(2, 1, 1, 2))  # uneven both ways
            self.skip_conv = nn.Conv2d(8, 8, 1)
            self.skip_norm = nn.BatchNorm2d(8)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.stem_norm(self.stem(x)))
            x = nn.functional.relu6(self.depthwise_norm(self.depthwise(x)))
            x = self.wide(x)
            y = self.skip_conv(x)
            x = self.skip_norm(y) + y  # the conv output is used twice: its norm must not be folded
            return self.head(x.mean((2, 3)))

    torch.manual_seed(0)
    net = Net().double()
    for norm in (net.stem_norm, net.depthwise_norm, net.skip_norm):
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
    net.eval()
    folded = fold_for_inference(net)
    kinds = modules_of(folded)
    assert kinds.count(nn.BatchNorm2d) == 1  # the skip connection's
    assert nn.ZeroPad2d not in kinds
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(folded(x), net(x), rtol=1e-12, atol=1e-12)


def test_an_uneven_padding_before_a_computed_kernel_stays_a_padding():
    class Computed(nn.Module):
        def __init__(self):
            super().__init__()
            self.pad = nn.ZeroPad2d((0, 1, 0, 1))
            self.weight = nn.Parameter(torch.randn(4, 1, 3, 3))
            self.norm = nn.BatchNorm2d(4)

        def forward(self, x):
            # the kernel is computed in the forward (as a weight parametrisation does), not a tensor of the model
            return self.norm(nn.functional.conv2d(self.pad(x), self.weight * 2.0, None, 2, 0, 1, 4))

    # nothing folds (the norm follows a computed kernel too), so the model runs as it is
    assert fold_for_inference(Computed().eval()) is None


def test_models_without_anything_to_fold_or_untraceable_run_as_they_are():
    class ValueBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3)

        def forward(self, x):
            if x.sum() > 0:  # control flow on a value: fx cannot trace it
                x = -x
            return self.norm(self.conv(x)).flatten(1)

    plain = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten()).eval()
    assert fold_for_inference(plain) is None  # nothing to fold
    assert fold_for_inference(ValueBranch().eval()) is None


def test_lenet_pools_by_pairwise_maxima_exactly(lenet):
    folded = fold_for_inference(lenet.module)
    assert nn.MaxPool2d not in modules_of(folded)
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:16])
    x[0, 0, 3, 3] = float("nan")  # NaN goes through a max as it does through the pooling kernel
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), lenet.module(x), rtol=0, atol=0, equal_nan=True)


def test_forward_only_uses_the_copy_only_where_it_may_and_follows_the_weights(efficientnet, monkeypatch):
    vm = ds.VisionModel(copy.deepcopy(efficientnet.module), "lite0")  # a module of its own: no copies yet
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    folds = []
    original = inference.fold_for_inference
    monkeypatch.setattr(
        "deepscope.probe.inference.fold_for_inference",
        lambda m, layers: folds.append(1) or original(m, layers),
    )
    with torch.inference_mode():
        expected = vm.module(x)
        torch.testing.assert_close(forward_only(vm, x), expected, rtol=1e-4, atol=1e-4)
        forward_only(vm, x)
        assert len(folds) == 1  # made once, kept while the parameters stay as they are
    classifier = vm.module._fc
    saved = classifier.bias.detach().clone()
    try:
        with torch.no_grad():
            classifier.bias.add_(1.0)  # an in-place change of a parameter makes a new copy
        with torch.inference_mode():
            torch.testing.assert_close(forward_only(vm, x), expected + 1.0, rtol=1e-4, atol=1e-4)
        assert len(folds) == 2
        # a hook on the model, or train mode, must see the model's own forward: no copy is made or used
        seen = []
        handle = classifier.register_forward_hook(lambda *args: seen.append(1))
        with torch.inference_mode():
            forward_only(vm, x)
        handle.remove()
        assert seen == [1] and len(folds) == 2
        vm.module.train()
        with torch.inference_mode():
            forward_only(vm, x)
        assert len(folds) == 2
    finally:
        vm.module.eval()
        with torch.no_grad():
            classifier.bias.copy_(saved)


def test_a_copy_follows_modules_swapped_or_reconfigured_on_the_model():
    """Before, the copy followed the parameters only: a ReLU swapped for a Tanh (then .eval()), or a pooling
    kernel changed, went on running the old model's function."""
    import torchvision

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.factor, self.act = 2.0, torch.relu

        def forward(self, x):
            return self.act(x) * self.factor

    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=10)
    module.layer4[1].relu = Scaled()
    module.eval()
    vm = ds.as_vision_model(module)
    x = torch.randn(2, 3, 64, 64)
    changes = [
        lambda: setattr(module.layer4[0], "relu", nn.Tanh().eval()),
        lambda: setattr(module.maxpool, "kernel_size", 5),
        lambda: setattr(module.layer4[1].relu, "factor", 3.0),
        lambda: setattr(module.layer4[1].relu, "act", torch.sigmoid),
    ]
    with torch.inference_mode():
        for change in changes:
            before = forward_only(vm, x)
            change()
            after = forward_only(vm, x)
            assert not torch.allclose(after, before)
            torch.testing.assert_close(after, module(x), rtol=1e-4, atol=1e-4)


def test_tracing_leaves_side_effects_of_the_model_code_on_a_copy(vgg11_bn):
    class Counting(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, []

        def forward(self, x):
            self.calls.append(x.shape)
            return self.inner(x)

    counting = Counting(vgg11_bn).eval()
    with torch.inference_mode():
        forward_only(ds.VisionModel(counting, "counted"), torch.randn(2, 3, 64, 64))
    # the model ran twice (the check of the copy on one image, then not again: the copy ran the batch)
    assert counting.calls == [torch.Size([1, 3, 64, 64])]


def test_a_copy_that_computes_something_else_is_not_used(efficientnet, monkeypatch):
    original = inference.fold_for_inference

    def broken(module, layers):
        folded = original(module, layers)
        folded._folded_0_bias.add_(1.0)
        return folded

    monkeypatch.setattr("deepscope.probe.inference.fold_for_inference", broken)
    vm = ds.VisionModel(copy.deepcopy(efficientnet.module), "lite0")  # a module of its own: no copies yet
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="computes something else"):
        got = forward_only(vm, x)
    with torch.inference_mode():
        torch.testing.assert_close(got, efficientnet.module(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.inference_mode():
            forward_only(vm, x)  # decided once per state of the parameters


def test_outputs_are_compared_by_structure_and_within_rounding():
    from collections import OrderedDict, namedtuple

    from deepscope.probe.inference import _same_outputs

    Pair = namedtuple("Pair", "logits index")
    x = torch.linspace(-10, 10, 12).reshape(3, 4)
    original = {"out": Pair(x, torch.arange(3)), "extra": [x * 2, "name"]}
    assert _same_outputs({"out": Pair(x + 1e-4, torch.arange(3)), "extra": [x * 2, "name"]}, original)
    assert not _same_outputs({"out": Pair(x + 0.1, torch.arange(3)), "extra": [x * 2, "name"]}, original)
    assert not _same_outputs({"out": Pair(x, torch.arange(3) + 1), "extra": [x * 2, "name"]}, original)
    assert not _same_outputs(
        {"out": (x, torch.arange(3)), "extra": [x * 2, "name"]}, original
    )  # not the tuple
    assert not _same_outputs(
        {"extra": [x * 2, "name"], "out": Pair(x, torch.arange(3))}, original
    )  # key order
    assert not _same_outputs({"out": Pair(x, torch.arange(3)), "extra": [x * 2]}, original)
    assert not _same_outputs(OrderedDict(original), original)
    assert not _same_outputs(x[:2], x) and not _same_outputs([x], x)


# --------------------------------------------------------------------------------------------------------------
# recording layers in the copy


def recorded_by_hooks(module: nn.Module, layers: list[str], x: torch.Tensor) -> tuple:
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with layer_hooks(module, layers, lambda name, t: seen[name].append(t.clone())):
        output = module(x)
    return output, seen


def recorded_by_taps(folded: fx.GraphModule, layers: list[str], x: torch.Tensor) -> tuple:
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with folded.get_submodule(inference.TAPS).recording(lambda name, t: seen[name].append(t.clone())):
        return folded(x), seen


def test_taps_in_the_copy_see_what_hooks_on_the_model_see(efficientnet, unchanged):
    module = efficientnet.module
    # a block (traced through), a convolution whose batch norm would otherwise fold into it, an input
    layers = ["_blocks.3", "_conv_stem", "_blocks.10._project_conv", "_fc:input", "_conv_head"]
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with unchanged(module), torch.inference_mode():
        folded = fold_for_inference(module, layers)
        expected, hooked = recorded_by_hooks(module, layers, x)
        got, tapped = recorded_by_taps(folded, layers, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    for name in layers:
        assert len(tapped[name]) == 1
        want = hooked[name][0]
        torch.testing.assert_close(tapped[name][0], want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    # the recorded convolutions keep their batch norms; every other one is folded
    kinds = modules_of(folded)
    assert kinds.count(nn.BatchNorm2d) == 3 and kinds.count(inference.Taps) == len(layers)


def test_lenet_taps_are_exact(lenet):
    layers = ["fc3:input", "conv1", "conv2", "fc1", "fc2", "fc3"]
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:32])
    with torch.inference_mode():
        expected, hooked = recorded_by_hooks(lenet.module, layers, x)
        got, tapped = recorded_by_taps(fold_for_inference(lenet.module, layers), layers, x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for name in layers:
        torch.testing.assert_close(tapped[name], hooked[name], rtol=0, atol=0)


def test_layers_the_trace_cannot_tap_once_mean_no_copy():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm, self.act = nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3), nn.ReLU()
            self.attention = nn.MultiheadAttention(3, 1, batch_first=True)

        def forward(self, x):
            x = self.act(self.norm(self.conv(x)))
            x = self.act(x)  # one module called twice
            tokens = x.flatten(2).transpose(1, 2)
            return self.attention(tokens, tokens, tokens)[0].mean(1)

    model = Shared().eval()
    assert (
        fold_for_inference(model, ["norm"]) is not None
    )  # the norm folds into the conv, its output is tapped
    assert fold_for_inference(model, ["act"]) is None  # called twice
    assert fold_for_inference(model, ["attention.out_proj"]) is None  # inside a module fx keeps whole
    vm = ds.VisionModel(model, "shared")
    with torch.inference_mode(), pytest.raises(DeepscopeError, match="runs more than once"):
        forward_only(vm, torch.randn(2, 3, 8, 8), ["act"], lambda name, t: None)
    # MultiheadAttention reads out_proj's weights without calling it: hooks do not see it run either
    with torch.inference_mode(), pytest.raises(DeepscopeError, match="did not run"):
        forward_only(vm, torch.randn(2, 3, 8, 8), ["attention.out_proj"], lambda name, t: None)


def test_forward_only_records_each_layer_once_through_the_copy_or_hooks(lenet):
    layers = ["conv2", "fc3:input"]
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:8])
    vm = ds.VisionModel(lenet.module, "lenet", lenet.preprocessing)
    seen: list[tuple[str, torch.Tensor]] = []
    with torch.inference_mode():
        forward_only(vm, x, layers, lambda name, t: seen.append((name, t.clone())))
        assert inference._COPIES[vm.module][tuple(layers)][1] is not vm.module  # the copy ran
        handle = vm.module.register_forward_pre_hook(lambda *args: None)
        try:
            forward_only(vm, x, layers, lambda name, t: seen.append((name, t.clone())))
        finally:
            handle.remove()
    assert [name for name, _ in seen] == layers * 2
    for (_, tapped), (_, hooked) in zip(seen[:2], seen[2:], strict=True):
        torch.testing.assert_close(tapped, hooked, rtol=0, atol=0)
    with torch.inference_mode(), pytest.raises(ValueError, match="record"):
        forward_only(vm, x, layers)


def test_tracing_leaves_modules_run_by_other_threads_alone(vgg11_bn):
    """fx patches nn.Module for every thread while it traces; another thread that runs the same model (whose
    parameters the copy shares) or a torchvision transform must get plain results meanwhile."""
    import threading

    from torchvision.transforms import v2 as T

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    resize = T.Resize(16, antialias=True)
    with torch.inference_mode():
        expected, expected_small = vgg11_bn(x), resize(x)
    errors: list[BaseException] = []
    stop = threading.Event()

    def run_the_model():
        try:
            with torch.inference_mode():
                while not stop.is_set():
                    torch.testing.assert_close(vgg11_bn(x), expected)
                    torch.testing.assert_close(resize(x), expected_small)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    worker = threading.Thread(target=run_the_model)
    worker.start()
    try:
        for _ in range(20):
            assert fold_for_inference(vgg11_bn, ["features.4"]) is not None
    finally:
        stop.set()
        worker.join()
    assert not errors, errors[0]


def test_a_model_pickles_without_its_copies(lenet):
    import pickle

    vm = ds.VisionModel(copy.deepcopy(lenet.module), "lenet", lenet.preprocessing)
    with torch.inference_mode():
        forward_only(vm, torch.zeros(2, 1, 28, 28), ["conv1"], lambda name, t: None)
    assert inference._COPIES[vm.module]
    again = pickle.loads(pickle.dumps(vm))  # what a Ray actor receives
    assert again.module not in inference._COPIES and inference._COPIES[vm.module]
    with torch.inference_mode():
        torch.testing.assert_close(
            forward_only(again, torch.ones(2, 1, 28, 28)), vm.module(torch.ones(2, 1, 28, 28))
        )


def test_a_model_that_refuses_channels_last_hands_each_layer_over_once(flattening):
    """The model fails part-way in channels-last (a .view() of a map); the layout is settled on one image before
    anything is recorded, so the layers before the failure are not handed over twice."""
    viewing, reshaping = ds.as_vision_model(flattening(view=True)), ds.as_vision_model(flattening(view=False))
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    seen: dict[str, list[torch.Tensor]] = {"conv1": [], "conv2": []}
    with torch.inference_mode():
        output = forward_only(viewing, x, ["conv1", "conv2"], lambda name, t: seen[name].append(t))
        expected = reshaping.module(x)
    assert not viewing.channels_last and reshaping.channels_last
    assert [len(calls) for calls in seen.values()] == [1, 1]
    torch.testing.assert_close(output, expected)
    top = ds.units.top_patches(viewing, x, "conv2", k=2, crops=False)["conv2"]
    same = ds.units.top_patches(reshaping, x, "conv2", k=2, crops=False)["conv2"]
    torch.testing.assert_close(top.values, same.values)
    torch.testing.assert_close(top.sample_indices, same.sample_indices)
    torch.testing.assert_close(top.positions, same.positions)


def test_threads_sharing_a_copy_each_get_their_own_layers(lenet):
    import threading

    vm = ds.VisionModel(lenet.module, "lenet", lenet.preprocessing)
    layers = ["conv1", "fc3:input"]
    images = lenet.preprocess(ds.datasets.mnist5k("test").images[:16]).split(8)
    with torch.inference_mode():
        expected = [recorded_by_hooks(lenet.module, layers, x)[1] for x in images]
        forward_only(vm, images[0], layers, lambda name, t: None)  # the copy, made once, shared below
    errors: list[BaseException] = []

    def work(side: int) -> None:
        try:
            with torch.inference_mode():
                for _ in range(30):
                    seen: dict[str, torch.Tensor] = {}
                    forward_only(vm, images[side], layers, seen.__setitem__)
                    for name in layers:
                        torch.testing.assert_close(seen[name], expected[side][name][0], rtol=0, atol=0)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(side,)) for side in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]


def test_a_model_refusing_channels_last_is_named_once_and_a_failing_model_raises_its_own_error(flattening):
    """The retry in the standard layout was silent, and a model failing in both layouts raised the retry's error
    after a silent switch; now the switch warns once, naming the model, and a real failure propagates."""
    viewing = ds.VisionModel(flattening(view=True), "viewing")
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(RuntimeWarning, match="viewing failed on channels-last inputs .*view"):
        first = viewing.in_fast_layout(viewing.module, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(viewing.in_fast_layout(viewing.module, x), first)
    broken = ds.VisionModel(flattening(view=False), "broken")
    with pytest.raises(RuntimeError, match="channels"), warnings.catch_warnings():
        warnings.simplefilter("error")
        broken.in_fast_layout(broken.module, torch.randn(2, 5, 8, 8))  # 5 channels into a 3-channel conv
    assert broken.channels_last  # not a layout problem: the fast layout stays
