"""Visual concepts from population encoding (Wang, Zhang, Premachandran & Yuille 2015, "Discovering Internal
Representations from Object-CNNs Using Population Encoding", arXiv:1511.06855).

Each spatial position of a layer's map is a feature vector, the layer's population code for the image patch the
position sees (its receptive field). Wang et al. normalize every such vector to unit length and cluster them
with k-means over a dataset; each cluster center is a "visual concept", shown by the patches whose vectors lie
nearest to it. Here the clustering is mini-batch k-means (:class:`~deepscope.units.clustering.MiniBatchKMeans`)
fed one batch of images at a time, so memory does not grow with the dataset: vectors are never all kept.

A call makes ``epochs`` passes that move the centers (each over the data in a new random order, seeded) and one
more that assigns every vector to its nearest center with the centers fixed: the cluster sizes, the class
counts against the data's labels (purity) and each concept's nearest patches all come from that last pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepscope.errors import DatasetError, ImageError, SettingError, UnitError, require_int
from deepscope.probe.layers import one_layer
from deepscope.probe.receptive_field import ReceptiveField, receptive_fields
from deepscope.units._forward import streaming_runner
from deepscope.units.clustering import MiniBatchKMeans, kmeans_plus_plus
from deepscope.units.patches import DataSource, TopPatches, cut_crops, locate_hits, report_skipped
from deepscope.units.topk import TopK
from deepscope.zoo.datasets import dataset_classes
from deepscope.zoo.vision_model import VisionModel, as_vision_model

# Points drawn for k-means++ seeding, per cluster (scikit-learn's MiniBatchKMeans seeds from 3 x its batch).
SEEDING_POINTS_PER_CLUSTER = 3


@dataclass
class Concepts:
    """The visual concepts of one layer over a dataset.

    - ``centers`` ``[k, C]``: the cluster centers, in the space of unit-normalized feature vectors;
    - ``sizes`` ``[k]``: how many vectors each concept holds (vectors go to the nearest center, centers fixed);
    - ``inertia``: the sum over all vectors of the squared distance to their center (scikit-learn's
      ``inertia_``);
    - ``nearest``: each concept's nearest patches, as :class:`TopPatches` whose ``units`` are concept indices and
      whose ``values`` are minus the squared distance to the center (larger is nearer; one patch per image, at
      its nearest position), with the receptive-field ``crops`` when asked for;
    - ``class_counts`` ``[k, classes]``: per concept, how many of its vectors come from images of each class
      (None when the data has no labels); ``classes``: the class names, where known;
    - ``vectors``: the vectors clustered per pass (images x positions); ``epochs``: passes moving the centers.
    """

    layer: str
    centers: torch.Tensor
    sizes: torch.Tensor
    inertia: float
    nearest: TopPatches
    class_counts: torch.Tensor | None
    classes: list[str] | None
    vectors: int
    epochs: int

    @property
    def k(self) -> int:
        return self.centers.shape[0]

    @property
    def receptive_field(self) -> ReceptiveField | None:
        return self.nearest.receptive_field

    @property
    def purity(self) -> float | None:
        """Cluster purity against the labels: the share of labeled vectors whose concept's majority class is
        their own class (Manning, Raghavan & Schuetze 2008, section 16.3). None without labels."""
        if self.class_counts is None:
            return None
        total = int(self.class_counts.sum())
        return float(self.class_counts.amax(1).sum()) / total if total else None

    @property
    def concept_purity(self) -> torch.Tensor | None:
        """``[k]`` each concept's share of vectors from its majority class (NaN for a concept with no labeled
        vector). None without labels."""
        if self.class_counts is None:
            return None
        counts = self.class_counts.double()
        return counts.amax(1) / counts.sum(1)

    @property
    def majority(self) -> torch.Tensor | None:
        """``[k]`` each concept's majority class (-1 for a concept with no labeled vector). None without labels."""
        if self.class_counts is None:
            return None
        return torch.where(self.class_counts.sum(1) > 0, self.class_counts.argmax(1), -1)

    def class_name(self, index: int) -> str:
        """The name of class ``index`` (the index itself where the classes have no names)."""
        if self.classes is not None and 0 <= index < len(self.classes):
            return self.classes[index]
        return str(index)


