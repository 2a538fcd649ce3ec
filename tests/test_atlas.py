"""The dataset atlas: one-pass scan, reductions, layouts, quality, comparison, resumability, engines."""

from __future__ import annotations

import copy
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import deepscope as ds
from deepscope.atlas.scanning.loading import default_workers
from deepscope.atlas.scanning.reductions import BINS, bin_edges
from deepscope.errors import (
    DatasetError,
    DeepscopeError,
    LayerNotFoundError,
    SettingError,
    SettingTypeError,
    SpecError,
    WorkspaceError,
)
from deepscope.probe import inference
from deepscope.zoo.datasets import FINGERPRINT_ITEMS

SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.fixture(scope="module")
def digits() -> ds.zoo.datasets.ImageDataset:
    return ds.datasets.mnist5k()


@pytest.fixture(scope="module")
def atlas(tmp_path_factory, lenet, digits) -> ds.atlas.Workspace:
    """LeNet over all 5,000 bundled digits (default layers: embedding + every conv / linear output)."""
    return ds.atlas.scan(lenet, digits, out=tmp_path_factory.mktemp("atlas"), batch_size=128, chunk_size=1000)


def reference_pass(vm: ds.VisionModel, images, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and a layer's output, computed without deepscope's scan (plain hooks, one batch)."""
    seen = {}
    handle = vm.module.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.update(out=o.detach()))
    try:
        with torch.no_grad():
            logits = vm.module(vm.preprocess(images))
    finally:
        handle.remove()
    return logits, seen["out"]


# ----------------------------------------------------------------------------------------------------------
# what a scan records


def test_lenet_confusion_matrix_equals_scikit_learn(atlas, lenet, digits):
    assert atlas.complete and len(atlas.indices) == 5000 and atlas.skipped == []
    logits, _ = reference_pass(lenet, digits.images, "conv1")
    np.testing.assert_array_equal(atlas.predictions, logits.argmax(1).numpy())
    np.testing.assert_allclose(atlas.probabilities, logits.softmax(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(atlas.labels, digits.labels.numpy())
    expected = confusion_matrix(atlas.labels, atlas.predictions, labels=list(range(10)))
    np.testing.assert_array_equal(atlas.confusion_matrix(), expected)
    np.testing.assert_allclose(
        atlas.confusion_matrix("true"), confusion_matrix(atlas.labels, atlas.predictions, normalize="true")
    )


def test_per_class_precision_recall_f1_equal_scikit_learn(atlas):
    report = atlas.class_report()
    precision, recall, f1, support = precision_recall_fscore_support(atlas.labels, atlas.predictions)
    np.testing.assert_allclose(report.precision, precision, rtol=1e-12)
    np.testing.assert_allclose(report.recall, recall, rtol=1e-12)
    np.testing.assert_allclose(report.f1, f1, rtol=1e-12)
    np.testing.assert_array_equal(report.support, support)
    assert report.to_pandas().loc["3", "support"] == 500
    # The printed table carries scikit-learn's numbers, rounded as its classification_report rounds them.
    from sklearn.metrics import classification_report

    theirs = classification_report(atlas.labels, atlas.predictions, digits=3, output_dict=True)
    rows = str(report).splitlines()
    for row in rows[1:-1]:
        name, p, r, f, n = row.split()
        assert [float(p), float(r), float(f), int(n)] == [
            round(theirs[name][key], 3) for key in ("precision", "recall", "f1-score")
        ] + [theirs[name]["support"]]
    assert rows[-1].split() == ["accuracy", f"{theirs['accuracy']:.3f}", str(len(atlas.labels))]


def test_most_confused_pairs_match_the_predictions(atlas):
    labels, predictions, probabilities = atlas.labels, atlas.predictions, atlas.probabilities
    pairs = atlas.most_confused(n=3, samples=2)
    counts = {}
    for label, predicted in zip(labels, predictions, strict=True):
        if label != predicted:
            counts[(label, predicted)] = counts.get((label, predicted), 0) + 1
    best = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:3]
    assert [((p.label, p.predicted), p.count) for p in pairs] == best
    top = pairs[0]
    wrong = np.flatnonzero((labels == top.label) & (predictions == top.predicted))
    ranked = wrong[np.argsort(-probabilities[wrong, top.predicted], kind="stable")][:2]
    np.testing.assert_array_equal(top.samples, atlas.indices[ranked])


def test_embedding_is_the_input_of_the_last_linear_layer(atlas, lenet, digits):
    assert atlas.embedding_layer == "fc3:input"
    assert atlas.layers == ["fc3:input", "conv1", "conv2", "fc1", "fc2", "fc3"]
    _, relu4 = reference_pass(lenet, digits.images[:300], "relu4")  # LeNet feeds relu4 into fc3
    np.testing.assert_allclose(atlas.embeddings()[:300], relu4.numpy(), rtol=1e-5, atol=1e-6)
    _, conv2 = reference_pass(lenet, digits.images[:300], "conv2")
    np.testing.assert_allclose(
        atlas.embeddings("conv2")[:300], conv2.mean((2, 3)).numpy(), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(LayerNotFoundError, match="Did you mean: conv2, conv1"):
        atlas.embeddings("conv")


class ReusedModules(torch.nn.Module):
    """One ReLU module after every convolution, and one convolution applied twice."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.act = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        x = self.act(self.bn(self.conv1(x)))
        x = self.act(self.conv2(x))
        x = self.conv2(x)
        return self.fc(x.mean((2, 3)))


def test_each_call_of_a_reused_module_scans_as_its_own_layer(tmp_path, unchanged):
    """'NAME@N' records the N-th call of a module the model calls more than once; the defaults record every call
    of a reused layer; a plain name of a reused module is refused with the names of its calls."""
    torch.manual_seed(0)
    module = ReusedModules().eval()
    with torch.no_grad():
        module.bn.running_mean.uniform_(
            -0.5, 0.5
        )  # not the identity: the folded copy has a batch norm to fold
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(40, 3, 8, 8, generator=generator)
    data = torch.utils.data.TensorDataset(inputs, torch.arange(40) % 3)
    calls = {"act": [], "conv2": []}
    handles = [
        getattr(module, name).register_forward_hook(lambda m, i, o, name=name: calls[name].append(o))
        for name in calls
    ]
    try:
        with torch.no_grad():
            module(inputs)
    finally:
        for handle in handles:
            handle.remove()
    vm = ds.as_vision_model(module)
    with unchanged(module):
        ws = ds.atlas.scan(
            vm, data, ["act@1", "conv2@1", "act@0"], out=tmp_path / "named", batch_size=16, thumbnail_size=0
        )
    assert ws.layers == ["act@1", "conv2@1", "act@0"] and ws.embedding_layer == "act@1"
    for layer, output in (
        ("act@0", calls["act"][0]),
        ("act@1", calls["act"][1]),
        ("conv2@1", calls["conv2"][1]),
    ):
        np.testing.assert_allclose(ws.embeddings(layer), output.mean((2, 3)).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            ws.unit_statistics(layer)["max"], output.amax((0, 2, 3)).numpy(), rtol=1e-5
        )
    defaults = ds.atlas.scan(vm, data, out=tmp_path / "defaults", batch_size=16, thumbnail_size=0)
    assert defaults.layers == ["fc:input", "conv1", "conv2@0", "conv2@1", "fc"]
    np.testing.assert_allclose(
        defaults.embeddings("conv2@0"), calls["conv2"][0].mean((2, 3)).numpy(), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(SettingError, match="name one call as 'NAME@N' .*: act@0, act@1"):
        ds.atlas.scan(vm, data, ["act"], out=tmp_path / "plain")


def test_activation_histogram_counts_every_value_in_its_float_bin(lenet, digits, tmp_path):
    images = digits.images[:400]
    ws = ds.atlas.scan(lenet, digits.subset(range(400)), ["conv1", "relu1"], out=tmp_path, batch_size=64)
    for layer in ("conv1", "relu1"):
        _, output = reference_pass(lenet, images, layer)
        values = output.numpy().astype(np.float64).ravel()
        histogram = ws.activation_histogram(layer)
        assert histogram.total == values.size
        assert histogram.high == values.max()  # exact; the minimum is known to within its bin
        assert histogram.lower[0] <= values.min() <= histogram.upper[0] and histogram.low <= values.min()
        assert histogram.mean == pytest.approx(values.mean(), rel=1e-5)
        assert histogram.zero_fraction == pytest.approx((values == 0).mean(), abs=0)
        assert histogram.positive_fraction == pytest.approx((values > 0).mean(), abs=0)
        # Independent binning: every value lands in the bin whose magnitude range holds it.
        for lower, upper, count in zip(histogram.lower, histogram.upper, histogram.counts, strict=True):
            if lower < 0 < upper:
                inside = np.abs(values) < upper
            elif lower >= 0:
                inside = (values >= lower) & (values < upper)
            else:
                inside = (values > lower) & (values <= upper)
            assert count == inside.sum(), (layer, lower, upper)
        assert histogram.counts.sum() == values.size
    assert ws.activation_histogram("relu1").zero_fraction > 0.3  # ReLU output is sparse
    coarse = ws.activation_histogram("conv1").rebin(16)
    assert coarse.counts.sum() == pytest.approx(400 * 6 * 28 * 28) and len(coarse.counts) == 16
    # Spreading evenly within bins: a linear histogram rebinned onto its own edges comes back unchanged.
    _, conv1 = reference_pass(lenet, images, "conv1")
    counts, edges = np.histogram(conv1.numpy().ravel(), bins=10)
    linear = ds.atlas.Histogram(
        counts, edges[:-1], edges[1:], "linear", edges[0], edges[-1], 0.0, int(counts.sum())
    )
    np.testing.assert_allclose(linear.rebin(10).counts, counts)
    np.testing.assert_allclose(linear.rebin(20).counts[::2] + linear.rebin(20).counts[1::2], counts)


def test_fast_float_histogram_equals_bincount_of_the_float_bins():
    from deepscope.atlas.scanning.reductions import float_bins, float_histogram

    x = torch.cat(
        [torch.randn(10_000) * 10 ** torch.randint(-30, 30, (10_000,)), torch.tensor([0.0, -0.0, 1.0])]
    )
    x = torch.cat([x, torch.tensor([float("inf"), float("nan"), -float("inf")])])
    np.testing.assert_array_equal(float_histogram(x), torch.bincount(float_bins(x), minlength=BINS))
    # The same bins read independently, in NumPy: the top 12 bits of each float32 as an unsigned integer.
    reference = np.bincount(x.numpy().astype(np.float32).view(np.uint32) >> 20, minlength=BINS)
    np.testing.assert_array_equal(float_histogram(x), reference)


def test_batched_preprocessing_equals_the_per_image_transform(lenet, efficientnet, photos, digits):
    pictures = list(photos.values())
    cases = [
        (lenet, digits.images[:100]),  # one size, no resize: a single uint8 batch
        (efficientnet, [photo.resize((320, 256)) for photo in pictures]),  # one size: batched resize + crop
        (efficientnet, [photo.crop((0, 0, 250 + 7 * i, 240)) for i, photo in enumerate(pictures)]),  # mixed
    ]
    for vm, images in cases:
        one_by_one = vm.preprocessing.pixel_transform()
        batched = vm.preprocessing.pixel_batch(images)
        assert len(batched) == len(images)
        for image, tensor in zip(images, batched, strict=True):
            assert torch.equal(tensor, one_by_one(image))  # bit-identical, not merely close
        assert torch.equal(vm.pixels(images), torch.stack(batched))


def test_bin_edges_cover_the_float_line_in_order():
    edges = bin_edges()
    assert edges.shape == (BINS, 2)
    positive = edges[1 : 255 * 8 - 1]  # the last finite bin reaches up to infinity
    assert edges[255 * 8 - 1, 1] == np.inf
    assert (positive[:, 0] < positive[:, 1]).all() and (positive[1:, 0] == positive[:-1, 1]).all()
    widths = positive[200:, 1] / positive[200:, 0]
    assert widths.max() <= 1.125 + 1e-12  # 8 bins per octave


def test_top_k_and_unit_statistics_equal_a_brute_force_pass(atlas, lenet, digits):
    _, conv2 = reference_pass(lenet, digits.images, "conv2")
    peak = conv2.flatten(2).amax(2)  # [N, 16]: each unit's spatial maximum per sample
    values, samples = atlas.top_k("conv2")
    assert values.shape == (16, 16)
    order = np.lexsort(
        (np.arange(len(peak))[:, None].repeat(16, 1).T, -peak.numpy().T)
    )  # value desc, index asc
    np.testing.assert_array_equal(samples, order[:, :16])
    np.testing.assert_allclose(values, np.take_along_axis(peak.numpy().T, order[:, :16], 1), rtol=1e-6)
    stats = atlas.unit_statistics("conv2")
    np.testing.assert_allclose(stats["max"], peak.amax(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(stats["activity"], (peak > 0).double().mean(0).numpy())
    np.testing.assert_allclose(
        stats["mean"], conv2.mean((2, 3)).double().mean(0).numpy(), rtol=1e-4, atol=1e-6
    )


def test_dead_units_are_found(lenet, digits, tmp_path, unchanged):
    broken = copy.deepcopy(lenet.module)
    with torch.no_grad():
        broken.fc1.bias[[3, 7]] = -1e4  # these two units can never fire
    vm = lenet.with_module(broken)
    with unchanged(broken):
        ws = ds.atlas.scan(vm, digits.subset(range(200)), ["fc1", "relu3"], out=tmp_path)
    _, relu3 = reference_pass(vm, digits.images[:200], "relu3")
    never = (relu3 <= 0).all(0).numpy()
    assert never[[3, 7]].all() and never.sum() > 2  # trained LeNet has dead fc1 units of its own
    np.testing.assert_array_equal(ws.unit_statistics("relu3")["dead"], never)
    np.testing.assert_array_equal(ws.unit_statistics("fc1")["dead"], never)
    np.testing.assert_allclose(ws.unit_statistics("relu3")["activity"], (relu3 > 0).double().mean(0).numpy())
    assert ws.activation_histogram("relu3").zero_fraction == pytest.approx(
        (relu3 == 0).double().mean().item()
    )


def test_weight_histograms_count_every_weight(atlas, lenet):
    histograms = atlas.weight_histograms()
    assert list(histograms) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    weights = lenet.module.fc1.weight.detach().numpy().ravel()
    h = histograms["fc1"]
    assert h.counts.sum() == weights.size and h.low == weights.min() and h.high == weights.max()
    expected, _ = np.histogram(weights, bins=np.append(h.lower, h.upper[-1]))
    assert np.abs(h.counts - expected).sum() <= 2  # float32 vs float64 edge rounding only
    assert h.mean == pytest.approx(weights.astype(np.float64).mean(), rel=1e-12)
    assert (h.zeros, h.positives) == (np.count_nonzero(weights == 0), np.count_nonzero(weights > 0))
    layer = torch.nn.Sequential(torch.nn.Linear(4, 2))
    with torch.no_grad():
        layer[0].weight.copy_(torch.tensor([[0.0, -1.0, 2.0, 0.0], [3.0, 0.0, -0.5, 1.0]]))
    small = ds.atlas.weight_histograms(layer)["0"]  # by hand: 3 zeros, 3 positives, mean 4.5 / 8
    assert (small.zeros, small.positives, small.total, small.mean, small.low, small.high) == (
        3,
        3,
        8,
        0.5625,
        -1,
        3,
    )


# ----------------------------------------------------------------------------------------------------------
# layouts


def test_tsne_layout_keeps_digits_apart(atlas):
    points = atlas.layout("tsne", n_jobs=2)
    assert points.shape == (5000, 2)
    accuracy = cross_val_score(KNeighborsClassifier(5), points, atlas.labels, cv=5).mean()
    assert accuracy >= 0.90, accuracy
    again = atlas.layout("tsne", n_jobs=2)  # stored in the workspace: read back, not recomputed
    np.testing.assert_array_equal(points, again)
    stored = [(layout.kind, layout.layer) for layout in atlas.store.layouts(atlas.run.id)]
    assert stored.count(("tsne", "fc3:input")) == 1


def test_image_grid_assigns_each_cell_once_and_keeps_neighborhoods(atlas):
    grid = atlas.image_grid(12, 12, kind="pca")
    cells = grid.cells.ravel()
    assert len(set(cells.tolist())) == 144 and (cells >= 0).all()
    points = atlas.layout("pca")[cells]
    # Cells to the right hold points further right in the layout, cells lower down hold points lower.
    columns = np.tile(np.arange(12), 12)
    rows = np.repeat(np.arange(12), 12)
    assert np.corrcoef(columns, points[:, 0])[0, 1] > 0.8
    assert np.corrcoef(rows, points[:, 1])[0, 1] < -0.8
    # The assignment is optimal: no swap of two cells lowers the cost.
    brute = ds.atlas.image_grid(np.random.default_rng(0).normal(size=(6, 2)), 2, 3)
    from itertools import permutations

    placed = np.random.default_rng(0).normal(size=(6, 2))
    unit = (placed - placed.min(0)) / (placed.max(0) - placed.min(0))
    unit[:, 1] = 1 - unit[:, 1]
    centers = np.array([[(c + 0.5) / 3, (r + 0.5) / 2] for r in range(2) for c in range(3)])
    best = min(
        sum(((unit[p] - centers[cell]) ** 2).sum() for cell, p in enumerate(perm))
        for perm in permutations(range(6))
    )
    assert brute.cost == pytest.approx(best)


def test_nearest_neighbors_equal_brute_force(atlas):
    neighbors, distances = atlas.neighbors(k=5)
    x = atlas.embeddings()[:200].astype(np.float64)
    full = atlas.embeddings().astype(np.float64)
    d = ((x[:, None, :] - full[None, :, :]) ** 2).sum(-1)
    d[np.arange(200), np.arange(200)] = np.inf
    np.testing.assert_allclose(distances[:200], np.sqrt(np.sort(d, 1)[:, :5]), rtol=1e-4)
    assert (neighbors[:200, 0] == atlas.indices[d.argmin(1)]).mean() > 0.99  # equal up to exact ties


def test_umap_neighbor_graph_equals_umap_learns_own_exact_graph(atlas):
    """Below 4,096 points umap-learn searches neighbors exactly itself (full distance matrix); the graph built
    from deepscope's neighbor lists must be the same, entry for entry."""
    from sklearn.metrics import pairwise_distances
    from umap.umap_ import fuzzy_simplicial_set

    from deepscope.atlas.layouts import umap_neighbors

    x = np.ascontiguousarray(atlas.embeddings()[:1500], dtype=np.float32)
    rng = np.random.RandomState(0)
    own, *_ = fuzzy_simplicial_set(pairwise_distances(x), 15, rng, "precomputed")  # what UMAP.fit does here
    indices, distances = umap_neighbors(x, 15)
    ours, *_ = fuzzy_simplicial_set(x, 15, rng, "euclidean", knn_indices=indices, knn_dists=distances)
    assert abs(own.tocsr() - ours.tocsr()).max() == 0


@pytest.mark.slow
def test_umap_layout_keeps_digits_apart(atlas):
    points = atlas.layout("umap")
    assert cross_val_score(KNeighborsClassifier(5), points, atlas.labels, cv=5).mean() >= 0.9


# ----------------------------------------------------------------------------------------------------------
# comparison


def test_linear_cka_properties_and_the_kernel_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 50))
    # Kernel form (Kornblith et al. eq. 3 with linear kernels): HSIC(K, L) = tr(K H L H) / (n - 1)^2.
    h = np.eye(40) - 1 / 40
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)

    expected = hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))
    assert ds.atlas.linear_cka(x, y) == pytest.approx(expected, rel=1e-10)  # feature-space path
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert ds.atlas.linear_cka(x, 5 * x @ q + 3) == pytest.approx(1.0, abs=1e-12)
    assert ds.atlas.linear_cka(torch.from_numpy(x), x) == pytest.approx(1.0, abs=1e-12)


