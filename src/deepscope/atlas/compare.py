"""Comparing two models on the same data: linear CKA between every pair of layers, and their scans side by side
(each layer's sparsity and 2-D layout of the samples).

Linear centered kernel alignment (Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural Network
Representations Revisited", ICML 2019, eq. 5): for activations ``X [n, p]`` and ``Y [n, q]`` of the same ``n``
samples, with every column centered,

    CKA(X, Y) = ||Yᵀ X||²_F / (||Xᵀ X||_F · ||Yᵀ Y||_F),

which equals HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)) for the linear kernels ``K = X Xᵀ`` and ``L = Y Yᵀ``.
It is 1 for identical representations and invariant to orthogonal transforms and isotropic scaling.

Two ways to get the representations:

- :func:`cka` runs both models over the data together and compares the **full** activations (every
  position of every channel, flattened), with the minibatch estimator of Nguyen, Raghu & Kornblith ("Do Wide
  and Deep Networks Learn the Same Things?", ICLR 2021): per batch of ``b`` samples the unbiased HSIC estimator
  of Song et al. (2012) on the batch's linear Gram matrices, summed over batches, so memory stays ``O(b²)`` per
  layer however large the layers and the dataset.
- :func:`cka_matrix` / :func:`compare` compare two finished scans from the **pooled** activations stored in
  their workspaces (spatial mean per channel), with the exact formula above. Pooling discards where things
  are, so early layers of unrelated networks can look alike (mean-brightness responses); use :func:`cka` for
  architecture questions about early layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from deepscope.atlas.scanning.loading import LoadedItem, Loader, batch_input
from deepscope.atlas.scanning.plan import plan_scan
from deepscope.errors import DatasetError, SettingError, SettingTypeError, WorkspaceError
from deepscope.probe.inference import forward_only
from deepscope.zoo.datasets import load_dataset
from deepscope.zoo.loaders import load_model
from deepscope.zoo.state import evaluation_mode
from deepscope.zoo.vision_model import VisionModel

if TYPE_CHECKING:
    from deepscope.atlas.workspace import Workspace


def _centered(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        x = x.reshape(x.shape[0], -1)
    return x - x.mean(0, keepdims=True)


def _cross(x: np.ndarray, y: np.ndarray) -> float:
    """||Yᵀ X||²_F for centered X, Y, in feature space or, when cheaper, sample space (tr(K L))."""
    n, p = x.shape
    q = y.shape[1]
    if p * q <= n * n:
        return float(np.square(y.T @ x).sum())
    return float(((x @ x.T) * (y @ y.T)).sum())


def _self(x: np.ndarray) -> float:
    """||Xᵀ X||_F for centered X."""
    n, p = x.shape
    gram = x.T @ x if p <= n else x @ x.T
    return float(np.sqrt(np.square(gram).sum()))


def linear_cka(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Linear CKA between two representations of the same samples, ``[n, p]`` and ``[n, q]`` (more dims are
    flattened), in float64. NaN when either representation is constant.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(100, 8))
    >>> q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(8, 8)))
    >>> round(linear_cka(x, 3 * x @ q), 6)   # invariant to rotation and isotropic scaling
    1.0
    """
    a, b = _centered(x), _centered(y)
    if a.shape[0] != b.shape[0]:
        raise SettingError(f"CKA compares the same samples: got {a.shape[0]} and {b.shape[0]} rows")
    denominator = _self(a) * _self(b)
    return _cross(a, b) / denominator if denominator > 0 else float("nan")


