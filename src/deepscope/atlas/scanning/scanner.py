"""Scanning one chunk: its batches loaded in order (here or by loader threads), one forward pass per batch with
the recorded layers reduced as the pass produces them, and the chunk's rows and reductions as a
:class:`ChunkResult`. The same code runs in the local loop and inside each Ray actor."""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from deepscope.atlas.scanning.loading import Loader, default_workers, stack_batch, thumbnails
from deepscope.atlas.scanning.plan import ScanPlan, class_scores
from deepscope.atlas.scanning.reductions import ScanState
from deepscope.errors import DatasetError, NonFiniteError
from deepscope.probe.inference import forward_only
from deepscope.workspace.store import SampleRow, pack_arrays, unpack_arrays
from deepscope.zoo.datasets import source_of
from deepscope.zoo.state import evaluation_mode
from deepscope.zoo.vision_model import VisionModel


@dataclass
class ChunkResult:
    """What one chunk produced: its ``chunk`` number and dataset index range ``[start, stop)``, a
    :class:`~deepscope.workspace.store.SampleRow` per index (``samples``), per scanned sample (``indices``,
    dataset order) its ``labels`` (-1: none), ``predicted`` class, class ``probabilities``, pooled activations of
    each recorded layer (``embeddings``, in the plan's order) and ``thumbnails`` (None when the scan keeps none),
    and the chunk's own reductions (``state``, a
    :meth:`~deepscope.atlas.scanning.reductions.ScanState.state_dict`), to be merged into the run's."""

    chunk: int
    start: int
    stop: int
    samples: list[SampleRow]
    indices: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray
    embeddings: list[np.ndarray]
    thumbnails: np.ndarray | None
    state: dict[str, np.ndarray] = field(repr=False)

    def to_bytes(self) -> bytes:
        """Serialized without pickle (a Ray actor sends its chunks to the driver this way)."""
        meta = {"chunk": self.chunk, "start": self.start, "stop": self.stop, "samples": self.samples}
        arrays = {
            "indices": self.indices,
            "labels": self.labels,
            "predicted": self.predicted,
            "probabilities": self.probabilities,
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        }
        arrays.update({f"embedding{position}": e for position, e in enumerate(self.embeddings)})
        if self.thumbnails is not None:
            arrays["thumbnails"] = self.thumbnails
        arrays.update({f"state.{key}": value for key, value in self.state.items()})
        return pack_arrays(arrays)

    @classmethod
    def from_bytes(cls, blob: bytes) -> ChunkResult:
        """The result :meth:`to_bytes` serialized.

        >>> import numpy as np
        >>> from deepscope.workspace.store import SampleRow
        >>> empty = np.zeros(0, np.int64)
        >>> result = ChunkResult(3, 30, 31, [SampleRow(30, "a.png", None, "skipped", "OSError: truncated")],
        ...                      empty, empty, empty, np.zeros((0, 2), np.float32), [], None, {})
        >>> ChunkResult.from_bytes(result.to_bytes()).samples
        [SampleRow(index=30, source='a.png', label=None, status='skipped', error='OSError: truncated')]
        """
        arrays = unpack_arrays(blob)
        meta = json.loads(arrays["meta"].tobytes().decode())
        count = sum(1 for key in arrays if key.startswith("embedding"))
        return cls(
            chunk=meta["chunk"],
            start=meta["start"],
            stop=meta["stop"],
            samples=[SampleRow._make(row) for row in meta["samples"]],
            indices=arrays["indices"],
            labels=arrays["labels"],
            predicted=arrays["predicted"],
            probabilities=arrays["probabilities"],
            embeddings=[arrays[f"embedding{position}"] for position in range(count)],
            thumbnails=arrays.get("thumbnails"),
            state={
                key.removeprefix("state."): value for key, value in arrays.items() if key.startswith("state.")
            },
        )


