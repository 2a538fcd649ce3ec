"""Inversion by a trained decoder (Dosovitskiy & Brox 2016, "Inverting Visual Representations with Convolutional
Networks", CVPR): an up-convolutional network trained on a dataset to map a layer's features back to the image,
which then inverts a new image in one forward pass, where the optimization of :func:`invert` takes hundreds.

The decoder follows the paper's design for convolutional features: a few 3x3 convolutions on the feature map,
then up-convolutions (4x4 transposed convolutions of stride 2), each doubling the resolution and halving the
channels, until the map is at least the image's size, then a 3x3 convolution to the image's channels (and a
bilinear resize where the doublings overshoot); leaky ReLU with slope 0.2 after every layer but the last. For a
layer of vectors, two fully connected layers first make a 4x4 map (the paper reshapes its fc decoders' output
the same way). The loss is theirs, the squared error in image space; the decoder predicts the image minus the
normalization's mean. Adam, with a larger rate (1e-3) than the paper's 1e-4, for training runs of minutes.

An :class:`Inverter` saves to one file, :func:`load_inverter` reads it back: the decoder's weights with what
they were trained for (layer, feature and image shapes, a fingerprint of the model's weights) and how, under a
format name and version number.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepscope.errors import (
    ImageError,
    SettingError,
    SettingTypeError,
    UnitError,
    WeightsNotFoundError,
    require_int,
)
from deepscope.probe.layers import get_layer, one_layer
from deepscope.units._forward import layer_runner
from deepscope.units.inversion import invert, pixel_normalization, relative_image_error
from deepscope.units.patches import DataSource
from deepscope.zoo.vision_model import VisionModel, as_vision_model

FORMAT = "deepscope-inverter"
VERSION = 1
NEGATIVE_SLOPE = 0.2
VECTOR_MAP_SIZE = 4  # a layer of vectors is decoded from a 4x4 map


class Decoder(nn.Module):
    """Features ``[B, *feature_shape]`` -> images ``[B, *image_shape]`` (see the module docstring).

    >>> Decoder((6, 28, 28), (1, 28, 28), width=16)(torch.zeros(2, 6, 28, 28)).shape
    torch.Size([2, 1, 28, 28])
    >>> Decoder((120,), (3, 32, 32), width=16)(torch.zeros(2, 120)).shape  # 4x4 -> 8 -> 16 -> 32
    torch.Size([2, 3, 32, 32])
    """

    def __init__(self, feature_shape: Sequence[int], image_shape: Sequence[int], width: int = 64):
        super().__init__()
        self.feature_shape = tuple(int(n) for n in feature_shape)
        self.image_shape = tuple(int(n) for n in image_shape)
        self.width = width
        if len(self.feature_shape) not in (1, 3) or len(self.image_shape) != 3:
            raise UnitError(
                f"a decoder maps features [C] or [C,h,w] to images [C,H,W], got {list(self.feature_shape)} "
                f"and {list(self.image_shape)}"
            )
        channels, height, width_out = self.image_shape
        if len(self.feature_shape) == 1:
            size = (VECTOR_MAP_SIZE, VECTOR_MAP_SIZE)
            self.expand: nn.Module | None = nn.Sequential(
                nn.Linear(self.feature_shape[0], 8 * width),
                nn.LeakyReLU(NEGATIVE_SLOPE),
                nn.Linear(8 * width, width * VECTOR_MAP_SIZE**2),
                nn.LeakyReLU(NEGATIVE_SLOPE),
            )
            entering = width
        else:
            size = self.feature_shape[1:]
            self.expand = None
            entering = self.feature_shape[0]
        layers: list[nn.Module] = [
            nn.Conv2d(entering, width, 3, padding=1),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            nn.Conv2d(width, width, 3, padding=1),
            nn.LeakyReLU(NEGATIVE_SLOPE),
        ]
        doublings = max(0, math.ceil(math.log2(max(height / size[0], width_out / size[1]))))
        current = width
        for _ in range(doublings):
            halved = max(current // 2, 8)
            layers += [
                nn.ConvTranspose2d(current, halved, 4, stride=2, padding=1),
                nn.LeakyReLU(NEGATIVE_SLOPE),
            ]
            current = halved
        layers.append(nn.Conv2d(current, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features
        if self.expand is not None:
            x = self.expand(x.flatten(1)).view(len(x), self.width, VECTOR_MAP_SIZE, VECTOR_MAP_SIZE)
        x = self.body(x)
        if tuple(x.shape[-2:]) != self.image_shape[1:]:
            x = F.interpolate(x, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return x


class Inverter:
    """A decoder trained to invert ``layer`` of a model (:func:`train_inverter`, :func:`load_inverter`).

    ``inverter(x)`` reconstructs model inputs ``x`` ``[B,C,H,W]`` as pixels in [0, 1]: one forward of the model
    to ``layer`` and one of the decoder. ``losses``: the mean training loss of each epoch; ``settings``: how it
    was trained. :meth:`save` writes it to a file.
    """

    def __init__(
        self,
        model: VisionModel | nn.Module,
        layer: str,
        decoder: Decoder,
        losses: Sequence[float],
        settings: dict[str, Any],
    ):
        self.vm = as_vision_model(model)
        self.layer = layer
        self.decoder = decoder.to(self.vm.device).eval()
        self.losses = list(losses)
        self.settings = dict(settings)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.vm.check_inputs(x)
        if tuple(x.shape[1:]) != self.decoder.image_shape:
            raise ImageError(
                f"this inverter makes {list(self.decoder.image_shape)} images; the inputs are {list(x.shape[1:])}"
            )
        with torch.inference_mode(), layer_runner(self.vm, [self.layer]) as run:
            return self.decode(run(x).activations[self.layer])

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B,C,H,W]`` in [0, 1] from the layer's features ``[B, *feature_shape]``."""
        if tuple(features.shape[1:]) != self.decoder.feature_shape:
            raise UnitError(
                f"this inverter reads {list(self.decoder.feature_shape)} features of {self.layer!r}, "
                f"got {list(features.shape[1:])}"
            )
        mean, _ = pixel_normalization(self.vm, self.decoder.image_shape[0], features.device)
        with torch.inference_mode():
            return (self.decoder(features.float()) + mean).clamp(0, 1)

    def save(self, path: str | Path) -> Path:
        """Write the inverter to ``path`` (parent folders made) and return the path. The file holds plain
        tensors, numbers and strings (``torch.load(weights_only=True)`` reads it): ``format``, ``version``, the
        layer, model name and weights fingerprint, the shapes, the decoder's width and weights, the training
        losses and settings."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "format": FORMAT,
                "version": VERSION,
                "layer": self.layer,
                "model": self.vm.name,
                "model_fingerprint": model_fingerprint(self.vm.module),
                "feature_shape": list(self.decoder.feature_shape),
                "image_shape": list(self.decoder.image_shape),
                "width": self.decoder.width,
                "state_dict": {name: t.detach().cpu() for name, t in self.decoder.state_dict().items()},
                "losses": self.losses,
                "settings": self.settings,
            },
            path,
        )
        return path

    def __repr__(self) -> str:
        return (
            f"Inverter({self.vm.name}, {self.layer!r}, features {list(self.decoder.feature_shape)} -> images "
            f"{list(self.decoder.image_shape)}, {len(self.losses)} epochs)"
        )


def train_inverter(
    model: VisionModel | nn.Module,
    data: Any,
    layer: str,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    width: int = 64,
    seed: int = 0,
) -> Inverter:
    """Train a decoder from ``layer``'s features back to the images of ``data`` (Dosovitskiy & Brox 2016).

    ``data``: as for :func:`top_patches` (a ``[N,C,H,W]`` tensor of model inputs or a sized, indexable dataset),
    visited in a new random order each epoch. ``width``: the decoder's channels before the up-convolutions.
    ``seed`` fixes the decoder's initialization and the order (torch's global generator is left as it was). The
    model runs in eval mode, to ``layer`` only, without gradients; it is left as found.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> digits = ds.datasets.mnist5k("train").subset(range(256))
    >>> inverter = ds.units.train_inverter(vm, digits, "conv1", epochs=1, width=8)
    >>> inverter(vm.preprocess(ds.datasets.mnist5k("test").images[:3])).shape
    torch.Size([3, 1, 28, 28])
    """
    vm = as_vision_model(model)
    for setting, value in (("epochs", epochs), ("batch_size", batch_size), ("width", width)):
        require_int(setting, value, 1)
    if not lr > 0:
        raise SettingError(f"lr must be > 0, got {lr}")
    layer = one_layer(vm, layer, "an inverter reads")
    source = DataSource(vm, data)
    if len(source) == 0:
        raise ImageError("the dataset is empty")
    order = torch.Generator().manual_seed(seed)
    decoder: Decoder | None = None
    losses: list[float] = []
    started = time.perf_counter()
    with layer_runner(vm, [layer]) as run:
        for _ in range(epochs):
            total = 0.0
            indices = torch.randperm(len(source), generator=order).tolist()
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                read = source.read_with_pixels(chunk)
                if read.inputs is None:
                    continue
                inputs, pixels = read.inputs, read.pixels
                with torch.no_grad():
                    features = run(inputs).activations[layer].float()
                if decoder is None:
                    decoder = _new_decoder(features, pixels, width, seed).to(features.device)
                    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
                    mean, _ = pixel_normalization(vm, pixels.shape[1], pixels.device)
                loss = F.mse_loss(decoder(features) + mean, pixels.float())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(chunk)
            losses.append(total / len(source))
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "width": width,
        "seed": seed,
        "samples": len(source),
        "seconds": time.perf_counter() - started,
    }
    return Inverter(vm, layer, decoder, losses, settings)


def _new_decoder(features: torch.Tensor, pixels: torch.Tensor, width: int, seed: int) -> Decoder:
    """A decoder for these shapes, initialized from ``seed`` without touching torch's global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Decoder(features.shape[1:], pixels.shape[1:], width)