def test_cka_sample_space_path_equals_feature_space_path():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 40)), rng.normal(size=(30, 45))  # p*q > n^2: the Gram path
    from deepscope.atlas.compare import _centered

    a, b = _centered(x), _centered(y)
    feature = np.square(b.T @ a).sum() / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
    assert ds.atlas.linear_cka(x, y) == pytest.approx(feature, rel=1e-10)


def test_cka_of_a_model_with_itself_and_a_random_copy(lenet, digits, unchanged):
    torch.manual_seed(0)
    random_module = ds.zoo.lenet.lenet5().eval()
    random = lenet.with_module(random_module)
    with unchanged(lenet.module):
        itself = ds.atlas.cka(lenet, lenet, "mnist5k:test", samples=512, batch_size=128)
    assert itself.layers_a == ["fc3:input", "conv1", "conv2", "fc1", "fc2", "fc3"] and itself.samples == 512
    np.testing.assert_allclose(np.diagonal(itself.matrix), 1.0, atol=1e-9)
    against = ds.atlas.cka(lenet, random, "mnist5k:test", samples=512, batch_size=128)
    diagonal = dict(zip(against.layers_a, np.diagonal(against.matrix), strict=True))
    # Early layers of any network mostly pass the input on (Kornblith et al. 2019, fig. 5), so conv1 stays
    # close; the learned layers are clearly apart.
    assert all(diagonal[layer] < 0.75 for layer in ("fc3:input", "fc2", "fc3")), diagonal
    assert all(value < 0.99 for value in diagonal.values()) and diagonal["fc1"] < 0.9, diagonal
    with pytest.raises(SettingError, match="batch_size must be an int >= 4 .*got 3"):
        ds.atlas.cka(lenet, random, "mnist5k:test", batch_size=3)
    with pytest.raises(SettingTypeError, match="batch_size must be an int >= 4 .*got 64.0"):
        ds.atlas.cka(lenet, random, "mnist5k:test", batch_size=64.0)


