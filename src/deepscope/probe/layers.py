"""Layer addressing: dotted ``named_modules()`` paths, with globs, and errors that suggest the closest names."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from deepscope.errors import LayerNotFoundError, close_matches
from deepscope.zoo.vision_model import VisionModel, as_vision_model

GLOB_CHARACTERS = set("*?[")


def layer_names(model: VisionModel | nn.Module) -> list[str]:
    """Every addressable layer: the dotted names of ``named_modules()`` (the root itself excluded).

    >>> import deepscope as ds
    >>> ds.layer_names(ds.load_model("zoo:lenet_mnist"))[:3]
    ['conv1', 'relu1', 'pool1']
    """
    module = as_vision_model(model).module
    return [name for name, _ in module.named_modules() if name]


def find_layers(model: VisionModel | nn.Module, layers: str | Sequence[str]) -> list[str]:
    """Resolve names and globs (``'layer*.0.conv?'``) to dotted layer names, in model order, without repeats.

    A name or glob that matches nothing raises :class:`LayerNotFoundError` listing the closest names.

    >>> import deepscope as ds
    >>> ds.find_layers(ds.load_model("zoo:lenet_mnist"), "conv*")
    ['conv1', 'conv2']
    """
    names = layer_names(model)
    patterns = [layers] if isinstance(layers, str) else list(layers)
    if not patterns:
        raise LayerNotFoundError("no layer names given")
    chosen: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"layer names are strings, got {type(pattern).__name__}: {pattern!r}")
        if GLOB_CHARACTERS & set(pattern):
            matched = fnmatch.filter(names, pattern)
        else:
            matched = [pattern] if pattern in names else []
        if not matched:
            raise LayerNotFoundError(_not_found_message(model, pattern, names))
        chosen.update(matched)
    return [name for name in names if name in chosen]


def get_layer(model: VisionModel | nn.Module, name: str) -> nn.Module:
    """The module at the exact dotted path ``name`` (no globs)."""
    if not isinstance(name, str) or GLOB_CHARACTERS & set(name):
        raise LayerNotFoundError(f"expected one exact layer name, got {name!r}; use find_layers() for globs")
    names = layer_names(model)
    if name not in names:
        raise LayerNotFoundError(_not_found_message(model, name, names))
    return as_vision_model(model).module.get_submodule(name)


def _not_found_message(model: VisionModel | nn.Module, pattern: str, names: list[str]) -> str:
    what = as_vision_model(model).name
    closest = close_matches(pattern, names)
    hint = f" Closest: {', '.join(closest)}." if closest else ""
    top = list(dict.fromkeys(name.split(".")[0] for name in names))
    return (
        f"no layer {pattern!r} in {what}.{hint} Top-level layers: {', '.join(top[:20])}"
        f"{' ...' if len(top) > 20 else ''}. List them all with ds.layer_names(model)."
    )
