"""The shared machinery of every heat-map method: the registry, options, the base class, method specs and
``attribute()``.

A method is one small class in its family's module, registered by name, with its options declared once, as a
frozen dataclass ``Options`` (types, defaults, checks)::

    @register("smoothgrad", family="gradient", space="pixel", passes="samples x (1 forward + 1 backward)",
              reference="Smilkov et al. 2017, SmoothGrad")
    class SmoothGrad(Attribution):
        @dataclass(frozen=True)
        class Options(Attribution.Options):
            samples: int = 50
            ...

        def compute(self, inputs, target): ...

``Attribution(model, layer=None, batch_size=None, **options).attribute(inputs, target) -> Tensor`` is the one
entry point; ``ds.method(name, **options)`` is a method with its settings as one immutable value, callable as
``(model, inputs, target) -> maps``. Pixel-space methods return signed ``[B,C,H,W]``; layer-space and perturbation
methods ``[B,1,H,W]``, upsampled to the input unless ``upsample=False``. Raw values: normalization happens only
in ``deepscope.render``. Every method runs the model in eval mode for the duration of the call (each submodule's
own train/eval flag is restored afterwards).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from deepscope.attribution.targets import TargetError, TargetLike, class_indices, resolve_target
from deepscope.errors import DeepscopeError, NonFiniteError, SettingError, SettingTypeError, suggestion
from deepscope.probe.layers import parse_layer
from deepscope.zoo.state import evaluation_mode
from deepscope.zoo.vision_model import VisionModel, as_vision_model


class MethodError(DeepscopeError, ValueError):
    """An unknown method name or option, or a method that cannot run on this model / layer / input / setting."""


# ----------------------------------------------------------------------------------------------------------
# options: declared once per method, as a frozen dataclass the registry reads


@dataclass(frozen=True, eq=False)
class Options:
    """The options of a method: a frozen dataclass whose fields are the option names, with their types and
    defaults. Values are checked against the field types when made; :meth:`check` adds the checks of range
    and consistency a method needs. A method without options keeps this empty class."""

    def __post_init__(self) -> None:
        for name, hint in option_types(type(self)).items():
            value = getattr(self, name)
            if not accepts(value, hint):
                raise SettingTypeError(f"option {name} must be {type_name(hint)}, got {describe(value)}")
        self.check()

    def check(self) -> None:
        """Raise :class:`MethodError` for a value the method cannot use (the types are already checked)."""


@functools.cache
def option_types(options: type[Options]) -> dict[str, Any]:
    """Field name -> type of an ``Options`` class (annotations resolved in the module that declares them)."""
    hints = typing.get_type_hints(options)
    return {field.name: hints[field.name] for field in dataclasses.fields(options)}


def accepts(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the option type ``hint`` (ints count as floats, bools as neither)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(accepts(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, (int, float))
    if origin is tuple:
        return (
            isinstance(value, tuple)
            and len(value) == len(args)
            and all(accepts(item, arg) for item, arg in zip(value, args, strict=True))
        )
    if origin is collections.abc.Sequence:
        return isinstance(value, (list, tuple)) and all(accepts(item, args[0]) for item in value)
    if origin is collections.abc.Mapping:
        return isinstance(value, Mapping) and all(
            accepts(key, args[0]) and accepts(item, args[1]) for key, item in value.items()
        )
    return isinstance(value, origin or hint)


def type_name(hint: Any) -> str:
    """``int | tuple[int, int] | None``: an option type as a person reads it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if hint is type(None):
        return "None"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(arg) for arg in args)}]"
    return getattr(hint, "__name__", str(hint))


