"""The atlas's unit and network views: class selectivity of units, neuron clusters joined by the weights, and two
networks compared layer by layer."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

import deepscope as ds
from deepscope.errors import LayerNotFoundError, SettingError, SettingTypeError, WorkspaceError
from deepscope.render.charts import layer_comparison_image, selectivity_image, selectivity_summary_image
from deepscope.render.graph_svg import cluster_graph_svg


@pytest.fixture(scope="module")
def digits() -> ds.zoo.datasets.ImageDataset:
    return ds.datasets.mnist5k("test")


@pytest.fixture(scope="module")
def relu_scan(tmp_path_factory, lenet, digits) -> ds.atlas.Workspace:
    """LeNet over the 1,000 held-out digits, recording its ReLU outputs (non-negative activities)."""
    return ds.atlas.scan(
        lenet,
        digits,
        ["fc3:input", "relu1", "relu2", "relu3"],
        out=tmp_path_factory.mktemp("relu"),
        batch_size=250,
    )


@pytest.fixture(scope="module")
def default_scan(tmp_path_factory, lenet, digits) -> ds.atlas.Workspace:
    """LeNet over the held-out digits with the default layers (every conv / linear output)."""
    return ds.atlas.scan(lenet, digits, out=tmp_path_factory.mktemp("default"), batch_size=250)


# ----------------------------------------------------------------------------------------------------------
# class selectivity


def test_selectivity_index_equals_a_hand_computed_case():
    means = np.array(
        [
            [3.0, 1.0, 1.0, np.nan],  # mu_max 3, mu_rest (1 + 1) / 2 = 1: (3 - 1) / (3 + 1)
            [0.5, 4.0, 2.0, np.nan],  # mu_max 4, mu_rest 1.25: 2.75 / 5.25
            [2.0, 2.0, 2.0, np.nan],  # the same for every class
            [5.0, 0.0, 0.0, np.nan],  # one class only
            [1.0, -1.0, 3.0, np.nan],  # a negative class mean: a pre-activation, undefined
            [0.0, 0.0, 0.0, np.nan],  # never active, undefined
        ]
    )
    np.testing.assert_allclose(
        ds.atlas.selectivity_index(means), [0.5, 2.75 / 5.25, 0.0, 1.0, np.nan, np.nan], rtol=1e-15
    )
    with pytest.raises(SettingError, match="at least 2"):
        ds.atlas.selectivity_index(np.array([[1.0, np.nan]]))


class OneHotUnits(torch.nn.Module):
    """Three hidden units over one-hot class codes (images of 3 channels and 1 pixel): unit 0 sees class 0 only,
    unit 1 every class alike, unit 2 class 0 twice as strongly as class 1 and class 2 not at all."""

    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(3, 3, bias=False)
        self.act = torch.nn.ReLU()
        self.head = torch.nn.Linear(3, 3)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 1.0, 0.0]]))

    def forward(self, x):
        return self.head(self.act(self.hidden(x.flatten(1))))


def test_a_unit_that_fires_for_one_class_only_gets_index_1(tmp_path, unchanged):
    labels = torch.arange(60) % 3
    codes = torch.nn.functional.one_hot(labels, 3).float()[:, :, None, None]
    module = OneHotUnits().eval()
    with unchanged(module):
        ws = ds.atlas.scan(
            ds.as_vision_model(module),
            torch.utils.data.TensorDataset(codes, labels),
            ["act"],
            out=tmp_path,
            thumbnail_size=0,
        )
        result = ws.selectivity("act", bins=4)
    np.testing.assert_allclose(result.class_means, [[1, 0, 0], [1, 1, 1], [2, 1, 0]])
    # unit 2: mu_max 2, mu_rest (1 + 0) / 2
    np.testing.assert_allclose(result.index, [1.0, 0.0, (2 - 0.5) / (2 + 0.5)], rtol=1e-15)
    assert result.one_class_units.tolist() == [0] and result.all_class_units.tolist() == [1]
    assert result.preferred.tolist() == [0, 0, 0] and result.class_counts.tolist() == [20, 20, 20]
    assert result.responsive.tolist() == [[True, False, False], [True, True, True], [True, True, False]]
    assert result.summary() == {
        "units": 3,
        "defined": 3,
        "mean_index": pytest.approx(1.6 / 3),
        "median_index": pytest.approx(0.6),
        "one_class": 1,
        "all_classes": 1,
    }
    # unit 0 over [0, 1] in 4 bins: class 0 in the last bin, classes 1 and 2 in the first
    assert result.histograms[0].tolist() == [[0, 0, 0, 20], [20, 0, 0, 0], [20, 0, 0, 0]]


def test_per_class_means_and_histograms_equal_numpy_on_lenet(relu_scan):
    pooled, labels = relu_scan.embeddings("relu3"), relu_scan.labels
    result = relu_scan.selectivity("relu3", bins=12)
    for label in range(10):
        rows = pooled[labels == label]
        np.testing.assert_allclose(result.class_means[:, label], rows.mean(0), rtol=1e-6)
        for unit in (0, 7, 119):
            counts, _ = np.histogram(rows[:, unit], bins=result.edges[unit])
            assert result.histograms[unit, label].tolist() == counts.tolist()
    # the index by its definition, one unit at a time
    for unit in range(0, 120, 7):
        means = np.array([pooled[labels == c, unit].mean() for c in range(10)])
        best = means.max()
        rest = (means.sum() - best) / 9
        expected = (best - rest) / (best + rest) if best + rest > 0 else np.nan
        np.testing.assert_allclose(result.index[unit], expected, rtol=1e-6)
    # Units get more class-selective with depth (Morcos et al. 2018, fig. 4): the 6 first-layer maps respond to
    # every digit, the units in front of the classifier mostly to one or two.
    assert relu_scan.selectivity("relu1").summary()["mean_index"] < 0.3
    assert result.summary()["mean_index"] > 0.5 and result.one_class_units.size > 0


def test_selectivity_refuses_what_it_cannot_compute(relu_scan, lenet, tmp_path):
    with pytest.raises(SettingError, match="bins must be a positive int"):
        relu_scan.selectivity("relu3", bins=0)
    with pytest.raises(SettingTypeError, match="bins must be a positive int"):
        relu_scan.selectivity("relu3", bins=2.5)
    with pytest.raises(SettingError, match="threshold must be in"):
        relu_scan.selectivity("relu3", threshold=0)
    with pytest.raises(LayerNotFoundError, match="Did you mean: relu3"):
        relu_scan.selectivity("relu4")
    unlabeled = ds.atlas.scan(lenet, lenet.preprocess(ds.datasets.mnist5k("test").images[:20]), out=tmp_path)
    with pytest.raises(WorkspaceError, match="no labels"):
        unlabeled.selectivity()
    with pytest.raises(SettingError, match="at least 2"):
        ds.atlas.class_selectivity(np.ones((4, 2)), np.zeros(4, int), ["a", "b"])


def test_pre_activations_have_no_index(default_scan):
    result = default_scan.selectivity("conv2")  # the convolution's output, before its ReLU
    negative = (np.nan_to_num(result.class_means, nan=0.0) < 0).any(1)
    assert negative.any() and np.isnan(result.index[negative]).all()
    assert not result.responsive[negative].any()


def test_selectivity_pictures(relu_scan):
    result = relu_scan.selectivity("relu3")
    panels = selectivity_image(result, units=[0, 1, 2])
    assert panels.mode == "RGB" and panels.width > panels.height
    assert selectivity_summary_image(result).size[0] > 0


# ----------------------------------------------------------------------------------------------------------
# neuron clusters


class TwoGroups(torch.nn.Module):
    """A convolution whose 6 channels are two groups of identical filters (0, 2, 4 and 1, 3, 5), a second
    convolution whose 4 channels are two groups of identical filters (0, 1 and 2, 3), then a flatten and a
    classifier."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv1 = torch.nn.Conv2d(1, 6, 3)
        self.relu1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(6, 4, 3)
        self.relu2 = torch.nn.ReLU()
        self.flatten = torch.nn.Flatten()
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)
        with torch.no_grad():
            first = torch.randn(2, 1, 3, 3, generator=generator)
            self.conv1.weight.copy_(first[[0, 1, 0, 1, 0, 1]])
            self.conv1.bias.copy_(torch.tensor([0.1, -0.1] * 3))
            second = torch.randn(2, 6, 3, 3, generator=generator)
            self.conv2.weight.copy_(second[[0, 0, 1, 1]])
            self.conv2.bias.zero_()
            self.fc.weight.copy_(torch.randn(3, 64, generator=generator))

    def forward(self, x):
        return self.fc(self.flatten(self.relu2(self.conv2(self.relu1(self.conv1(x))))))


