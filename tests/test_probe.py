"""Layer addressing, scoped capture, and receptive fields checked against brute-force gradients."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torchvision
from torch import nn

import deepscope as ds
from deepscope.errors import DeepscopeError, LayerNotFoundError, ReceptiveFieldError


def test_find_layers_with_names_and_globs(lenet):
    assert ds.find_layers(lenet, "conv*") == ["conv1", "conv2"]
    assert ds.find_layers(lenet, ["fc3", "conv1", "fc?"]) == ["conv1", "fc1", "fc2", "fc3"]
    resnet = torchvision.models.resnet18()
    assert ds.find_layers(resnet, "layer*.0.conv1") == [f"layer{i}.0.conv1" for i in range(1, 5)]


def test_wrong_layer_names_list_the_closest(lenet):
    with pytest.raises(LayerNotFoundError, match="no layer 'conv3'.*Closest: conv2, conv1"):
        ds.find_layers(lenet, "conv3")
    resnet = torchvision.models.resnet18()
    with pytest.raises(LayerNotFoundError, match="layer4.1.conv2"):
        ds.get_layer(resnet, "layer4.1.conv3")
    with pytest.raises(LayerNotFoundError, match="no layer 'block\\*'"):
        ds.find_layers(resnet, "block*")
    with pytest.raises(LayerNotFoundError, match="one exact layer name"):
        ds.get_layer(resnet, "layer*")


def test_capture_records_activations_and_gradients(lenet, unchanged):
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    with unchanged(lenet.module), ds.capture(lenet, ["conv2", "fc3"], gradients=True) as rec:
        logits = lenet(x)
        torch.autograd.grad(logits[:, 4].sum(), x)
    assert rec.activations["conv2"].shape == (3, 16, 10, 10)
    torch.testing.assert_close(rec.activations["fc3"], logits.detach())
    expected = torch.zeros_like(logits)
    expected[:, 4] = 1
    torch.testing.assert_close(rec.gradients["fc3"], expected)
    assert rec.gradients["conv2"].shape == (3, 16, 10, 10)
    assert not rec.activations["conv2"].requires_grad


def test_capture_explains_missing_and_repeated_records():
    shared = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(1, 2, 3), shared, nn.Conv2d(2, 2, 3), shared)
    with ds.capture(model, ["1", "2"], gradients=True) as rec, torch.no_grad():
        model(torch.randn(1, 1, 8, 8))
    assert len(rec.activations.all("1")) == 2
    with pytest.raises(DeepscopeError, match="ran 2 times"):
        rec.activations["1"]
    with pytest.raises(DeepscopeError, match="no gradient reached layer '2'"):
        rec.gradients["2"]


def test_capture_removes_hooks_when_the_block_raises(lenet, unchanged):
    with (
        unchanged(lenet.module),
        pytest.raises(RuntimeError, match="boom"),
        ds.capture(lenet, "*", gradients=True),
    ):
        x = torch.randn(1, 1, 28, 28, requires_grad=True)
        torch.autograd.grad(lenet(x).sum(), x)
        raise RuntimeError("boom")


def test_capture_removes_hooks_when_the_forward_raises(lenet, unchanged):
    with unchanged(lenet.module), pytest.raises(RuntimeError), ds.capture(lenet, ["conv1"]):
        lenet(torch.randn(1, 3, 28, 28))  # wrong channel count


# --- receptive fields ------------------------------------------------------------------------------------


def linearized(module: nn.Module) -> nn.Module:
    """A copy whose every unit responds to every input in its field: non-negative weights, no biases, no
    non-linearities, average instead of max pooling, identity batch norm. Geometry is unchanged."""
    clone = copy.deepcopy(module).eval()
    for name, sub in list(clone.named_modules()):
        if not name:
            continue
        parent = clone.get_submodule(name.rpartition(".")[0]) if "." in name else clone
        leaf = name.rpartition(".")[2]
        if isinstance(sub, nn.MaxPool2d):
            setattr(parent, leaf, nn.AvgPool2d(sub.kernel_size, sub.stride, sub.padding))
        elif isinstance(sub, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU)):
            setattr(parent, leaf, nn.Identity())
        elif isinstance(sub, nn.BatchNorm2d):
            sub.reset_parameters()
            sub.reset_running_stats()
    with torch.no_grad():
        for name, parameter in clone.named_parameters():
            parameter.copy_(torch.zeros_like(parameter) if name.endswith("bias") else parameter.abs() + 0.01)
    return clone


def brute_force_box(
    module: nn.Module, layer: str, shape: tuple, unit: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Bounding box (top, left, bottom, right) of input pixels with a non-zero gradient for one output unit."""
    clone = linearized(module)
    x = torch.rand(*shape, requires_grad=True)
    with ds.capture(clone, layer, detach=False) as rec:
        clone(x)
    rec.activations[layer][0, :, unit[0], unit[1]].sum().backward()
    rows = x.grad[0].abs().sum(0).sum(1).nonzero()
    cols = x.grad[0].abs().sum(0).sum(0).nonzero()
    return (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)


