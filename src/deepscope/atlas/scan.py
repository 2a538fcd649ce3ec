"""The one-pass dataset scan: predictions, probabilities, pooled embeddings and every per-layer reduction from a
single forward pass per sample, written chunk by chunk into a resumable workspace.

The dataset is cut into chunks of ``chunk_size`` consecutive indices. A chunk is the unit of work (for the
local loop and for each Ray actor call) and the unit of commit: its array rows are written in place, then one
SQLite transaction records its samples, its predictions and the run's merged reductions. A scan that is
stopped (killed, crashed, interrupted) and started again with the same arguments skips the committed chunks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from deepscope.atlas.reductions import ScanState
from deepscope.errors import DatasetError, DeepscopeError, ImageError, SpecError
from deepscope.probe.hooks import first_tensor, layer_hooks
from deepscope.probe.inference import forward_only, module_settings
from deepscope.probe.layers import INPUT_SUFFIX, find_layers
from deepscope.probe.state import evaluation_mode
from deepscope.workspace.store import Run, Store, pack_arrays, sync_array, unpack_arrays
from deepscope.zoo.datasets import (
    dataset_fingerprint,
    dataset_name,
    load_dataset,
    source_of,
    split_item,
)
from deepscope.zoo.images import convert_mode
from deepscope.zoo.loaders import load_model
from deepscope.zoo.vision_model import VisionModel

ENGINES = ("local", "ray")

# Seconds between the starts of two commits of finished chunks, and how many finished chunks may wait for one.
COMMIT_INTERVAL = 0.5
MAX_WAITING_CHUNKS = 8


@dataclass(frozen=True)
class ScanPlan:
    """What a scan records, decided once from a probe forward pass on the first readable sample.

    ``layers`` are the stored names (the embedding first): a module name records the module's output,
    ``NAME:input`` its input. ``units`` and ``shapes`` are per layer (shape per sample).
    """

    layers: tuple[str, ...]
    units: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    embedding_layer: str
    classes: tuple[str, ...]
    n_samples: int
    batch_size: int
    chunk_size: int
    k: int
    thumbnail: tuple[int, int, int] | None

    @property
    def n_chunks(self) -> int:
        return -(-self.n_samples // self.chunk_size)

    def bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_samples)

    def batch_bounds(self, chunk: int) -> list[tuple[int, int]]:
        """(first, stop) of each batch of ``chunk``, in order."""
        start, stop = self.bounds(chunk)
        return [(first, min(first + self.batch_size, stop)) for first in range(start, stop, self.batch_size)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "units": list(self.units),
            "shapes": [list(s) for s in self.shapes],
            "embedding_layer": self.embedding_layer,
            "classes": list(self.classes),
            "n_samples": self.n_samples,
            "batch_size": self.batch_size,
            "chunk_size": self.chunk_size,
            "k": self.k,
            "thumbnail": list(self.thumbnail) if self.thumbnail else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanPlan:
        return cls(
            tuple(data["layers"]),
            tuple(data["units"]),
            tuple(tuple(s) for s in data["shapes"]),
            data["embedding_layer"],
            tuple(data["classes"]),
            data["n_samples"],
            data["batch_size"],
            data["chunk_size"],
            data["k"],
            tuple(data["thumbnail"]) if data["thumbnail"] else None,
        )


@dataclass
class ChunkResult:
    """What one chunk produced: rows for the scanned samples (``indices``, dataset order) and the chunk's own
    reductions (``state``), to be merged into the run's."""

    chunk: int
    start: int
    stop: int
    indices: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray
    embeddings: list[np.ndarray]
    thumbnails: np.ndarray | None
    samples: list[tuple[int, str, int | None, str, str | None]]
    state: dict[str, np.ndarray] = field(repr=False)

    def to_bytes(self) -> bytes:
        """Serialised without pickle (a Ray actor sends its chunks to the driver this way)."""
        arrays = {
            "indices": self.indices,
            "labels": self.labels,
            "predicted": self.predicted,
            "probabilities": self.probabilities,
            "meta": np.frombuffer(
                json.dumps(
                    {"chunk": self.chunk, "start": self.start, "stop": self.stop, "samples": self.samples}
                ).encode(),
                dtype=np.uint8,
            ),
        }
        arrays.update({f"embedding{i}": e for i, e in enumerate(self.embeddings)})
        if self.thumbnails is not None:
            arrays["thumbnails"] = self.thumbnails
        arrays.update({f"state.{key}": value for key, value in self.state.items()})
        return pack_arrays(arrays)

    @classmethod
    def from_bytes(cls, blob: bytes) -> ChunkResult:
        arrays = unpack_arrays(blob)
        meta = json.loads(arrays["meta"].tobytes().decode())
        count = sum(1 for key in arrays if key.startswith("embedding"))
        return cls(
            meta["chunk"],
            meta["start"],
            meta["stop"],
            arrays["indices"],
            arrays["labels"],
            arrays["predicted"],
            arrays["probabilities"],
            [arrays[f"embedding{i}"] for i in range(count)],
            arrays.get("thumbnails"),
            [tuple(row) for row in meta["samples"]],
            {key[6:]: value for key, value in arrays.items() if key.startswith("state.")},
        )