class LayerRecorder:
    """Reduces each recorded layer's tensor as soon as the forward pass produces it (nothing is kept but the
    pooled [B, units] rows). The forward is :func:`~deepscope.probe.inference.forward_only`: the folded copy of
    the model with the layers tapped, or the model with hooks where no copy may stand in."""

    def __init__(self, vm: VisionModel, layers: Sequence[str], state: ScanState):
        self.vm = vm
        self.layers = list(layers)
        self.state = state
        self.positions = {name: position for position, name in enumerate(self.layers)}
        self.pooled: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        self.current: dict[str, torch.Tensor] = {}  # the pooled rows of the batch being recorded

    def _record(self, name: str, tensor: torch.Tensor) -> None:
        unit_major = units_first(tensor.detach())
        spatial = tuple(range(2, unit_major.ndim))
        pooled = (unit_major.mean(spatial) if spatial else unit_major).float()
        self.current[name] = pooled
        self.state.add_layer(self.positions[name], unit_major, pooled)

    def forward(self, inputs: torch.Tensor) -> Any:
        """The model's output for a new batch, its layers recorded."""
        self.current = {}
        return forward_only(self.vm, inputs, self.layers, self._record)

    def end_batch(self) -> None:
        """Keep the pooled rows of the batch's layers."""
        for name, pooled in self.current.items():
            self.pooled[name].append(pooled)


def units_first(tensor: torch.Tensor) -> torch.Tensor:
    """[B, units, *spatial]: channels of a conv map stay where they are, token features [B, T, D] move to the
    front of the token axis; a vector output [B, D] stays as it is.

    >>> import torch
    >>> units_first(torch.zeros(2, 197, 768)).shape, units_first(torch.zeros(2, 16, 5, 5)).shape
    (torch.Size([2, 768, 197]), torch.Size([2, 16, 5, 5]))
    """
    if tensor.ndim == 3:
        return tensor.transpose(1, 2)
    if tensor.ndim < 2:
        return tensor.reshape(tensor.shape[0], -1)
    return tensor


@dataclass
class LoadedBatch:
    """One batch of a chunk as read: a :class:`~deepscope.workspace.store.SampleRow` per dataset index
    (``samples``, skipped ones included), and for the readable ones their ``indices``, ``labels`` (-1: none) and
    stacked ``inputs`` (None when none was readable) of ``kind`` 'pixels' or 'input'; ``labelled`` when any
    has a label."""

    samples: list[SampleRow] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    inputs: torch.Tensor | None = None
    kind: str = ""
    labelled: bool = False


