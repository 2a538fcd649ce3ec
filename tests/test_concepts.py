"""Visual concepts (ds.units.concepts): streaming mini-batch k-means checked against scikit-learn's batch k-means
and a running mean computed by hand, planted patterns recovered, purity, patches, streaming, bad input."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import deepscope as ds
from deepscope.errors import DatasetError, SettingError
from deepscope.units.clustering import MiniBatchKMeans, kmeans_plus_plus

pytestmark = pytest.mark.usefixtures("one_thread")


def points_model() -> nn.Module:
    """Its layer 'features' gives the input ``[N,d,1,1]`` as it is: one feature vector per sample."""
    return nn.Sequential(OrderedDict(features=nn.Identity(), flatten=nn.Flatten())).eval()


def blobs(spread: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    directions = torch.tensor([[1.0, 0.2, 0.1], [0.1, 1.0, 0.3], [0.2, 0.1, 1.0], [0.6, 0.6, 0.2]])
    return torch.cat([d + spread * torch.randn(100, 3, generator=generator) for d in directions])


# the clustering against independent computations ----------------------------------------------------------


@pytest.mark.parametrize(("spread", "center_tolerance", "agreement"), [(0.1, 1e-3, 1.0), (0.3, 0.1, 0.93)])
def test_streaming_kmeans_matches_scikit_learns_batch_kmeans_from_the_same_start(
    spread, center_tolerance, agreement
):
    """Mini-batch k-means (25 samples a batch, 10 passes) against Lloyd's algorithm run to convergence on all the
    unit-normalized vectors at once: the same centers where the clusters are apart; where they overlap the
    running means keep a trace of early assignments, and the two stay close (centers, labels, inertia)."""
    from sklearn.cluster import KMeans, kmeans_plusplus

    points = blobs(spread)
    unit = (points / points.norm(dim=1, keepdim=True)).double().numpy()
    start, _ = kmeans_plusplus(unit, 4, random_state=0)
    reference = KMeans(4, init=start, n_init=1, tol=0, max_iter=300).fit(unit)
    found = ds.units.concepts(
        points_model(),
        points[:, :, None, None],
        "features",
        k=4,
        batch_size=25,
        epochs=10,
        init=torch.tensor(start, dtype=torch.float32),
        crops=False,
    )
    centers = found.centers.double().numpy()
    assert np.abs(centers - reference.cluster_centers_).max() < center_tolerance
    labels = ((unit[:, None, :] - centers[None]) ** 2).sum(2).argmin(1)
    assert (labels == reference.labels_).mean() >= agreement
    assert found.inertia == pytest.approx(reference.inertia_, rel=1e-3 if spread < 0.2 else 0.01)
    assert found.sizes.tolist() == np.bincount(labels, minlength=4).tolist()


def test_mini_batch_centers_are_running_means_of_their_points():
    generator = torch.Generator().manual_seed(3)
    batches = [torch.randn(n, 2, generator=generator) + torch.tensor([5.0, 0.0]) * (n % 2) for n in (7, 4, 9)]
    start = torch.tensor([[0.0, 0.0], [5.0, 0.0]])
    clustering = MiniBatchKMeans(start)
    assigned: list[list[np.ndarray]] = [[], []]
    centers = start.double().numpy().copy()
    for batch in batches:
        clustering.update(batch)
        points = batch.double().numpy()
        labels = ((points[:, None] - centers[None]) ** 2).sum(2).argmin(1)  # by the centers before the batch
        for cluster in range(2):
            assigned[cluster] += list(points[labels == cluster])
            if assigned[cluster]:
                centers[cluster] = np.mean(assigned[cluster], axis=0)
    np.testing.assert_allclose(clustering.centers.numpy(), centers, rtol=1e-5, atol=1e-6)
    assert clustering.counts.tolist() == [len(a) for a in assigned]


def test_kmeans_plus_plus_spreads_its_seeds():
    points = torch.cat([torch.full((50, 2), float(c)) + 0.01 * torch.randn(50, 2) for c in (0, 10, 20)])
    for seed in range(5):
        seeds = kmeans_plus_plus(points, 3, torch.Generator().manual_seed(seed))
        assert sorted(round(float(s[0]) / 10) for s in seeds) == [0, 1, 2]


# concepts on images ----------------------------------------------------------------------------------------

PATTERNS = ("horizontal lines", "vertical lines", "checkerboard", "flat gray")


def textures(count: int, size: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    """Images filled with one of four planted patterns (its label), at a random phase, under noise: lines and the
    checkerboard have two phases each, the flat gray one, so there are 7 kinds of patch (for 10 concepts)."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(size)[:, None].expand(size, size)
    columns = torch.arange(size)[None, :].expand(size, size)
    items = []
    for index in range(count):
        label = index % len(PATTERNS)
        dy, dx = torch.randint(0, 2, (2,), generator=generator).tolist()
        r, c = rows + dy, columns + dx
        pattern = (r % 2, c % 2, (r + c) % 2, torch.full_like(r, 1) * 0.5)[label].float()
        items.append(((pattern + 0.1 * torch.randn(size, size, generator=generator))[None], label))
    return items