def concepts(
    model: VisionModel | nn.Module,
    data: Any,
    layer: str,
    k: int = 32,
    *,
    batch_size: int = 64,
    epochs: int = 1,
    patches: int = 9,
    labels: Sequence[int] | torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    seed: int = 0,
    crops: bool = True,
    fill: float = 0.5,
) -> Concepts:
    """The ``k`` visual concepts of ``layer`` over ``data`` (Wang et al. 2015): mini-batch k-means over the
    layer's unit-normalized spatial feature vectors, streamed ``batch_size`` images at a time.

    ``data``: as for :func:`top_patches` (a ``[N,C,H,W]`` tensor of model inputs, or a sized, indexable dataset).
    ``labels``: one class index per sample (default: the labels of the dataset's items, where they have some);
    purity is computed over labeled samples. ``epochs``: passes over the data moving the centers, before the pass
    that assigns. ``init``: starting centers ``[k, C]`` (default: k-means++ on the vectors of the first images
    in the seeded random order, at least ``3 k`` vectors). ``patches``: nearest patches kept per concept, cropped
    by the layer's receptive field (``fill`` outside the image) unless ``crops=False``. The model runs in eval
    mode, under ``torch.inference_mode``, only as far as ``layer``; memory holds one batch and ``O(k)`` state.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> found = ds.units.concepts(vm, ds.datasets.mnist5k("test"), "conv2", k=8, patches=4)
    >>> found.centers.shape, int(found.sizes.sum()), found.nearest.crops.shape  # 1,000 digits x 10x10 positions
    (torch.Size([8, 16]), 100000, torch.Size([8, 4, 1, 14, 14]))
    >>> 0 < found.purity <= 1
    True
    """
    vm = as_vision_model(model)
    for setting, value, minimum in (
        ("k", k, 1),
        ("batch_size", batch_size, 1),
        ("epochs", epochs, 0),
        ("patches", patches, 1),
    ):
        require_int(setting, value, minimum)
    name = one_layer(vm, layer, "concepts cluster")
    source = DataSource(vm, data)
    if len(source) == 0:
        raise ImageError("the dataset is empty")
    given_labels = _checked_labels(labels, len(source))
    if init is not None and (not isinstance(init, torch.Tensor) or init.ndim != 2 or init.shape[0] != k):
        shape = list(init.shape) if isinstance(init, torch.Tensor) else type(init).__name__
        raise SettingError(f"init must be a [k={k}, channels] tensor of starting centers, got {shape}")

    order = torch.Generator().manual_seed(seed)
    seeding = torch.Generator().manual_seed(seed)
    output: dict[str, torch.Tensor] = {}
    shape: list[tuple[int, ...]] = []
    example: list[torch.Tensor] = []

    def keep(_: str, activation: torch.Tensor) -> None:
        output["activation"] = activation

    def vectors_of(inputs: torch.Tensor, run) -> torch.Tensor:
        """The batch's unit-normalized feature vectors ``[B * positions, C]``, sample by sample, row-major."""
        if not example:
            example.append(inputs[:1].clone())
        run(inputs)
        activation = output.pop("activation")
        if activation.ndim not in (2, 4):
            raise UnitError(
                f"concepts read [B,C] or [B,C,H,W] layers; {name!r} gives {list(activation.shape)}"
            )
        if not shape:
            shape.append(tuple(activation.shape[1:]))
        flat = activation.permute(0, 2, 3, 1) if activation.ndim == 4 else activation
        flat = flat.reshape(-1, activation.shape[1]).float()
        return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def shuffled() -> Iterator[list[int]]:
        indices = torch.randperm(len(source), generator=order).tolist()
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]

    clustering: MiniBatchKMeans | None = None
    pending: list[torch.Tensor] = []  # vectors waiting for the k-means++ seeding (at most ~3k and one batch)
    with torch.inference_mode(), streaming_runner(vm, [name], keep) as run:
        for _ in range(epochs):
            for indices in shuffled():
                read = source.read(indices)
                if read.inputs is None:
                    continue
                vectors = vectors_of(read.inputs, run)
                if clustering is None:
                    pending.append(vectors)
                    if init is None and sum(len(v) for v in pending) < SEEDING_POINTS_PER_CLUSTER * k:
                        continue
                    clustering = _start(init, torch.cat(pending), k, seeding)
                    for seen in pending:
                        clustering.update(seen)
                    pending = []
                    continue
                clustering.update(vectors)
        if clustering is None and epochs > 0:  # fewer vectors in the whole dataset than the seeding wanted
            clustering = _start(init, torch.cat(pending), k, seeding)
            for seen in pending:
                clustering.update(seen)
        state = _Assignment(k, patches)
        for start in range(0, len(source), batch_size):
            read = source.read(list(range(start, min(start + batch_size, len(source)))))
            if read.inputs is None:
                continue
            vectors = vectors_of(read.inputs, run)
            if clustering is None:  # epochs=0: the starting centers are the concepts
                clustering = _start(init, vectors, k, seeding)
            assigned, distances = clustering.assign(vectors)
            batch_labels = given_labels[read.indices] if given_labels is not None else read.labels
            state.add(assigned, distances, batch_labels, shape[0], read.indices)
    field = receptive_fields(vm, [name], example[0])[name]
    spatial_shape = (k, *shape[0][1:])
    nearest, windows = locate_hits(name, spatial_shape, None, state.nearest, field, example[0])
    if crops:
        cut_crops(source, {name: nearest}, {name: windows}, fill, batch_size)
    classes = dataset_classes(data) or vm.labels
    report_skipped(source)
    return Concepts(
        name,
        clustering.centers,
        state.sizes,
        float(state.squared_distances),
        nearest,
        state.class_counts(len(classes) if classes else 0),
        classes,
        state.vectors,
        epochs,
    )


