"""VisionModel: a torch module together with what it takes to feed it images and name its outputs."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as T

from deepscope.errors import DeepscopeError, ImageError
from deepscope.zoo.hooks import layer_hooks
from deepscope.zoo.inference import TAPS, fold_for_inference

Out = TypeVar("Out")

Size = tuple[int, int]

# Forward-only copies kept per model (one per set of recorded layers): each holds its own folded kernels.
MAX_INFERENCE_COPIES = 4
# Threads sharing a VisionModel make and evict its forward-only copies one at a time.
_COPIES_LOCK = threading.Lock()


@dataclass(frozen=True)
class Preprocessing:
    """How images become model input: resize the short side, centre-crop, scale to [0,1], normalise.

    ``resize=None`` skips resizing (all images must then share one size, or ``crop`` must be given);
    ``crop=None`` keeps the resized image whole. ``mean``/``std`` apply per channel to [0,1] pixels.
    """

    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    resize: int | Size | None = None
    crop: Size | None = None
    interpolation: T.InterpolationMode = T.InterpolationMode.BILINEAR
    image_mode: str = "RGB"

    @property
    def channels(self) -> int:
        return len(self.mean)

    def pixel_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> [C,H,W] float tensor in [0,1] (no normalisation)."""
        return T.Compose([T.ToImage(), *self._tensor_steps()])

    def _tensor_steps(self) -> list[nn.Module]:
        """Resize, crop and scale to [0,1] of uint8 image tensors ([C,H,W] or a [B,C,H,W] batch)."""
        steps: list[nn.Module] = []
        if self.resize is not None:
            steps.append(T.Resize(self.resize, interpolation=self.interpolation, antialias=True))
        if self.crop is not None:
            steps.append(T.CenterCrop(self.crop))
        steps.append(T.ToDtype(torch.float32, scale=True))
        return steps

    def pixel_batch(self, images: Sequence[Image.Image | np.ndarray]) -> list[torch.Tensor]:
        """Images in ``image_mode`` (PIL, or their uint8 ``np.asarray`` arrays) -> one [C,H,W] float tensor in
        [0,1] each, equal to :meth:`pixel_transform` of each image.

        Images that share one size are resized, cropped and scaled as one uint8 batch: the same kernels on the
        same values, without the per-image call overhead of the transform pipeline, which is most of the cost
        for small images such as 28x28 digits. Images of mixed sizes go one by one.

        >>> import numpy as np
        >>> digits = [np.zeros((28, 28), np.uint8), np.full((28, 28), 255, np.uint8)]
        >>> [t.shape for t in Preprocessing(mean=(0.5,), std=(0.5,), image_mode="L").pixel_batch(digits)]
        [torch.Size([1, 28, 28]), torch.Size([1, 28, 28])]
        """
        arrays = [np.asarray(image) for image in images]
        transform = T.Compose(self._tensor_steps())
        if len({(array.shape, array.dtype) for array in arrays}) == 1:
            stacked = np.stack(arrays)
            batch = torch.from_numpy(
                np.ascontiguousarray(stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2))
            )
            return list(transform(batch).as_subclass(torch.Tensor).unbind(0))
        return [transform(torch.from_numpy(_chw(array))).as_subclass(torch.Tensor) for array in arrays]


