"""The errors deepscope raises for bad input. Each names the problem and, where it can, the fix."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class DeepscopeError(Exception):
    """Base class of every error deepscope raises on purpose."""


class SettingError(DeepscopeError, ValueError):
    """An argument or option whose value deepscope cannot use: out of range, inconsistent with another, or missing
    one it needs."""


class SettingTypeError(SettingError, TypeError):
    """An argument of the wrong type (a string where a number belongs, a list where a tensor does)."""


class ModelError(DeepscopeError, TypeError):
    """An object given as a model that deepscope cannot run, or a model whose output is not of the form a call
    needs (class scores ``[B, classes]``, a tensor)."""


class NonFiniteError(DeepscopeError, ValueError):
    """NaN or infinity where deepscope needs finite numbers: a model's output for some samples."""


class SpecError(DeepscopeError, ValueError):
    """A model, dataset or objective spec that deepscope cannot understand."""


class WeightsNotFoundError(DeepscopeError, FileNotFoundError):
    """Pretrained weights that are not on local disk (deepscope never downloads)."""

    def __str__(self) -> str:  # FileNotFoundError would format (errno, strerror) otherwise
        return str(self.args[0])


class ImageError(DeepscopeError, ValueError):
    """An input that is not an image of the kind asked for."""


class LayerNotFoundError(DeepscopeError, LookupError):
    """A layer name or glob that matches no module of the model."""


class ReceptiveFieldError(DeepscopeError, ValueError):
    """A layer whose receptive field cannot be computed through the ops in front of it."""


class GraphError(DeepscopeError, RuntimeError):
    """A model that neither torch.fx nor the dynamic tracer could turn into a graph."""


class UnitError(DeepscopeError, ValueError):
    """A unit (channel, neuron, position) that the layer does not have, or an objective that cannot be read."""


class WorkspaceError(DeepscopeError, RuntimeError):
    """A workspace directory that is missing, from another schema version, or holds other data than asked."""


class DatasetError(DeepscopeError, ValueError):
    """A dataset that cannot be scanned as given (no length, mixed sample shapes, unreadable folder)."""


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates closest to ``word``, best first (for 'did you mean' messages): those holding ``word`` as a
    whole word ('cat' -> 'tiger cat', 'conv1' -> 'features.conv1'), then the most similar spellings."""
    candidates = list(candidates)
    holding: list[str] = []
    if word.strip():
        # The word on its own: no letter or digit right before or after it ('_', '.', ' ' separate words).
        whole_word = re.compile(rf"(?<![^\W_]){re.escape(word)}(?![^\W_])", re.IGNORECASE)
        holding = [c for c in candidates if c != word and whole_word.search(c)]
    spelled = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
    found = list(dict.fromkeys(holding + spelled))[:n]
    if not found:
        # A dotted path often fails only in its last part: suggest siblings of the deepest existing parent.
        parent = word.rsplit(".", 1)[0] if "." in word else ""
        found = [c for c in candidates if parent and c.startswith(parent + ".")][:n]
    return found


def suggestion(word: str, candidates: Iterable[str]) -> str:
    """' Did you mean: a, b?' or an empty string."""
    found = close_matches(word, candidates)
    return f" Did you mean: {', '.join(found)}?" if found else ""


def require_int(name: str, value: object, minimum: int) -> None:
    """Refuse a setting that is not an int (``True`` is not one) or is below ``minimum``, naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise SettingError(f"{name} must be an int >= {minimum}, got {value}")