EXAMPLE = torch.zeros(1, 1, 8, 8)  # the model has no input size of its own: the graph runs on this


@pytest.fixture(scope="module")
def two_groups(tmp_path_factory):
    module = TwoGroups().eval()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(80, 1, 8, 8, generator=generator)
    data = torch.utils.data.TensorDataset(inputs, torch.arange(80) % 3)
    vm = ds.as_vision_model(module)
    ws = ds.atlas.scan(vm, data, ["fc:input", "conv1", "conv2", "fc"], out=tmp_path_factory.mktemp("groups"))
    return vm, ws


def test_clustering_finds_the_two_groups_of_identical_units(two_groups, unchanged):
    vm, ws = two_groups
    with unchanged(vm.module):
        result = ds.atlas.neuron_clusters(
            ws, vm, ["conv1", "conv2", "fc"], k={"conv1": 2, "conv2": 2, "fc": 3}, example=EXAMPLE
        )
    assert result.layer("conv1").labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert result.layer("conv2").labels.tolist() == [0, 0, 1, 1]
    assert result.layer("conv1").sizes.tolist() == [3, 3] and result.layer("fc").clusters == 3
    # Asking for more clusters than there are distinct units gives the distinct ones only.
    assert ds.atlas.cluster_units(ws.embeddings("conv2"), 3).tolist() == [0, 0, 1, 1]