def texture_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(8, 16, 3),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(16, 4),
        )
    ).eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concepts_recover_planted_patterns(seed, unchanged):
    model, data = texture_model(seed), textures(200, seed=seed)
    with unchanged(model):
        found = ds.units.concepts(model, data, "conv2", k=10, batch_size=32, patches=6, seed=seed)
    assert found.purity >= 0.9
    assert set(found.majority.tolist()) == set(range(len(PATTERNS)))  # every pattern is some concept's own
    assert found.vectors == 200 * 12 * 12 and int(found.sizes.sum()) == found.vectors
    assert int(found.class_counts.sum()) == found.vectors
    # Each concept's nearest patches come from images of its pattern, and are those images' receptive fields.
    patches = found.nearest
    labels = torch.tensor([label for _, label in data])
    assert (labels[patches.sample_indices] == found.majority[:, None]).float().mean() >= 0.95
    for concept in range(found.k):
        for slot in range(3):
            sample = int(patches.sample_indices[concept, slot])
            y, x = patches.positions[concept, slot].tolist()
            assert torch.equal(patches.crops[concept, slot], data[sample][0][:, y : y + 5, x : x + 5])
    distances = -patches.values
    assert (distances.diff(dim=1) >= 0).all()  # nearest first
    vectors = ds.units.activations(
        model, torch.stack([data[int(s)][0] for s in patches.sample_indices[0]]), "conv2"
    )
    vectors = vectors[torch.arange(6), :, patches.positions[0, :, 0], patches.positions[0, :, 1]]
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    torch.testing.assert_close((vectors - found.centers[0]).pow(2).sum(1), distances[0], rtol=1e-4, atol=1e-5)


def test_concepts_stream_each_sample_once_per_pass():
    """Memory does not grow with the data: samples are read batch by batch, once per pass (and once more for
    the crops of the nearest patches), never gathered."""

    class Counting(torch.utils.data.Dataset):
        def __init__(self, items):
            self.items, self.reads = items, []

        def __len__(self):
            return len(self.items)

        def __getitem__(self, index):
            self.reads.append(index)
            return self.items[index]

    data = Counting(textures(120))
    found = ds.units.concepts(texture_model(), data, "conv2", k=8, batch_size=16, epochs=2, patches=3)
    counts = np.bincount(data.reads, minlength=120)
    patched = set(found.nearest.sample_indices.flatten().tolist())
    assert all(counts[i] == 3 + (i in patched) for i in range(120))


def test_labels_given_or_read_and_concepts_reproducible():
    data, model = textures(80), texture_model()
    inputs = torch.stack([image for image, _ in data])
    labels = [label for _, label in data]
    read = ds.units.concepts(model, data, "conv2", k=8, batch_size=16, crops=False)
    given = ds.units.concepts(model, inputs, "conv2", k=8, batch_size=16, labels=labels, crops=False)
    torch.testing.assert_close(read.centers, given.centers)
    assert torch.equal(read.class_counts, given.class_counts) and read.purity == given.purity
    bare = ds.units.concepts(model, inputs, "conv2", k=8, batch_size=16, crops=False)
    assert bare.purity is None and bare.class_counts is None and bare.majority is None
    other = ds.units.concepts(model, inputs, "conv2", k=8, batch_size=16, crops=False, seed=1)
    assert not torch.allclose(bare.centers, other.centers)
    fixed = ds.units.concepts(model, inputs, "conv2", k=8, epochs=0, init=other.centers, crops=False)
    assert torch.equal(fixed.centers, other.centers)  # no pass moves them: only the assignment
    torch.testing.assert_close(fixed.sizes, other.sizes)


