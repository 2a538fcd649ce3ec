"""VisionModel: a torch module together with what it takes to feed it images and name its outputs."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as T

from deepscope.errors import ImageError, ModelError
from deepscope.zoo.images import to_mode
from deepscope.zoo.state import evaluation_mode

Out = TypeVar("Out")

Size = tuple[int, int]


@dataclass(frozen=True)
class Preprocessing:
    """How images become model input: resize the short side, center-crop, scale to [0,1], normalize.

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

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Where the model's input lies in an original image of ``width x height`` pixels: ``(left, top, right,
        bottom)`` in the original's pixels (the center crop of the resized image, mapped back), so that a map of
        the input can be drawn over the photo as it is.

        >>> Preprocessing(resize=256, crop=(224, 224)).crop_box(512, 256)  # a wide photo: its middle square
        (144.0, 16.0, 368.0, 240.0)
        """
        if self.resize is None:
            new_height, new_width = height, width
        elif isinstance(self.resize, int):
            short, long = sorted((height, width))
            resized_long = int(
                self.resize * long / short
            )  # torchvision's Resize(int) truncates the long side
            new_height, new_width = (
                (self.resize, resized_long) if height <= width else (resized_long, self.resize)
            )
        else:
            new_height, new_width = self.resize
        crop_height, crop_width = self.crop or (new_height, new_width)
        top = round((new_height - crop_height) / 2.0)  # as torchvision's CenterCrop rounds
        left = round((new_width - crop_width) / 2.0)
        scale_y, scale_x = new_height / height, new_width / width
        return (left / scale_x, top / scale_y, (left + crop_width) / scale_x, (top + crop_height) / scale_y)

    def pixel_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> [C,H,W] float tensor in [0,1] (no normalization)."""
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
    # False where the preprocessing was not given but assumed (a plain module): inputs are then not refused for
    # their channel count, which only the module itself knows.
    channels_known: bool = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def in_fast_layout(self, forward: Callable[[torch.Tensor], Out], x: torch.Tensor) -> Out:
        """``forward(x)`` with the images ``x`` in the memory layout convolutions run fastest in: channels-last
        for multi-channel images (on 2 CPU cores, forward+backward is 1.4x faster for EfficientNet-Lite0 and
        1.1x for ResNet-18; the values are equal up to float rounding). Gradients with respect to ``x`` flow
        through the change of layout. A model that cannot take channels-last feature maps (a ``.view()`` of
        one raises) gets the standard layout, from then on, with a warning naming it; a forward that fails in the
        standard layout too raises that error.
        """
        if self.channels_last_for(x):
            try:
                output = forward(x.contiguous(memory_format=torch.channels_last))
            except RuntimeError as error:
                output = forward(
                    x.contiguous()
                )  # a model that fails here fails the same way without deepscope
                self.channels_last = False
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                warnings.warn(
                    f"{self.name} failed on channels-last inputs ({reason}); deepscope runs it in the standard "
                    "memory layout from now on (a little slower on the CPU)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return output
            self.channels_last_works = True
            return output
        return forward(x.contiguous())

    def channels_last_for(self, x: torch.Tensor) -> bool:
        """Whether :meth:`in_fast_layout` tries the channels-last layout for ``x``."""
        return self.channels_last and x.ndim == 4 and x.shape[1] > 1

    def check_inputs(self, inputs: object) -> torch.Tensor:
        """``inputs`` as a batch of model inputs ``[B,C,H,W]`` (float, at least one image of at least one pixel,
        the model's channels, finite values), or an :class:`ImageError` saying what is wrong in the caller's
        terms: the shape it got, the sample holding NaN or infinity.

        >>> import torch, deepscope as ds
        >>> vm = ds.load_model("zoo:lenet_mnist")
        >>> x = torch.zeros(3, 1, 28, 28)
        >>> x[2, 0, 5, 5] = float("nan")
        >>> vm.check_inputs(x)
        Traceback (most recent call last):
        ...
        deepscope.errors.ImageError: the inputs hold NaN or infinite values in sample 2 (of 3); ...
        """
        return check_inputs(inputs, self)

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
            converted.append(to_mode(image, self.image_mode, where=f"image {index}"))
        tensors = self.preprocessing.pixel_batch(converted)
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ImageError(
                f"images have mixed sizes {sorted(shapes)} and {self.name} sets no resize/crop; "
                "resize them to one size or give the model a Preprocessing with crop=(H, W)"
            )
        return torch.stack(tensors).to(self.device)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel-space [0,1] tensor [B,C,H,W] -> model input. Differentiable (used by feature visualization)."""
        mean = torch.as_tensor(self.preprocessing.mean, dtype=pixels.dtype, device=pixels.device)
        std = torch.as_tensor(self.preprocessing.std, dtype=pixels.dtype, device=pixels.device)
        if pixels.ndim != 4 or pixels.shape[1] != mean.numel():
            raise ImageError(
                f"expected pixels of shape [B,{mean.numel()},H,W] for {self.name}, got {list(pixels.shape)}"
            )
        return (pixels - mean[:, None, None]) / std[:, None, None]

    def preprocess(self, images: Sequence[Image.Image] | Image.Image) -> torch.Tensor:
        """Images -> [B,C,H,W] model input on the model's device (resize, crop, to tensor, normalize)."""
        if self.transform is not None:
            if isinstance(images, Image.Image):
                images = [images]
            return torch.stack([self.transform(image) for image in images]).to(self.device)
        return self.normalize(self.pixels(images))

    def predict(self, x: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` softmax probabilities and class indices, each [B,k], for a preprocessed batch.

        Runs the module in eval mode for the call (each submodule's flag restored), without gradients.
        """
        with torch.inference_mode(), evaluation_mode(self.module):
            logits = self.module(self.check_inputs(x))
        if logits.ndim != 2:
            raise ModelError(
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


def _chw(array: np.ndarray) -> np.ndarray:
    """An image array [H,W] or [H,W,C] -> a contiguous [C,H,W] copy (what ``ToImage`` makes of a PIL image)."""
    return np.ascontiguousarray(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))


def check_inputs(inputs: object, vm: VisionModel | None = None) -> torch.Tensor:
    """``inputs`` as a batch of model inputs (see :meth:`VisionModel.check_inputs`); without ``vm`` the channels
    are not checked."""
    if isinstance(inputs, (list, tuple)):
        shapes = {tuple(x.shape) for x in inputs if isinstance(x, torch.Tensor)}
        if len(shapes) > 1:
            raise ImageError(f"a batch of mixed sizes {sorted(shapes)}; resize the images to one size first")
        raise ImageError("inputs must be one [B,C,H,W] tensor; stack them (or use vm.preprocess)")
    if not isinstance(inputs, torch.Tensor):
        raise ImageError(f"inputs must be a [B,C,H,W] tensor, got {type(inputs).__name__}")
    if inputs.ndim != 4:
        hint = "; add the batch dimension with x[None]" if inputs.ndim == 3 else ""
        raise ImageError(f"inputs must be a [B,C,H,W] batch, got shape {list(inputs.shape)}{hint}")
    if not inputs.is_floating_point():
        raise ImageError(
            f"inputs must be a float tensor of model inputs, got {inputs.dtype}; make them with vm.preprocess"
        )
    batch, channels, height, width = inputs.shape
    if batch == 0:
        raise ImageError(f"the batch holds no image (shape {list(inputs.shape)})")
    if height == 0 or width == 0:
        raise ImageError(f"the images are {height}x{width} pixels; an image needs at least one pixel")
    if vm is not None:
        wanted = next((p.dtype for p in vm.module.parameters() if p.is_floating_point()), inputs.dtype)
        if inputs.dtype != wanted:
            raise ImageError(
                f"the inputs are {inputs.dtype} but {vm.name}'s parameters are {wanted}; convert them with "
                f"x.to({wanted})"
            )
    expected = vm.preprocessing.channels if vm is not None else channels
    if vm is not None and vm.channels_known and vm.transform is None and channels != expected:
        raise ImageError(
            f"{vm.name} reads {expected}-channel images ({vm.image_mode}), but the inputs have {channels} "
            f"channels (shape {list(inputs.shape)})"
        )
    finite = torch.isfinite(inputs).flatten(1).all(1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        listed = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        raise ImageError(
            f"the inputs hold NaN or infinite values in sample{'s' if len(bad) > 1 else ''} {listed} "
            f"(of {batch}); a model's outputs and maps for them would be NaN"
        )
    return inputs


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
            channels_known=preprocessing is not None,
        )
    raise ModelError(f"expected a deepscope VisionModel or a torch.nn.Module, got {type(model).__name__}")