def test_minibatch_cka_uses_the_unbiased_hsic_and_approaches_full_cka(lenet, digits):
    from deepscope.atlas.compare import hsic_unbiased

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 7))
    k, l_ = x @ x.T, y @ y.T
    n = 12
    kt, lt = k - np.diag(np.diag(k)), l_ - np.diag(np.diag(l_))
    ones = np.ones(n)
    expected = (
        np.trace(kt @ lt)
        + ones @ kt @ ones * (ones @ lt @ ones) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * ones @ kt @ lt @ ones
    ) / (n * (n - 3))
    assert hsic_unbiased(torch.from_numpy(k), torch.from_numpy(l_)).item() == pytest.approx(
        expected, rel=1e-10
    )
    torch.manual_seed(0)
    random = lenet.with_module(ds.zoo.lenet.lenet5().eval())
    images = digits.images[:600]
    _, mine = reference_pass(lenet, images, "fc1")
    _, theirs = reference_pass(random, images, "fc1")
    whole = ds.atlas.cka(lenet, random, digits.subset(range(600)), ["fc1"], ["fc1"], batch_size=600)
    assert whole.matrix[0, 0] == pytest.approx(ds.atlas.linear_cka(mine, theirs), abs=0.02)


def test_compare_two_scans_side_by_side(lenet, digits, atlas, tmp_path):
    torch.manual_seed(0)
    random = lenet.with_module(ds.zoo.lenet.lenet5().eval())
    subset = digits.subset(range(0, 5000, 10))
    trained = ds.atlas.scan(lenet, subset, out=tmp_path / "trained", thumbnail_size=0)
    other = ds.atlas.scan(random, subset, out=tmp_path / "random", thumbnail_size=0)
    itself = ds.atlas.compare(trained, trained)
    np.testing.assert_allclose(np.diagonal(itself.cka), 1.0, atol=1e-9)
    assert itself.agreement == 1.0 and itself.accuracy_a == itself.accuracy_b
    both = ds.atlas.compare(trained, other)
    for i, layer in enumerate(both.layers_a):
        pooled_a, pooled_b = trained.embeddings(layer), other.embeddings(layer)
        assert both.cka[i, i] == pytest.approx(ds.atlas.linear_cka(pooled_a, pooled_b), rel=1e-12)
    assert both.cka[0, 0] < 0.8 and both.accuracy_b < 0.5 and both.agreement < 0.5
    np.testing.assert_array_equal(both.confusion_a, trained.confusion_matrix())
    np.testing.assert_array_equal(both.confusion_b, other.confusion_matrix())
    with pytest.raises(WorkspaceError, match="different data"):
        ds.atlas.compare(trained, atlas)