def describe(value: Any) -> str:
    """A value for an error message: tensors by shape, other values by repr."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return f"{value!r} ({type(value).__name__})"


@dataclass(frozen=True)
class OptionInfo:
    """One declared option of a method: its name, type and default (``required`` when it has none).

    >>> import deepscope as ds
    >>> steps = next(o for o in ds.attribution.method_info("integrated_gradients").options if o.name == "steps")
    >>> str(steps), steps.parse("64")
    ('steps: int = 50', 64)
    """

    name: str
    type: Any
    default: Any = None
    required: bool = False

    def parse(self, text: str) -> Any:
        """The value ``text`` stands for, in this option's type (for command lines and forms): ``none``,
        ``true``/``false``, numbers, ``8,8`` for a pair, or the text itself where the type is ``str``."""
        hint = self.type
        members = (
            typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        )
        word = text.strip()
        for member in sorted(members, key=_parse_rank):
            found = _parse_as(word, member)
            if found is not _UNPARSED:
                return found
        raise SettingError(
            f"option {self.name} takes {type_name(hint)}; {text!r} is not one"
            + ("" if any(m in (int, float, bool, str) for m in members) else " (give it from Python)")
        )

    def __str__(self) -> str:
        default = "" if self.required else f" = {self.default!r}"
        return f"{self.name}: {type_name(self.type)}{default}"


_UNPARSED = object()
# The members of a union are tried in this order: "none" is None, "1" an int before a float, text last.
_PARSE_ORDER = (type(None), bool, int, float, tuple, str)


def _parse_rank(member: Any) -> int:
    base = typing.get_origin(member) or member
    return _PARSE_ORDER.index(base) if base in _PARSE_ORDER else len(_PARSE_ORDER)


def _parse_as(word: str, member: Any) -> Any:
    lowered = word.lower()
    if member is type(None):
        return None if lowered == "none" else _UNPARSED
    if member is bool:
        return {"true": True, "false": False, "yes": True, "no": False}.get(lowered, _UNPARSED)
    if member in (int, float):
        try:
            return member(word)
        except ValueError:
            return _UNPARSED
    if member is str:
        return word
    if typing.get_origin(member) is tuple:
        pieces, members = word.split(","), typing.get_args(member)
        if len(pieces) == len(members):
            parts = [_parse_as(piece, part) for piece, part in zip(pieces, members, strict=True)]
            if _UNPARSED not in parts:
                return tuple(parts)
    return _UNPARSED


def option_values(options: Options) -> dict[str, Any]:
    """Option name -> value (the objects themselves: tensors are not copied)."""
    return {field.name: getattr(options, field.name) for field in dataclasses.fields(options)}


def make_options(method: type[Attribution], given: Mapping[str, Any]) -> Options:
    """``method.Options`` from the options a caller gave: an unknown name is refused, naming the close matches
    and every option the method has (a typo must not be ignored); so is a missing required one."""
    declared = [field.name for field in dataclasses.fields(method.Options)]
    for key in given:
        if key not in declared:
            raise unknown_option(method, key)
    label = method.name or method.__name__
    missing = [option.name for option in options_of(method) if option.required and option.name not in given]
    if missing:
        raise MethodError(f"{label} has no default for {', '.join(missing)}: pass {missing[0]}=...")
    return method.Options(**given)


def unknown_option(method: type[Attribution], key: str) -> MethodError:
    """The error for an option ``key`` that ``method`` does not have: the close matches and all its options."""
    declared = [field.name for field in dataclasses.fields(method.Options)]
    return MethodError(
        f"{method.name or method.__name__} has no option {key!r}.{suggestion(key, declared)} "
        f"Its options: {', '.join(declared) or 'none'}"
    )


def options_of(method: type[Attribution]) -> tuple[OptionInfo, ...]:
    """The declared options of a method class, in declaration order."""
    types_of = option_types(method.Options)
    found = []
    for field in dataclasses.fields(method.Options):
        required = field.default is dataclasses.MISSING
        found.append(
            OptionInfo(field.name, types_of[field.name], None if required else field.default, required)
        )
    return tuple(found)


def is_default(value: Any, option: OptionInfo) -> bool:
    """Whether ``value`` is the option's default (tensors only when they are the default object itself)."""
    if option.required:
        return False
    if isinstance(value, torch.Tensor) or isinstance(option.default, torch.Tensor):
        return value is option.default
    return type(value) is type(option.default) and value == option.default


# ----------------------------------------------------------------------------------------------------------
# the registry


FAMILIES = ("gradient", "cam", "relevance", "perturbation", "transformer")