def test_concepts_of_a_layer_of_vectors_cluster_whole_images(lenet):
    digits = ds.datasets.mnist5k("test").subset(range(300))
    found = ds.units.concepts(lenet, digits, "fc2", k=10, patches=3, epochs=2)
    assert found.vectors == 300 and found.purity > 0.8
    assert found.nearest.crops.shape == (10, 3, 1, 28, 28)  # the whole digit
    assert found.classes == [str(d) for d in range(10)]


def test_concepts_refuse_bad_input(lenet, unchanged):
    digits = ds.datasets.mnist5k("test").subset(range(20))
    with unchanged(lenet.module):
        for call, error, complaint in (
            (
                lambda: ds.units.concepts(lenet, digits, "fc2", k=30),
                SettingError,
                "at least 30 feature vectors",
            ),
            (lambda: ds.units.concepts(lenet, digits, "conv*"), SettingError, "one layer; 'conv.' names 2"),
            (
                lambda: ds.units.concepts(lenet, digits, "conv2", k=0),
                SettingError,
                "k must be an int >= 1, got 0",
            ),
            (
                lambda: ds.units.concepts(lenet, digits, "conv2", k=4, init=torch.zeros(3, 16)),
                SettingError,
                "init",
            ),
            (
                lambda: ds.units.concepts(lenet, digits, "conv2", k=2, init=torch.zeros(2, 5)),
                SettingError,
                "16",
            ),
            (
                lambda: ds.units.concepts(lenet, digits, "conv2", labels=[1, 2]),
                DatasetError,
                "20 class indices",
            ),
        ):
            with pytest.raises(error, match=complaint):
                call()


def test_concept_grid_and_the_concepts_command(tmp_path, lenet):
    from PIL import Image
    from typer.testing import CliRunner

    from deepscope.app import cli
    from deepscope.render.units import concept_grid

    found = ds.units.concepts(lenet, ds.datasets.mnist5k("test").subset(range(100)), "conv2", k=5, patches=4)
    picture = concept_grid(found, tile_size=28, limit=3)  # 14x14 receptive fields shown twice as large
    header = picture.height - (3 * 29 + 1)  # a title line above 3 rows of 4 crops
    assert 8 <= header <= 30 and picture.width > 4 * 29 + 1
    assert concept_grid(found, order="purity", tile_size=28).height == header + 5 * 29 + 1
    unlabeled = ds.units.concepts(
        lenet, lenet.preprocess(ds.datasets.mnist5k("test").images[:50]), "conv2", k=4
    )
    with pytest.raises(SettingError, match="needs labels"):
        concept_grid(unlabeled, order="purity")
    out = tmp_path / "concepts.png"
    arguments = ["concepts", "zoo:lenet_mnist", "--layer", "fc2", "--data", "mnist5k:test", "--k", "6"]
    result = CliRunner().invoke(cli.app, [*arguments, "--patches", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "purity against the labels" in result.output and result.output.count("concept ") == 6
    assert Image.open(out).height == header + 6 * 29 + 1  # fc2 concepts: whole 28x28 digits


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_concepts_on_cuda_stay_there_and_equal_the_cpu(lenet):
    import copy

    gpu = lenet.with_module(copy.deepcopy(lenet.module).cuda())
    digits = ds.datasets.mnist5k("test").subset(range(300))
    start = ds.units.concepts(lenet, digits, "conv2", k=6, epochs=0, crops=False).centers
    cpu = ds.units.concepts(lenet, digits, "conv2", k=6, init=start, patches=4)
    cuda = ds.units.concepts(gpu, digits, "conv2", k=6, init=start.cuda(), patches=4)
    assert cuda.centers.device.type == "cuda" and cuda.nearest.crops.device.type == "cuda"
    torch.testing.assert_close(cuda.centers.cpu(), cpu.centers, rtol=1e-3, atol=1e-4)
    assert (cuda.sizes.cpu() - cpu.sizes).abs().sum() <= 0.001 * cpu.vectors
    assert cuda.purity == pytest.approx(cpu.purity, abs=0.01)