# --------------------------------------------------------------------------------------------------------------
# per-sample loading


class Loader:
    """Reads dataset items into model inputs or pixels; an unreadable item becomes a reported skip."""

    def __init__(self, vm: VisionModel, dataset: Dataset):
        self.vm = vm
        self.dataset = dataset
        self.to_pixels = vm.transform is None

    def load(self, index: int) -> tuple[str, torch.Tensor | np.ndarray | None, int | None, str | None]:
        """(kind 'pixels' | 'input' | 'skipped', item, label, error): the item is the image's uint8 array
        for 'pixels' (turned into tensors a batch at a time by :meth:`tensors`), a [C,H,W] tensor for 'input'."""
        item, error = self.fetch(index)
        if error is not None:
            return "skipped", None, None, error
        return self.prepare(item, index)

    def fetch(self, index: int) -> tuple[Any, str | None]:
        """The raw dataset item, or the reason it cannot be read."""
        try:
            return self.dataset[index], None
        except (ImageError, OSError) as error:
            return None, f"{type(error).__name__}: {error}"

    def prepare(
        self, item: Any, index: int
    ) -> tuple[str, torch.Tensor | np.ndarray | None, int | None, str | None]:
        image, label = split_item(item)
        if isinstance(image, torch.Tensor):
            if image.ndim != 3:
                raise DatasetError(
                    f"item {index} of {dataset_name(self.dataset)} is a tensor of shape {list(image.shape)}; "
                    "a tensor item is taken as one model input [C,H,W]"
                )
            return "input", image, label, None
        if not isinstance(image, Image.Image):
            raise DatasetError(
                f"item {index} of {dataset_name(self.dataset)} holds a {type(image).__name__}; expected a PIL "
                "image, a uint8 NumPy image or a [C,H,W] tensor, alone, first in a tuple with its label, or in a dict "
                "under 'image'"
            )
        try:
            image = convert_mode(image, self.vm.image_mode)
            if not self.to_pixels:
                return "input", self.vm.transform(image), label, None
            # Decoding happens here (a lazily loaded file fails on this sample, not on its batch).
            return "pixels", np.asarray(image), label, None
        except (ImageError, OSError) as error:
            return "skipped", None, None, f"{type(error).__name__}: {error}"

    def tensors(self, kinds: list[str], items: list[torch.Tensor | np.ndarray]) -> list[torch.Tensor]:
        """Per-sample [C,H,W] tensors of loaded items; images are preprocessed together, a batch at once."""
        if set(kinds) == {"pixels"}:
            return self.vm.preprocessing.pixel_batch(items)
        if "pixels" in kinds:
            raise DatasetError("a dataset mixes PIL images and tensors; give one kind of item")
        return items


