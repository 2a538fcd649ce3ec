"""The metric registry, which ``ds.evaluate``, ``deepscope evaluate``, the demo and the tests iterate over.

A metric is one function in its family's module, registered by name with what ``ds.evaluate`` needs to run it
and rank methods by it::

    @register("deletion", family="faithfulness", score="AUC of the probability", per_sample="auc",
              higher_is_better=False, reference="Petsiuk et al. 2018, RISE")
    def deletion(model, x, attributions, target=None, *, per_step=None, ...) -> Curve: ...

Every metric takes ``(model, x, attributions, target, *, options)``; its options are its keyword-only
parameters. The package's ``__init__`` imports every family module, so the registry is complete as soon as
any part of ``deepscope.metrics`` is imported.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from deepscope.errors import suggestion
from deepscope.metrics._common import MetricError

FAMILIES = ("faithfulness", "robustness", "sanity", "localization")
"""The metric families, in the order listings show them: the ``family`` of every registered metric is one."""


@dataclass(frozen=True)
class MetricInfo:
    """One registry entry: how a metric is run and how one number per sample is read from its result."""

    name: str
    family: str  # one of FAMILIES
    score: str  # what the per-sample number is, e.g. "AOPC, most relevant first"
    per_sample: str | None  # the result's attribute holding the [B] numbers; None: the result is that tensor
    higher_is_better: bool
    reference: str  # paper and variant
    needs_method: bool  # recomputes maps: takes method= (a registry name or (model, x, target) -> maps)
    needs_objects: bool  # takes the objects as masks= or boxes=
    options: tuple[str, ...]  # its keyword-only parameters (evaluate() sets method, masks and boxes)
    function: Callable[..., Any]

    def sample_scores(self, result: Any) -> torch.Tensor:
        """The ``[B]`` numbers ``ds.evaluate`` averages and ranks by, read from the metric's result.

        >>> import torch, deepscope as ds
        >>> curve = ds.metrics.Curve(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([0.0, 1.0]), "morf")
        >>> ds.metrics.metric_info("deletion").sample_scores(curve)  # the area under each curve
        tensor([0.5000, 1.0000])
        """
        return result if self.per_sample is None else getattr(result, self.per_sample)


_REGISTRY: dict[str, MetricInfo] = {}


def register(
    name: str,
    *,
    family: str,
    score: str,
    per_sample: str | None,
    higher_is_better: bool,
    reference: str,
    needs_method: bool = False,
    needs_objects: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Function decorator adding a metric to the registry under ``name``; the function is returned unchanged.

    ``needs_method`` and ``needs_objects`` must match the function's keyword-only ``method`` and
    ``masks``/``boxes`` parameters, which :func:`deepscope.metrics.evaluate` fills in itself.

    >>> import deepscope as ds
    >>> info = ds.metrics.metric_info("pointing_game")
    >>> info.function is ds.metrics.pointing_game, info.needs_objects, info.options
    (True, True, ('masks', 'boxes', 'tolerance'))
    """
    if family not in FAMILIES:
        raise MetricError(f"family must be one of {FAMILIES}, got {family!r}")

    def add(function: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise MetricError(f"metric {name!r} is registered twice")
        parameters = inspect.signature(function).parameters
        options = tuple(p.name for p in parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY)
        if needs_method != ("method" in options):
            raise MetricError(f"metric {name!r}: needs_method={needs_method} but its options are {options}")
        if needs_objects != ({"masks", "boxes"} <= set(options)):
            raise MetricError(f"metric {name!r}: needs_objects={needs_objects} but its options are {options}")
        _REGISTRY[name] = MetricInfo(
            name,
            family,
            score,
            per_sample,
            higher_is_better,
            reference,
            needs_method,
            needs_objects,
            options,
            function,
        )
        return function

    return add


def metrics(family: str | None = None) -> list[MetricInfo]:
    """The registered heat-map metrics (optionally of one family): by family in ``FAMILIES`` order, then in
    registration order.

    >>> import deepscope as ds
    >>> [info.name for info in ds.metrics.metrics("faithfulness")]
    ['pixel_flipping', 'deletion', 'insertion', 'region_perturbation', 'infidelity']
    """
    if family is not None and family not in FAMILIES:
        raise MetricError(f"family must be one of {FAMILIES}, got {family!r}")
    found = [info for info in _REGISTRY.values() if family is None or info.family == family]
    return sorted(found, key=lambda info: FAMILIES.index(info.family))


def metric_info(name: str) -> MetricInfo:
    """The registry entry for ``name``; an unknown name lists the closest ones.

    >>> import deepscope as ds
    >>> info = ds.metrics.metric_info("deletion")
    >>> info.score, info.higher_is_better
    ('AUC of the probability', False)
    """
    if name not in _REGISTRY:
        raise MetricError(
            f"unknown metric {name!r}.{suggestion(name, _REGISTRY)} Known: {', '.join(_REGISTRY)}"
        )
    return _REGISTRY[name]