def _checked_labels(labels: Sequence[int] | torch.Tensor | None, count: int) -> torch.Tensor | None:
    if labels is None:
        return None
    given = torch.as_tensor(labels)
    if given.is_floating_point() or given.ndim != 1 or len(given) != count:
        raise DatasetError(
            f"labels must be {count} class indices (one per sample), got {given.dtype} of shape {list(given.shape)}"
        )
    return given.long()


def _start(
    init: torch.Tensor | None, points: torch.Tensor, k: int, generator: torch.Generator
) -> MiniBatchKMeans:
    """The clustering from ``init``, or from k-means++ seeds among ``points``."""
    if init is not None:
        if init.shape[1] != points.shape[1]:
            raise SettingError(
                f"init has {init.shape[1]} channels but the layer's vectors have {points.shape[1]}"
            )
        centers = init.to(points.device, points.dtype)
    else:
        if len(points) < k:
            raise SettingError(
                f"k={k} concepts need at least {k} feature vectors to seed from; the data gives {len(points)}"
            )
        centers = kmeans_plus_plus(points, k, generator)
    return MiniBatchKMeans(centers)


class _Assignment:
    """What the last pass accumulates: sizes, inertia, class counts and the nearest patches of each concept."""

    def __init__(self, k: int, patches: int):
        self.k = k
        self.patches = patches
        self.sizes: torch.Tensor | None = None
        self.squared_distances = torch.zeros((), dtype=torch.float64)
        self.vectors = 0
        self.counts: torch.Tensor | None = None  # [k * classes], grown as larger labels appear
        self.classes = 0
        self.nearest: TopK | None = None

    def add(
        self,
        assigned: torch.Tensor,
        distances: torch.Tensor,
        labels: Sequence[int | None] | torch.Tensor,
        shape: tuple[int, ...],
        samples: list[int],
    ) -> None:
        device = assigned.device
        batch = len(labels)
        positions = len(assigned) // batch
        if self.sizes is None:
            self.sizes = torch.zeros(self.k, dtype=torch.int64, device=device)
            self.nearest = TopK(self.k, self.patches, device=device)
        self.sizes += torch.bincount(assigned, minlength=self.k)
        picked = distances.gather(1, assigned[:, None]).sum()
        self.squared_distances = self.squared_distances.to(device) + picked
        self.vectors += len(assigned)
        self._count_classes(assigned, labels, positions, device)
        # Minus the squared distance, per concept and position: [B, k, h, w] (or [B, k] for a layer of vectors).
        scores = -distances.view(batch, *shape[1:], self.k)
        if scores.ndim == 4:
            scores = scores.permute(0, 3, 1, 2)
        self.nearest.update_maps(scores, torch.tensor(samples, device=device))

    def _count_classes(self, assigned, labels, positions: int, device) -> None:
        if isinstance(labels, torch.Tensor):
            per_sample = labels.to(device)
        else:
            per_sample = torch.tensor([-1 if label is None else label for label in labels], device=device)
        per_vector = per_sample.repeat_interleave(positions)
        known = per_vector >= 0
        if not bool(known.any()):
            return
        largest = int(per_vector.max()) + 1
        if largest > self.classes:
            grown = torch.zeros(self.k, largest, dtype=torch.int64, device=device)
            if self.counts is not None:
                grown[:, : self.classes] = self.counts.view(self.k, self.classes)
            self.counts, self.classes = grown.flatten(), largest
        flat = assigned[known] * self.classes + per_vector[known]
        self.counts += torch.bincount(flat, minlength=self.k * self.classes)

    def class_counts(self, classes: int) -> torch.Tensor | None:
        if self.counts is None:
            return None
        counts = self.counts.view(self.k, self.classes)
        if classes > self.classes:
            counts = torch.cat([counts, counts.new_zeros(self.k, classes - self.classes)], 1)
        return counts
