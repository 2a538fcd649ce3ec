"""The shared machinery of every heat-map method: the registry, the base class, and ``attribute()``.

A method is one small class in its family's module, registered by name::

    @register("saliency", family="gradient", space="pixel", passes="1 forward + 1 backward",
              reference="Simonyan et al. 2014, Deep Inside Convolutional Networks")
    class Saliency(Attribution):
        def attribute(self, inputs, target=None): ...

``Attribution.attribute(inputs, target) -> Tensor`` is the one entry point. Pixel-space methods return signed
``[B,C,H,W]``; layer-space and perturbation methods ``[B,1,H,W]``, upsampled to the input unless
``upsample=False``. Raw values: normalisation happens only in ``deepscope.render``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from deepscope.attribution.targets import TargetError, TargetLike, resolve_target
from deepscope.errors import DeepscopeError, ImageError, suggestion
from deepscope.zoo.vision_model import VisionModel, as_vision_model


class MethodError(DeepscopeError, ValueError):
    """An unknown method name, or a method that cannot run on this model / layer / input."""


@dataclass(frozen=True)
class MethodInfo:
    """One registry entry: what ``ds.methods()`` lists and what the registry-driven tests iterate over."""

    name: str
    family: str  # one of FAMILIES
    space: str  # "pixel" ([B,C,H,W]) or "layer" ([B,1,H,W])
    passes: str  # the cost floor in passes through the model, e.g. "1 forward + 1 backward"
    reference: str  # paper and variant
    needs_layer: bool
    method: type[Attribution]


_REGISTRY: dict[str, MethodInfo] = {}


def register(
    name: str, *, family: str, space: str, passes: str, reference: str, needs_layer: bool = False
) -> Callable[[type[Attribution]], type[Attribution]]:
    """Class decorator adding a method to the registry under ``name``."""
    if space not in ("pixel", "layer"):
        raise ValueError(f"space must be 'pixel' or 'layer', got {space!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def add(method: type[Attribution]) -> type[Attribution]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        method.name = name
        _REGISTRY[name] = MethodInfo(name, family, space, passes, reference, needs_layer, method)
        return method

    return add


FAMILIES = ("gradient", "cam", "relevance", "perturbation", "transformer")


def methods(family: str | None = None) -> list[MethodInfo]:
    """The registered heat-map methods (optionally of one family): by family in ``FAMILIES`` order, then in
    registration order.

    >>> import deepscope as ds
    >>> all(info.space in ("pixel", "layer") for info in ds.methods())
    True
    """
    found = [info for info in _REGISTRY.values() if family is None or info.family == family]
    return sorted(found, key=lambda info: FAMILIES.index(info.family))


def method_info(name: str) -> MethodInfo:
    """The registry entry for ``name``; an unknown name lists the closest ones."""
    if name not in _REGISTRY:
        raise MethodError(
            f"unknown heat-map method {name!r}.{suggestion(name, _REGISTRY)} Known: {', '.join(_REGISTRY)}"
        )
    return _REGISTRY[name]


class Attribution:
    """Base of every heat-map method: holds the model, the layer (for layer methods) and the configuration.

    Subclasses implement :meth:`attribute` (or a narrower step that a family base defines). They must leave the
    model as found: parameters never get gradients, hooks live in ``with`` blocks, modes are not changed.
    ``batch_size`` bounds how many model inputs go through at once for methods that expand the batch.
    """

    name: ClassVar[str] = ""
    # Model inputs per forward for methods that expand the batch, when the caller does not say.
    default_batch_size: ClassVar[int] = 16
    # False for methods that explain no class (attention rollout): they refuse a target.
    uses_target: ClassVar[bool] = True

    def __init__(
        self,
        model: VisionModel | nn.Module,
        layer: str | None = None,
        batch_size: int | None = None,
        **config: Any,
    ):
        self.vm = as_vision_model(model)
        self.model = self.vm.module
        self.layer = layer
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.config = config
        self.passes = PassCount()

    def attribute(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        raise NotImplementedError

    def chunk_size(self, inputs: torch.Tensor) -> int:
        """Model inputs per forward: ``batch_size`` (or the method's default), capped on the CPU
        (:func:`chunk_size`)."""
        return chunk_size(self.batch_size or self.default_batch_size, inputs)

    def __repr__(self) -> str:
        layer = f", layer={self.layer!r}" if self.layer else ""
        return f"{type(self).__name__}({self.vm.name}{layer})"


def check_inputs(inputs: Any) -> torch.Tensor:
    """A model-ready image batch ``[B,C,H,W]`` float tensor, or a clear error."""
    if isinstance(inputs, (list, tuple)):
        shapes = {tuple(x.shape) for x in inputs if isinstance(x, torch.Tensor)}
        if len(shapes) > 1:
            raise ImageError(f"a batch of mixed sizes {sorted(shapes)}; resize the images to one size first")
        raise ImageError("inputs must be one [B,C,H,W] tensor; stack them (or use vm.preprocess)")
    if not isinstance(inputs, torch.Tensor):
        raise ImageError(f"inputs must be a [B,C,H,W] tensor, got {type(inputs).__name__}")
    if inputs.ndim != 4:
        raise ImageError(f"inputs must be a [B,C,H,W] batch, got shape {list(inputs.shape)}")
    if not inputs.is_floating_point():
        raise ImageError(f"inputs must be a float tensor (preprocessed), got {inputs.dtype}")
    return inputs


def attribute(
    model: VisionModel | nn.Module,
    inputs: torch.Tensor,
    method: str,
    target: TargetLike = None,
    layer: str | None = None,
    batch_size: int | None = None,
    **config: Any,
) -> torch.Tensor:
    """Heat maps of ``method`` for a preprocessed batch ``inputs`` explaining ``target``.

    ``target``: None (each sample's top-1 class), an int, a list of ints (one per sample), a
    ``ds.targets.Region`` / ``ds.targets.Box``, or any callable output -> [B] scores. ``layer`` picks the layer
    of layer-space methods (default: found automatically). ``config`` holds the method's own settings.
    """
    info = method_info(method)
    check_options(info.method, config)
    return info.method(model, layer=layer, batch_size=batch_size, **config).attribute(
        check_inputs(inputs), target
    )


def method_names(names: str | Sequence[str]) -> list[str]:
    """'a,b' or ['a', 'b'] -> validated list of method names."""
    listed = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    for name in listed:
        method_info(name)
    return listed


# ----------------------------------------------------------------------------------------------------------
# Shared machinery of the method families: options, pass counting, sub-batches, targets per row, upsampling.


def check_options(method: type[Attribution], config: dict[str, Any]) -> None:
    """Reject settings a method does not take, naming the ones it does (a typo must not be ignored).

    Methods whose ``__init__`` takes ``**config`` accept anything; the others list their options.
    """
    parameters = inspect.signature(method.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    known = [name for name in parameters if name not in ("self", "model", "layer", "batch_size")]
    for key in config:
        if key not in known:
            raise MethodError(
                f"{method.name or method.__name__} has no option {key!r}.{suggestion(key, known)} "
                f"Its options: {', '.join(known) or 'none'}"
            )


@dataclass
class PassCount:
    """Passes through the model, in units of the whole batch: 100 model inputs for a batch of 4 is 25
    forward passes. ``forward`` counts forward passes, ``backward`` backward passes (to the input or to a
    layer)."""

    forward: float = 0.0
    backward: float = 0.0

    def add(self, inputs: int, batch: int, backward: int | bool) -> None:
        """Count ``inputs`` model inputs (of a batch of ``batch``) forward, and ``backward`` times backward."""
        self.forward += inputs / batch
        self.backward += int(backward) * inputs / batch

    def __add__(self, other: PassCount) -> PassCount:
        return PassCount(self.forward + other.forward, self.backward + other.backward)

    def __str__(self) -> str:
        return f"{self.forward:g} forward + {self.backward:g} backward"


# On the CPU a chunk of model inputs holds at most this many input values (8 images of 3 x 224 x 224). Larger
# chunks outgrow the caches: on 2 cores, EfficientNet-Lite0 took 28 ms per image for forward+backward in chunks of
# 8 and 44 ms in chunks of 16, and 11.5 / 16.3 / 25.7 ms per image for forwards in chunks of 8 / 16 / 32
# (ResNet-18 was flat from 8 to 32).
CPU_CHUNK_VALUES = 8 * 3 * 224 * 224


def chunk_size(batch_size: int, inputs: torch.Tensor) -> int:
    """How many of ``inputs`` go through the model at once: ``batch_size``, and on the CPU no more than
    ``CPU_CHUNK_VALUES`` input values (small inputs such as 28 x 28 digits still go ``batch_size`` at a time).
    Results never depend on it: every model input is scored on its own."""
    if inputs.device.type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_CHUNK_VALUES // max(1, inputs[0].numel())))


def chunks(total: int, size: int, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Consecutive index ranges ``[0, size), [size, 2 size), ...`` covering ``total`` items, as long tensors."""
    for start in range(0, total, size):
        yield torch.arange(start, min(start + size, total), device=device)


def target_rows(target: TargetLike, rows: torch.Tensor, batch: int) -> TargetLike:
    """The target for the sub-batch ``rows`` (indices into a batch of ``batch`` samples; repeats allowed).

    Class lists are indexed, targets with ``.select(rows)`` select themselves; a callable without
    ``select`` is applied to each sub-batch as is, so it must score each row on its own.
    """
    if target is None or isinstance(target, bool):
        return target
    if isinstance(target, int):
        return target
    if isinstance(target, torch.Tensor) or (isinstance(target, Sequence) and not callable(target)):
        indices = torch.as_tensor(target, dtype=torch.long).flatten().cpu()
        if indices.numel() == 1:
            return int(indices[0])
        if indices.numel() != batch:
            raise TargetError(f"{indices.numel()} targets for a batch of {batch}")
        return indices[rows.cpu()]
    if hasattr(target, "select"):
        return target.select(rows)
    return target


def target_scores(target: TargetLike, output: Any, rows: int) -> tuple[torch.Tensor, Callable]:
    """``(scores [rows], resolved target)`` for one sub-batch's output, with a clear error for a target
    callable that does not return one score per row."""
    resolved = resolve_target(target, output)
    scores = resolved(output)
    if not isinstance(scores, torch.Tensor) or scores.shape != (rows,):
        got = list(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise TargetError(f"the target must give one score per sample, shape [{rows}], got {got}")
    return scores, resolved


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[B,1,h,w]`` layer-resolution maps -> ``[B,1,H,W]`` by bilinear interpolation (half-pixel centres,
    ``align_corners=False``), the upsampling of Selvaraju et al.'s Grad-CAM."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