def test_edge_weights_are_the_summed_absolute_weights_between_clusters(two_groups):
    vm, ws = two_groups
    result = ds.atlas.neuron_clusters(
        ws, vm, ["conv1", "conv2", "fc"], k={"conv1": 2, "conv2": 2, "fc": 3}, example=EXAMPLE
    )
    conv2, fc = vm.module.conv2.weight.detach().double(), vm.module.fc.weight.detach().double()
    groups_1, groups_2 = result.layer("conv1").labels, result.layer("conv2").labels
    expected = np.zeros((2, 2))
    for target in range(4):
        for source in range(6):
            for y in range(3):
                for x in range(3):
                    expected[groups_2[target], groups_1[source]] += abs(float(conv2[target, source, y, x]))
    np.testing.assert_allclose(result.edges[0], expected, rtol=1e-6)  # float32 weights, summed in float32
    # fc reads conv2's 4 channels flattened to 4 x 16 inputs (channel-major): input i belongs to channel i // 16
    groups_fc = result.layer("fc").labels
    expected = np.zeros((3, 2))
    for target in range(3):
        for feature in range(64):
            expected[groups_fc[target], groups_2[feature // 16]] += abs(float(fc[target, feature]))
    np.testing.assert_allclose(result.edges[1], expected, rtol=1e-6)
    assert result.connections[0].shape == (4, 6) and result.connections[1].shape == (3, 4)


def test_grouped_convolutions_connect_only_within_their_groups():
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3, groups=2)
    ).eval()
    (strengths,) = ds.probe.unit_connections(module, ["0", "3"], torch.zeros(1, 3, 8, 8))
    weight = module[3].weight.detach()
    expected = torch.zeros(6, 4)
    for out in range(6):
        group = out // 3
        for local in range(2):
            expected[out, group * 2 + local] = weight[out, local].abs().sum()
    torch.testing.assert_close(strengths, expected)


def test_cluster_units_agrees_with_scikit_learns_ward_clustering(default_scan):
    pooled = default_scan.embeddings("fc1").astype(np.float64)
    centered = pooled - pooled.mean(0)
    profiles = (centered / np.linalg.norm(centered, axis=0)).T
    for k in (2, 5, 9):
        theirs = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(profiles)
        assert adjusted_rand_score(theirs, ds.atlas.cluster_units(pooled, k)) == 1.0


def test_representatives_come_from_the_members_top_k(default_scan, lenet):
    result = ds.atlas.neuron_clusters(default_scan, lenet, ["conv1", "conv2"], k=3, samples=4)
    for entry in result.layers:
        _, top = default_scan.top_k(entry.layer)
        for cluster in range(entry.clusters):
            members = entry.members(cluster)
            listed = set(top[members].ravel().tolist())
            chosen = [int(s) for s in entry.representatives[cluster] if s >= 0]
            assert chosen and set(chosen) <= listed
            if len(members) == 1:  # one unit: its own top samples, best first
                assert chosen == top[members[0], : len(chosen)].tolist()
            else:  # the first is listed by at least as many members as any other sample
                votes = {s: int((top[members] == s).any(1).sum()) for s in listed}
                assert votes[chosen[0]] == max(votes.values())


