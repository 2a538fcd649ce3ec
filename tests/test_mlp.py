"""zoo:mlp_mnist, a fully connected network, through every view: its accuracy, its first layer's weights as images
(checked against the layer's own arithmetic), every registered heat-map method, the graph, a scan, the units."""

from __future__ import annotations

import tempfile

import pytest
import torch
from torch import nn

import deepscope as ds
from deepscope.errors import DeepscopeError, SettingError, UnitError
from deepscope.units.maps import has_weight_images
from deepscope.zoo.mlp import WEIGHTS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mlp() -> ds.VisionModel:
    return ds.load_model("zoo:mlp_mnist")


@pytest.fixture(scope="module")
def held_out() -> ds.datasets.ImageDataset:
    return ds.datasets.mnist5k("test")


def test_the_mlp_is_784_300_100_10_and_classifies_held_out_digits(mlp, held_out):
    shapes = [tuple(m.weight.shape) for m in mlp.module.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(300, 784), (100, 300), (10, 100)]
    with torch.no_grad():
        predictions = mlp(mlp.preprocess(held_out.images)).argmax(1)
    accuracy = float((predictions == held_out.labels).float().mean())
    assert len(held_out) == 1000 and accuracy >= 0.97
    checkpoint = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert checkpoint["held_out_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert checkpoint["train_size"] == 4000 and WEIGHTS.stat().st_size < 1.2e6
    assert "zoo:mlp_mnist" in ds.list_models()


def test_first_layer_weights_are_images_of_the_input(mlp, held_out, unchanged):
    x = mlp.preprocess(held_out.images[:5])
    with unchanged(mlp.module):
        images = ds.units.filters(mlp, "fc1")
    assert images.shape == (300, *x.shape[1:])
    # Each unit's pre-activation is its weight image times the input image, summed over pixels, plus its bias.
    by_hand = (images[None] * x[:, None]).sum((2, 3, 4)) + mlp.module.fc1.bias.detach()
    torch.testing.assert_close(ds.units.activations(mlp, x, "fc1"), by_hand, rtol=1e-5, atol=1e-5)
    assert images.data_ptr() != mlp.module.fc1.weight.data_ptr()
    assert has_weight_images(mlp, "fc1") and not has_weight_images(mlp, "fc2")
    with pytest.raises(UnitError, match="reads the output of relu1 .ReLU., not the image's pixels"):
        ds.units.filters(mlp, "fc2")


def test_weight_images_follow_the_graph_of_any_model():
    class Viewing(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 4 * 5, 2)

        def forward(self, x):
            return self.fc(x.view(x.size(0), -1))

    class Permuting(Viewing):
        def forward(self, x):
            return self.fc(x.permute(0, 2, 3, 1).reshape(x.size(0), -1))

    example = torch.zeros(1, 3, 4, 5)
    viewing = Viewing()
    assert torch.equal(ds.units.filters(viewing, "fc", example).flatten(1), viewing.fc.weight.detach())
    with pytest.raises(UnitError, match="permute"):
        ds.units.filters(Permuting(), "fc", example)
    with pytest.raises(SettingError, match="pass an example"):
        ds.units.filters(Viewing(), "fc")  # a plain module: its input size is not known


def test_weight_images_render_as_one_tile_per_unit(mlp):
    from deepscope.render.units import filter_grid

    picture = filter_grid(ds.units.filters(mlp, "fc1"), tile_size=28, max_filters=100, labels=False)
    assert picture.size == (10 * 29 + 1, 10 * 29 + 1)
    # symmetric scale per unit: the tile's extreme weight is black or white, a zero weight mid-gray
    weights = mlp.module.fc1.weight.detach()[0].view(28, 28)
    y, x = divmod(int(weights.abs().argmax()), 28)
    assert picture.getpixel((1 + x, 1 + y)) in (0, 255)


METHODS = [info.name for info in ds.methods()]


@pytest.mark.parametrize("name", METHODS)
def test_every_heat_map_method_runs_on_the_mlp_or_says_why_not(name, mlp, held_out, unchanged):
    info = ds.attribution.method_info(name)
    x = mlp.preprocess(held_out.images[:2])
    options = info.quick_options((28, 28))
    if name == "prediction_difference":
        options["data"] = mlp.preprocess(held_out.images[10:16])
    with unchanged(mlp.module):
        try:
            maps = ds.attribute(mlp, x, name, **options)
        except DeepscopeError as refusal:
            reason = str(refusal)
        else:
            reason = None
    if reason is None:
        assert maps.shape == (2, 1, 28, 28) and torch.isfinite(maps).all()
        return
    # Only methods that read a spatial layer or attention have a reason to refuse a network without either.
    assert info.family in ("cam", "transformer"), reason
    assert ("spatial layer" in reason) if info.family == "cam" else ("no attention" in reason), reason


def test_graph_scan_and_units_work_on_the_mlp(mlp, held_out):
    graph = ds.graph(mlp)
    assert [node.op for node in graph.nodes] == [
        "input",
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
        "ReLU",
        "Linear",
        "output",
    ]
    assert graph.node("fc1").params == 784 * 300 + 300
    digits = held_out.subset(range(200))
    workspace = ds.atlas.scan(mlp, digits, out=tempfile.mkdtemp())
    assert (workspace.predictions == workspace.labels).mean() >= 0.95
    assert {"fc1", "fc2", "fc3"} <= set(workspace.layers)
    hits = ds.units.top_patches(mlp, digits, "fc1", units=[0, 1], k=3)["fc1"]
    assert hits.crops.shape == (2, 3, 1, 28, 28)  # a linear unit sees the whole digit
    found = ds.units.concepts(mlp, digits, "fc2", k=10, patches=2, epochs=2)
    assert found.purity > 0.8
    assert ds.units.visualize(mlp, "fc3:7", steps=8).image.shape == (1, 1, 28, 28)