def cka_matrix(
    a: Workspace,
    b: Workspace,
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
) -> np.ndarray:
    """Linear CKA between every recorded layer of two scans of the same data: ``[len(layers_a), len(layers_b)]``
    (default: every layer each workspace recorded, in its order).

    >>> import tempfile, deepscope as ds
    >>> digits = ds.datasets.mnist5k("test").subset(range(100))
    >>> ws = ds.atlas.scan("zoo:lenet_mnist", digits, ["fc1", "fc2"], out=tempfile.mkdtemp(), thumbnail_size=0)
    >>> cka_matrix(ws, ws).round(6).tolist()[0][0]
    1.0
    """
    _check_same_samples(a, b)
    layers_a = list(layers_a) if layers_a is not None else a.layers
    layers_b = list(layers_b) if layers_b is not None else b.layers
    right = [_centered(b.embeddings(layer)) for layer in layers_b]
    right_norms = [_self(y) for y in right]
    matrix = np.full((len(layers_a), len(layers_b)), np.nan)
    for i, layer in enumerate(layers_a):
        x = _centered(a.embeddings(layer))
        norm = _self(x)
        for j, y in enumerate(right):
            denominator = norm * right_norms[j]
            if denominator > 0:
                matrix[i, j] = _cross(x, y) / denominator
    return matrix


def _check_same_samples(a: Workspace, b: Workspace) -> None:
    if a.dataset_fingerprint != b.dataset_fingerprint:
        raise WorkspaceError(
            f"{a.path} and {b.path} scanned different data ({a.run.dataset!r} vs {b.run.dataset!r}); "
            "comparisons need the same samples"
        )
    if not np.array_equal(a.indices, b.indices):
        raise WorkspaceError(
            f"{a.path} and {b.path} scanned different samples of {a.run.dataset!r} (a scan is incomplete, or "
            "files were skipped in one); finish both scans first"
        )


@dataclass(frozen=True)
class Comparison:
    """Two scans of the same data side by side, layer by layer (Yu et al. 2016, see :func:`compare`):
    ``cka[i, j]`` between layer ``layers_a[i]`` and ``layers_b[j]``; each layer's ``sparsity`` (the fraction of its
    output values that are not positive); when asked for, each layer's 2-D ``layouts`` of the samples (``[N, 2]``,
    one per layer, of kind ``layout``; None otherwise); both confusion matrices and accuracies (None and NaN
    without labels) and the fraction of samples on which the two models predict the same class."""

    cka: np.ndarray
    layers_a: list[str]
    layers_b: list[str]
    sparsity_a: np.ndarray
    sparsity_b: np.ndarray
    layout: str | None
    layouts_a: list[np.ndarray] | None
    layouts_b: list[np.ndarray] | None
    confusion_a: np.ndarray | None
    confusion_b: np.ndarray | None
    classes: list[str]
    accuracy_a: float
    accuracy_b: float
    agreement: float


def sparsity(ws: Workspace, layer: str) -> float:
    """The fraction of ``layer``'s output values over the scanned data that are not positive (from the scan's
    histogram of every value, exact): for a ReLU output its share of zeros, for a pre-activation the share a ReLU
    after it would set to zero.

    >>> import tempfile, deepscope as ds
    >>> digits = ds.datasets.mnist5k("test").subset(range(100))
    >>> ws = ds.atlas.scan("zoo:lenet_mnist", digits, ["fc3:input"], out=tempfile.mkdtemp(), thumbnail_size=0)
    >>> 0 < sparsity(ws, "fc3:input") < 1
    True
    """
    histogram = ws.activation_histogram(layer)
    return 1.0 - histogram.positive_fraction