def load_inverter(path: str | Path, model: VisionModel | nn.Module, *, strict: bool = True) -> Inverter:
    """The inverter saved at ``path`` (:meth:`Inverter.save`), for ``model``: the file's format and version are
    checked, and that the model's layer gives the features the decoder reads; with ``strict``, also that the
    model's weights are those it was trained on (a fingerprint), since a decoder inverts one model's features.

    >>> import tempfile, pathlib, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> inverter = ds.units.train_inverter(vm, ds.datasets.mnist5k("train").subset(range(64)), "conv1", epochs=1, width=8)
    >>> path = inverter.save(pathlib.Path(tempfile.mkdtemp()) / "conv1.pt")
    >>> ds.units.load_inverter(path, vm)
    Inverter(lenet_mnist, 'conv1', features [6, 28, 28] -> images [1, 28, 28], 1 epochs)
    """
    vm = as_vision_model(model)
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"no inverter file at {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many kinds for a file that is not one of its archives
        raise SettingError(f"{path} is not a deepscope inverter file ({type(error).__name__})") from error
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise SettingError(f"{path} is not a deepscope inverter file (no format {FORMAT!r})")
    version = saved.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise SettingError(
            f"{path} is an inverter file of format version {version}; this deepscope reads versions up to {VERSION}"
        )
    layer = saved["layer"]
    get_layer(vm, layer)
    if strict and saved["model_fingerprint"] != model_fingerprint(vm.module):
        raise SettingError(
            f"{path} was trained on the features of {saved['model']!r} with other weights than {vm.name!r} has; "
            "a decoder inverts one model's features (strict=False loads it all the same)"
        )
    image_shape = tuple(saved["image_shape"])
    example = torch.zeros(1, *image_shape, device=vm.device)
    with torch.no_grad(), layer_runner(vm, [layer]) as run:
        features = tuple(run(example).activations[layer].shape[1:])
    if features != tuple(saved["feature_shape"]):
        raise SettingError(
            f"{path} decodes {saved['feature_shape']} features of {layer!r}; {vm.name} gives {list(features)}"
        )
    decoder = Decoder(features, image_shape, saved["width"])
    decoder.load_state_dict(saved["state_dict"])
    return Inverter(vm, layer, decoder, saved["losses"], saved["settings"])