def test_neuron_clusters_refuse_what_has_no_meaning(default_scan, lenet):
    torch.manual_seed(0)
    other = lenet.with_module(ds.zoo.lenet.lenet5().eval())
    with pytest.raises(WorkspaceError, match="not with this model"):
        ds.atlas.neuron_clusters(default_scan, other)
    with pytest.raises(SettingError, match="conv2.* lies between them"):
        ds.atlas.neuron_clusters(default_scan, lenet, ["conv1", "fc1"])
    with pytest.raises(SettingError, match="not a convolution or linear layer"):
        ds.probe.unit_connections(lenet, ["conv1", "relu1"])
    with pytest.raises(SettingError, match="between 1 and the layer's 6 units"):
        ds.atlas.neuron_clusters(default_scan, lenet, ["conv1", "conv2"], k=7)
    with pytest.raises(SettingError, match="no cluster count for layers \\['conv2'\\]"):
        ds.atlas.neuron_clusters(default_scan, lenet, ["conv1", "conv2"], k={"conv1": 2})
    with pytest.raises(LayerNotFoundError, match="did not record layer 'relu1'"):
        ds.atlas.neuron_clusters(default_scan, lenet, ["relu1", "conv2"])
    residual = torch.nn.Sequential()
    with pytest.raises(SettingError, match="at least 2"):
        ds.probe.unit_connections(residual, ["0"])


class Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.conv1(x)
        return self.conv2(x + torch.relu(x))


def test_a_skip_connection_is_no_weight_matrix():
    with pytest.raises(SettingError, match="add \\(add\\) lies between them"):
        ds.probe.unit_connections(Residual(), ["conv1", "conv2"], torch.zeros(1, 3, 8, 8))


def test_cluster_diagram_draws_every_cluster_and_edge(default_scan, lenet):
    result = ds.atlas.neuron_clusters(default_scan, lenet, ["conv2", "fc1", "fc2"], k=3, samples=5)
    svg = cluster_graph_svg(result, default_scan.thumbnails, default_scan.indices, "LeNet")
    root = ElementTree.fromstring(svg)
    namespace = "{http://www.w3.org/2000/svg}"
    boxes = [rect for rect in root.iter(f"{namespace}rect")]
    edges = [path for path in root.iter(f"{namespace}path") if path.find(f"{namespace}title") is not None]
    assert len(boxes) == 9 and len(edges) == 2 * 3 * 3
    assert len(list(root.iter(f"{namespace}image"))) == 9 * 5
    for weights, drawn in ((result.edges[0], edges[:9]), (result.edges[1], edges[9:])):
        widths = [float(path.get("stroke-width")) for path in drawn]
        assert np.argmax(widths) == np.argmax(weights.ravel())  # the strongest bundle is the widest line
    with pytest.raises(SettingError, match="together"):
        cluster_graph_svg(result, default_scan.thumbnails)


# ----------------------------------------------------------------------------------------------------------
# two networks, layer by layer


def procrustes_residual(reference: np.ndarray, other: np.ndarray) -> float:
    """How far ``other`` is from ``reference`` after the best rotation (or reflection) and shift, relative to the
    size of ``reference``."""
    x = reference - reference.mean(0)
    y = other - other.mean(0)
    rotation, _ = orthogonal_procrustes(y, x)
    return float(np.linalg.norm(y @ rotation - x) / np.linalg.norm(x))


def test_a_model_compared_with_itself_gives_the_same_layouts_and_cka_1(lenet, digits, tmp_path):
    subset = digits.subset(range(400))
    a = ds.atlas.scan(lenet, subset, out=tmp_path / "a", thumbnail_size=0)
    b = ds.atlas.scan(lenet, subset, out=tmp_path / "b", thumbnail_size=0)  # scanned and laid out on its own
    result = ds.atlas.compare(
        a, b, ["fc3:input", "conv2", "fc1"], ["fc3:input", "conv2", "fc1"], layout="tsne"
    )
    np.testing.assert_allclose(np.diagonal(result.cka), 1.0, atol=1e-9)
    for points_a, points_b in zip(result.layouts_a, result.layouts_b, strict=True):
        assert points_a.shape == (400, 2) and procrustes_residual(points_a, points_b) < 1e-6
    np.testing.assert_array_equal(result.sparsity_a, result.sparsity_b)
    # sparsity: the fraction of output values <= 0, counted on the layer's output directly
    seen = {}
    handle = lenet.module.conv2.register_forward_hook(lambda m, i, o: seen.update(out=o))
    try:
        with torch.no_grad():
            lenet.module(lenet.preprocess(subset.images))
    finally:
        handle.remove()
    assert result.sparsity_a[1] == pytest.approx(
        int((seen["out"] <= 0).sum()) / seen["out"].numel(), abs=1e-12
    )
    picture = layer_comparison_image(result, a.labels, a.classes)
    assert picture.mode == "RGB" and picture.height > picture.width / 2