def _stack(kinds: list[str], tensors: list[torch.Tensor]) -> torch.Tensor:
    """One batch of per-sample tensors [B, C, H, W], with clear errors for mixed items."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise DatasetError(
            f"samples in one batch have different shapes {sorted(shapes)[:4]}: give the model a preprocessing "
            "that resizes and crops to one size (e.g. a spec option size=224)"
        )
    if len(set(kinds)) > 1:
        raise DatasetError("a dataset mixes PIL images and tensors; give one kind of item")
    return torch.stack(tensors)


def batch_input(vm: VisionModel, kinds: list[str], tensors: list[torch.Tensor], device: torch.device):
    """Stack one batch onto ``device`` -> (model input, pixels or None)."""
    batch = _stack(kinds, tensors).to(device, non_blocking=True)
    if kinds[0] == "pixels":
        return vm.normalize(batch), batch
    return batch, None


def _thumbnails(pixels: torch.Tensor | None, inputs: torch.Tensor, size: tuple[int, int, int]) -> np.ndarray:
    """uint8 [B, h, w, c] pictures: the preprocessed pixels, or the model input scaled per image to [0, 1]."""
    height, width, _ = size
    if pixels is None:
        flat = inputs.float().flatten(1)
        low, high = flat.amin(1)[:, None, None, None], flat.amax(1)[:, None, None, None]
        pixels = (inputs.float() - low) / (high - low).clamp_min(1e-12)
    if tuple(pixels.shape[-2:]) != (height, width):
        pixels = F.interpolate(pixels.float(), size=(height, width), mode="area")
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# --------------------------------------------------------------------------------------------------------------
# recording layers


class _Recorder:
    """Reduces each recorded layer's tensor as soon as the forward pass produces it (nothing is kept but the
    pooled [B, units] rows). The forward is :func:`~deepscope.probe.inference.forward_only`: the folded copy of the model with
    the layers tapped, or the model with hooks where no copy may stand in."""

    def __init__(self, vm: VisionModel, layers: Sequence[str], state: ScanState):
        self.vm = vm
        self.layers = list(layers)
        self.state = state
        self.positions = {name: position for position, name in enumerate(self.layers)}
        self.pooled: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        self.current: dict[str, torch.Tensor] = {}  # the pooled rows of the batch being recorded

    def _record(self, name: str, tensor: torch.Tensor) -> None:
        units_first = _units_first(tensor.detach())
        spatial = tuple(range(2, units_first.ndim))
        pooled = (units_first.mean(spatial) if spatial else units_first).float()
        self.current[name] = pooled
        self.state.add_layer(self.positions[name], units_first, pooled)

    def forward(self, inputs: torch.Tensor) -> Any:
        """The model's output for a new batch, its layers recorded."""
        self.current = {}
        return forward_only(self.vm, inputs, self.layers, self._record)

    def end_batch(self) -> None:
        """Keep the pooled rows of the batch's layers."""
        for name, pooled in self.current.items():
            self.pooled[name].append(pooled)


def _units_first(tensor: torch.Tensor) -> torch.Tensor:
    """[B, units, *spatial]: channels of a conv map stay where they are, token features [B, T, D] move to the
    front of the token axis; a vector output [B, D] stays as it is."""
    if tensor.ndim == 3:
        return tensor.transpose(1, 2)
    if tensor.ndim < 2:
        return tensor.reshape(tensor.shape[0], -1)
    return tensor


def _units(shape: tuple[int, ...]) -> int:
    if len(shape) == 2:  # [T, D] tokens
        return int(shape[1])
    return int(shape[0]) if shape else 1


# --------------------------------------------------------------------------------------------------------------
# one chunk


@dataclass
class _LoadedBatch:
    samples: list[tuple[int, str, int | None, str, str | None]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    inputs: torch.Tensor | None = None
    kind: str = ""
    labelled: bool = False


class ChunkScanner:
    """Scans chunks of a dataset with a model: loading, one forward per batch, reductions. The same code runs
    in the local loop and inside each Ray actor."""

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

    def _load_batch(self, first: int, stop: int) -> _LoadedBatch:
        batch = _LoadedBatch()
        kinds, tensors = [], []
        for index in range(first, stop):
            kind, tensor, label, error = self.loader.load(index)
            source = source_of(self.dataset, index)
            if kind == "skipped":
                batch.samples.append((index, source, None, "skipped", error))
                continue
            batch.samples.append((index, source, label, "ok", None))
            kinds.append(kind)
            tensors.append(tensor)
            batch.indices.append(index)
            batch.labels.append(-1 if label is None else label)
        if tensors:
            _check_labels(batch.labels, len(self.plan.classes), batch.indices)
            batch.inputs, batch.kind = _stack(kinds, self.loader.tensors(kinds, tensors)), kinds[0]
            batch.labelled = any(label >= 0 for label in batch.labels)
        return batch

    def _batches(self, bounds: list[tuple[int, int]]) -> Iterator[_LoadedBatch]:
        """The chunk's batches, loaded in order: here, or by ``workers`` threads that read and preprocess the next
        batches while one runs (PIL decodes and resizes, and torch resizes, without holding the GIL)."""
        if not self.workers:
            for first, stop in bounds:
                yield self._load_batch(first, stop)
            return
        following = iter(bounds)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="deepscope-load") as pool:
            ahead = deque(
                pool.submit(self._load_batch, *b) for b in itertools.islice(following, self.workers)
            )
            while ahead:
                batch = ahead.popleft().result()
                upcoming = next(following, None)
                if upcoming is not None:
                    ahead.append(pool.submit(self._load_batch, *upcoming))
                yield batch

    def scan_chunk(self, chunk: int) -> ChunkResult:
        """Scan one chunk (batches keep their order and composition, so results do not depend on timing)."""
        plan = self.plan
        start, stop = plan.bounds(chunk)
        state = ScanState(
            list(zip(plan.layers, plan.units, strict=True)), len(plan.classes), plan.k, self.device
        )
        samples: list[tuple[int, str, int | None, str, str | None]] = []
        indices, labels, predicted, probabilities, thumbnails = [], [], [], [], []
        recorder = _Recorder(self.vm, plan.layers, state)
        with evaluation_mode(self.vm.module), torch.inference_mode():
            for batch in self._batches(plan.batch_bounds(chunk)):
                samples.extend(batch.samples)
                if batch.inputs is None:
                    continue
                inputs = batch.inputs.to(self.device, non_blocking=True)
                pixels = None
                if batch.kind == "pixels":
                    pixels, inputs = inputs, self.vm.normalize(inputs)
                index_tensor = torch.tensor(batch.indices, dtype=torch.int64, device=self.device)
                label_tensor = torch.tensor(batch.labels, dtype=torch.int64, device=self.device)
                logits = _logits(recorder.forward(inputs))
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
                    thumbnails.append(_thumbnails(pixels, inputs, plan.thumbnail))
        classes = len(plan.classes)
        return ChunkResult(
            chunk,
            start,
            stop,
            _cat(indices, torch.int64, (0,)),
            _cat(labels, torch.int64, (0,)),
            _cat(predicted, torch.int64, (0,)),
            _cat(probabilities, torch.float32, (0, classes)),
            [
                _cat(recorder.pooled[name], torch.float32, (0, units))
                for name, units in zip(plan.layers, plan.units, strict=True)
            ],
            (np.concatenate(thumbnails) if thumbnails else np.zeros((0, *plan.thumbnail), np.uint8))
            if plan.thumbnail is not None
            else None,
            samples,
            state.state_dict(),
        )