def in_threads_at_once(work, arguments: list, repeats: int = 5) -> list:
    """``work(argument)`` in one thread per argument, all starting together, ``repeats`` times each."""
    start = threading.Barrier(len(arguments))

    def run(argument):
        start.wait()
        return [work(argument) for _ in range(repeats)]

    with ThreadPoolExecutor(len(arguments)) as pool:
        return list(pool.map(run, arguments))


def test_threads_sharing_a_model_each_get_their_own_results(lenet):
    """Hooks live on the shared module; each thread's must see its own forward passes only (before, a thread's
    Grad-CAM counted the other threads' calls of its layer and failed, or mixed their activations in)."""
    digits = ds.datasets.mnist5k("test").images
    batches = [lenet.preprocess(digits[8 * i : 8 * i + 8]) for i in range(4)]

    def work(x: torch.Tensor) -> list[torch.Tensor]:
        with ds.capture(lenet, ["fc1"]) as recording:
            lenet(x)
        return [
            ds.attribute(lenet, x, "grad_cam"),
            ds.units.activations(lenet, x, "conv2"),
            recording.activations["fc1"],
            ds.graph(lenet, depth=1, example=x[:1]).nodes[0].output_shape,
        ]

    expected = [work(x) for x in batches]
    for batch, runs in enumerate(in_threads_at_once(work, batches)):
        for run in runs:
            for got, want in zip(run[:3], expected[batch][:3], strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
            assert run[3] == expected[batch][3]


def test_graphs_traced_in_two_threads_at_once_leave_module_calls_unpatched():
    """fx patches nn.Module.__call__ for the whole process while it traces, and puts back what it found. Two traces
    interleaved in threads (A starts, B starts, A ends, B ends) left A's patch in place: A's thread then got fx
    proxies from plain forward passes (a Grad-CAM found "no spatial layer", one in 15 runs of the test above)."""
    original = nn.Module.__call__
    a_tracing, b_tracing, a_done = threading.Event(), threading.Event(), threading.Event()

    class Waiting(nn.Module):
        def __init__(self, first: bool):
            super().__init__()
            self.first = first
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            if self.first:  # A, mid-trace: let B start tracing (with traces serialized, B cannot: time out)
                a_tracing.set()
                b_tracing.wait(timeout=1)
            else:
                b_tracing.set()
                a_done.wait(timeout=1)
            return self.conv(x)

    def trace_a():
        try:
            return ds.graph(Waiting(True), example=torch.zeros(1, 1, 6, 6))
        finally:
            a_done.set()

    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(trace_a)
            assert a_tracing.wait(timeout=5)
            second = pool.submit(ds.graph, Waiting(False), torch.zeros(1, 1, 6, 6))
            graphs = [first.result(), second.result()]
        assert nn.Module.__call__ is original
    finally:
        nn.Module.__call__ = original  # the rest of the session must not run under a leaked patch
    assert [g.nodes[-1].output_shape for g in graphs] == [(1, 2, 4, 4)] * 2


def test_overlapping_evaluation_blocks_restore_each_flag_once():
    from deepscope.zoo.state import evaluation_mode

    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2)))
    model.train()
    model[1][0].eval()
    flags = [sub.training for sub in model.modules()]
    with evaluation_mode(model[1]):
        with evaluation_mode(model):
            assert not any(sub.training for sub in model.modules())
        assert model.training and model[0].training and not model[1].training  # the part is still held
    assert [sub.training for sub in model.modules()] == flags
    part, whole = evaluation_mode(model[1]), evaluation_mode(model)  # interleaved, as threads may
    part.__enter__()
    whole.__enter__()
    part.__exit__(None, None, None)
    assert not any(sub.training for sub in model.modules())  # the whole model is still held
    whole.__exit__(None, None, None)
    assert [sub.training for sub in model.modules()] == flags