# ----------------------------------------------------------------------------------------------------------
# data


def write_digit_folder(root: Path, digits, per_class: int = 5) -> list[str]:
    """class-per-subfolder PNGs of real digits, plus two broken files; returns the broken ones."""
    for digit in range(3):
        (root / str(digit)).mkdir(parents=True)
        chosen = np.flatnonzero(digits.labels.numpy() == digit)[:per_class]
        for i, index in enumerate(chosen):
            digits.images[index].save(root / str(digit) / f"{i}.png")
    (root / "1" / "garbage.png").write_bytes(b"this is not a png at all")
    whole = (root / "2" / "0.png").read_bytes()
    (root / "2" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    return ["1/garbage.png", "2/truncated.png"]


def test_corrupt_images_in_a_folder_are_reported_and_skipped(lenet, digits, tmp_path, unchanged):
    broken = write_digit_folder(tmp_path / "digits", digits)
    with unchanged(lenet.module):
        ws = ds.atlas.scan(lenet, str(tmp_path / "digits"), out=tmp_path / "ws", batch_size=4)
    assert ws.complete and len(ws.indices) == 15
    assert sorted(sample.source for sample in ws.skipped) == broken
    assert all("cannot be decoded" in sample.error for sample in ws.skipped)
    np.testing.assert_array_equal(np.bincount(ws.labels), [5, 5, 5])
    assert (ws.predictions == ws.labels).mean() >= 0.9
    assert ws.confusion_matrix().sum() == 15
    folder = ds.datasets.ImageFolder(tmp_path / "digits")
    assert set(np.delete(np.arange(len(folder)), ws.indices)) == {sample.index for sample in ws.skipped}


def test_loader_threads_change_nothing_in_the_scan(lenet, digits, tmp_path):
    broken = write_digit_folder(tmp_path / "digits", digits)
    scans = {
        workers: ds.atlas.scan(
            lenet,
            str(tmp_path / "digits"),
            out=tmp_path / f"ws{workers}",
            batch_size=2,
            chunk_size=7,
            workers=workers,
        )
        for workers in (0, 3)
    }
    inline, threaded = scans[0], scans[3]
    assert sorted(sample.source for sample in threaded.skipped) == broken
    assert threaded.skipped == inline.skipped
    for name in ("indices", "labels", "predictions", "probabilities", "thumbnails"):
        np.testing.assert_array_equal(getattr(threaded, name), getattr(inline, name))
    np.testing.assert_array_equal(threaded.embeddings(), inline.embeddings())
    for ours, theirs in zip(threaded.top_k("conv2"), inline.top_k("conv2"), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(SettingError, match="workers must be a whole number >= 0"):
        ds.atlas.scan(lenet, digits, out=tmp_path / "bad", workers=-1)
    assert default_workers(torch.device("cpu")) == 0 and 1 <= default_workers(torch.device("cuda")) <= 8


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"batch_size": 0}, SettingError, "batch_size must be a positive int, got 0"),
        ({"chunk_size": "512"}, SettingTypeError, "chunk_size must be a positive int, got '512'"),
        ({"k": True}, SettingTypeError, "k must be a positive int, got True"),
        ({"thumbnail_size": -1}, SettingError, r"thumbnail_size must be an int >= 0 \(0: no thumbnails\)"),
        ({"workers": 1.5}, SettingTypeError, "workers must be a whole number >= 0"),
        ({"engine": "spark"}, SettingError, "engine must be one of local, ray, got 'spark'"),
        ({"layers": []}, SettingError, "layers is empty"),
    ],
)
def test_scan_settings_are_checked_before_anything_is_written(lenet, tmp_path, settings, error, message):
    digits = ds.datasets.mnist5k("test").subset(range(10))
    with pytest.raises(error, match=message):
        ds.atlas.scan(lenet, digits, out=tmp_path / "ws", **settings)
    assert not (tmp_path / "ws").exists()


def test_folder_classes_must_name_model_classes(lenet, tmp_path):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    Image.new("L", (28, 28)).save(tmp_path / "data" / "cats" / "a.png")
    with pytest.raises(DatasetError, match="name no class of the model"):
        ds.atlas.scan(lenet, str(tmp_path / "data"), out=tmp_path / "ws")


def test_folder_class_errors_suggest_classes_holding_the_folder_name(efficientnet, tmp_path):
    for name in ("cat", "coffee"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "data" / name / "a.png")
    with pytest.raises(
        DatasetError, match="Closest classes: 'cat' -> tiger cat, Persian cat.*'coffee' -> coffee mug"
    ):
        ds.load_dataset(str(tmp_path / "data"), efficientnet.labels)


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield from range(3)


def test_photos_without_labels_and_data_spec_errors(efficientnet, tmp_path):
    ws = ds.atlas.scan(efficientnet, "samples", layers=["_fc:input", "_blocks.15"], out=tmp_path / "ws")
    assert ws.labels is None and len(ws.predictions) == 5 and ws.embeddings().shape == (5, 1280)
    assert ws.thumbnails.shape == (5, 32, 32, 3)
    with pytest.raises(WorkspaceError, match="no labels"):
        ws.confusion_matrix()
    with pytest.raises(SpecError, match="Did you mean: mnist5k"):
        ds.atlas.scan(efficientnet, "mnist5", out=tmp_path / "other")
    with pytest.raises(SpecError, match="split must be"):
        ds.load_dataset("mnist5k:val")
    with pytest.raises(DatasetError, match="no length"):
        ds.load_dataset(Stream())
    misnamed = ds.as_vision_model(
        efficientnet.module, preprocessing=efficientnet.preprocessing, labels=["a", "b"]
    )
    with pytest.raises(DeepscopeError, match="has 2 class names but scores 1000 classes"):
        ds.atlas.scan(misnamed, "samples", out=tmp_path / "misnamed")