def default_workers(device: torch.device) -> int:
    """Loader threads ahead of the model. None on the CPU: the forward pass's intra-op threads already keep every
    core busy, and loaders only compete with them (on 2 cores, 1 and 2 loader threads slowed a LeNet scan of the
    MNIST digits from 0.64 to 0.80 and 0.91 s; for EfficientNet-Lite0 on a folder of JPEG photos they changed
    nothing beyond noise, see ``benchmarks/atlas.py``). With an accelerator, one per core besides the main
    thread, at most 8: reading and preprocessing images is then the bottleneck."""
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, min(8, cores - 1))


def _cat(parts: list[torch.Tensor], dtype: torch.dtype, empty: tuple[int, ...]) -> np.ndarray:
    if not parts:
        return np.zeros(empty, dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    return torch.cat([p.cpu() for p in parts]).to(dtype).numpy()


def _logits(output: Any) -> torch.Tensor:
    tensor = first_tensor(output)
    if tensor is None or tensor.ndim != 2:
        shape = None if tensor is None else list(tensor.shape)
        raise DeepscopeError(
            f"the model returns {shape}, not class scores [B, classes]; a scan needs a classifier"
        )
    return tensor


def _check_labels(labels: list[int], classes: int, indices: list[int]) -> None:
    for index, label in zip(indices, labels, strict=True):
        if not -1 <= label < classes:
            raise DatasetError(f"sample {index} has label {label}, outside the model's {classes} classes")


# --------------------------------------------------------------------------------------------------------------
# planning


def plan_scan(
    vm: VisionModel,
    dataset: Dataset,
    layers: str | Sequence[str] | None,
    *,
    batch_size: int,
    chunk_size: int,
    k: int,
    thumbnail_size: int,
) -> ScanPlan:
    """Decide what to record: run the model once on the first readable sample with hooks on the requested layers
    and the input of every Linear (the last one called is the classifier; its input is the embedding)."""
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size), ("k", k)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(thumbnail_size, int) or thumbnail_size < 0:
        raise ValueError(f"thumbnail_size must be an int >= 0 (0: no thumbnails), got {thumbnail_size!r}")
    loader = Loader(vm, dataset)
    for index in range(len(dataset)):
        kind, tensor, _, _ = loader.load(index)
        if kind != "skipped":
            break
    else:
        raise DatasetError(f"no sample of {dataset_name(dataset)} could be read")
    inputs, pixels = batch_input(vm, [kind], loader.tensors([kind], [tensor]), vm.device)

    module = vm.module
    requested = _requested_layers(vm, layers)
    linear_inputs = [
        name + INPUT_SUFFIX for name, sub in module.named_modules() if isinstance(sub, nn.Linear)
    ]
    calls: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}

    def seen(name: str, tensor: torch.Tensor) -> None:
        calls.append(name)
        shapes[name] = tuple(tensor.shape[1:])

    probed = list(dict.fromkeys(requested + linear_inputs))
    with evaluation_mode(module), torch.inference_mode(), layer_hooks(module, probed, seen):
        logits = _logits(module(inputs))
    if layers is None:
        linear_calls = [name for name in calls if name in linear_inputs]
        if not linear_calls:
            raise DeepscopeError(
                f"{vm.name} calls no nn.Linear, so deepscope cannot tell its penultimate layer; "
                "pass layers=[...] and the first one is used as the embedding"
            )
        embedding = linear_calls[-1]
        chosen = [embedding] + [name for name in default_layers(module) if name in shapes]
    else:
        chosen = requested
        embedding = requested[0]
    reused = [name for name in chosen if calls.count(name) > 1]
    if reused:
        raise DeepscopeError(
            f"layers {reused} run more than once per forward pass (a module reused in the model); "
            "record layers that run once"
        )
    missing = [name for name in chosen if name not in shapes]
    if missing:
        raise DeepscopeError(f"layers {missing} did not run in a forward pass of {vm.name}")
    if vm.labels is None:
        classes = [str(i) for i in range(logits.shape[1])]
    elif len(vm.labels) == logits.shape[1]:
        classes = list(vm.labels)
    else:
        raise DeepscopeError(
            f"{vm.name} has {len(vm.labels)} class names but scores {logits.shape[1]} classes; "
            "give it the names of its outputs (or none)"
        )
    thumbnail = None
    if thumbnail_size > 0:
        picture = pixels if pixels is not None else inputs
        channels, height, width = picture.shape[1:]
        if channels in (1, 3):
            scale = min(1.0, thumbnail_size / max(height, width))
            thumbnail = (max(1, round(height * scale)), max(1, round(width * scale)), int(channels))
    return ScanPlan(
        tuple(chosen),
        tuple(_units(shapes[name]) for name in chosen),
        tuple(shapes[name] for name in chosen),
        embedding,
        tuple(classes),
        len(dataset),
        batch_size,
        chunk_size,
        k,
        thumbnail,
    )