@dataclass(eq=False)
class VisionModel:
    """An image model with its preprocessing and class names.

    Every public deepscope function accepts a ``VisionModel`` or a plain ``torch.nn.Module``
    (see :func:`as_vision_model`). ``module`` is the user's model, used as is: deepscope never changes
    its parameters, mode or hooks.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> vm.preprocess(ds.datasets.mnist5k().images[:2]).shape
    torch.Size([2, 1, 28, 28])
    """

    module: nn.Module
    name: str
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    labels: list[str] | None = None
    transform: Callable[[Image.Image], torch.Tensor] | None = None
    # False once the module has refused a channels-last input (see in_fast_layout).
    channels_last: bool = field(default=True, init=False, repr=False)
    # True once a channels-last forward of the module has run through (see in_fast_layout).
    channels_last_works: bool = field(default=False, init=False, repr=False)
    # Recorded layers -> the module's state (see _inference_state) and the forward-only copy made for both.
    _inference: dict[tuple[str, ...], tuple[tuple, nn.Module]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def __getstate__(self) -> dict:
        """Pickled (for a Ray actor, say) without its forward-only copies, which are remade where they are used."""
        return {**self.__dict__, "_inference": {}}

    def in_fast_layout(self, forward: Callable[[torch.Tensor], Out], x: torch.Tensor) -> Out:
        """``forward(x)`` with the images ``x`` in the memory layout convolutions run fastest in: channels-last
        for multi-channel images (on 2 CPU cores, forward+backward is 1.4x faster for EfficientNet-Lite0 and
        1.1x for ResNet-18; the values are equal up to float rounding). Gradients with respect to ``x`` flow
        through the change of layout. A model that cannot take channels-last feature maps (a ``.view()`` of
        one raises) gets the standard layout, from then on.
        """
        if self._channels_last_for(x):
            try:
                output = forward(x.contiguous(memory_format=torch.channels_last))
            except RuntimeError:
                self.channels_last = False
            else:
                self.channels_last_works = True
                return output
        return forward(x.contiguous())

    def _channels_last_for(self, x: torch.Tensor) -> bool:
        return self.channels_last and x.ndim == 4 and x.shape[1] > 1

    def forward_only(
        self,
        x: torch.Tensor,
        layers: Sequence[str] = (),
        record: Callable[[str, torch.Tensor], None] | None = None,
    ):
        """The module's output for ``x`` where nothing else is needed (no gradient): the forward of the
        perturbation metrics and methods, and of a dataset scan. In eval mode and without hooks on the module, it
        runs the copy of :func:`deepscope.zoo.inference.fold_for_inference` (batch norms and paddings folded into
        convolutions, 2x faster on EfficientNet-Lite0), made once per state of the parameters and set of
        ``layers``; otherwise the module itself. In the fast layout either way; equal to ``self.module(x)`` up to
        float rounding. Call it under ``torch.inference_mode()``.

        With ``layers``, ``record(name, tensor)`` receives each one's output (its input for ``NAME:input``) the
        moment it is produced, exactly as from :func:`~deepscope.zoo.hooks.layer_hooks` on the module, and
        exactly once per call: a layer that runs twice or not at all raises :class:`DeepscopeError`.

        >>> import torch, deepscope as ds
        >>> vm = ds.load_model("zoo:lenet_mnist")
        >>> seen = {}
        >>> with torch.inference_mode():
        ...     logits = vm.forward_only(torch.zeros(2, 1, 28, 28), ["conv2", "fc3:input"], seen.__setitem__)
        >>> logits.shape, {name: tuple(t.shape) for name, t in seen.items()}
        (torch.Size([2, 10]), {'conv2': (2, 16, 10, 10), 'fc3:input': (2, 84)})
        """
        layers = tuple(layers)
        module = self._forward_only_module(x, layers)
        if not layers:
            return self.in_fast_layout(module, x)
        if record is None:
            raise ValueError("forward_only: layers need a record(name, tensor) callback")
        if self._channels_last_for(x) and not self.channels_last_works:
            # Settle the layout on one image first: a model that refuses channels-last maps fails part-way, and
            # the retry in the standard layout would hand the layers before the failure to record twice.
            self.in_fast_layout(module, x[:1])

        def recorded(inputs: torch.Tensor):
            calls = dict.fromkeys(layers, 0)

            def deliver(name: str, tensor: torch.Tensor) -> None:
                calls[name] += 1
                if calls[name] > 1:
                    raise DeepscopeError(
                        f"layer {name!r} runs more than once in one forward pass (a module reused); choose a "
                        "layer that runs once, such as the module around it"
                    )
                record(name, tensor)

            with _recording(self.module, module, layers, deliver):
                output = module(inputs)
            missing = [name for name, count in calls.items() if not count]
            if missing:
                raise DeepscopeError(f"layers {missing} did not run in the forward pass of {self.name}")
            return output

        return self.in_fast_layout(recorded, x)

    def _forward_only_module(self, x: torch.Tensor, layers: tuple[str, ...]) -> nn.Module:
        state = _inference_state(self.module)
        if state is None:
            return self.module
        with _COPIES_LOCK:
            return self._copy_for(x, layers, state)

    def _copy_for(self, x: torch.Tensor, layers: tuple[str, ...], state: tuple) -> nn.Module:
        cached = self._inference.get(layers)
        if cached is None or cached[0] != state:
            folded = fold_for_inference(self.module, layers)
            if folded is not None and not _same_outputs(
                _recorded_run(folded, self.module, layers, x[:1]),
                _recorded_run(self.module, self.module, layers, x[:1]),
            ):
                warnings.warn(
                    f"the folded forward-only copy of {self.name} computes something else than the model; "
                    "deepscope runs the model as it is (please report this model)",
                    RuntimeWarning,
                    stacklevel=4,
                )
                folded = None
            self._inference.pop(layers, None)
            while len(self._inference) >= MAX_INFERENCE_COPIES:
                del self._inference[next(iter(self._inference))]  # the least recently made
            self._inference[layers] = (state, folded if folded is not None else self.module)
        return self._inference[layers][1]

    @property
    def input_size(self) -> Size | None:
        """(H, W) the model expects, or None when it takes any size."""
        return self.preprocessing.crop

    @property
    def image_mode(self) -> str:
        """PIL mode of the images the model reads: 'RGB' or 'L'."""
        return self.preprocessing.image_mode

    @property
    def device(self) -> torch.device:
        for tensor in self.module.parameters():
            return tensor.device
        for tensor in self.module.buffers():
            return tensor.device
        return torch.device("cpu")

    def label(self, index: int) -> str:
        """Human-readable name of output ``index`` (the index itself when the model has no labels)."""
        if self.labels is None:
            return str(index)
        return self.labels[index]

    def pixels(self, images: Sequence[Image.Image] | Image.Image) -> torch.Tensor:
        """Images -> [B,C,H,W] pixel-space tensor in [0,1], resized and cropped, on the model's device."""
        if isinstance(images, Image.Image):
            images = [images]
        if not images:
            raise ImageError("no images given")
        converted = []
        for index, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise ImageError(
                    f"image {index} is a {type(image).__name__}, not a PIL image; use ds.load_images() first"
                )
            converted.append(_to_mode(image, self.image_mode))
        tensors = self.preprocessing.pixel_batch(converted)
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ImageError(
                f"images have mixed sizes {sorted(shapes)} and {self.name} sets no resize/crop; "
                "resize them to one size or give the model a Preprocessing with crop=(H, W)"
            )
        return torch.stack(tensors).to(self.device)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel-space [0,1] tensor [B,C,H,W] -> model input. Differentiable (used by feature visualisation)."""
        mean = torch.as_tensor(self.preprocessing.mean, dtype=pixels.dtype, device=pixels.device)
        std = torch.as_tensor(self.preprocessing.std, dtype=pixels.dtype, device=pixels.device)
        if pixels.ndim != 4 or pixels.shape[1] != mean.numel():
            raise ImageError(
                f"expected pixels of shape [B,{mean.numel()},H,W] for {self.name}, got {list(pixels.shape)}"
            )
        return (pixels - mean[:, None, None]) / std[:, None, None]

    def preprocess(self, images: Sequence[Image.Image] | Image.Image) -> torch.Tensor:
        """Images -> [B,C,H,W] model input on the model's device (resize, crop, to tensor, normalise)."""
        if self.transform is not None:
            if isinstance(images, Image.Image):
                images = [images]
            return torch.stack([self.transform(image) for image in images]).to(self.device)
        return self.normalize(self.pixels(images))

    def predict(self, x: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` softmax probabilities and class indices, each [B,k], for a preprocessed batch.

        Runs the module as it is (its train/eval mode untouched) without recording gradients.
        """
        with torch.inference_mode():
            logits = self.module(x)
        if logits.ndim != 2:
            raise ValueError(
                f"{self.name} returns shape {list(logits.shape)}, not [B, classes]; cannot rank classes"
            )
        probabilities = logits.float().softmax(1)
        top = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
        return top.values, top.indices

    def with_module(self, module: nn.Module) -> VisionModel:
        """The same preprocessing and labels around another module (e.g. a random-init copy), which keeps to the
        standard layout if this one had to (see :meth:`in_fast_layout`)."""
        other = replace(self, module=module)
        other.channels_last = self.channels_last
        return other


def _inference_state(module: nn.Module) -> tuple | None:
    """What a forward-only copy depends on: every submodule (its identity, type and settings, so that a module
    swapped for another or a changed stride is seen) and the identity and version of every parameter and buffer.
    None where no copy may stand in for the module: a submodule in train mode (batch statistics, dropout) or a
    forward hook anywhere (it must see the module's own calls)."""
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return None
    structure = []
    for sub in module.modules():
        if sub.training or sub._forward_hooks or sub._forward_pre_hooks:
            return None
        structure.append((id(sub), type(sub), module_settings(sub)))
    tensors = [*module.parameters(), *module.buffers()]
    return (*structure, *((t.data_ptr(), t._version, t.dtype, t.device, t.shape) for t in tensors))


_PLAIN = (bool, int, float, str, type(None))


def module_settings(module: nn.Module) -> tuple:
    """A module's own settings, what its computation depends on besides parameters, buffers and submodules:
    plain attributes (kernel size, stride, padding, eps, inplace, a custom scale factor...) and function
    attributes (``self.act = torch.tanh``, as the function itself). The train/eval flag is not one of them."""
    settings = []
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        if (
            isinstance(value, _PLAIN)
            or (isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value))
            or (callable(value) and not isinstance(value, (nn.Module, torch.Tensor)))
        ):
            settings.append((key, value))
    return tuple(settings)


@contextmanager
def _recording(
    model: nn.Module, module: nn.Module, layers: Sequence[str], record: Callable[[str, torch.Tensor], None]
) -> Iterator[None]:
    """Inside the block, ``module`` (the model, or a copy of it with taps) hands ``layers`` to ``record``."""
    if module is model or not layers:
        with layer_hooks(model, layers, record):
            yield
        return
    with module.get_submodule(TAPS).recording(record):
        yield


def _recorded_run(module: nn.Module, model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> tuple:
    """(output, every tensor each layer recorded, copied when recorded) of ``module``, the model or its copy."""
    recorded: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with _recording(model, module, layers, lambda name, tensor: recorded[name].append(tensor.clone())):
        output = module(x)
    return output, recorded


def _same_outputs(folded: object, original: object) -> bool:
    """The folded copy's output and recorded tensors match the model's within float rounding: the same nesting
    of tuples, lists and dicts (named tuples and dict subclasses included), tensors of the same shapes, every
    float tensor within 1e-3 of its largest value, other tensors equal, other leaves of the same type."""
    if isinstance(original, torch.Tensor):
        if not isinstance(folded, torch.Tensor) or folded.shape != original.shape:
            return False
        if not original.is_floating_point():
            return torch.equal(folded, original)
        scale = float(original.abs().max()) if original.numel() else 0.0
        return torch.allclose(folded, original, rtol=1e-3, atol=1e-3 * scale + 1e-6)
    if isinstance(original, (tuple, list)):
        return (
            type(folded) is type(original)
            and len(folded) == len(original)
            and all(_same_outputs(a, b) for a, b in zip(folded, original, strict=True))
        )
    if isinstance(original, dict):
        return (
            type(folded) is type(original)
            and list(folded) == list(original)
            and all(_same_outputs(folded[key], original[key]) for key in original)
        )
    return type(folded) is type(original)


def _chw(array: np.ndarray) -> np.ndarray:
    """An image array [H,W] or [H,W,C] -> a contiguous [C,H,W] copy (what ``ToImage`` makes of a PIL image)."""
    return np.ascontiguousarray(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert losslessly where possible: RGB->L only for models that read grayscale."""
    if image.mode == mode:
        return image
    if mode == "L" and image.mode in ("RGB", "P", "1", "I;16", "I", "F"):
        return image.convert("L")
    if mode == "RGB" and image.mode in ("P", "CMYK", "YCbCr"):
        return image.convert("RGB")
    raise ImageError(
        f"image has mode {image.mode!r} but the model reads {mode!r} images; "
        "load it with ds.load_images(..., mode=...) or convert it explicitly"
    )


def as_vision_model(
    model: VisionModel | nn.Module,
    *,
    preprocessing: Preprocessing | None = None,
    labels: Sequence[str] | None = None,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
) -> VisionModel:
    """Wrap a plain module (or return a VisionModel as is) so every deepscope function can take either.

    >>> import torch, deepscope as ds
    >>> ds.as_vision_model(torch.nn.Conv2d(3, 4, 3)).name
    'Conv2d'
    """
    if isinstance(model, VisionModel):
        return model
    if isinstance(model, nn.Module):
        return VisionModel(
            module=model,
            name=type(model).__name__,
            preprocessing=preprocessing or Preprocessing(),
            labels=list(labels) if labels is not None else None,
            transform=transform,
        )
    raise TypeError(f"expected a deepscope VisionModel or a torch.nn.Module, got {type(model).__name__}")