class ChunkScanner:
    """Scans chunks of a dataset with a model: loading, one forward per batch, reductions. The same code runs
    in the local loop and inside each Ray actor.

    >>> import deepscope as ds
    >>> from deepscope.atlas.scanning.plan import plan_scan
    >>> vm, digits = ds.load_model("zoo:lenet_mnist"), ds.datasets.mnist5k("test")
    >>> plan = plan_scan(vm, digits, None, batch_size=64, chunk_size=100, k=4, thumbnail_size=0)
    >>> result = ChunkScanner(vm, digits, plan).scan_chunk(2)
    >>> result.indices[[0, -1]].tolist(), result.probabilities.shape, [e.shape[1] for e in result.embeddings]
    ([200, 299], (100, 10), [84, 6, 16, 120, 84, 10])
    """

    def __init__(
        self,
        vm: VisionModel,
        dataset: Dataset,
        plan: ScanPlan,
        device: torch.device | None = None,
        workers: int | None = None,
    ):
        self.vm = vm
        self.dataset = dataset
        self.plan = plan
        self.device = device or vm.device
        self.workers = default_workers(self.device) if workers is None else workers
        self.loader = Loader(vm, dataset)

    def load_batch(self, first: int, stop: int) -> LoadedBatch:
        """Read dataset indices ``first`` to ``stop`` (excluded) into one batch."""
        batch = LoadedBatch()
        kinds, tensors = [], []
        for index in range(first, stop):
            loaded = self.loader.load(index)
            source = source_of(self.dataset, index)
            if loaded.kind == "skipped":
                batch.samples.append(SampleRow(index, source, None, "skipped", loaded.error))
                continue
            batch.samples.append(SampleRow(index, source, loaded.label, "ok", None))
            kinds.append(loaded.kind)
            tensors.append(loaded.value)
            batch.indices.append(index)
            batch.labels.append(-1 if loaded.label is None else loaded.label)
        if tensors:
            _check_labels(batch.labels, len(self.plan.classes), batch.indices)
            batch.inputs, batch.kind = stack_batch(kinds, self.loader.tensors(kinds, tensors)), kinds[0]
            batch.labelled = any(label >= 0 for label in batch.labels)
        return batch

    def batches(self, bounds: list[tuple[int, int]]) -> Iterator[LoadedBatch]:
        """The batches of ``bounds`` ((first, stop) each), loaded in order: here, or by ``workers`` threads that
        read and preprocess the next batches while one runs (PIL decodes and resizes, and torch resizes, without
        holding the GIL)."""
        if not self.workers:
            for first, stop in bounds:
                yield self.load_batch(first, stop)
            return
        following = iter(bounds)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="deepscope-load") as pool:
            ahead = deque(pool.submit(self.load_batch, *b) for b in itertools.islice(following, self.workers))
            while ahead:
                batch = ahead.popleft().result()
                upcoming = next(following, None)
                if upcoming is not None:
                    ahead.append(pool.submit(self.load_batch, *upcoming))
                yield batch

    def scan_chunk(self, chunk: int) -> ChunkResult:
        """Scan one chunk (batches keep their order and composition, so results do not depend on timing)."""
        plan = self.plan
        start, stop = plan.bounds(chunk)
        state = ScanState(plan.layer_units(), len(plan.classes), plan.k, self.device)
        samples: list[SampleRow] = []
        indices, labels, predicted, probabilities, pictures = [], [], [], [], []
        recorder = LayerRecorder(self.vm, plan.layers, state)
        with evaluation_mode(self.vm.module), torch.inference_mode():
            for batch in self.batches(plan.batch_bounds(chunk)):
                samples.extend(batch.samples)
                if batch.inputs is None:
                    continue
                inputs = batch.inputs.to(self.device, non_blocking=True)
                pixels = None
                if batch.kind == "pixels":
                    pixels, inputs = inputs, self.vm.normalize(inputs)
                index_tensor = torch.tensor(batch.indices, dtype=torch.int64, device=self.device)
                label_tensor = torch.tensor(batch.labels, dtype=torch.int64, device=self.device)
                logits = class_scores(recorder.forward(inputs))
                _check_finite(logits, batch.indices)
                recorder.end_batch()
                state.end_batch(index_tensor)
                batch_probabilities = logits.float().softmax(1)
                batch_predicted = batch_probabilities.argmax(1)
                state.update_predictions(batch_predicted, label_tensor if batch.labelled else None)
                indices.append(index_tensor)
                labels.append(label_tensor)
                predicted.append(batch_predicted)
                probabilities.append(batch_probabilities)
                if plan.thumbnail is not None:
                    pictures.append(thumbnails(pixels, inputs, plan.thumbnail))
        if plan.thumbnail is None:
            chunk_thumbnails = None
        elif pictures:
            chunk_thumbnails = np.concatenate(pictures)
        else:
            chunk_thumbnails = np.zeros((0, *plan.thumbnail), np.uint8)
        return ChunkResult(
            chunk=chunk,
            start=start,
            stop=stop,
            samples=samples,
            indices=_concatenated(indices, torch.int64, (0,)),
            labels=_concatenated(labels, torch.int64, (0,)),
            predicted=_concatenated(predicted, torch.int64, (0,)),
            probabilities=_concatenated(probabilities, torch.float32, (0, len(plan.classes))),
            embeddings=[
                _concatenated(recorder.pooled[name], torch.float32, (0, units))
                for name, units in plan.layer_units()
            ],
            thumbnails=chunk_thumbnails,
            state=state.state_dict(),
        )


def _concatenated(parts: list[torch.Tensor], dtype: torch.dtype, empty: tuple[int, ...]) -> np.ndarray:
    """The batches' rows as one NumPy array (of shape ``empty`` when there are none)."""
    if not parts:
        return np.zeros(empty, dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    return torch.cat([p.cpu() for p in parts]).to(dtype).numpy()


def _check_labels(labels: list[int], classes: int, indices: list[int]) -> None:
    for index, label in zip(indices, labels, strict=True):
        if not -1 <= label < classes:
            raise DatasetError(f"sample {index} has label {label}, outside the model's {classes} classes")


def _check_finite(logits: torch.Tensor, indices: list[int]) -> None:
    """Class scores that are NaN or infinite for a finite input (an overflow in the model) end the scan with the
    samples named: the chunk is not committed, so nothing of them reaches the workspace."""
    finite = torch.isfinite(logits).all(1)
    if not bool(finite.all()):
        bad = [index for index, ok in zip(indices, finite.tolist(), strict=True) if not ok]
        raise NonFiniteError(
            f"the model's class scores are NaN or infinite for dataset item{'s' if len(bad) > 1 else ''} "
            f"{', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''} although their inputs are finite"
        )