def _requested_layers(vm: VisionModel, layers: str | Sequence[str] | None) -> list[str]:
    if layers is None:
        return default_layers(vm.module)
    patterns = [layers] if isinstance(layers, str) else list(layers)
    if not patterns:
        raise ValueError("layers is empty; give layer names or globs, or None for the defaults")
    chosen: list[str] = []
    for pattern in patterns:
        chosen.extend(name for name in find_layers(vm, pattern) if name not in chosen)
    return chosen


# A model with more conv / linear layers than this is recorded block by block (see default_layers).
MAX_DEFAULT_LAYERS = 16


def default_layers(module: nn.Module) -> list[str]:
    """The layers a scan records when none are named (after the embedding), in definition order.

    A small model: every convolution and linear layer. A model with more than ``MAX_DEFAULT_LAYERS`` of them:
    its blocks, i.e. the items of its ``nn.Sequential`` / ``nn.ModuleList`` containers that hold two or more
    such layers and are not containers themselves (ResNet's ``layer1.0``, EfficientNet's ``_blocks.3``, a
    ViT's encoder layers), and the convolution and linear layers outside every block (stem, head, classifier).
    A large model without blocks keeps every layer. On EfficientNet-Lite0 that is 19 layers instead of 51: the
    atlas shows one row per block, and the scan's histograms skip the widest maps (the expanded ones inside
    each block).
    """
    weighted = _weighted_layers(module)
    if len(weighted) <= MAX_DEFAULT_LAYERS:
        return weighted
    containers = (nn.Sequential, nn.ModuleList)
    blocks: list[str] = []
    for name, sub in module.named_modules():  # parents before children
        if not isinstance(sub, containers) or any(name.startswith(block + ".") for block in blocks):
            continue
        for child, item in sub.named_children():
            path = f"{name}.{child}" if name else child
            inside = [layer for layer in weighted if layer == path or layer.startswith(path + ".")]
            if not isinstance(item, containers) and len(inside) >= 2:
                blocks.append(path)
    if not blocks:
        return weighted
    outside = [layer for layer in weighted if not any(layer.startswith(b + ".") for b in blocks)]
    order = {name: position for position, (name, _) in enumerate(module.named_modules())}
    return sorted(blocks + outside, key=order.__getitem__)


def _weighted_layers(module: nn.Module) -> list[str]:
    """Modules that hold a weight matrix or kernel of their own (convolutions, linear layers, also subclasses
    that wrap a padding module): the default recorded layers."""
    chosen = []
    for name, sub in module.named_modules():
        weight = sub._parameters.get("weight") if name else None
        if isinstance(weight, torch.Tensor) and weight.ndim >= 2:
            chosen.append(name)
    return chosen


