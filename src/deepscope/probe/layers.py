"""Layer addressing: one grammar for every ``layer=`` argument, with globs, and errors that suggest the closest
names.

A layer is named by the dotted ``named_modules()`` path of a module (``'layer4.1.conv2'``), which addresses its
output. Two suffixes refine it:

- ``'PATH@N'``: the N-th call (from 0) of a module that runs more than once in one forward (EfficientNet-Lite0
  applies its ``ReLU6`` module ``_swish`` in the stem and again in the head: ``'_swish@1'``);
- ``'PATH:input'``: the module's input instead of its output (the pooled features entering a classifier,
  ``'fc:input'``); both combine as ``'PATH@N:input'``.

The names :func:`deepscope.graph` gives its nodes are such addresses.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from deepscope.errors import LayerNotFoundError, SettingError, close_matches
from deepscope.zoo.vision_model import VisionModel, as_vision_model

GLOB_CHARACTERS = set("*?[")
INPUT_SUFFIX = ":input"
_ADDRESS = re.compile(r"^(?P<path>.*?)(?:@(?P<call>[^:@]*))?(?P<input>:input)?$", re.DOTALL)


@dataclass(frozen=True)
class LayerAddress:
    """A parsed layer name: the module's dotted ``path``, ``call`` (N of ``'PATH@N'``; None for a module's only
    call) and ``input`` (True for ``'PATH:input'``). ``str()`` gives the name back.

    >>> split_address("_swish@1"), str(split_address("fc@0:input"))
    (LayerAddress(path='_swish', call=1, input=False), 'fc@0:input')
    """

    path: str
    call: int | None = None
    input: bool = False

    def __str__(self) -> str:
        call = f"@{self.call}" if self.call is not None else ""
        return f"{self.path}{call}{INPUT_SUFFIX if self.input else ''}"


def split_address(name: str) -> LayerAddress:
    """The parts of a layer name (its syntax only; :func:`parse_layer` also checks the model has the module)."""
    if not isinstance(name, str):
        raise LayerNotFoundError(f"a layer is named by a string like 'layer4' or '_swish@1', got {name!r}")
    match = _ADDRESS.match(name)
    call = match["call"]
    if call is not None and not call.isdigit():
        raise LayerNotFoundError(
            f"in {name!r} the call after '@' must be a number (0 = the module's first call in the forward)"
        )
    if not match["path"]:
        raise LayerNotFoundError(f"{name!r} names no module; layers are named like 'layer4' or 'features.3'")
    return LayerAddress(match["path"], None if call is None else int(call), bool(match["input"]))


def parse_layer(model: VisionModel | nn.Module, name: str | LayerAddress) -> LayerAddress:
    """The address of layer ``name`` in ``model``; a module the model does not have lists the closest names.

    >>> import deepscope as ds
    >>> parse_layer(ds.load_model("zoo:lenet_mnist"), "fc3:input")
    LayerAddress(path='fc3', call=None, input=True)
    """
    address = name if isinstance(name, LayerAddress) else split_address(name)
    get_layer(model, address.path)
    return address


def layer_names(model: VisionModel | nn.Module) -> list[str]:
    """Every addressable layer: the dotted names of ``named_modules()`` (the root itself excluded).

    >>> import deepscope as ds
    >>> ds.layer_names(ds.load_model("zoo:lenet_mnist"))[:3]
    ['conv1', 'relu1', 'pool1']
    """
    module = as_vision_model(model).module
    return [name for name, _ in module.named_modules() if name]


def find_layers(model: VisionModel | nn.Module, layers: str | Sequence[str]) -> list[str]:
    """Resolve layer names and globs (``'layer*.0.conv?'``) to layer names, in model order, without repeats. A glob
    matches module paths; a ``@N`` or ``:input`` suffix carries over to every module it matches.

    A name or glob that matches nothing raises :class:`LayerNotFoundError` listing the closest names.

    >>> import deepscope as ds
    >>> ds.find_layers(ds.load_model("zoo:lenet_mnist"), ["conv*", "fc3:input"])
    ['conv1', 'conv2', 'fc3:input']
    """
    names = layer_names(model)
    patterns = [layers] if isinstance(layers, str) else list(layers)
    if not patterns:
        raise LayerNotFoundError("no layer names given")
    chosen: dict[str, list[str]] = {}
    for pattern in patterns:
        address = split_address(pattern)
        if GLOB_CHARACTERS & set(address.path):
            matched = fnmatch.filter(names, address.path)
        else:
            matched = [address.path] if address.path in names else []
        if not matched:
            raise LayerNotFoundError(_not_found_message(model, address.path, names))
        for path in matched:
            found = str(LayerAddress(path, address.call, address.input))
            if found not in chosen.setdefault(path, []):
                chosen[path].append(found)
    return [found for name in names for found in chosen.get(name, [])]


def one_layer(model: VisionModel | nn.Module, layer: str, purpose: str) -> str:
    """The one layer name ``layer`` resolves to; a glob naming several refuses, saying ``purpose`` needs one.

    >>> import deepscope as ds
    >>> one_layer(ds.load_model("zoo:lenet_mnist"), "conv2", "a decoder reads")
    'conv2'
    """
    names = find_layers(model, layer)
    if len(names) != 1:
        raise SettingError(f"{purpose} one layer; {layer!r} names {len(names)}: {', '.join(names)}")
    return names[0]


def get_layer(model: VisionModel | nn.Module, name: str | LayerAddress) -> nn.Module:
    """The module a layer name addresses (one exact name, no globs; ``'_swish@1'`` is the module ``_swish``)."""
    address = name if isinstance(name, LayerAddress) else split_address(name)
    if GLOB_CHARACTERS & set(address.path):
        raise LayerNotFoundError(f"expected one exact layer name, got {name!r}; use find_layers() for globs")
    names = layer_names(model)
    if address.path not in names:
        raise LayerNotFoundError(_not_found_message(model, address.path, names))
    return as_vision_model(model).module.get_submodule(address.path)


def _not_found_message(model: VisionModel | nn.Module, pattern: str, names: list[str]) -> str:
    what = as_vision_model(model).name
    closest = close_matches(pattern, names)
    hint = f" Closest: {', '.join(closest)}." if closest else ""
    top = list(dict.fromkeys(name.split(".")[0] for name in names))
    return (
        f"no layer {pattern!r} in {what}.{hint} Top-level layers: {', '.join(top[:20])}"
        f"{' ...' if len(top) > 20 else ''}. List them all with ds.layer_names(model)."
    )
