"""Top-k dataset patches per unit, streamed over a dataset of any size in one pass for several layers at once.

For each unit, the ``k`` samples on which it is strongest (a conv channel: its maximum over positions; a linear
unit: its value), the position of that maximum, and the input pixels it sees there: its receptive field
(Zeiler & Fergus 2014's top-9 patches; Girshick et al. 2014). The reduction is :class:`~deepscope.units.TopK`:
memory is ``O(units * k)`` whatever the dataset's size, and ties go to the lower sample index.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch import nn

from deepscope.errors import ImageError, SettingError, UnitError
from deepscope.probe.layers import find_layers
from deepscope.probe.receptive_field import ReceptiveField, receptive_fields
from deepscope.units._forward import check_unit, streaming_runner
from deepscope.units.deconv import RULES, project_units
from deepscope.units.topk import TopK
from deepscope.workspace.store import SkippedSample
from deepscope.zoo.datasets import ReadItem, dataset_name, fetch_item, is_map_style, read_item
from deepscope.zoo.vision_model import VisionModel, as_vision_model


@dataclass
class TopPatches:
    """The strongest samples of some units of one layer, best first (``k' = min(k, len(data))``).

    - ``units`` ``[U]``: the unit (channel) indices, in the order of the other fields' first dimension;
    - ``values`` ``[U,k']``: each unit's activation (maximum over positions for a conv layer);
    - ``sample_indices`` ``[U,k']``: index into the dataset;
    - ``positions`` ``[U,k',2]``: ``(y, x)`` in the layer's map where the maximum is (``-1`` for a linear layer);
    - ``boxes`` ``[U,k',4]``: ``(top, left, bottom, right)`` input pixels of the receptive field there, clipped to
      the image (bottom/right exclusive); the whole image for a linear layer;
    - ``crops`` ``[U,k',C,h,w]``: those pixels in pixel space ([0,1] for images), the receptive-field window with
      the part outside the image filled with ``fill`` (the whole image along an axis where the field is larger);
    - ``projections``: the same windows of the deconvnet / guided projection of each hit, when asked for;
    - ``seen``: the samples reduced; ``skipped``: those that could not be read (a corrupt file, NaN values), left
      out with a warning.
    """

    layer: str
    units: torch.Tensor
    values: torch.Tensor
    sample_indices: torch.Tensor
    positions: torch.Tensor
    boxes: torch.Tensor
    crops: torch.Tensor | None
    projections: torch.Tensor | None
    receptive_field: ReceptiveField | None
    seen: int
    skipped: list[SkippedSample] = field(default_factory=list)

    def unit(self, unit: int) -> dict[str, Any]:
        """Everything about one unit (by its index in the layer) as a dict of tensors."""
        rows = (self.units == unit).nonzero()
        if rows.numel() == 0:
            raise UnitError(
                f"unit {unit} of {self.layer!r} was not collected; collected: {self.units.tolist()}"
            )
        row = int(rows[0, 0])
        fields = ("values", "sample_indices", "positions", "boxes", "crops", "projections")
        return {name: getattr(self, name)[row] for name in fields if getattr(self, name) is not None}


UnitsArgument = int | Sequence[int] | Mapping[str, Sequence[int] | int] | None


def top_patches(
    model: VisionModel | nn.Module,
    data: Any,
    layer: str | Sequence[str],
    units: UnitsArgument = None,
    k: int = 9,
    batch_size: int = 64,
    crops: bool = True,
    projection: str | None = None,
    fill: float = 0.5,
) -> dict[str, TopPatches]:
    """The ``k`` strongest samples of each unit of the layers ``layer`` names, over ``data``, in one streaming pass:
    ``{layer name: TopPatches}``.

    ``data``: a ``[N,C,H,W]`` tensor of model inputs, or any sized, indexable dataset whose items are PIL images,
    ``[C,H,W]`` model-input tensors, or tuples whose first element is one (``ds.datasets.mnist5k()``, a
    torchvision dataset, a list). ``layer``: a layer name, a glob, or a list of them; every layer they name is
    reduced in the same pass. ``units``: None (all),
    an index, a list, or ``{layer: indices}``. ``projection``: ``"deconvnet"`` or ``"guided"`` adds the
    projection of each hit (:func:`project`), cropped like the patch. The model runs in eval mode, under
    ``torch.inference_mode``, only as far as the deepest requested layer.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> hits = ds.units.top_patches(vm, ds.datasets.mnist5k("test"), "conv2", units=[3], k=4)["conv2"]
    >>> hits.sample_indices.shape, hits.crops.shape  # conv2 sees 14x14 input pixels
    (torch.Size([1, 4]), torch.Size([1, 4, 1, 14, 14]))
    """
    vm = as_vision_model(model)
    if not isinstance(k, int) or k < 1:
        raise SettingError(f"k must be a positive int, got {k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise SettingError(f"batch_size must be a positive int, got {batch_size!r}")
    if projection is not None and projection not in RULES:
        raise SettingError(f"projection must be None or one of {', '.join(RULES)}, got {projection!r}")
    names = find_layers(vm, layer)
    source = DataSource(vm, data)
    if len(source) == 0:
        raise ImageError("the dataset is empty")
    chosen = _units_per_layer(names, units)

    reductions: dict[str, TopK] = {}
    selected: dict[str, torch.Tensor | None] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    ranges: dict[str, tuple[int, int]] = {}  # units that are consecutive channels: (first, count)
    batch: dict[str, torch.Tensor] = {}

    def reduce(name: str, activation: torch.Tensor) -> None:
        if name not in reductions:
            if activation.ndim not in (2, 4):
                raise UnitError(
                    f"top_patches reads [B,units] or [B,C,H,W] layers; {name!r} gives {list(activation.shape)}"
                )
            shapes[name] = tuple(activation.shape[1:])
            selected[name] = _check_units(name, shapes[name], chosen[name], activation.device)
            listed = chosen[name]
            if listed is not None and listed == list(range(listed[0], listed[0] + len(listed))):
                ranges[name] = (listed[0], len(listed))
            count = shapes[name][0] if selected[name] is None else len(selected[name])
            reductions[name] = TopK(count, k, device=activation.device, dtype=activation.dtype)
        if name in ranges:
            activation = activation.narrow(1, *ranges[name])  # a view: no copy
        elif selected[name] is not None:
            activation = activation.index_select(1, selected[name])
        reductions[name].update_maps(activation, batch["samples"])

    example: torch.Tensor | None = None
    with torch.inference_mode(), streaming_runner(vm, names, reduce) as run:
        for start in range(0, len(source), batch_size):
            read = source.read(list(range(start, min(start + batch_size, len(source)))))
            if read.inputs is None:
                continue
            if example is None:
                example = read.inputs[:1].clone()
            batch["samples"] = torch.tensor(read.indices, device=read.inputs.device)
            run(read.inputs)
    if example is None:
        raise ImageError(
            f"none of the {len(source)} samples could be read: {next(iter(source.skipped.values())).error}"
        )

    fields = receptive_fields(vm, names, example)  # one trace of the model for every layer
    found: dict[str, TopPatches] = {}
    windows: dict[str, torch.Tensor] = {}
    for name in names:
        found[name], windows[name] = locate_hits(
            name, shapes[name], selected[name], reductions[name], fields[name], example
        )
    if crops:
        cut_crops(source, found, windows, fill, batch_size)
    if projection:
        for name in names:
            found[name].projections = _project_hits(
                vm, source, found[name], windows[name], len(shapes[name]) == 3, projection, batch_size
            )
    report_skipped(source)
    for hits in found.values():
        hits.skipped = sorted(source.skipped.values(), key=lambda sample: sample.index)
    return found


def report_skipped(source: DataSource) -> None:
    """Warn, once per pass, that some samples could not be read and were left out (never silently)."""
    if source.skipped:
        first = min(source.skipped)
        warnings.warn(
            f"{len(source.skipped)} of the {len(source)} samples could not be read and are left out (the result's "
            f"skipped lists them): {source.skipped[first].source}: {source.skipped[first].error}",
            RuntimeWarning,
            stacklevel=3,
        )


def locate_hits(
    layer: str,
    shape: tuple[int, ...],
    selected: torch.Tensor | None,
    reduction: TopK,
    field: ReceptiveField | None,
    example: torch.Tensor,
) -> tuple[TopPatches, torch.Tensor]:
    """The hits of one layer with their positions and boxes (no pixels yet), and their unclipped windows."""
    values, samples, flat = reduction.result()
    units = selected if selected is not None else torch.arange(shape[0], device=values.device)
    spatial = len(shape) == 3
    height, width = example.shape[-2:]
    if spatial:
        positions = torch.stack([flat // shape[2], flat % shape[2]], dim=-1)
    else:
        positions = torch.full((*flat.shape, 2), -1, dtype=torch.int64, device=flat.device)
    windows = _windows(field, positions, (height, width), spatial)
    boxes = torch.stack(
        [
            windows[..., 0].clamp_min(0),
            windows[..., 1].clamp_min(0),
            windows[..., 2].clamp_max(height),
            windows[..., 3].clamp_max(width),
        ],
        dim=-1,
    )
    hits = TopPatches(layer, units, values, samples, positions, boxes, None, None, field, reduction.seen)
    return hits, windows


def cut_crops(
    source: DataSource,
    found: dict[str, TopPatches],
    windows: dict[str, torch.Tensor],
    fill: float,
    batch_size: int,
) -> None:
    """Set each layer's ``crops``. Every sample that is a hit of any unit of any layer is read once (in
    batches of ``batch_size``), and the crops of all hits on that batch are cut from it with two gathers;
    memory is one batch of pixels besides the crops."""
    flat_samples = {name: hits.sample_indices.flatten() for name, hits in found.items()}
    wanted = torch.cat(list(flat_samples.values())).unique()  # sorted
    out: dict[str, torch.Tensor] = {}
    for start in range(0, len(wanted), batch_size):
        chunk = wanted[start : start + batch_size]
        images = source.pixels(chunk.tolist())
        for name, samples in flat_samples.items():
            hit = torch.isin(samples, chunk.to(samples.device)).nonzero().flatten()
            if hit.numel() == 0:
                continue
            rows = torch.searchsorted(chunk.to(samples.device), samples[hit]).to(images.device)
            pieces = _crop_many(images[rows], windows[name].flatten(0, 1)[hit].to(images.device), fill)
            if name not in out:
                out[name] = pieces.new_empty((len(samples), *pieces.shape[1:]))
            out[name][hit.to(images.device)] = pieces
    for name, hits in found.items():
        hits.crops = out[name].unflatten(0, hits.sample_indices.shape)


def _project_hits(
    vm: VisionModel,
    source: DataSource,
    hits: TopPatches,
    windows: torch.Tensor,
    spatial: bool,
    projection: str,
    batch_size: int,
) -> torch.Tensor:
    """The deconvnet / guided projection of each hit, cut to the hit's window like its crop."""
    flat_samples = hits.sample_indices.flatten().tolist()
    flat_units = hits.units[:, None].expand_as(hits.sample_indices).flatten()
    flat_positions = hits.positions.flatten(0, 1)
    flat_windows = windows.flatten(0, 1)
    rows = []
    for start in range(0, len(flat_samples), batch_size):
        stop = start + batch_size
        inputs = source.inputs(flat_samples[start:stop])
        projected = project_units(
            vm,
            inputs,
            hits.layer,
            flat_units[start:stop],
            flat_positions[start:stop] if spatial else None,
            projection,
        )
        rows.append(_crop_many(projected, flat_windows[start:stop].to(projected.device), 0.0))
    return torch.cat(rows).unflatten(0, hits.sample_indices.shape)


def _windows(
    field: ReceptiveField | None, positions: torch.Tensor, size: tuple[int, int], spatial: bool
) -> torch.Tensor:
    """Unclipped crop windows ``[U,k,4]``: the receptive field at each position, or the whole image along an
    axis where the field covers it (global fields, linear layers)."""
    height, width = size
    windows = torch.empty((*positions.shape[:-1], 4), dtype=torch.int64, device=positions.device)
    windows[..., 0], windows[..., 1], windows[..., 2], windows[..., 3] = 0, 0, height, width
    if not spatial or field is None or field.is_global:
        return windows
    for axis, extent in ((0, height), (1, width)):
        if field.size[axis] >= extent:
            continue
        start = field.offset[axis] + positions[..., axis] * field.stride[axis]
        windows[..., axis] = start
        windows[..., axis + 2] = start + field.size[axis]
    return windows


def _crop_many(images: torch.Tensor, windows: torch.Tensor, fill: float) -> torch.Tensor:
    """``images[i, :, top:bottom, left:right]`` for each ``windows[i] = (top, left, bottom, right)`` (windows of
    one size), with the parts outside the image filled with ``fill``: ``[n,C,bottom-top,right-left]``."""
    count, channels, height, width = images.shape
    crop_height = int(windows[0, 2] - windows[0, 0])
    crop_width = int(windows[0, 3] - windows[0, 1])
    rows = windows[:, :1] + torch.arange(crop_height, device=images.device)
    columns = windows[:, 1:2] + torch.arange(crop_width, device=images.device)
    inside = ((rows >= 0) & (rows < height))[:, None, :, None] & ((columns >= 0) & (columns < width))[
        :, None, None, :
    ]
    rows = rows.clamp(0, height - 1)[:, None, :, None].expand(count, channels, crop_height, width)
    pieces = images.gather(2, rows)
    columns = columns.clamp(0, width - 1)[:, None, None, :].expand(count, channels, crop_height, crop_width)
    return pieces.gather(3, columns).masked_fill_(~inside, fill)


def _units_per_layer(names: list[str], units: UnitsArgument) -> dict[str, list[int] | None]:
    if isinstance(units, Mapping):
        chosen: dict[str, list[int] | None] = dict.fromkeys(names)
        for pattern, indices in units.items():
            matched = [name for name in names if name == pattern or fnmatch.fnmatch(name, pattern)]
            if not matched:
                raise UnitError(
                    f"units given for {pattern!r}, which is not among the layers asked for: {names}"
                )
            for name in matched:
                chosen[name] = _as_list(indices)
        return chosen
    return {name: _as_list(units) for name in names}


def _as_list(units) -> list[int] | None:
    if units is None:
        return None
    if isinstance(units, int) and not isinstance(units, bool):
        return [units]
    listed = list(units.tolist() if isinstance(units, torch.Tensor) else units)
    if not listed:
        raise UnitError("an empty list of units")
    return listed


def _check_units(layer: str, shape: tuple[int, ...], units: list[int] | None, device) -> torch.Tensor | None:
    if units is None:
        return None
    for unit in units:
        check_unit(layer, shape, unit)
    if len(set(units)) != len(units):
        raise UnitError(f"units for {layer!r} repeat: {units}")
    return torch.tensor(units, dtype=torch.int64, device=device)


class SourceBatch(NamedTuple):
    """Items read from a :class:`DataSource`: the dataset ``indices`` that could be read (the others are skipped),
    their model ``inputs`` (None when none could), ``labels``, and display ``pixels`` where asked for."""

    indices: list[int]
    inputs: torch.Tensor | None
    labels: list[int | None]
    pixels: torch.Tensor | None


_NON_FINITE = "NonFiniteError: the input holds NaN or infinite values"


def _source(data: Any, index: int) -> str:
    source = getattr(data, "source", None)
    return source(index) if callable(source) else f"{dataset_name(data)}[{index}]"


class DataSource:
    """Model inputs and display pixels for samples of a tensor batch or an indexable dataset; unreadable samples are
    skipped and listed in ``skipped`` (dataset index -> SkippedSample)."""

    def __init__(self, vm: VisionModel, data: Any):
        self.vm = vm
        self.data = data
        # Float [N,C,H,W]: model inputs, sliced as they are; other tensors (uint8 images) are read item by item.
        self.inputs_tensor = isinstance(data, torch.Tensor) and data.is_floating_point()
        if self.inputs_tensor and data.ndim != 4:
            raise ImageError(f"a tensor of model inputs must be [N,C,H,W], got {list(data.shape)}")
        if isinstance(data, torch.Tensor) and not self.inputs_tensor and data.dtype != torch.uint8:
            raise ImageError(
                f"a tensor dataset holds float model inputs [N,C,H,W] or uint8 images, got {data.dtype}"
            )
        if not is_map_style(data):
            raise ImageError(
                f"data must be a [N,C,H,W] tensor or a sized, indexable dataset, got {type(data).__name__}; "
                "wrap an iterable in a map-style torch Dataset so that the hits can be cropped afterwards"
            )
        self.skipped: dict[int, SkippedSample] = {}

    def __len__(self) -> int:
        return len(self.data)

    def _read(
        self, indices: list[int]
    ) -> tuple[list[int], list[Image.Image] | list[torch.Tensor], list[int | None]]:
        """The readable ones of ``indices`` with their images (PIL, or [C,H,W] model-input tensors) and labels; an
        item that cannot be read is skipped and kept in :attr:`skipped` (see zoo.datasets.read_item)."""
        kept, items, labels = [], [], []
        for index in indices:
            fetched = fetch_item(self.data, index)
            read = (
                ReadItem("skipped", None, None, fetched.error)
                if fetched.error is not None
                else read_item(
                    fetched.item, self.vm.image_mode, f"sample {index} of {dataset_name(self.data)}"
                )
            )
            if read.kind == "skipped":
                self.skipped.setdefault(index, SkippedSample(index, _source(self.data, index), read.error))
                continue
            kept.append(index)
            items.append(read.value)
            labels.append(read.label)
        if len({type(item) is torch.Tensor for item in items}) > 1:
            raise ImageError("the dataset mixes PIL images and tensors")
        return kept, items, labels

    def read(self, indices: list[int]) -> SourceBatch:
        """The readable ones of ``indices`` with their model inputs ``[n,C,H,W]`` on the model's device and their
        labels (None where an item has none, and for a tensor of inputs), from one read of each item."""
        if self.inputs_tensor:
            if indices == list(range(indices[0], indices[-1] + 1)):
                inputs = self.data[indices[0] : indices[-1] + 1]  # a view, no copy
            else:
                inputs = self.data[indices]
            finite = torch.isfinite(inputs).flatten(1).all(1).tolist()
            if all(finite):
                return SourceBatch(list(indices), inputs.to(self.vm.device), [None] * len(indices), None)
            for index, ok in zip(indices, finite, strict=True):
                if not ok:
                    self.skipped.setdefault(
                        index, SkippedSample(index, _source(self.data, index), _NON_FINITE)
                    )
            rows = [row for row, ok in enumerate(finite) if ok]
            kept = [index for index, ok in zip(indices, finite, strict=True) if ok]
            return SourceBatch(kept, inputs[rows].to(self.vm.device), [None] * len(kept), None)
        kept, items, labels = self._read(indices)
        if not items:
            return SourceBatch([], None, [], None)
        if isinstance(items[0], Image.Image):
            return SourceBatch(kept, self.vm.preprocess(items), labels, None)
        return SourceBatch(kept, torch.stack(items).to(self.vm.device), labels, None)

    def read_with_pixels(self, indices: list[int]) -> SourceBatch:
        """:meth:`read` with the display pixels of the same items (``pixels``: the images resized and cropped, or
        tensor inputs un-normalized), from one read of each."""
        if not self.inputs_tensor:
            kept, items, labels = self._read(indices)
            if items and isinstance(items[0], Image.Image) and self.vm.transform is None:
                pixels = self.vm.pixels(items)
                return SourceBatch(kept, self.vm.normalize(pixels), labels, pixels)
            if not items:
                return SourceBatch([], None, [], None)
            inputs = self.vm.preprocess(items) if isinstance(items[0], Image.Image) else torch.stack(items)
            inputs = inputs.to(self.vm.device)
            return SourceBatch(kept, inputs, labels, self.unnormalized(inputs))
        batch = self.read(indices)
        return batch._replace(pixels=None if batch.inputs is None else self.unnormalized(batch.inputs))

    def inputs(self, indices: list[int]) -> torch.Tensor:
        """Model inputs of items already read once (the hits of a pass): an item unreadable now is an error."""
        return self._all(self.read(indices), indices).inputs

    def pixels(self, indices: list[int]) -> torch.Tensor:
        """Display pixels of items already read once (see :meth:`inputs`)."""
        return self._all(self.read_with_pixels(indices), indices).pixels

    def _all(self, batch: SourceBatch, indices: list[int]) -> SourceBatch:
        if batch.indices != list(indices):
            lost = sorted(set(indices) - set(batch.indices))
            raise ImageError(
                f"samples {lost} were read before but cannot be read now: {self.skipped[lost[0]].error}"
            )
        return batch

    def unnormalized(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs mapped back through the normalization (as they are where the channel counts differ)."""
        mean = torch.as_tensor(self.vm.preprocessing.mean, device=inputs.device, dtype=inputs.dtype)
        std = torch.as_tensor(self.vm.preprocessing.std, device=inputs.device, dtype=inputs.dtype)
        if mean.numel() != inputs.shape[1]:
            return inputs
        return inputs * std[:, None, None] + mean[:, None, None]