# --------------------------------------------------------------------------------------------------------------
# fingerprints


def model_fingerprint(vm: VisionModel) -> str:
    """A hash of the model's structure (each module's class and settings), parameters, buffers, preprocessing
    (and custom transform, by its repr where that names its settings, as torchvision's do, else by its type) and
    class names."""
    digest = hashlib.sha256()
    for name, sub in vm.module.named_modules():  # the structure: each module's class and settings
        settings = [
            (key, _stable_name(value) if callable(value) else value) for key, value in module_settings(sub)
        ]
        digest.update(f"{name} {type(sub).__module__}.{type(sub).__qualname__} {settings!r}".encode())
    for name, tensor in [*vm.module.named_parameters(), *vm.module.named_buffers()]:
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(repr(vm.preprocessing).encode())
    if vm.transform is not None:
        described = repr(vm.transform)
        digest.update((type(vm.transform).__qualname__ if " at 0x" in described else described).encode())
    digest.update(repr(vm.labels).encode())
    return digest.hexdigest()[:32]


def _stable_name(function: Any) -> str:
    """A function's name that is the same in every process (not its repr, which holds its address)."""
    return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', type(function).__qualname__)}"


def _run_fingerprint(model_fp: str, dataset_fp: str, plan: ScanPlan) -> str:
    text = json.dumps({"model": model_fp, "dataset": dataset_fp, "plan": plan.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------------------------------
# committing


class _Writer:
    """Writes chunk results into the run's arrays and commits them with the merged reductions."""

    def __init__(self, store: Store, run: Run, plan: ScanPlan, device: torch.device):
        self.store = store
        self.run = run
        self.plan = plan
        self.device = device
        saved = store.state(run.id)
        self.layers = list(zip(plan.layers, plan.units, strict=True))
        self.state = (
            ScanState.from_state_dict(saved, self.layers, device)
            if saved is not None
            else ScanState(list(zip(plan.layers, plan.units, strict=True)), len(plan.classes), plan.k, device)
        )
        self.arrays = {
            "predictions": store.array(run.id, "predictions.npy", writable=True),
            "labels": store.array(run.id, "labels.npy", writable=True),
            "probabilities": store.array(run.id, "probabilities.npy", writable=True),
        }
        if plan.thumbnail is not None:
            self.arrays["thumbnails"] = store.array(run.id, "thumbnails.npy", writable=True)
        self.embeddings = [
            store.array(run.id, f"embeddings/{record.file}.npy", writable=True)
            for record in store.layers(run.id)
        ]

    def write(self, result: ChunkResult) -> _Written:
        """Put a chunk's rows into the memory-mapped arrays (the page cache: nothing of them waits in memory) and
        its reductions into the run's; both count once :meth:`commit` has recorded the chunk."""
        rows = result.indices
        self.arrays["predictions"][rows] = result.predicted
        self.arrays["labels"][rows] = result.labels
        self.arrays["probabilities"][rows] = result.probabilities
        if result.thumbnails is not None and "thumbnails" in self.arrays:
            self.arrays["thumbnails"][rows] = result.thumbnails
        for array, values in zip(self.embeddings, result.embeddings, strict=True):
            array[rows] = values
        self.state.merge(ScanState.from_state_dict(result.state, self.layers, self.device))
        confidence = result.probabilities.max(1) if len(rows) else np.zeros(0, np.float32)
        return _Written(
            (result.chunk, result.start, result.stop, result.samples),
            (rows, result.predicted, confidence, result.labels),
        )

    def commit(self, chunks: Sequence[_Written], state: dict[str, np.ndarray]) -> None:
        """Flush every array once, then record the written chunks and ``state`` (the run's reductions over every
        chunk written so far) in one transaction."""
        predictions: list[tuple[int, int, float, int | None]] = []
        for written in chunks:
            rows, predicted, confidence, labels = (array.tolist() for array in written.predictions)
            known = [None if label < 0 else label for label in labels]
            predictions += zip(rows, predicted, confidence, known, strict=True)
        for array in [*self.arrays.values(), *self.embeddings]:
            sync_array(array)
        self.store.commit_chunks(
            self.run.id, chunks=[written.chunk for written in chunks], predictions=predictions, state=state
        )


@dataclass
class _Written:
    """A chunk whose rows are in the arrays, waiting for its commit: (chunk, start, stop, sample rows) and its
    (indices, predicted, confidence, labels) arrays."""

    chunk: tuple[int, int, int, list[tuple[int, str, int | None, str, str | None]]]
    predictions: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# --------------------------------------------------------------------------------------------------------------
# the scan


def scan(
    model: VisionModel | nn.Module | str,
    data: str | Dataset,
    layers: str | Sequence[str] | None = None,
    engine: str = "local",
    *,
    out: str | Any,
    batch_size: int = 64,
    chunk_size: int = 512,
    k: int = 16,
    thumbnail_size: int = 32,
    progress: bool = False,
    address: str | None = None,
    actors: int | None = None,
    workers: int | None = None,
):
    """Scan a dataset with a model in one pass and store everything in the workspace directory ``out``.

    Records, per sample: the prediction, class probabilities (softmax), label (when the data has labels), a
    thumbnail, and the pooled activations (spatial mean per unit) of every recorded layer. Per layer, reduced on
    the fly: a histogram of all output values (fixed logarithmic bins, see
    :mod:`deepscope.atlas.reductions`) with the exact maximum and mean, sparsity, each unit's maximum and
    activity (dead units never fire), and each unit's top-``k`` samples (by its spatial maximum, the
    ``deepscope.units`` reduction). Over the dataset: the confusion matrix.

    ``layers=None`` records the embedding — the input of the last ``nn.Linear`` the model calls, found with
    hooks on a probe pass, so no architecture is special-cased — and every convolution and linear layer's
    output, or for a model with more than 16 of those, each block's output (:func:`default_layers`). Otherwise
    ``layers`` are names or globs (``NAME:input`` records a module's input); the first is the embedding. The
    model runs in eval mode (restored after) and is otherwise left as found.

    ``batch_size`` samples go through the model at once (the memory knob); ``chunk_size`` samples make one
    committed unit of work (what a resumed scan may redo, what a Ray actor computes per call); ``k`` top samples
    are kept per unit; ``thumbnail_size`` bounds the stored pictures (0: none). On disk a scan takes
    4 bytes x (classes + units of every recorded layer) per sample, plus the thumbnail.

    ``workers`` threads read and preprocess the next batches while the model runs (default: none on the CPU,
    whose cores the forward pass already uses; one per core, at most 8, with an accelerator); with more than one
    the dataset is read from several threads at once, so its ``__getitem__`` must allow that (image files and
    in-memory data do; give ``workers=1`` otherwise). Results never depend on ``workers``.

    ``engine='ray'`` runs the chunks on Ray Data actors (``address``: an existing cluster, default a local
    one; ``actors``: the pool size; ``workers`` per actor). A scan that was stopped resumes when called again
    with the same arguments; a finished one is returned as it is. ``progress=True`` shows a progress bar.

    >>> import tempfile, deepscope as ds
    >>> digits = ds.datasets.mnist5k("test").subset(range(200))
    >>> ws = ds.atlas.scan("zoo:lenet_mnist", digits, out=tempfile.mkdtemp(), thumbnail_size=0)
    >>> ws.predictions.shape, ws.embedding_layer, ws.layers[1:3]
    ((200,), 'fc3:input', ['conv1', 'conv2'])
    """
    from deepscope.atlas.workspace import Workspace

    if engine not in ENGINES:
        raise SpecError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise SpecError(f"workers must be a whole number >= 0 (loader threads), got {workers!r}")
    vm = load_model(model)
    model_name = model if isinstance(model, str) else vm.name
    dataset = load_dataset(data, vm.labels)
    plan = plan_scan(
        vm, dataset, layers, batch_size=batch_size, chunk_size=chunk_size, k=k, thumbnail_size=thumbnail_size
    )
    model_fp = model_fingerprint(vm)
    dataset_fp = dataset_fingerprint(dataset)
    fingerprint = _run_fingerprint(model_fp, dataset_fp, plan)
    store = Store.create(out)
    run = store.find_run(fingerprint)
    if run is None or not run.complete:
        with store.writing(fingerprint):
            # Looked up again: another process may have started or finished the run meanwhile.
            run = store.find_run(fingerprint)
            if run is None:
                run = _start_run(store, plan, fingerprint, model_name, model_fp, dataset, dataset_fp, vm)
            if not run.complete:
                pending = [
                    chunk for chunk in range(plan.n_chunks) if chunk not in store.committed_chunks(run.id)
                ]
                results = _chunk_results(vm, data, dataset, plan, pending, engine, address, actors, workers)
                bar = _progress_bar(plan, pending, progress, dataset_name(dataset))
                _write_chunks(store, run, plan, results, bar)
                store.finish_run(run.id)
    return Workspace(store, store.run(run.id))


def _chunk_results(
    vm: VisionModel,
    data: str | Dataset,
    dataset: Dataset,
    plan: ScanPlan,
    pending: list[int],
    engine: str,
    address: str | None,
    actors: int | None,
    workers: int | None,
) -> Iterable[ChunkResult]:
    """The results of the ``pending`` chunks, in order, as the engine computes them."""
    if engine == "local":
        scanner = ChunkScanner(vm, dataset, plan, workers=workers)
        return (scanner.scan_chunk(chunk) for chunk in pending)
    from deepscope.atlas.ray_engine import ray_chunks

    return ray_chunks(vm, data if isinstance(data, str) else dataset, plan, pending, address, actors, workers)


def _write_chunks(store: Store, run: Run, plan: ScanPlan, results: Iterable[ChunkResult], bar) -> None:
    """Write and commit each chunk's results as they come.

    Each finished chunk's rows go into the arrays and its reductions into the run's at once; a second thread makes
    them durable and commits them (flush, then one SQLite transaction) while the next ones are computed, in order.
    A commit starts once the previous one is done and COMMIT_INTERVAL has passed since it started, with every
    chunk written by then, so that a fast model commits a few times a second, not per chunk; at most
    MAX_WAITING_CHUNKS wait (their sample and prediction records), which bounds memory. Stopped by an exception
    (an interrupt included), the chunks finished by then are committed, each exactly once."""
    writer = _Writer(store, run, plan, torch.device("cpu"))
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepscope-commit") as committer:
            committing, started, waiting = None, float("-inf"), []
            try:
                for result in results:
                    waiting.append(writer.write(result))
                    idle = committing is None or committing.done()
                    due = idle and time.monotonic() - started >= COMMIT_INTERVAL
                    if due or len(waiting) >= MAX_WAITING_CHUNKS:
                        if committing is not None:
                            committing.result()
                        snapshot = writer.state.state_dict()  # the waiting chunks are all merged into it
                        # Emptied before the hand-over: an interrupt from here on can lose these chunks (they
                        # are scanned again on resume) but never commit them twice.
                        handed, waiting = waiting, []
                        committing = committer.submit(writer.commit, handed, snapshot)
                        started = time.monotonic()
                    if bar is not None:
                        bar.update(result.stop - result.start)
            finally:  # also when stopped: the finished chunks are kept
                if committing is not None:
                    committing.result()
                if waiting:
                    writer.commit(waiting, writer.state.state_dict())
    finally:
        if bar is not None:
            bar.close()


def _start_run(
    store: Store,
    plan: ScanPlan,
    fingerprint: str,
    model_name: str,
    model_fp: str,
    dataset: Dataset,
    dataset_fp: str,
    vm: VisionModel,
) -> Run:
    from deepscope.atlas.quality import weight_histograms

    n, classes = plan.n_samples, len(plan.classes)
    arrays: dict[str, tuple[tuple[int, ...], str]] = {
        "predictions.npy": ((n,), "int64"),
        "labels.npy": ((n,), "int64"),
        "probabilities.npy": ((n, classes), "float32"),
    }
    if plan.thumbnail is not None:
        arrays["thumbnails.npy"] = ((n, *plan.thumbnail), "uint8")
    run = store.start_run(
        fingerprint=fingerprint,
        model=model_name,
        model_fingerprint=model_fp,
        dataset=dataset_name(dataset),
        dataset_fingerprint=dataset_fp,
        n_samples=n,
        n_chunks=plan.n_chunks,
        classes=plan.classes,
        embedding_layer=plan.embedding_layer,
        config=plan.to_dict(),
        layers=[
            (name, "embedding" if name == plan.embedding_layer else "layer", units, shape)
            for name, units, shape in zip(plan.layers, plan.units, plan.shapes, strict=True)
        ],
        arrays=arrays,
    )
    histograms = weight_histograms(vm)
    weights = {}
    for name, histogram in histograms.items():
        weights[f"{name}/counts"] = histogram.counts
        weights[f"{name}/edges"] = np.append(histogram.lower, histogram.upper[-1:])
        weights[f"{name}/stats"] = np.array(
            [
                histogram.low,
                histogram.high,
                histogram.mean,
                histogram.total,
                histogram.zeros,
                histogram.positives,
            ]
        )
    np.savez(store.run_dir(run.id) / "weights.npz", **weights)
    return run


def _progress_bar(plan: ScanPlan, pending: list[int], progress: bool, name: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    done = plan.n_samples - sum(plan.bounds(c)[1] - plan.bounds(c)[0] for c in pending)
    return tqdm(total=plan.n_samples, initial=done, unit="img", desc=f"scan {name}", dynamic_ncols=True)


__all__ = ["ChunkResult", "ChunkScanner", "ScanPlan", "default_workers", "plan_scan", "scan"]