def compare(
    a: Workspace,
    b: Workspace,
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    *,
    layout: str | None = None,
    **layout_params: Any,
) -> Comparison:
    """Compare two scans of the same dataset layer by layer, as Yu, Yang, Bai, Wang & Chen ("Visualizing and
    Comparing AlexNet and VGG using Deconvolutional Layers", ICML 2016 Visualization workshop) compare two
    networks: linear CKA between every pair of layers, each layer's sparsity and, with ``layout`` ('tsne',
    'umap' or 'pca'; ``layout_params`` go to :meth:`~deepscope.atlas.Workspace.layout`), each layer's 2-D
    layout of the samples, for the two networks side by side; and the two confusion matrices. Layers default
    to every recorded layer of each scan. Layouts are computed once per layer and stored in each workspace.

    >>> import tempfile, deepscope as ds
    >>> digits = ds.datasets.mnist5k("test").subset(range(200))
    >>> ws = ds.atlas.scan("zoo:lenet_mnist", digits, out=tempfile.mkdtemp(), thumbnail_size=0)
    >>> result = ds.atlas.compare(ws, ws)
    >>> [round(float(v), 6) for v in result.cka.diagonal()][:3], result.agreement
    ([1.0, 1.0, 1.0], 1.0)
    """
    names_a = list(layers_a) if layers_a is not None else a.layers
    names_b = list(layers_b) if layers_b is not None else b.layers
    matrix = cka_matrix(a, b, names_a, names_b)
    layouts_a = layouts_b = None
    if layout is not None:
        layouts_a = [a.layout(layout, name, **layout_params) for name in names_a]
        layouts_b = [b.layout(layout, name, **layout_params) for name in names_b]

    def accuracy(ws: Workspace) -> float:
        labels = ws.labels
        return float((ws.predictions == labels).mean()) if labels is not None else float("nan")

    def confusion(ws: Workspace) -> np.ndarray | None:
        return ws.confusion_matrix() if ws.labels is not None else None

    return Comparison(
        matrix,
        names_a,
        names_b,
        np.array([sparsity(a, name) for name in names_a]),
        np.array([sparsity(b, name) for name in names_b]),
        layout,
        layouts_a,
        layouts_b,
        confusion(a),
        confusion(b),
        a.classes,
        accuracy(a),
        accuracy(b),
        float((a.predictions == b.predictions).mean()),
    )


# --------------------------------------------------------------------------------------------------------------
# CKA on full activations, both models in one pass