@dataclass(frozen=True)
class MethodInfo:
    """One registry entry: what ``ds.methods()`` lists and what the registry-driven tests iterate over."""

    name: str
    family: str  # one of FAMILIES
    space: str  # "pixel" ([B,C,H,W]) or "layer" ([B,1,H,W])
    passes: str  # the cost floor in passes through the model, e.g. "1 forward + 1 backward"
    reference: str  # paper and variant
    method: type[Attribution]

    @property
    def needs_layer(self) -> bool:
        """Whether the method reads a layer (``layer=`` picks it; found automatically when not given)."""
        return self.method.needs_layer

    @property
    def sensitivity(self) -> bool:
        """Whether the map's sign gives a direction of change (a sensitivity) rather than evidence for the class."""
        return self.method.sensitivity

    @property
    def options(self) -> tuple[OptionInfo, ...]:
        """The method's options: name, type, default."""
        return options_of(self.method)

    def quick_options(self, size: tuple[int, int]) -> dict[str, Any]:
        """Small settings for inputs of ``size`` (H, W): see :meth:`Attribution.quick_options`."""
        return self.method.quick_options(size)


_REGISTRY: dict[str, MethodInfo] = {}


def register(
    name: str, *, family: str, space: str, passes: str, reference: str
) -> Callable[[type[Attribution]], type[Attribution]]:
    """Class decorator adding a method to the registry under ``name``."""
    if space not in ("pixel", "layer"):
        raise MethodError(f"space must be 'pixel' or 'layer', got {space!r}")
    if family not in FAMILIES:
        raise MethodError(f"family must be one of {FAMILIES}, got {family!r}")

    def add(cls: type[Attribution]) -> type[Attribution]:
        if name in _REGISTRY:
            raise MethodError(f"method {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = MethodInfo(name, family, space, passes, reference, cls)
        return cls

    return add


def methods(family: str | None = None) -> list[MethodInfo]:
    """The registered heat-map methods (optionally of one family): by family in ``FAMILIES`` order, then in
    registration order.

    >>> import deepscope as ds
    >>> all(info.space in ("pixel", "layer") for info in ds.methods())
    True
    >>> [str(option) for option in ds.attribution.method_info("rise").options][:2]
    ['masks: int = 4000', 'cells: int = 7']
    """
    found = [info for info in _REGISTRY.values() if family is None or info.family == family]
    return sorted(found, key=lambda info: FAMILIES.index(info.family))


def method_info(name: str) -> MethodInfo:
    """The registry entry for ``name``; an unknown name lists the closest ones.

    >>> method_info("grad_cam").family
    'cam'
    """
    if not isinstance(name, str):
        raise SettingTypeError(f"a method name must be a str, got {describe(name)}")
    if name not in _REGISTRY:
        raise MethodError(
            f"unknown heat-map method {name!r}.{suggestion(name, _REGISTRY)} Known: {', '.join(_REGISTRY)}"
        )
    return _REGISTRY[name]


# ----------------------------------------------------------------------------------------------------------
# the base class


class Attribution:
    """Base of every heat-map method: holds the model, the layer (for layer methods), ``batch_size`` and the
    options, declared by the nested frozen dataclass ``Options`` of each method.

    Subclasses implement :meth:`compute` (or a narrower step that a family base defines). They must leave the
    model as found: parameters never get gradients, hooks live in ``with`` blocks; :meth:`attribute` runs them
    with the model in eval mode and restores every submodule's own flag. ``batch_size`` bounds how many model
    inputs go through at once for methods that expand the batch.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options
    # Model inputs per forward for methods that expand the batch, when the caller does not say.
    default_batch_size: ClassVar[int] = 16
    # False for methods that explain no class (attention rollout): they refuse a target.
    uses_target: ClassVar[bool] = True
    # True for the methods that read a layer (the CAM family): they take layer=, the others refuse it.
    needs_layer: ClassVar[bool] = False
    # True for sensitivity maps, whose sign says which way the score would move if the pixel changed rather than
    # evidence for the class (saliency, guided backprop...): they are ranked and shown by magnitude.
    sensitivity: ClassVar[bool] = False

    def __init__(
        self,
        model: VisionModel | nn.Module,
        layer: str | None = None,
        batch_size: int | None = None,
        **options: Any,
    ):
        self.vm = as_vision_model(model)
        self.model = self.vm.module
        self.options = make_options(type(self), options)
        if layer is not None:
            if not self.needs_layer:
                raise MethodError(
                    f"{self.name or type(self).__name__} reads no layer, so it takes none (got layer={layer!r})"
                )
            parse_layer(self.vm, layer)
        self.layer = layer
        self.batch_size = check_batch_size(batch_size)
        self.passes = PassCount()

    @classmethod
    def quick_options(cls, size: tuple[int, int]) -> dict[str, Any]:
        """Small settings for inputs of ``size`` (H, W) that keep an expensive method quick (fewer steps,
        samples or masks, windows scaled to the image), for tests, the demo and the benchmarks; the defaults
        follow the papers. Methods that cost one pass have none.

        >>> import deepscope as ds
        >>> ds.attribution.Occlusion.quick_options((16, 16)), ds.attribution.Saliency.quick_options((16, 16))
        ({'window': 4, 'stride': 4}, {})
        """
        return {}

    def attribute(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """Maps of the preprocessed batch ``inputs`` ``[B,C,H,W]`` explaining ``target`` (see
        :func:`attribute`), with the model in eval mode for the call."""
        inputs = self.vm.check_inputs(inputs).to(self.vm.device)
        if target is not None and not self.uses_target:
            raise MethodError(f"{self.name} explains no class; leave target=None")
        with evaluation_mode(self.model):
            maps = self.compute(inputs, target)
        return finite_maps(maps, self.name)

    def compute(self, inputs: torch.Tensor, target: TargetLike) -> torch.Tensor:
        """The maps, from inputs already on the model's device, with the model in eval mode."""
        raise NotImplementedError

    def chunk_size(self, inputs: torch.Tensor) -> int:
        """Model inputs per forward: ``batch_size`` (or the method's default), capped on the CPU
        (:func:`chunk_size`)."""
        return chunk_size(self.batch_size or self.default_batch_size, inputs)

    def __repr__(self) -> str:
        layer = f", layer={self.layer!r}" if self.layer else ""
        return f"{type(self).__name__}({self.vm.name}{layer})"


def check_batch_size(batch_size: int | None) -> int | None:
    if batch_size is None:
        return None
    if not isinstance(batch_size, int) or isinstance(batch_size, bool):
        raise SettingTypeError(f"batch_size must be an int, got {describe(batch_size)}")
    if batch_size < 1:
        raise SettingError(f"batch_size must be >= 1, got {batch_size}")
    return batch_size


# ----------------------------------------------------------------------------------------------------------
# a method with its settings as one value


@dataclass(frozen=True, eq=False, repr=False)
class Method:
    """A heat-map method with its settings: one immutable, validated value made by :func:`method`, and the
    callable ``(model, inputs, target=None) -> maps`` that recomputes maps (what the metrics call).

    >>> import torch, deepscope as ds
    >>> ig = ds.method("integrated_gradients", steps=8)
    >>> ig, ig.options.steps, ig.replace(steps=16)
    (Method('integrated_gradients', steps=8), 8, Method('integrated_gradients', steps=16))
    >>> ig(ds.load_model("zoo:lenet_mnist"), torch.rand(1, 1, 28, 28), target=3).shape
    torch.Size([1, 1, 28, 28])
    """

    name: str
    options: Options
    layer: str | None = None
    batch_size: int | None = None

    @property
    def info(self) -> MethodInfo:
        return method_info(self.name)

    def build(self, model: VisionModel | nn.Module) -> Attribution:
        """The method's instance for ``model`` (checks the layer name against the model)."""
        return self.info.method(model, self.layer, self.batch_size, **option_values(self.options))

    def __call__(
        self, model: VisionModel | nn.Module, inputs: torch.Tensor, target: TargetLike = None
    ) -> torch.Tensor:
        return self.build(model).attribute(inputs, target)

    def changed(self) -> dict[str, Any]:
        """The options whose values differ from the defaults (what the spec chooses)."""
        values = option_values(self.options)
        return {o.name: values[o.name] for o in self.info.options if not is_default(values[o.name], o)}

    def replace(self, **changes: Any) -> Method:
        """The same method with some settings changed (options, ``layer``, ``batch_size``), checked again."""
        settings = {"layer": self.layer, "batch_size": self.batch_size, **self.changed(), **changes}
        return method(self.name, **settings)

    def __repr__(self) -> str:
        settings = self.changed()
        for key, value in (("layer", self.layer), ("batch_size", self.batch_size)):
            if value is not None:
                settings[key] = value
        return (
            f"Method({self.name!r}{''.join(f', {key}={_short(value)}' for key, value in settings.items())})"
        )


def _short(value: Any) -> str:
    return f"tensor{list(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)


def method(name: str, layer: str | None = None, batch_size: int | None = None, **options: Any) -> Method:
    """The heat-map method ``name`` with its settings, checked now: an unknown option, a value of the wrong
    type or out of range, or a layer for a method that reads none is refused here, before any model runs.

    ``layer`` (layer-space methods) and ``batch_size`` (model inputs per forward) are settings of the spec
    too. The result is immutable; :meth:`Method.replace` makes a changed copy.

    >>> import deepscope as ds
    >>> ds.method("grad_cam", layer="layer4", relu=True)
    Method('grad_cam', relu=True, layer='layer4')
    >>> ds.method("saliency", steps=3)
    Traceback (most recent call last):
    ...
    deepscope.attribution.base.MethodError: saliency has no option 'steps'. Its options: none
    """
    info = method_info(name)
    if layer is not None and not info.needs_layer:
        raise MethodError(f"{name} reads no layer, so it takes none (got layer={layer!r})")
    if layer is not None and not isinstance(layer, str):
        raise SettingTypeError(f"layer must be a layer name (str), got {describe(layer)}")
    return Method(name, make_options(info.method, options), layer, check_batch_size(batch_size))


def as_method(spec: str | Method, options: Mapping[str, Any] | None = None) -> Method:
    """A name (with ``options``) or a :class:`Method` (without) as a :class:`Method`."""
    if isinstance(spec, Method):
        if options:
            raise MethodError(
                f"options {', '.join(options)} given beside the spec {spec!r}; put them in it: "
                f"spec.replace({', '.join(f'{key}=...' for key in options)})"
            )
        return spec
    if isinstance(spec, str):
        return method(spec, **(options or {}))
    raise SettingTypeError(f"a method must be a name or a ds.method(...) spec, got {describe(spec)}")


def as_methods(specs: str | Method | Sequence[str | Method]) -> list[Method]:
    """'a,b', a spec, or a list of names and specs -> checked :class:`Method` values."""
    if isinstance(specs, str):
        specs = [name.strip() for name in specs.split(",") if name.strip()]
    elif isinstance(specs, Method):
        specs = [specs]
    return [as_method(spec) for spec in specs]


def with_call_settings(spec: Method, layer: str | None, batch_size: int | None, every_method: bool) -> Method:
    """``spec`` with the ``layer`` and ``batch_size`` of a call filled in where it sets none; a call value that
    contradicts the spec's own is an error. ``every_method=False`` (``explain``) gives the layer only to the
    methods that read one."""
    changes: dict[str, Any] = {}
    for key, value in (("layer", layer), ("batch_size", batch_size)):
        own = getattr(spec, key)
        if value is None or (key == "layer" and not every_method and not spec.info.needs_layer):
            continue
        if own is not None and own != value:
            raise MethodError(f"{spec!r} sets {key}={own!r}, the call {key}={value!r}; say it once")
        changes[key] = value
    return spec.replace(**changes) if changes else spec


def parse_methods(names: str | Sequence[str], options: Sequence[str] = ()) -> list[Method]:
    """Specs from text, as a command line gives them: method names ('a,b') and options ``KEY=VALUE`` (every
    listed method that has option KEY) or ``METHOD.KEY=VALUE``, each value parsed in the option's type.

    >>> parse_methods("integrated_gradients,smoothgrad", ["steps=8", "smoothgrad.samples=4", "seed=1"])
    [Method('integrated_gradients', steps=8), Method('smoothgrad', samples=4, seed=1)]
    """
    listed = [spec.name for spec in as_methods(names)]
    given: dict[str, dict[str, Any]] = {name: {} for name in listed}
    for item in options:
        key, equals, text = item.partition("=")
        target_name, dot, key = key.strip().rpartition(".")
        if not equals or not key:
            raise SettingError(f"an option is KEY=VALUE or METHOD.KEY=VALUE, got {item!r}")
        if dot and target_name not in given:
            raise MethodError(
                f"option {item!r} names {target_name!r}, which is not among the methods {listed}"
            )
        takers = [target_name] if dot else [name for name in listed if key in _option_names(name)]
        if not takers:
            raise MethodError(f"none of {', '.join(listed)} has an option {key!r}")
        for name in takers:
            option = next((o for o in method_info(name).options if o.name == key), None)
            if option is None:
                raise unknown_option(method_info(name).method, key)
            given[name][key] = option.parse(text)
    return [method(name, **given[name]) for name in listed]


def _option_names(name: str) -> set[str]:
    return {option.name for option in method_info(name).options}


def attribute(
    model: VisionModel | nn.Module,
    inputs: torch.Tensor,
    method: str | Method,
    target: TargetLike = None,
    layer: str | None = None,
    batch_size: int | None = None,
    **options: Any,
) -> torch.Tensor:
    """Heat maps of ``method`` for a preprocessed batch ``inputs`` explaining ``target``.

    ``method``: a registered name (``ds.methods()``) with its options as keywords, or a ``ds.method(...)``
    spec. ``target``: None (each sample's top-1 class), an int, a list of ints (one per sample), a
    ``ds.targets.Region`` / ``ds.targets.Box``, or any callable output -> [B] scores. ``layer`` picks the layer
    of layer-space methods (default: found automatically). The model runs in eval mode for the call.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, torch.rand(2, 1, 28, 28), "smoothgrad", samples=4).shape
    torch.Size([2, 1, 28, 28])
    """
    spec = with_call_settings(as_method(method, options), layer, batch_size, every_method=True)
    return spec(model, inputs, target)


# ----------------------------------------------------------------------------------------------------------
# Shared machinery of the method families: pass counting, sub-batches, targets per row, upsampling.


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


def finite_maps(maps: torch.Tensor, method: str) -> torch.Tensor:
    """``maps``, or a :class:`NonFiniteError` naming the samples whose map holds NaN or infinity (finite inputs
    and scores give finite maps, unless a setting divides by zero or the model overflows inside)."""
    finite = torch.isfinite(maps).flatten(1).all(1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise NonFiniteError(
            f"{method} made maps with NaN or infinite values for sample{'s' if len(bad) > 1 else ''} "
            f"{', '.join(map(str, bad[:10]))} although the inputs and scores are finite; a setting that divides by "
            "zero (a stabilizer or epsilon of 0) or an overflow inside the model does this"
        )
    return maps


def target_rows(target: TargetLike, rows: torch.Tensor, batch: int) -> TargetLike:
    """The target for the sub-batch ``rows`` (indices into a batch of ``batch`` samples; repeats allowed).

    Class lists are indexed, targets with ``.select(rows)`` select themselves; a callable without
    ``select`` is applied to each sub-batch as is, so it must score each row on its own.
    """
    if target is None:
        return target
    if not isinstance(target, torch.Tensor):  # a tensor has a select() of its own
        if hasattr(target, "select"):
            return target.select(rows)
        if callable(target):
            return target
    indices = class_indices(target)
    if indices.numel() == 1:
        return int(indices[0])
    if indices.numel() != batch:
        raise TargetError(f"{indices.numel()} targets for a batch of {batch}")
    return indices[rows.cpu()]


def target_scores(
    target: TargetLike, output: Any, samples: torch.Tensor, perturbed: bool = False
) -> tuple[torch.Tensor, Callable]:
    """``(scores [rows], resolved target)`` for one sub-batch's output; ``samples`` says which sample of the
    caller's batch each row is (a perturbed copy of it with ``perturbed``), to name them in the errors: a target
    callable that does not return one score per row, or scores that are NaN or infinite."""
    rows = len(samples)
    resolved = resolve_target(target, output)
    scores = resolved(output)
    if not isinstance(scores, torch.Tensor) or scores.shape != (rows,):
        got = list(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise TargetError(f"the target must give one score per sample, shape [{rows}], got {got}")
    finite = torch.isfinite(scores.detach())
    if not bool(finite.all()):
        bad = sorted(set(samples[~finite].tolist()))
        listed = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        copies = "perturbed copies of " if perturbed else ""
        raise NonFiniteError(
            f"the model's target score is NaN or infinite for {copies}sample{'s' if len(bad) > 1 else ''} "
            f"{listed}; its maps would be meaningless (look at the model's output for {'them' if len(bad) > 1 else 'it'})"
        )
    return scores, resolved


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[B,1,h,w]`` layer-resolution maps -> ``[B,1,H,W]`` by bilinear interpolation (half-pixel centers,
    ``align_corners=False``), the upsampling of Selvaraju et al.'s Grad-CAM."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
