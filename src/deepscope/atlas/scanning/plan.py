"""Planning a scan: which layers it records (the embedding, the defaults, or the layers asked for), their units
and shapes, the classes, the chunks and batches, and the thumbnail size, decided once from a probe forward pass
on the first readable sample."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from deepscope.atlas.scanning.loading import Loader, batch_input
from deepscope.errors import DatasetError, LayerNotFoundError, SettingError, SettingTypeError
from deepscope.probe.hooks import first_tensor, layer_hooks
from deepscope.probe.layers import INPUT_SUFFIX, LayerAddress, find_layers, split_address
from deepscope.zoo.datasets import dataset_name
from deepscope.zoo.state import evaluation_mode
from deepscope.zoo.vision_model import VisionModel


@dataclass(frozen=True)
class ScanPlan:
    """What a scan records, decided once from a probe forward pass on the first readable sample.

    ``layers`` are the stored names (the embedding first), in the grammar of :mod:`deepscope.probe.layers`: a
    module name records the module's output, ``NAME:input`` its input, ``NAME@N`` its N-th call. ``units`` and
    ``shapes`` are per layer (shape per sample).
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
        """(first, stop) dataset indices of ``chunk``."""
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_samples)

    def batch_bounds(self, chunk: int) -> list[tuple[int, int]]:
        """(first, stop) of each batch of ``chunk``, in order."""
        start, stop = self.bounds(chunk)
        return [(first, min(first + self.batch_size, stop)) for first in range(start, stop, self.batch_size)]

    def layer_units(self) -> list[tuple[str, int]]:
        """(name, units) of every recorded layer: what the reductions are laid out by."""
        return list(zip(self.layers, self.units, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (stored as the run's ``config``, and hashed into its fingerprint)."""
        return {
            "layers": list(self.layers),
            "units": list(self.units),
            "shapes": [list(shape) for shape in self.shapes],
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
            layers=tuple(data["layers"]),
            units=tuple(data["units"]),
            shapes=tuple(tuple(shape) for shape in data["shapes"]),
            embedding_layer=data["embedding_layer"],
            classes=tuple(data["classes"]),
            n_samples=data["n_samples"],
            batch_size=data["batch_size"],
            chunk_size=data["chunk_size"],
            k=data["k"],
            thumbnail=tuple(data["thumbnail"]) if data["thumbnail"] else None,
        )


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
    and the input of every Linear (the last one called is the classifier; its input is the embedding).

    A module that runs more than once per forward pass is recorded call by call (``NAME@0``, ``NAME@1``, ...)
    where the scan chooses the layers; a layer asked for by name must run once (name one call as ``NAME@N``).

    >>> import deepscope as ds
    >>> plan = plan_scan(ds.load_model("zoo:lenet_mnist"), ds.datasets.mnist5k("test"), ["fc1", "conv*"],
    ...                  batch_size=64, chunk_size=512, k=16, thumbnail_size=0)
    >>> plan.layers, plan.units, plan.n_chunks
    (('fc1', 'conv1', 'conv2'), (120, 6, 16), 2)
    """
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingTypeError(f"{name} must be a positive int, got {value!r}")
        if value < 1:
            raise SettingError(f"{name} must be a positive int, got {value!r}")
    if isinstance(thumbnail_size, bool) or not isinstance(thumbnail_size, int):
        raise SettingTypeError(
            f"thumbnail_size must be an int >= 0 (0: no thumbnails), got {thumbnail_size!r}"
        )
    if thumbnail_size < 0:
        raise SettingError(f"thumbnail_size must be an int >= 0 (0: no thumbnails), got {thumbnail_size!r}")
    loader = Loader(vm, dataset)
    for index in range(len(dataset)):
        loaded = loader.load(index)
        if loaded.kind != "skipped":
            break
    else:
        raise DatasetError(f"no sample of {dataset_name(dataset)} could be read")
    kinds = [loaded.kind]
    inputs, pixels = batch_input(vm, kinds, loader.tensors(kinds, [loaded.value]), vm.device)

    module = vm.module
    requested = requested_layers(vm, layers)
    calls: list[str] = []
    shapes: dict[str, list[tuple[int, ...]]] = {}  # per layer name, the shape of each of its calls

    def seen(name: str, tensor: torch.Tensor) -> None:
        calls.append(name)
        shapes.setdefault(name, []).append(tuple(tensor.shape[1:]))

    probed = list(dict.fromkeys(requested + _linear_inputs(module)))
    with evaluation_mode(module), torch.inference_mode(), layer_hooks(module, probed, seen):
        logits = class_scores(module(inputs))
    recorded = _recorded_layers(vm, layers, requested, calls, shapes)
    chosen = list(recorded)
    if vm.labels is None:
        classes = [str(i) for i in range(logits.shape[1])]
    elif len(vm.labels) == logits.shape[1]:
        classes = list(vm.labels)
    else:
        raise SettingError(
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
        layers=tuple(chosen),
        units=tuple(units_of(shape) for shape in recorded.values()),
        shapes=tuple(recorded.values()),
        embedding_layer=chosen[0],
        classes=tuple(classes),
        n_samples=len(dataset),
        batch_size=batch_size,
        chunk_size=chunk_size,
        k=k,
        thumbnail=thumbnail,
    )


def _recorded_layers(
    vm: VisionModel,
    layers: str | Sequence[str] | None,
    requested: list[str],
    calls: list[str],
    shapes: dict[str, list[tuple[int, ...]]],
) -> dict[str, tuple[int, ...]]:
    """The layers a scan records, the embedding first, each with its shape per sample, from the probe pass:
    ``calls`` names the probed layers in the order they ran, ``shapes`` gives the shape of each call of each."""
    recorded: dict[str, tuple[int, ...]] = {}
    if layers is None:
        linear_inputs = set(_linear_inputs(vm.module))
        linear_calls = [name for name in calls if name in linear_inputs]
        if not linear_calls:
            raise SettingError(
                f"{vm.name} calls no nn.Linear, so deepscope cannot tell its penultimate layer; "
                "pass layers=[...] and the first one is used as the embedding"
            )
        last = linear_calls[-1]
        embedding = last if len(shapes[last]) == 1 else _call_names(last, len(shapes[last]))[-1]
        recorded[embedding] = shapes[last][-1]  # the input of the last call of the last Linear
        for name in default_layers(vm.module):
            if name in shapes:  # a reused module: each call is a layer of its own
                names = [name] if len(shapes[name]) == 1 else _call_names(name, len(shapes[name]))
                recorded.update(zip(names, shapes[name], strict=True))
        return recorded
    missing = [name for name in requested if name not in shapes]
    if missing:
        raise LayerNotFoundError(f"layers {missing} did not run in a forward pass of {vm.name}")
    reused = [name for name in requested if len(shapes[name]) > 1]
    if reused:
        raise SettingError(
            f"layers {reused} run more than once per forward pass (a module reused in the model); name one "
            f"call as 'NAME@N' (N from 0): {', '.join(_call_names(reused[0], len(shapes[reused[0]])))}"
        )
    return {name: shapes[name][0] for name in requested}


def _linear_inputs(module: nn.Module) -> list[str]:
    """The input of every ``nn.Linear`` of ``module``, as layer names: the candidates for the embedding."""
    return [name + INPUT_SUFFIX for name, sub in module.named_modules() if isinstance(sub, nn.Linear)]


def _call_names(name: str, count: int) -> list[str]:
    """The names of the ``count`` calls of layer ``name``: 'act' -> ['act@0', 'act@1']."""
    address = split_address(name)
    return [str(LayerAddress(address.path, call, address.input)) for call in range(count)]


def class_scores(output: Any) -> torch.Tensor:
    """The model output's class scores [B, classes] (its first tensor); anything else is no classifier's.

    >>> import torch
    >>> class_scores((torch.zeros(2, 10), "extra")).shape
    torch.Size([2, 10])
    """
    tensor = first_tensor(output)
    if tensor is None or tensor.ndim != 2:
        shape = None if tensor is None else list(tensor.shape)
        raise SettingError(
            f"the model returns {shape}, not class scores [B, classes]; a scan needs a classifier"
        )
    return tensor


def units_of(shape: tuple[int, ...]) -> int:
    """The units of a layer whose tensor has ``shape`` per sample: the channels of a map [C, *spatial], the
    features of tokens [T, D] or of a vector [D].

    >>> units_of((16, 5, 5)), units_of((197, 768)), units_of((84,))
    (16, 768, 84)
    """
    if len(shape) == 2:  # [T, D] tokens
        return int(shape[1])
    return int(shape[0]) if shape else 1


def requested_layers(vm: VisionModel, layers: str | Sequence[str] | None) -> list[str]:
    """The layer names that ``layers`` (names and globs, each with an optional ``@N`` or ``:input``; None: the
    defaults) resolve to in ``vm``, in the order asked, without repeats.

    >>> import deepscope as ds
    >>> requested_layers(ds.load_model("zoo:lenet_mnist"), ["fc3:input", "conv*"])
    ['fc3:input', 'conv1', 'conv2']
    """
    if layers is None:
        return default_layers(vm.module)
    patterns = [layers] if isinstance(layers, str) else list(layers)
    if not patterns:
        raise SettingError("layers is empty; give layer names or globs, or None for the defaults")
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

    >>> import deepscope as ds
    >>> default_layers(ds.load_model("zoo:lenet_mnist").module)
    ['conv1', 'conv2', 'fc1', 'fc2', 'fc3']
    """
    weighted = weighted_layers(module)
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


def weighted_layers(module: nn.Module) -> list[str]:
    """Modules that hold a weight matrix or kernel of their own (convolutions, linear layers, also subclasses
    that wrap a padding module): the default recorded layers.

    >>> import torch
    >>> weighted_layers(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.ReLU()))
    ['0']
    """
    chosen = []
    for name, sub in module.named_modules():
        weight = sub._parameters.get("weight") if name else None
        if isinstance(weight, torch.Tensor) and weight.ndim >= 2:
            chosen.append(name)
    return chosen