def hsic_unbiased(k: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """The unbiased HSIC estimator (Song et al. 2012, eq. 5) of two ``[n, n]`` Gram matrices K and L (``other``), n >= 4:

    (tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2) · 1ᵀK̃L̃1) / (n(n-3)), with K̃, L̃ zero on the diagonal.

    >>> import torch
    >>> x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> constant = torch.ones(50, 50, dtype=torch.float64)  # a kernel that sees no difference between samples
    >>> bool(hsic_unbiased(x @ x.T, x @ x.T) > 0), abs(hsic_unbiased(x @ x.T, constant).item()) < 1e-9
    (True, True)
    """
    n = k.shape[0]
    if n < 4:
        raise SettingError(f"the unbiased HSIC needs at least 4 samples, got {n}")
    k = k - torch.diag_embed(torch.diagonal(k))
    other = other - torch.diag_embed(torch.diagonal(other))
    trace = (k * other).sum()  # tr(K̃L̃) for symmetric L̃
    sums = k.sum() * other.sum() / ((n - 1) * (n - 2))
    cross = 2 * (k.sum(0) * other.sum(1)).sum() / (n - 2)
    return (trace + sums - cross) / (n * (n - 3))


@dataclass(frozen=True)
class CKA:
    """Minibatch linear CKA between the full activations of two models: ``matrix[i, j]`` for ``layers_a[i]``
    and ``layers_b[j]``, over ``samples`` samples in batches of ``batch_size``."""

    matrix: np.ndarray
    layers_a: list[str]
    layers_b: list[str]
    samples: int
    batch_size: int


def _layer_grams(vm: VisionModel, layers: Sequence[str], inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's float64 Gram matrix ``X Xᵀ`` of the batch's flattened activations (its output, or its input
    for ``NAME:input``), made the moment the forward-only pass produces it (nothing else is kept)."""
    grams: dict[str, torch.Tensor] = {}

    def record(name: str, tensor: torch.Tensor) -> None:
        flat = tensor.detach().flatten(1).float()
        grams[name] = (flat @ flat.T).double()

    forward_only(vm, inputs, layers, record)
    return grams


def cka(
    model_a: VisionModel | nn.Module | str,
    model_b: VisionModel | nn.Module | str,
    data: str | Dataset,
    layers_a: str | Sequence[str] | None = None,
    layers_b: str | Sequence[str] | None = None,
    *,
    batch_size: int = 256,
    samples: int | None = None,
) -> CKA:
    """Linear CKA between every recorded layer of two models on the same data, from their full (flattened)
    activations, by the minibatch estimator (Nguyen et al. 2021; see the module docstring). Each model reads the
    images through its own preprocessing; both run in eval mode and are left as found. Layers default to those
    a scan records (embedding, then every conv / linear output, or each block's for large models); ``samples`` limits the data to its first
    ``samples`` items; a last batch of fewer than 4 samples is left out.

    >>> import deepscope as ds
    >>> lenet = ds.load_model("zoo:lenet_mnist")
    >>> result = ds.atlas.cka(lenet, lenet, "mnist5k:test", samples=128, batch_size=64)
    >>> result.layers_a[:2], [round(float(v), 6) for v in result.matrix.diagonal()[:2]]
    (['fc3:input', 'conv1'], [1.0, 1.0])
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise SettingTypeError(
            f"batch_size must be an int >= 4 (the unbiased HSIC needs 4 samples), got {batch_size!r}"
        )
    if batch_size < 4:
        raise SettingError(
            f"batch_size must be an int >= 4 (the unbiased HSIC needs 4 samples), got {batch_size!r}"
        )
    vm_a, vm_b = load_model(model_a), load_model(model_b)
    dataset = load_dataset(data, vm_a.labels)
    total = len(dataset) if samples is None else min(int(samples), len(dataset))
    names_a = list(
        plan_scan(vm_a, dataset, layers_a, batch_size=1, chunk_size=1, k=1, thumbnail_size=0).layers
    )
    names_b = list(
        plan_scan(vm_b, dataset, layers_b, batch_size=1, chunk_size=1, k=1, thumbnail_size=0).layers
    )
    loaders = (Loader(vm_a, dataset), Loader(vm_b, dataset))
    cross = torch.zeros(len(names_a), len(names_b), dtype=torch.float64)
    self_a = torch.zeros(len(names_a), dtype=torch.float64)
    self_b = torch.zeros(len(names_b), dtype=torch.float64)
    used = 0
    with evaluation_mode(vm_a.module), evaluation_mode(vm_b.module), torch.inference_mode():
        for start in range(0, total, batch_size):
            prepared: list[list[LoadedItem]] = [[], []]
            for index in range(start, min(start + batch_size, total)):
                fetched = loaders[0].fetch(index)
                if fetched.error is not None:
                    continue
                pair = [loader.prepare(fetched.item, index) for loader in loaders]
                if any(loaded.kind == "skipped" for loaded in pair):
                    continue
                for side in range(2):
                    prepared[side].append(pair[side])
            if len(prepared[0]) < 4:
                continue
            grams = []
            for side, (vm, names) in enumerate(((vm_a, names_a), (vm_b, names_b))):
                kinds = [loaded.kind for loaded in prepared[side]]
                tensors = loaders[side].tensors(kinds, [loaded.value for loaded in prepared[side]])
                inputs, _ = batch_input(vm, kinds, tensors, vm.device)
                grams.append({name: gram.cpu() for name, gram in _layer_grams(vm, names, inputs).items()})
            hsic_a = [hsic_unbiased(grams[0][name], grams[0][name]) for name in names_a]
            hsic_b = [hsic_unbiased(grams[1][name], grams[1][name]) for name in names_b]
            self_a += torch.stack(hsic_a)
            self_b += torch.stack(hsic_b)
            for i, name_a in enumerate(names_a):
                for j, name_b in enumerate(names_b):
                    cross[i, j] += hsic_unbiased(grams[0][name_a], grams[1][name_b])
            used += len(prepared[0])
    if used == 0:
        raise DatasetError(f"no batch of at least 4 readable samples in the first {total} of the data")
    matrix = cross / torch.sqrt(self_a[:, None] * self_b[None, :])
    return CKA(matrix.numpy(), names_a, names_b, used, batch_size)