def permuted_copy(lenet: ds.VisionModel, seed: int = 0) -> ds.VisionModel:
    """The same function with the hidden units of fc1 and fc2 in another order."""
    module = copy.deepcopy(lenet.module)
    generator = torch.Generator().manual_seed(seed)
    first, second = torch.randperm(120, generator=generator), torch.randperm(84, generator=generator)
    with torch.no_grad():
        module.fc1.weight.copy_(module.fc1.weight[first])
        module.fc1.bias.copy_(module.fc1.bias[first])
        module.fc2.weight.copy_(module.fc2.weight[second][:, first])
        module.fc2.bias.copy_(module.fc2.bias[second])
        module.fc3.weight.copy_(module.fc3.weight[:, second])
    return lenet.with_module(module)


def test_a_model_with_its_units_reordered_gives_layouts_equal_up_to_rotation(lenet, digits, tmp_path):
    subset = digits.subset(range(300))
    a = ds.atlas.scan(lenet, subset, out=tmp_path / "a", thumbnail_size=0)
    b = ds.atlas.scan(permuted_copy(lenet), subset, out=tmp_path / "b", thumbnail_size=0)
    assert not np.array_equal(a.embeddings("fc1"), b.embeddings("fc1"))
    result = ds.atlas.compare(a, b, layout="pca")
    np.testing.assert_allclose(np.diagonal(result.cka), 1.0, atol=1e-6)
    np.testing.assert_allclose(result.sparsity_a, result.sparsity_b, atol=1e-12)
    for points_a, points_b in zip(result.layouts_a, result.layouts_b, strict=True):
        assert procrustes_residual(points_a, points_b) < 1e-4
    assert result.agreement == 1.0


def test_unlabeled_scans_compare_without_confusion_matrices(lenet, digits, tmp_path):
    inputs = lenet.preprocess(digits.images[:40])
    a = ds.atlas.scan(lenet, inputs, out=tmp_path / "a", thumbnail_size=0)
    result = ds.atlas.compare(a, a)
    assert result.confusion_a is None and np.isnan(result.accuracy_a) and result.layouts_a is None
    assert layer_comparison_image(result).mode == "RGB"


def test_cli_selectivity_clusters_and_compare_layouts(default_scan, relu_scan, tmp_path):
    from typer.testing import CliRunner

    from deepscope.app import cli

    runner = CliRunner()
    page = tmp_path / "selectivity.html"
    shown = runner.invoke(
        cli.app,
        ["selectivity", str(relu_scan.path), "--layer", "relu3", "--layer", "relu1", "--html", str(page)],
    )
    assert shown.exit_code == 0, shown.output
    summary = relu_scan.selectivity("relu3").summary()
    row = next(line for line in shown.output.splitlines() if line.startswith("relu3 "))
    assert row.split() == [
        "relu3",
        "120",
        str(summary["defined"]),
        f"{summary['mean_index']:.3f}",
        str(summary["one_class"]),
        str(summary["all_classes"]),
    ]
    assert "data:image/png;base64" in page.read_text()
    picture = tmp_path / "clusters.svg"
    clustered = runner.invoke(
        cli.app,
        [
            "clusters",
            str(default_scan.path),
            "zoo:lenet_mnist",
            "--layer",
            "conv1",
            "--layer",
            "conv2",
            "--k",
            "2",
            "--svg",
            str(picture),
        ],
    )
    assert clustered.exit_code == 0, clustered.output
    assert "conv1: 2 clusters" in clustered.output and picture.read_text().startswith("<svg")
    compared = runner.invoke(
        cli.app,
        [
            "compare",
            str(default_scan.path),
            str(default_scan.path),
            "--layouts",
            "pca",
            "--html",
            str(tmp_path / "compare.html"),
        ],
    )
    assert compared.exit_code == 0, compared.output
    assert "sparsity A (values <= 0): fc3:input" in compared.output
    assert "Layer by layer" in (tmp_path / "compare.html").read_text()
