"""Architecture graphs: skip connections, shapes, collapsing, the dynamic fallback, and no side effects."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torchvision
from torch import nn

import deepscope as ds
from deepscope.probe.graph import _trace_dynamic

EXAMPLE = torch.zeros(1, 3, 224, 224)


def two_input_adds(g: ds.Graph) -> list[str]:
    return [n.id for n in g.nodes if n.op == "add" and len(g.inputs_of(n.id)) == 2]


@pytest.mark.parametrize(("name", "skips"), [("resnet18", 8), ("resnet50", 16)])
def test_resnet_skip_connections_are_two_input_nodes(name, skips):
    model = torchvision.models.get_model(name)
    g = ds.graph(model, EXAMPLE)
    assert g.tracer == "fx" and not g.notes
    assert len(two_input_adds(g)) == skips
    assert g.node("conv1").output_shape == (1, 64, 112, 112)
    assert g.node("layer4.1.conv1" if name == "resnet18" else "layer4.2.conv3").output_shape[1:] == (
        (512, 7, 7) if name == "resnet18" else (2048, 7, 7)
    )
    assert g.node("output").output_shape == (1, 1000)
    assert g.node("fc").params == model.fc.weight.numel() + model.fc.bias.numel()


def test_efficientnet_lite0_graph(efficientnet):
    g = ds.graph(efficientnet)
    # blocks with stride 1 and equal in/out channels: 0+1+1+2+2+3+0 over the seven stages
    assert len(two_input_adds(g)) == 9
    assert g.node("output").output_shape == (1, 1000)
    collapsed = ds.graph(efficientnet, depth=2)
    blocks = [n for n in collapsed.nodes if n.op == "MBConvBlock"]
    assert len(blocks) == 16
    assert blocks[-1].output_shape == (1, 320, 7, 7)
    assert sum(n.params for n in blocks) == sum(p.numel() for p in efficientnet.module._blocks.parameters())


@pytest.mark.parametrize("depth", [None, 2])
def test_every_layer_name_the_graph_shows_is_a_layer_name_capture_takes(efficientnet, depth):
    """``graph`` named a functional convolution 'conv2d_48', which every layer= argument refused; a node's id is
    now its layer name wherever its output is a module's output, and that name records that very tensor."""
    g = ds.graph(efficientnet, depth=depth)
    named = [node for node in g.nodes if node.layer is not None]
    assert all(node.id == node.layer for node in named)
    assert {"_conv_head", "_swish@1", "_fc"} <= {node.layer for node in named}
    assert [node.op for node in g.nodes if node.layer is None] == ["input", "view", "output"]
    x = efficientnet.preprocess(ds.samples(["coffee"])["coffee"])
    with ds.capture(efficientnet, [node.layer for node in named]) as recording, torch.no_grad():
        efficientnet(x)
    for node in named:
        assert tuple(recording.activations[node.layer].shape[1:]) == node.output_shape[1:], node.layer


def test_vit_graph_shapes():
    vit = torchvision.models.vit_b_16()
    g = ds.graph(vit, EXAMPLE)
    assert g.node("conv_proj").output_shape == (1, 768, 14, 14)
    assert len(two_input_adds(g)) == 24  # attention and MLP residuals in 12 encoder layers
    layer_outputs = ds.graph(vit, EXAMPLE, depth=3)
    encoder_layers = [n for n in layer_outputs.nodes if n.op == "EncoderBlock"]
    assert len(encoder_layers) == 12 and all(n.output_shape == (1, 197, 768) for n in encoder_layers)
    assert g.node("output").output_shape == (1, 1000)


def test_collapsing_keeps_a_connected_chain():
    g = ds.graph(torchvision.models.resnet18(), EXAMPLE, depth=1)
    assert [n.id for n in g.nodes] == [
        "input",
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "flatten",
        "fc",
        "output",
    ]
    assert g.edges == list(zip([n.id for n in g.nodes][:-1], [n.id for n in g.nodes][1:], strict=True))
    assert g.node("layer3").output_shape == (1, 256, 14, 14)


class Gated(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.refine = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if y.mean() > 0:
            y = y + self.refine(y)
        return self.head(y.mean((2, 3)))


def test_untraceable_models_fall_back_to_the_dynamic_tracer():
    model = Gated()
    torch.nn.init.constant_(model.conv.bias, 1.0)
    g = ds.graph(model, torch.ones(2, 3, 16, 16))
    assert g.tracer == "dynamic"
    assert "torch.fx could not trace" in g.notes[0] and "branches" in g.notes[0]
    assert [n.op for n in g.nodes] == ["input", "Conv2d", "relu", "Conv2d", "add", "mean", "Linear", "output"]
    assert len(two_input_adds(g)) == 1
    assert g.node("output").output_shape == (2, 2)


def test_dynamic_tracer_agrees_with_fx_on_resnet18():
    model = torchvision.models.resnet18().eval()
    traced = ds.graph(model, EXAMPLE)
    with torch.no_grad():
        recorded = _trace_dynamic(model, EXAMPLE)
    assert Counter(n.op for n in recorded.nodes) == Counter(n.op for n in traced.nodes)
    assert [(n.module, n.output_shape) for n in recorded.nodes if n.module] == [
        (n.module, n.output_shape) for n in traced.nodes if n.module
    ]
    assert len(recorded.edges) == len(traced.edges)


def test_graph_leaves_a_training_model_untouched(unchanged):
    model = torchvision.models.resnet18().train()
    with unchanged(model):
        ds.graph(model, torch.randn(2, 3, 64, 64))
    assert model.training


def test_graph_to_dict_is_json(lenet):
    data = json.loads(json.dumps(ds.graph(lenet).to_dict()))
    assert {"nodes", "edges", "tracer", "notes", "depth"} <= set(data)
    assert data["nodes"][1]["op"] == "Conv2d" and data["nodes"][1]["output_shape"] == [1, 6, 28, 28]
    assert ["conv1", "relu1"] in data["edges"]


def test_graph_needs_an_example_for_models_of_unknown_size():
    with pytest.raises(ValueError, match="pass an example"):
        ds.graph(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="depth must be"):
        ds.graph(nn.Conv2d(3, 3, 1), torch.zeros(1, 3, 4, 4), depth=0)