def model_fingerprint(module: nn.Module) -> str:
    """A hash of a module's parameter and buffer names and values (what a decoder's training depended on)."""
    digest = hashlib.sha256()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class InversionComparison:
    """Decoder inversion against optimization-based inversion (:func:`invert`) of the same images, per layer.

    - ``original`` ``[B,C,H,W]``: the images' pixels; ``decoded`` and ``optimized`` ``[L,B,C,H,W]``: the two
      reconstructions from each layer of ``layers``;
    - ``decoder_error``, ``optimization_error`` ``[L,B]``: relative image errors (:func:`relative_image_error`);
    - ``decoder_seconds``, ``optimization_seconds`` ``[L]``: wall time per image of each method, per layer.
    """

    layers: list[str]
    original: torch.Tensor
    decoded: torch.Tensor
    optimized: torch.Tensor
    decoder_error: torch.Tensor
    optimization_error: torch.Tensor
    decoder_seconds: torch.Tensor
    optimization_seconds: torch.Tensor


def compare_inversions(
    model: VisionModel | nn.Module, x: torch.Tensor, inverters: Sequence[Inverter], **invert_options
) -> InversionComparison:
    """Invert model inputs ``x`` from each inverter's layer both ways: the trained decoder (one forward pass) and
    :func:`invert` (``invert_options`` passed on), timing each; render with
    ``deepscope.render.units.inversion_comparison``.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> inverter = ds.units.train_inverter(vm, ds.datasets.mnist5k("train").subset(range(64)), "conv1", epochs=1, width=8)
    >>> x = vm.preprocess(ds.datasets.mnist5k("test").images[:2])
    >>> found = ds.units.compare_inversions(vm, x, [inverter], schedule=[(5, 1.0)])
    >>> found.decoded.shape, found.decoder_error.shape
    (torch.Size([1, 2, 1, 28, 28]), torch.Size([1, 2]))
    """
    vm = as_vision_model(model)
    x = vm.check_inputs(x)
    if not inverters:
        raise SettingError("no inverters to compare")
    for inverter in inverters:
        if not isinstance(inverter, Inverter):
            raise SettingTypeError(f"inverters must be Inverter objects, got {type(inverter).__name__}")
        if inverter.vm.module is not vm.module:
            raise SettingError(
                f"the inverter of {inverter.layer!r} was made for another model ({inverter.vm.name})"
            )
    mean, std = pixel_normalization(vm, x.shape[1], x.device)
    original = (x.float() * std + mean).clamp(0, 1)
    decoded, optimized, decoder_seconds, optimization_seconds = [], [], [], []
    for inverter in inverters:
        started = _now(x.device)
        decoded.append(inverter(x))
        decoder_seconds.append((_now(x.device) - started) / len(x))
        started = _now(x.device)
        optimized.append(invert(vm, x, inverter.layer, **invert_options).image)
        optimization_seconds.append((_now(x.device) - started) / len(x))
    return InversionComparison(
        [inverter.layer for inverter in inverters],
        original,
        torch.stack(decoded),
        torch.stack(optimized),
        torch.stack([relative_image_error(vm, images, x) for images in decoded]),
        torch.stack([relative_image_error(vm, images, x) for images in optimized]),
        torch.tensor(decoder_seconds),
        torch.tensor(optimization_seconds),
    )


def _now(device: torch.device) -> float:
    """The wall clock once the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