def test_any_torch_dataset_through_a_python_spec(lenet, tmp_path, monkeypatch):
    (tmp_path / "mydigits.py").write_text(
        textwrap.dedent(
            """
            import torch
            import deepscope as ds

            class Tensors(torch.utils.data.Dataset):
                name = "my-tensors"

                def __init__(self):
                    self.vm = ds.load_model("zoo:lenet_mnist")
                    self.digits = ds.datasets.mnist5k("test")

                def __len__(self):
                    return 50

                def __getitem__(self, i):
                    return self.vm.preprocess(self.digits.images[i])[0], self.digits.labels[i].clone()

            def make():
                return Tensors()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ws = ds.atlas.scan(lenet, "python:mydigits:make", out=tmp_path / "ws")
    test = ds.datasets.mnist5k("test")
    assert ws.run.dataset == "my-tensors"
    np.testing.assert_array_equal(ws.labels, test.labels[:50].numpy())
    logits, _ = reference_pass(lenet, test.images[:50], "conv1")
    np.testing.assert_array_equal(ws.predictions, logits.argmax(1).numpy())
    assert ws.thumbnails.shape == (50, 28, 28, 1)  # min-max scaled model inputs
    with pytest.raises(SpecError, match="has no callable 'mak'"):
        ds.load_dataset("python:mydigits:mak")


class DictDigits(torch.utils.data.Dataset):
    """Digits as a Hugging Face ``datasets`` table gives them: dicts of a uint8 array and a NumPy label."""

    def __init__(self, digits, n: int):
        self.digits, self.n = digits, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        image, label = self.digits[i]
        return {"image": np.asarray(image), "label": np.int64(label), "id": i}


def test_dict_items_and_numpy_images_scan_like_pil_tuples(lenet, tmp_path):
    test = ds.datasets.mnist5k("test")
    as_tuples = ds.atlas.scan(lenet, test.subset(range(100)), out=tmp_path / "tuples", thumbnail_size=0)
    as_dicts = ds.atlas.scan(lenet, DictDigits(test, 100), out=tmp_path / "dicts", thumbnail_size=0)
    np.testing.assert_array_equal(as_dicts.labels, test.labels[:100].numpy())
    np.testing.assert_array_equal(as_dicts.predictions, as_tuples.predictions)
    np.testing.assert_array_equal(as_dicts.embeddings(), as_tuples.embeddings())


def test_lists_image_arrays_and_input_tensors_scan_as_datasets(lenet, tmp_path):
    test = ds.datasets.mnist5k("test").subset(range(60))
    reference = ds.atlas.scan(lenet, test, out=tmp_path / "reference", thumbnail_size=0)
    forms = {
        "records": [
            {"image": np.asarray(test[i][0]), "label": test[i][1]} for i in range(60)
        ],  # as from Hugging Face
        "pixels": np.stack([np.asarray(image) for image in test.images]),  # uint8 [N,28,28]
        "inputs": lenet.preprocess(test.images),  # model inputs [N,1,28,28]
        "channels first": torch.from_numpy(np.stack([np.asarray(i) for i in test.images]))[
            :, None
        ],  # read_image
        "channels last": torch.from_numpy(np.stack([np.asarray(i) for i in test.images]))[
            ..., None
        ],  # HF torch
    }
    for name, data in forms.items():
        ws = ds.atlas.scan(lenet, data, out=tmp_path / name, thumbnail_size=0)
        np.testing.assert_array_equal(ws.predictions, reference.predictions)
        np.testing.assert_allclose(ws.embeddings(), reference.embeddings(), rtol=1e-5, atol=1e-6)
        assert (ws.labels is not None) == (name == "records")
    with pytest.raises(SpecError, match="map-style dataset .* got dict"):
        ds.atlas.scan(lenet, {"a": 1}, out=tmp_path / "dict")


class Items(torch.utils.data.Dataset):
    def __init__(self, item):
        self.item = item

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int):
        return self.item


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"pixels": np.zeros((28, 28), np.uint8)}, r"one image under 'image' or 'img' .* keys \['pixels'\]"),
        ({"image": np.zeros((28, 28), np.uint8), "label": 1, "target": 1}, "at most one label"),
        ((np.zeros((28, 28), np.float32), 1), r"is float32 \[28, 28\]; expected uint8 pixels"),
        ((np.zeros((28, 28), np.uint8), torch.eye(10)[3]), r"one class index, got an array of shape \[10\]"),
        ((np.zeros((28, 28), np.uint8), 2.5), "class indices, got 2.5"),
        ({"image": "digit.png"}, "holds a str; expected a PIL image, a uint8 NumPy image"),
    ],
)
def test_items_that_are_not_images_with_class_indices_are_named(lenet, tmp_path, item, message):
    with pytest.raises(DeepscopeError, match=message):
        ds.atlas.scan(lenet, Items(item), out=tmp_path)


# ----------------------------------------------------------------------------------------------------------
# leaving the model as found


def test_scan_leaves_the_model_as_found_also_when_it_fails(lenet, digits, tmp_path, unchanged):
    module = copy.deepcopy(lenet.module).train()  # train mode: the scan must run in eval and restore it
    vm = lenet.with_module(module)
    with unchanged(module):
        ws = ds.atlas.scan(vm, digits.subset(range(100)), out=tmp_path / "a", thumbnail_size=0)
    logits, _ = reference_pass(lenet, digits.images[:100], "conv1")
    np.testing.assert_array_equal(ws.predictions, logits.argmax(1).numpy())
    bad = ds.zoo.datasets.ImageDataset(digits.images[:10], torch.full((10,), 12), digits.classes, "bad")
    with unchanged(module), pytest.raises(DatasetError, match="label 12, outside"):
        ds.atlas.scan(vm, bad, out=tmp_path / "b")
    with unchanged(module), pytest.raises(LayerNotFoundError, match="conv1"):
        ds.atlas.scan(vm, digits, ["conv"], out=tmp_path / "c")
    assert module.training


# ----------------------------------------------------------------------------------------------------------
# the workspace


def test_workspace_tables_read_with_pandas_and_sqlite(atlas):
    import pandas as pd

    with sqlite3.connect(atlas.path / "workspace.sqlite") as connection:
        predictions = pd.read_sql("SELECT idx, predicted, label FROM predictions ORDER BY idx", connection)
        runs = pd.read_sql("SELECT * FROM runs", connection)
        version = connection.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    np.testing.assert_array_equal(predictions["predicted"], atlas.predictions)
    assert runs.loc[0, "status"] == "complete" and version == "2"
    probabilities = np.load(atlas.path / "runs" / "1" / "probabilities.npy")
    np.testing.assert_array_equal(probabilities, atlas.probabilities)


def test_feedback_round_trips(atlas):
    first = atlas.add_feedback("relabel", 4, index=17)
    atlas.add_feedback("unit_name", "loops", layer="conv2", unit=3)
    rows = ds.atlas.open_workspace(atlas.path).feedback()
    assert rows[0]["id"] == first and rows[0]["value"] == 4 and rows[0]["index"] == 17
    assert atlas.feedback("unit_name")[0]["layer"] == "conv2"
    with pytest.raises(SettingTypeError, match="feedback kind must be a non-empty string, got 3"):
        atlas.add_feedback(3, "flag", index=1)
    with pytest.raises(SettingError, match="feedback kind must be a non-empty string"):
        atlas.add_feedback("", "flag", index=1)
    assert len(atlas.feedback()) == 2


def test_other_schema_versions_and_other_data_are_refused(atlas, lenet, tmp_path):
    copy_dir = tmp_path / "old"
    copy_dir.mkdir()
    with (
        sqlite3.connect(atlas.path / "workspace.sqlite") as source,
        sqlite3.connect(copy_dir / "workspace.sqlite") as target,
    ):
        source.backup(target)
        target.execute("UPDATE meta SET value='0' WHERE key='schema_version'")
    with pytest.raises(WorkspaceError, match="schema version 0 .*reads versions 1 to 2"):
        ds.atlas.open_workspace(copy_dir)
    with pytest.raises(WorkspaceError, match="holds scans of dataset 'mnist5k-all'"):
        ds.atlas.scan(lenet, "mnist5k:test", out=atlas.path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(WorkspaceError, match="not empty"):
        ds.atlas.scan(lenet, "mnist5k:test", out=tmp_path / "full")


def test_other_data_of_the_same_type_and_length_are_told_apart(lenet, tmp_path):
    """The workspace recognises data by name, length and content: before, a second TensorDataset of the same
    length (or another 100-digit subset) was taken for the first, and its scan returned the first one's results."""
    test = ds.datasets.mnist5k("test")
    inputs, labels = lenet.preprocess(test.images[:100]), test.labels[:100]
    first = ds.atlas.scan(lenet, torch.utils.data.TensorDataset(inputs, labels), out=tmp_path / "a")
    again = ds.atlas.scan(
        lenet, torch.utils.data.TensorDataset(inputs.clone(), labels.clone()), out=tmp_path / "a"
    )
    assert again.run.id == first.run.id  # the same content: the finished run
    flipped = torch.utils.data.TensorDataset(inputs.flip(3), labels)
    with pytest.raises(WorkspaceError, match="'TensorDataset' \\(the same name, other content"):
        ds.atlas.scan(lenet, flipped, out=tmp_path / "a")
    ds.atlas.scan(lenet, test.subset(range(100)), out=tmp_path / "b")
    with pytest.raises(WorkspaceError, match="holds scans of dataset 'mnist5k-test'"):
        ds.atlas.scan(lenet, test.subset(range(100, 200)), out=tmp_path / "b")

    class Augmented(torch.utils.data.Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, index):
            return inputs[index] + 0.1 * torch.randn_like(inputs[index]), labels[index]

    ds.atlas.scan(lenet, Augmented(), out=tmp_path / "c")
    with pytest.raises(WorkspaceError, match="or its items are random"):
        ds.atlas.scan(lenet, Augmented(), out=tmp_path / "c")


def test_a_model_with_another_transform_or_module_is_another_run(lenet, tmp_path):
    import torchvision.transforms as T

    digits = ds.datasets.mnist5k("test").subset(range(50))

    def with_transform(*steps):
        transform = T.Compose([T.ToTensor(), *steps])
        return ds.as_vision_model(
            lenet.module, preprocessing=lenet.preprocessing, labels=lenet.labels, transform=transform
        )

    plain = ds.atlas.scan(with_transform(), digits, out=tmp_path, thumbnail_size=0)
    normalized = ds.atlas.scan(
        with_transform(T.Normalize((0.13,), (0.31,))), digits, out=tmp_path, thumbnail_size=0
    )
    assert normalized.run.id != plain.run.id
    assert ds.atlas.scan(with_transform(), digits, out=tmp_path, thumbnail_size=0).run.id == plain.run.id
    original = ds.atlas.scan(lenet, digits, out=tmp_path, thumbnail_size=0)
    swapped = copy.deepcopy(lenet.module)
    swapped.relu1 = torch.nn.Tanh()  # no parameters change; the function does
    tanh = ds.atlas.scan(lenet.with_module(swapped), digits, out=tmp_path, thumbnail_size=0)
    assert tanh.run.id != original.run.id
    swapped.train()  # the train/eval flag is no part of the identity: a scan runs in eval mode
    assert (
        ds.atlas.scan(lenet.with_module(swapped), digits, out=tmp_path, thumbnail_size=0).run.id
        == tanh.run.id
    )


def test_a_finished_scan_is_returned_not_repeated(atlas, lenet, digits):
    again = ds.atlas.scan(lenet, digits, out=atlas.path, batch_size=128, chunk_size=1000)
    assert again.run.id == atlas.run.id and len(again.store.runs()) == 1


# ----------------------------------------------------------------------------------------------------------
# resuming


SLOW_DATASET = """
import os, time
import torch
import deepscope as ds

LOADS = [0]

class SlowDigits(torch.utils.data.Dataset):
    name = "slow-digits"

    def __init__(self):
        self.digits = ds.datasets.mnist5k("test")
        self.delay = float(os.environ.get("SLOW_DIGITS_DELAY", "0"))

    def __len__(self):
        return len(self.digits)

    def __getitem__(self, i):
        LOADS[0] += 1
        time.sleep(self.delay)
        return self.digits[i]

def make():
    return SlowDigits()
"""


def test_a_killed_scan_resumes_and_equals_an_uninterrupted_one(lenet, tmp_path, monkeypatch):
    (tmp_path / "slowdigits.py").write_text(SLOW_DATASET)
    out = tmp_path / "ws"
    script = (
        "import deepscope as ds; "
        f"ds.atlas.scan('zoo:lenet_mnist', 'python:slowdigits:make', out={str(out)!r}, chunk_size=100, batch_size=25)"
    )
    environment = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{tmp_path}", "SLOW_DIGITS_DELAY": "0.004"}
    process = subprocess.Popen([sys.executable, "-c", script], env=environment)
    committed = 0
    try:
        deadline = time.monotonic() + 120
        while committed < 3 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
            if (out / "workspace.sqlite").exists():
                try:
                    with sqlite3.connect(out / "workspace.sqlite", timeout=5) as connection:
                        committed = connection.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
                except sqlite3.OperationalError:
                    pass  # the tables are being created
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert 3 <= committed < 10, f"the scan was not killed midway ({committed} of 10 chunks committed)"
    interrupted = ds.atlas.open_workspace(out)
    assert not interrupted.complete and len(interrupted.indices) >= 300

    monkeypatch.syspath_prepend(str(tmp_path))
    import slowdigits

    with sqlite3.connect(out / "workspace.sqlite") as connection:
        committed = connection.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
    slowdigits.LOADS[0] = 0
    resumed = ds.atlas.scan(
        "zoo:lenet_mnist", "python:slowdigits:make", out=out, chunk_size=100, batch_size=25
    )
    # the probe sample, the items the dataset's fingerprint hashes, and the chunks not yet written
    assert slowdigits.LOADS[0] == 1 + FINGERPRINT_ITEMS + 1000 - 100 * committed
    reference = ds.atlas.scan(
        lenet, "mnist5k:test", out=tmp_path / "reference", chunk_size=100, batch_size=25
    )
    assert resumed.complete and resumed.run.id == 1
    assert_same_scan(resumed, reference)


def test_a_scan_stopped_by_an_error_keeps_its_finished_chunks(lenet, tmp_path):
    class Failing(torch.utils.data.Dataset):
        name = "failing-digits"

        def __init__(self):
            self.digits = ds.datasets.mnist5k("test")

        def __len__(self):
            return 500

        def __getitem__(self, index):
            if index == 250:
                raise RuntimeError("the storage went away")
            return self.digits[index]

    with pytest.raises(RuntimeError, match="storage went away"):
        ds.atlas.scan(lenet, Failing(), out=tmp_path, chunk_size=100, batch_size=50)
    with sqlite3.connect(tmp_path / "workspace.sqlite") as connection:
        chunks = connection.execute("SELECT chunk FROM chunks ORDER BY chunk").fetchall()
    assert chunks == [(0,), (1,)]  # chunk 1 was waiting for its commit when chunk 2 failed
    stopped = ds.atlas.open_workspace(tmp_path)
    assert not stopped.complete
    np.testing.assert_array_equal(stopped.indices, np.arange(200))


def test_a_run_is_written_by_one_scan_at_a_time(lenet, tmp_path):
    """A second scan with the same arguments while the first still runs (two terminals, a job restarted while the
    old one lives) is refused with the reason; before, both wrote the same chunks and one crashed on SQLite's
    UNIQUE constraint. The lock goes with the process that held it."""
    digits = ds.datasets.mnist5k("test").subset(range(300), name="three-hundred")
    settings = {"out": tmp_path, "chunk_size": 100, "thumbnail_size": 0}

    class Stop(Exception):
        pass

    class Interrupted(torch.utils.data.Dataset):
        name = "three-hundred"

        def __len__(self):
            return len(digits)

        def __getitem__(self, index):
            if index == 150:
                raise Stop
            return digits[index]

        def fingerprint(self):  # the same data as digits, whose scan resumes this one
            return digits.fingerprint()

    with pytest.raises(Stop):
        ds.atlas.scan(lenet, Interrupted(), **settings)
    store = ds.workspace.Store.open(tmp_path)
    (run,) = store.runs()
    assert not run.complete
    with store.writing(run.fingerprint), pytest.raises(WorkspaceError, match="another process is scanning"):
        ds.atlas.scan(lenet, digits, **settings)
    resumed = ds.atlas.scan(lenet, digits, **settings)  # the holder is gone: the scan continues
    assert resumed.complete and resumed.run.id == run.id and len(resumed.indices) == 300
    with store.writing(run.fingerprint):
        assert ds.atlas.scan(lenet, digits, **settings).complete  # a complete run is only read


def test_an_interrupted_cli_scan_says_how_to_continue(lenet, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from deepscope.app import cli

    class Interrupting(torch.utils.data.Dataset):
        name = "interrupting"

        def __len__(self):
            return 300

        def __getitem__(self, index):
            if index == 150:
                raise KeyboardInterrupt
            return ds.datasets.mnist5k("test")[index]

    monkeypatch.setattr(
        sys.modules["deepscope.zoo.datasets"], "load_dataset", lambda data, labels: Interrupting()
    )
    result = CliRunner().invoke(
        cli.app, ["scan", "zoo:lenet_mnist", "anything", "--out", str(tmp_path), "--chunk-size", "100"]
    )
    assert result.exit_code == 130
    assert "interrupted: the chunks finished so far are kept" in result.output
    assert ds.workspace.Store.open(tmp_path).committed_chunks(1) == {0}  # chunk 0 done, chunk 1 was cut short


def assert_same_scan(a: ds.atlas.Workspace, b: ds.atlas.Workspace) -> None:
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.thumbnails, b.thumbnails)
    np.testing.assert_array_equal(a.confusion_matrix(), b.confusion_matrix())
    assert a.layers == b.layers
    for layer in a.layers:
        np.testing.assert_array_equal(a.embeddings(layer), b.embeddings(layer))
        for x, y in zip(a.top_k(layer), b.top_k(layer), strict=True):
            np.testing.assert_array_equal(x, y)
        ha, hb = a.activation_histogram(layer), b.activation_histogram(layer)
        np.testing.assert_array_equal(ha.counts, hb.counts)
        assert (ha.low, ha.high, ha.total) == (hb.low, hb.high, hb.total)
        assert ha.mean == pytest.approx(hb.mean, rel=1e-12)
        for key, value in a.unit_statistics(layer).items():
            np.testing.assert_allclose(value, b.unit_statistics(layer)[key], rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# Ray


@pytest.mark.slow
def test_ray_engine_equals_the_local_engine(lenet, tmp_path):
    ray = pytest.importorskip("ray")
    # Workers import deepscope from this checkout, as the test process does.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        },
    )
    try:
        remote = ds.atlas.scan(
            lenet, "mnist5k:test", out=tmp_path / "ray", engine="ray", actors=2, chunk_size=125, batch_size=50
        )
    finally:
        ray.shutdown()
    local = ds.atlas.scan(lenet, "mnist5k:test", out=tmp_path / "local", chunk_size=125, batch_size=50)
    assert_same_scan(remote, local)
    with sqlite3.connect(tmp_path / "ray" / "workspace.sqlite") as connection:
        assert connection.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 8


def test_ray_engine_without_ray_says_how_to_install(lenet, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ds.errors.DeepscopeError, match=r"pip install 'deepscope\[ray\]'"):
        ds.atlas.scan(lenet, "mnist5k:test", out=tmp_path, engine="ray")
    with pytest.raises(SettingError, match="engine must be"):
        ds.atlas.scan(lenet, "mnist5k:test", out=tmp_path, engine="spark")


# ----------------------------------------------------------------------------------------------------------
# command line


def test_cli_scan_and_compare(tmp_path, digits):
    from typer.testing import CliRunner

    from deepscope.app import cli

    write_digit_folder(tmp_path / "digits", digits, per_class=4)
    runner = CliRunner()
    first = runner.invoke(
        cli.app, ["scan", "zoo:lenet_mnist", str(tmp_path / "digits"), "--out", str(tmp_path / "a")]
    )
    assert first.exit_code == 0, first.output
    assert "run 1: 12 samples scanned, 2 skipped" in first.output and "garbage.png" in first.output
    assert "accuracy" in first.output and "embedding: fc3:input" in first.output
    scanned = ds.atlas.open_workspace(tmp_path / "a")
    dead = {layer: scanned.unit_statistics(layer)["dead"] for layer in scanned.layers}
    listed = [f"{layer} {int(flags.sum())}/{len(flags)}" for layer, flags in dead.items() if flags.any()]
    assert f"dead units (never above 0): {', '.join(listed) or 'none'}" in first.output
    mistakes = scanned.most_confused()
    assert ("most confused" in first.output) == bool(mistakes)
    second = runner.invoke(
        cli.app,
        [
            "scan",
            "zoo:lenet_mnist",
            str(tmp_path / "digits"),
            "--out",
            str(tmp_path / "b"),
            "--layer",
            "fc2",
            "--layer",
            "fc1",
        ],
    )
    assert second.exit_code == 0, second.output
    assert "layers: fc2, fc1 (embedding: fc2)" in second.output
    page = tmp_path / "compare.html"
    compared = runner.invoke(
        cli.app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--html", str(page)]
    )
    assert compared.exit_code == 0, compared.output
    assert "same prediction on 100.00%" in compared.output and "linear CKA" in compared.output
    assert "Confusion matrices" in page.read_text() and "data:image/png;base64" in page.read_text()
    # fc2 of scan a and fc2 of scan b are the same layer: CKA 1
    row = next(line for line in compared.output.splitlines() if line.startswith("fc2 "))
    assert row.split()[1] == "1.000"
    swapped = runner.invoke(cli.app, ["compare", str(tmp_path / "b"), str(tmp_path / "a")])
    lines = swapped.output.splitlines()
    header = lines[lines.index("linear CKA (rows: A, columns: B)") + 1]
    assert header.split() == ["fc3:input", "conv1", "conv2", "fc1", "fc2", "fc3"]  # whole names
    # Two scans in one workspace: --run-a / --run-b pick them (without, both sides were the latest run)
    into_a = [
        "scan",
        "zoo:lenet_mnist",
        str(tmp_path / "digits"),
        "--out",
        str(tmp_path / "a"),
        "--layer",
        "fc2",
    ]
    assert "run 2: 12 samples scanned" in runner.invoke(cli.app, into_a).output
    one = runner.invoke(
        cli.app, ["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--run-a", "1", "--run-b", "2"]
    )
    assert one.exit_code == 0, one.output
    assert "run 1)" in one.output and "run 2)" in one.output
    lines = one.output.splitlines()
    assert lines[lines.index("linear CKA (rows: A, columns: B)") + 1].split() == ["fc2"]


# ----------------------------------------------------------------------------------------------------------
# CUDA (skipped where there is none)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_scan_on_cuda_equals_the_scan_on_the_cpu(lenet, tmp_path):
    gpu_module = copy.deepcopy(lenet.module).cuda()
    on_gpu = ds.atlas.scan(
        lenet.with_module(gpu_module), "mnist5k:test", out=tmp_path / "gpu", chunk_size=300
    )
    on_cpu = ds.atlas.scan(lenet, "mnist5k:test", out=tmp_path / "cpu", chunk_size=300)
    assert (on_gpu.predictions == on_cpu.predictions).mean() >= 0.999
    np.testing.assert_allclose(on_gpu.probabilities, on_cpu.probabilities, atol=1e-4)
    np.testing.assert_array_equal(on_gpu.confusion_matrix().sum(), 1000)
    for layer in on_cpu.layers:
        np.testing.assert_allclose(on_gpu.embeddings(layer), on_cpu.embeddings(layer), rtol=1e-3, atol=1e-4)
        gpu_top, cpu_top = on_gpu.top_k(layer), on_cpu.top_k(layer)
        assert (gpu_top[1][:, 0] == cpu_top[1][:, 0]).mean() >= 0.9
        np.testing.assert_allclose(gpu_top[0], cpu_top[0], rtol=1e-3, atol=1e-4)
        assert abs(on_gpu.activation_histogram(layer).mean - on_cpu.activation_histogram(layer).mean) < 1e-3
    result = ds.atlas.cka(lenet.with_module(gpu_module), lenet, "mnist5k:test", samples=256, batch_size=128)
    np.testing.assert_allclose(np.diagonal(result.matrix), 1.0, atol=1e-3)


def test_a_model_that_refuses_channels_last_maps_scans_the_same(tmp_path, flattening):
    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(40, 3, 8, 8, generator=generator), torch.arange(40) % 3)
    viewing, reshaping = ds.as_vision_model(flattening(view=True)), ds.as_vision_model(flattening(view=False))
    refused = ds.atlas.scan(viewing, data, out=tmp_path / "view", batch_size=16, thumbnail_size=0)
    taken = ds.atlas.scan(reshaping, data, out=tmp_path / "reshape", batch_size=16, thumbnail_size=0)
    assert not viewing.channels_last and reshaping.channels_last
    np.testing.assert_array_equal(refused.predictions, taken.predictions)
    for layer in refused.layers:
        np.testing.assert_allclose(refused.embeddings(layer), taken.embeddings(layer), rtol=1e-5, atol=1e-6)
        stats, other = refused.unit_statistics(layer), taken.unit_statistics(layer)
        for key in stats:
            np.testing.assert_allclose(stats[key], other[key], rtol=1e-5, atol=1e-6)
        assert refused.activation_histogram(layer).total == taken.activation_histogram(layer).total


def test_a_scan_through_hooks_equals_the_scan_through_the_folded_copy(lenet, tmp_path):
    """The scan records layers with taps in the forward-only copy; a hook of the user's on the model makes it
    record with hooks on the model instead. LeNet's copy computes the same floats, so the scans are equal."""
    digits = ds.datasets.mnist5k("test").subset(range(300))
    vm = ds.VisionModel(lenet.module, "lenet", lenet.preprocessing, lenet.labels)
    through_copy = ds.atlas.scan(vm, digits, out=tmp_path / "copy", batch_size=64, chunk_size=100)
    assert any(module is not vm.module for _, module in inference._COPIES[vm.module].values())
    hooked = copy.deepcopy(lenet.module)
    batches = []
    hooked.register_forward_pre_hook(lambda module, inputs: batches.append(inputs[0].shape[0]))
    through_hooks = ds.atlas.scan(
        lenet.with_module(hooked), digits, out=tmp_path / "hooks", batch_size=64, chunk_size=100
    )
    assert sorted(batches) == [1] + [36] * 3 + [64] * 3  # the probe sample, then every batch of 3 chunks
    assert_same_scan(through_copy, through_hooks)


def test_large_models_are_recorded_block_by_block():
    import torchvision

    from deepscope.atlas.scanning.plan import default_layers

    resnet = default_layers(torchvision.models.resnet18())
    assert resnet == ["conv1"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)] + ["fc"]
    lite0 = default_layers(ds.load_model("zoo:efficientnet_lite0").module)
    assert lite0 == ["_conv_stem"] + [f"_blocks.{i}" for i in range(16)] + ["_conv_head", "_fc"]
    # small models and large ones without blocks keep every convolution and linear layer
    assert default_layers(ds.load_model("zoo:lenet_mnist").module) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert len(default_layers(torchvision.models.vgg19())) == 19