def test_threads_sharing_a_model_in_train_mode_leave_it_in_train_mode():
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 26 * 26, 10),
    )
    module[1].running_mean.uniform_(-1, 1)
    module.train()
    vm = ds.as_vision_model(module)
    batches = [torch.randn(4, 1, 28, 28) for _ in range(4)]
    expected = [module.eval()(x).detach() for x in batches]  # eval mode: no dropout, running statistics
    module.train()
    runs = in_threads_at_once(lambda x: ds.units.activations(vm, x, "5"), batches, repeats=10)
    assert all(sub.training for sub in module.modules())
    for batch, results in enumerate(runs):
        for result in results:
            torch.testing.assert_close(result, expected[batch])


@pytest.mark.parametrize(
    ("model_name", "layer", "shape"),
    [
        ("lenet", "conv1", (1, 1, 28, 28)),
        ("lenet", "pool1", (1, 1, 28, 28)),
        ("lenet", "conv2", (1, 1, 28, 28)),
        ("lenet", "relu2", (1, 1, 28, 28)),
        ("resnet18", "maxpool", (1, 3, 96, 96)),
        ("resnet18", "layer1.1", (1, 3, 96, 96)),
        ("resnet18", "layer2.0.conv2", (1, 3, 128, 128)),
        ("resnet18", "layer2", (1, 3, 160, 160)),
        ("efficientnet", "_blocks.1", (1, 3, 224, 224)),
        ("efficientnet", "_blocks.3", (1, 3, 224, 224)),
    ],
)
def test_receptive_field_equals_brute_force(model_name, layer, shape, lenet, request):
    module = {
        "lenet": lambda: lenet.module,
        "resnet18": lambda: torchvision.models.resnet18(),
        "efficientnet": lambda: request.getfixturevalue("efficientnet").module,
    }[model_name]()
    example = torch.zeros(shape)
    field = ds.receptive_field(module, layer, example)
    with torch.no_grad(), ds.capture(module, layer) as rec:
        module.eval()(example)
    height, width = rec.activations[layer].shape[-2:]
    for unit in [(height // 2, width // 2), (0, 0), (height - 1, width - 1)]:
        assert field.box(*unit) == brute_force_box(module, layer, shape, unit), unit


def test_receptive_field_known_values():
    resnet = torchvision.models.resnet18()
    field = ds.receptive_field(resnet, "layer4", torch.zeros(1, 3, 224, 224))
    assert (field.size, field.stride) == ((435, 435), (32, 32))  # the published ResNet-18 value
    assert ds.receptive_field(resnet, "fc", torch.zeros(1, 3, 224, 224)).is_global


def test_receptive_field_refuses_ops_it_cannot_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2), nn.Conv2d(4, 4, 3))
    with pytest.raises(ReceptiveFieldError, match="Upsample"):
        ds.receptive_field(model, "2", torch.zeros(1, 3, 16, 16))
