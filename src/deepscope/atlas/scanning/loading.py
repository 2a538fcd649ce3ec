"""Reading a dataset for a scan: items into model inputs or pixels (an unreadable item becomes a reported skip),
batches onto the model's device, thumbnails, and how many loader threads to run ahead of the model."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from deepscope.errors import DatasetError
from deepscope.zoo.datasets import FetchedItem, dataset_name, fetch_item, read_item
from deepscope.zoo.vision_model import VisionModel


class LoadedItem(NamedTuple):
    """A dataset item ready for a batch. ``kind`` 'pixels': ``value`` is the image's uint8 array (turned into a
    tensor a batch at a time by :meth:`Loader.tensors`); 'input': a [C,H,W] model input; 'skipped': ``value`` is
    None and ``error`` says why. ``label`` is the item's class index, or None."""

    kind: str
    value: torch.Tensor | np.ndarray | None
    label: int | None
    error: str | None


class Loader:
    """Reads dataset items into model inputs or pixels; an unreadable item becomes a reported skip.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> loaded = Loader(vm, ds.datasets.mnist5k("test")).load(0)
    >>> loaded.kind, loaded.value.shape, loaded.label
    ('pixels', (28, 28), 0)
    """

    def __init__(self, vm: VisionModel, dataset: Dataset):
        self.vm = vm
        self.dataset = dataset
        self.to_pixels = vm.transform is None

    def load(self, index: int) -> LoadedItem:
        """Item ``index``, read and prepared."""
        fetched = self.fetch(index)
        if fetched.error is not None:
            return LoadedItem("skipped", None, None, fetched.error)
        return self.prepare(fetched.item, index)

    def fetch(self, index: int) -> FetchedItem:
        """The raw dataset item, or the reason it cannot be read."""
        return fetch_item(self.dataset, index)

    def prepare(self, item: Any, index: int) -> LoadedItem:
        """A raw item (``index``: where it came from, for messages) made ready for a batch (see
        :func:`deepscope.zoo.datasets.read_item` for what is skipped)."""
        read = read_item(item, self.vm.image_mode, f"item {index} of {dataset_name(self.dataset)}")
        if read.kind == "skipped":
            return LoadedItem("skipped", None, None, read.error)
        if read.kind == "input":
            return LoadedItem("input", read.value, read.label, None)
        if not self.to_pixels:
            return _input_item(self.vm.transform(read.value), read.label)
        return LoadedItem("pixels", np.asarray(read.value), read.label, None)

    def tensors(self, kinds: list[str], values: list[torch.Tensor | np.ndarray]) -> list[torch.Tensor]:
        """Per-sample [C,H,W] tensors of loaded items' values; images are preprocessed together, a batch at once."""
        if set(kinds) == {"pixels"}:
            return self.vm.preprocessing.pixel_batch(values)
        if "pixels" in kinds:
            raise DatasetError("a dataset mixes PIL images and tensors; give one kind of item")
        return values


def stack_batch(kinds: list[str], tensors: list[torch.Tensor]) -> torch.Tensor:
    """One batch of per-sample tensors [B, C, H, W], with clear errors for mixed items.

    >>> import torch
    >>> stack_batch(["input", "input"], [torch.zeros(3, 4, 4), torch.ones(3, 4, 4)]).shape
    torch.Size([2, 3, 4, 4])
    >>> stack_batch(["input", "input"], [torch.zeros(3, 4, 4), torch.ones(3, 5, 5)])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    deepscope.errors.DatasetError: samples in one batch have different shapes [(3, 4, 4), (3, 5, 5)]: ...
    """
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise DatasetError(
            f"samples in one batch have different shapes {sorted(shapes)[:4]}: give the model a preprocessing "
            "that resizes and crops to one size (e.g. a spec option size=224)"
        )
    if len(set(kinds)) > 1:
        raise DatasetError("a dataset mixes PIL images and tensors; give one kind of item")
    return torch.stack(tensors)


def batch_input(
    vm: VisionModel, kinds: list[str], tensors: list[torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack one batch onto ``device`` -> (model input, pixels or None).

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> inputs, pixels = batch_input(vm, ["pixels"] * 2, [torch.zeros(1, 28, 28)] * 2, vm.device)
    >>> tuple(inputs.shape), bool(inputs.min() < 0), float(pixels.max())
    ((2, 1, 28, 28), True, 0.0)
    """
    batch = stack_batch(kinds, tensors).to(device, non_blocking=True)
    if kinds[0] == "pixels":
        return vm.normalize(batch), batch
    return batch, None


def thumbnails(pixels: torch.Tensor | None, inputs: torch.Tensor, size: tuple[int, int, int]) -> np.ndarray:
    """uint8 [B, h, w, c] pictures: the preprocessed pixels, or the model input scaled per image to [0, 1].

    >>> import torch
    >>> thumbnails(None, torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4), (2, 2, 1))[0, :, :, 0].tolist()
    [[42, 76], [178, 212]]
    """
    height, width, _ = size
    if pixels is None:
        flat = inputs.float().flatten(1)
        low, high = flat.amin(1)[:, None, None, None], flat.amax(1)[:, None, None, None]
        pixels = (inputs.float() - low) / (high - low).clamp_min(1e-12)
    if tuple(pixels.shape[-2:]) != (height, width):
        pixels = F.interpolate(pixels.float(), size=(height, width), mode="area")
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def default_workers(device: torch.device) -> int:
    """Loader threads ahead of the model. None on the CPU: the forward pass's intra-op threads already keep every
    core busy, and loaders only compete with them (on 2 cores, 1 and 2 loader threads slowed a LeNet scan of the
    MNIST digits from 0.64 to 0.80 and 0.91 s; for EfficientNet-Lite0 on a folder of JPEG photos they changed
    nothing beyond noise, see ``benchmarks/atlas.py``). With an accelerator, one per core besides the main
    thread, at most 8: reading and preprocessing images is then the bottleneck.

    >>> import torch
    >>> default_workers(torch.device("cpu"))
    0
    """
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, min(8, cores - 1))


def _input_item(tensor: torch.Tensor, label: int | None) -> LoadedItem:
    """A model input, or a skipped sample when it holds NaN or infinity (its outputs would be meaningless and the
    workspace's statistics poisoned)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        return LoadedItem("skipped", None, None, "NonFiniteError: the input holds NaN or infinite values")
    return LoadedItem("input", tensor, label, None)