def test_unreadable_and_non_finite_samples_are_recorded_skips(lenet, tmp_path):
    """A lazily decoded truncated image aborted the scan with a raw OSError (from the dataset fingerprint); a
    NaN input raised sqlite3.IntegrityError and left a workspace that could never complete."""
    digits = ds.datasets.mnist5k("test")
    paths = []
    for index in range(6):
        path = tmp_path / f"{index}.png"
        digits.images[index].save(path)
        paths.append(path)
    paths[2].write_bytes(paths[2].read_bytes()[:60])

    class Lazy(torch.utils.data.Dataset):  # Image.open without load(): decoding happens when pixels are read
        def __len__(self):
            return 6

        def __getitem__(self, index):
            return Image.open(paths[index]), int(digits.labels[index])

    lazy = ds.atlas.scan(lenet, Lazy(), out=tmp_path / "lazy", progress=False)
    assert lazy.complete and [skip.index for skip in lazy.skipped] == [2]
    assert "truncated" in lazy.skipped[0].error and len(lazy.predictions) == 5
    x = lenet.preprocess(digits.images[:6])
    x[3, 0, 4, 4] = float("nan")
    x[5, 0, 0, 0] = float("inf")
    tensors = torch.utils.data.TensorDataset(x, torch.as_tensor(digits.labels[:6]))
    scanned = ds.atlas.scan(lenet, tensors, out=tmp_path / "nan", progress=False)
    assert scanned.complete and [skip.index for skip in scanned.skipped] == [3, 5]
    assert all("NaN or infinite" in skip.error for skip in scanned.skipped)
    assert np.isfinite(scanned.probabilities).all() and len(scanned.indices) == 4


def test_a_workspace_on_read_only_storage_opens_for_reading(lenet, tmp_path):
    """Opening set WAL mode, which failed with 'unable to open database file' on a read-only mount; writing there
    now says so in one line."""
    import os
    import subprocess

    source = tmp_path / "ws"
    ds.atlas.scan(lenet, ds.datasets.mnist5k("test").subset(range(200)), out=source, progress=False)
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    bound = (
        subprocess.run(["mount", "--bind", str(source), str(mounted)], capture_output=True).returncode == 0
    )
    try:
        if bound and subprocess.run(["mount", "-o", "remount,ro,bind", str(mounted)]).returncode != 0:
            pytest.skip("this machine cannot remount read-only")
        if not bound:
            if os.geteuid() == 0:
                pytest.skip("root without mount: permissions cannot make a directory read-only")
            for path in [source, *source.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
            mounted = source
        ws = ds.atlas.open_workspace(mounted)
        assert ws.store.read_only and ws.complete and len(ws.predictions) == 200
        assert ws.confusion_matrix().sum() == 200 and ws.layout("pca").shape == (200, 2)
        with pytest.raises(
            WorkspaceError,
            match=r"open read-only \(read-only storage, or opened so\), so feedback cannot be saved",
        ) as error:
            ws.add_feedback("note", "blurry", index=3)
        assert "\n" not in str(error.value)
        with pytest.raises(WorkspaceError, match="cannot create the workspace"):
            ds.atlas.scan(
                lenet, ds.datasets.mnist5k("test").subset(range(10)), out=mounted / "new", progress=False
            )
    finally:
        if bound:
            subprocess.run(
                ["umount", "--lazy", str(mounted)]
            )  # lazy: an open database file must not block it
