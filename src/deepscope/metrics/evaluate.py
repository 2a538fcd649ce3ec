"""``ds.evaluate``: run several heat-map methods through several metrics on the same samples and rank them.

Each method's maps are computed once (``batch_size`` at a time) and compared on one footing: per-pixel
relevance, i.e. pixel-space maps ``[B,C,H,W]`` are summed over channels (the convention of Bach et al. 2015 and
Samek et al. 2017), layer-space maps ``[B,1,H,W]`` are used as they are. The sanity and robustness metrics
recompute maps with the same reduction.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn

from deepscope.attribution.base import Method
from deepscope.attribution.targets import TargetLike
from deepscope.errors import SettingTypeError, suggestion
from deepscope.metrics._common import (
    DEFAULT_BATCH_SIZE,
    Explainer,
    MetricError,
    check_count,
    explain_chunks,
    make_explainer,
    pixel_maps,
)
from deepscope.metrics.faithfulness import Curve
from deepscope.metrics.registry import MetricInfo, metric_info
from deepscope.metrics.registry import metrics as registered_metrics
from deepscope.metrics.sanity import Randomization, fixed_target
from deepscope.workspace.store import SkippedSample
from deepscope.zoo.datasets import dataset_name, fetch_item, is_map_style, load_dataset, read_item, split_item
from deepscope.zoo.state import evaluation_mode
from deepscope.zoo.vision_model import VisionModel, as_vision_model

# Options of a metric that evaluate() sets itself: the maps function of the method evaluated, and the objects.
SET_BY_EVALUATE = {
    "method": "evaluate passes the method evaluated",
    "masks": "pass masks= to evaluate",
    "boxes": "pass boxes= to evaluate",
}


@dataclass
class Evaluation:
    """What :func:`evaluate` returns.

    ``table``: a tidy pandas DataFrame, one row per (method, metric): ``mean``, ``std`` (sample standard
    deviation), ``sem`` (standard error), ``n`` (samples with a score), ``better`` ('higher' or 'lower') and
    what ``score`` is. ``ranking``: methods x metrics ranks (1 = best) and their ``mean_rank``, best first.
    ``scores[(method, metric)]`` holds the per-sample numbers, ``results[(method, metric)]`` the metric's own
    result (a :class:`Curve`, a :class:`Randomization`, a tensor), ``maps[method]`` the maps evaluated.
    ``skipped``: the dataset's samples that could not be read (a corrupt file, NaN values), left out; the rows
    of ``maps`` and ``scores`` are the samples that were read, in order.
    """

    table: Any
    ranking: Any
    scores: dict[tuple[str, str], torch.Tensor]
    results: dict[tuple[str, str], Any]
    maps: dict[str, torch.Tensor] = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[SkippedSample] = field(default_factory=list)

    def curves(self, metric: str) -> dict[str, Curve]:
        """The curves of a curve metric, per method."""
        return {m: r for (m, name), r in self.results.items() if name == metric and isinstance(r, Curve)}

    def randomizations(self) -> dict[str, Randomization]:
        return {m: r for (m, name), r in self.results.items() if isinstance(r, Randomization)}


def _data(
    model: VisionModel, data: Any, limit: int | None
) -> tuple[torch.Tensor, torch.Tensor | None, list[SkippedSample]]:
    """Preprocessed inputs, labels where every sample has one, and the dataset's samples that could not be read
    (skipped and reported, as the scan does)."""
    skipped: list[SkippedSample] = []
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise SettingTypeError(f"limit must be None or an int, got {limit!r}")
    if limit is not None and limit < 0:
        raise MetricError(f"limit must be >= 0, got {limit}")
    labels = None
    if isinstance(data, (str, os.PathLike)):
        data = load_dataset(data, model.labels)
    if isinstance(data, torch.Tensor):
        if data.ndim != 4:
            raise MetricError(f"a tensor of inputs must be a [B,C,H,W] batch, got shape {list(data.shape)}")
        _check_not_empty(data.shape[0], limit)
        x = data[:limit]
    elif isinstance(data, Mapping):
        _check_not_empty(len(data), limit)
        names, images = zip(*list(data.items())[:limit], strict=True)
        _check_kinds(images, [repr(name) for name in names], tensors_allowed=False)
        x = model.preprocess(list(images))
    elif is_map_style(data):
        _check_not_empty(len(data), limit)
        count = len(data) if limit is None else min(limit, len(data))
        fetched = {index: fetch_item(data, index) for index in range(count)}
        readable = [index for index, item in fetched.items() if item.error is None]
        skipped += [
            SkippedSample(i, _source(data, i), fetched[i].error) for i in fetched if i not in readable
        ]
        # one kind of sample (images or model inputs) before any is read: mixed kinds are the dataset's error
        kinds = [split_item(fetched[index].item)[0] for index in readable]
        as_inputs = bool(readable) and _check_kinds(
            kinds, [str(index) for index in readable], tensors_allowed=True
        )
        read = []
        for index in readable:
            item = read_item(fetched[index].item, model.image_mode, f"sample {index} of {dataset_name(data)}")
            if item.kind == "skipped":
                skipped.append(SkippedSample(index, _source(data, index), item.error))
            else:
                read.append(item)
        skipped.sort(key=lambda sample: sample.index)
        if not read:
            raise MetricError(
                f"no samples to evaluate: none of the {count} samples could be read ({skipped[0].error})"
            )
        images = [item.value for item in read]
        x = torch.stack(images) if as_inputs else model.preprocess(images)
        if all(item.label is not None for item in read):
            labels = torch.tensor([item.label for item in read])
    else:
        raise SettingTypeError(
            "data must be a preprocessed [B,C,H,W] tensor, a dataset (e.g. ds.load_dataset('mnist5k:test')), a "
            f"list of PIL images or a dict of them; got {type(data).__name__}"
        )
    if skipped:
        warnings.warn(
            f"{len(skipped)} of the samples could not be read and are left out (Evaluation.skipped lists them): "
            f"{skipped[0].source}: {skipped[0].error}",
            RuntimeWarning,
            stacklevel=3,
        )
    return x.to(model.device), labels, skipped


def _source(data: Any, index: int) -> str:
    source = getattr(data, "source", None)
    return source(index) if callable(source) else f"{dataset_name(data)}[{index}]"


def _check_not_empty(size: int, limit: int | None) -> None:
    if size == 0:
        raise MetricError("no samples to evaluate: the data is empty")
    if limit == 0:
        raise MetricError(f"no samples to evaluate: limit=0 keeps none of the {size} samples")


def _check_kinds(images: Sequence[Any], names: Sequence[str], tensors_allowed: bool) -> bool:
    """Whether the samples are model inputs (tensors ``[C,H,W]`` of one shape, where ``tensors_allowed``) rather
    than PIL images; samples of mixed kinds are refused with the list of which sample is which kind."""
    kinds: dict[str, list[str]] = {}
    for name, image in zip(names, images, strict=True):
        if isinstance(image, Image.Image):
            kind = "PIL images"
        elif isinstance(image, torch.Tensor):
            kind = f"tensors of shape {list(image.shape)}"
        else:
            kind = type(image).__name__
        kinds.setdefault(kind, []).append(name)
    if list(kinds) == ["PIL images"]:
        return False
    inputs = isinstance(images[0], torch.Tensor) and images[0].ndim == 3
    if tensors_allowed and len(kinds) == 1 and inputs:
        return True
    wanted = "all PIL images or all [C,H,W] tensors of one shape" if tensors_allowed else "all PIL images"
    found = "; ".join(f"{kind}: {_first_names(kind_names)}" for kind, kind_names in kinds.items())
    raise MetricError(f"samples must be {wanted}; found {found}")


def _first_names(names: list[str], shown: int = 8) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{'sample' if len(names) == 1 else 'samples'} {', '.join(names[:shown])}{more}"


def _methods(
    methods: str | Sequence[str | Method] | Mapping[str, Any],
) -> dict[str, str | Method | Explainer]:
    """Label -> what recomputes the maps: names ('a,b' or a list), ``ds.method(...)`` specs (labelled by their
    names), or a dict label -> name, spec or callable ``(model, x, target) -> maps``."""
    if isinstance(methods, str):
        methods = [name.strip() for name in methods.split(",") if name.strip()]
    if isinstance(methods, Mapping):
        chosen = dict(methods)
        for label, given in chosen.items():
            if not isinstance(given, (str, Method)) and not callable(given):
                raise SettingTypeError(
                    f"method {label!r}: give a registry name, a ds.method(...) spec or a callable "
                    f"(model, x, target) -> maps, got {given!r}"
                )
    else:
        if isinstance(methods, Method):
            methods = [methods]
        chosen = {}
        for given in methods:
            if not isinstance(given, (str, Method)):
                raise SettingTypeError(
                    f"a list of methods holds names and ds.method(...) specs; give a callable a label in a dict "
                    f"(methods={{'mine': function}}), got {given!r}"
                )
            label = given if isinstance(given, str) else given.name
            if label in chosen:
                raise MetricError(
                    f"{label} is listed twice; to compare two settings of one method, label them in a dict: "
                    f"methods={{'{label}_a': ds.method(...), '{label}_b': ds.method(...)}}"
                )
            chosen[label] = given
    if not chosen:
        raise MetricError("no heat-map method to evaluate")
    return chosen


def _metrics(
    requested: str | Sequence[str] | Mapping[str, Mapping] | None, objects: bool
) -> dict[str, tuple[MetricInfo, dict]]:
    """The registry entry and the settings of each metric to run, checked against the metric's options."""
    if requested is None:
        return {info.name: (info, {}) for info in registered_metrics() if objects or not info.needs_objects}
    if isinstance(requested, str):
        requested = [name.strip() for name in requested.split(",") if name.strip()]
    if not isinstance(requested, Mapping):
        requested = {name: {} for name in requested}
    chosen = {}
    for name, settings in requested.items():
        info = metric_info(name)
        if not isinstance(settings, Mapping):
            raise SettingTypeError(f"the settings of {name} must be a dict of its options, got {settings!r}")
        if info.needs_objects and not objects:
            raise MetricError(f"{name} needs the objects: pass masks= or boxes= to evaluate")
        for option in settings:
            if option in SET_BY_EVALUATE and option in info.options:
                raise MetricError(f"{name}: {option} is not a setting here; {SET_BY_EVALUATE[option]}")
            if option not in info.options:
                known = [o for o in info.options if o not in SET_BY_EVALUATE]
                raise MetricError(
                    f"{name} has no option {option!r}.{suggestion(option, known)} Its options: {', '.join(known)}"
                )
        chosen[name] = (info, dict(settings))
    if not chosen:
        raise MetricError("no metric to evaluate")
    return chosen


def _per_pixel(explain: Explainer, absolute: bool) -> Explainer:
    def explain_per_pixel(model: VisionModel, inputs: torch.Tensor, target: Any) -> torch.Tensor:
        maps = explain(model, inputs, target)
        if absolute:
            maps = maps.abs()
        if maps.ndim == 4 and maps.shape[1] > 1:
            return pixel_maps(maps)
        return maps

    return explain_per_pixel


def evaluate(
    model: VisionModel | nn.Module,
    data: Any,
    methods: str | Sequence[str] | Mapping[str, Any],
    metrics: str | Sequence[str] | Mapping[str, Mapping[str, Any]] | None = None,
    *,
    target: TargetLike | str = None,
    masks: torch.Tensor | None = None,
    boxes: Any = None,
    limit: int | None = None,
    absolute: bool | Sequence[str] = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> Evaluation:
    """Evaluate heat-map methods with metrics on the same samples; return a tidy table and a ranking.

    ``data``: a preprocessed ``[B,C,H,W]`` batch, a data spec or dataset (``"mnist5k:test"``, a folder; see
    :func:`deepscope.load_dataset`), a list of PIL images or a dict of them (``ds.samples()``); ``limit`` keeps
    the first samples. A dataset's (or list's) images are read as image folders are, in the model's mode
    (grayscale replicated to RGB, alpha dropped); a dict's images must be in it already. ``methods``:
    registry names and ``ds.method(name, **options)`` specs (a list, or 'a,b'), or a dict label -> name, spec or
    callable ``(model, x, target) -> maps`` (to compare two settings of one method, or your own method).
    ``metrics``: names from the registry, ``ds.metrics.metrics()`` (default: all, those that need the objects
    only with ``masks``/``boxes``), or a dict name -> settings, the metric function's keyword options (an
    unknown option is refused; ``method``, ``masks`` and ``boxes`` are evaluate's own). ``target``: None (each
    sample's top-1 class, the usual choice), 'label' (the dataset's labels) or any target. ``absolute``: True, or
    the names of the methods whose maps are ranked by magnitude (absolute values, taken before the channel sum):
    the sensitivity maps (saliency, SmoothGrad, guided backprop), whose sign gives a direction of change rather
    than evidence for the class. ``progress`` shows a progress bar of the maps and metrics. Every metric sends its perturbed inputs through the model ``batch_size`` at a
    time under ``torch.inference_mode()``. The model runs in eval mode throughout (each submodule's own flag is
    restored afterwards).

    >>> import deepscope as ds, torch
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> def gradient(model, x, target):
    ...     x = x.clone().requires_grad_()
    ...     return torch.autograd.grad(target(model(x)).sum(), x)[0]
    >>> result = ds.evaluate(vm, ds.datasets.mnist5k("test"), {"gradient": gradient, "ink": lambda m, x, t: x},
    ...                      ["deletion", "insertion"], limit=8)
    >>> sorted(result.table.columns)
    ['better', 'mean', 'method', 'metric', 'n', 'score', 'sem', 'std']
    >>> list(result.ranking.columns)
    ['deletion', 'insertion', 'mean_rank']
    """
    import pandas as pd

    vm = as_vision_model(model)
    check_count("batch_size", batch_size)
    x, labels, skipped = _data(vm, data, limit)
    if isinstance(target, str):
        if target != "label":
            raise MetricError(f"target must be None, 'label' or a target (see ds.targets), got {target!r}")
        if labels is None:
            raise MetricError("target='label' needs a dataset with labels")
        target = labels[: x.shape[0]]
    chosen_methods = _methods(methods)
    if isinstance(absolute, bool):
        absolute_methods = set(chosen_methods) if absolute else set()
    else:
        absolute_methods = {absolute} if isinstance(absolute, str) else set(absolute)
        unknown = absolute_methods - set(chosen_methods)
        if unknown:
            raise MetricError(f"absolute names methods that are not evaluated: {', '.join(sorted(unknown))}")
    objects = masks is not None or boxes is not None
    chosen_metrics = _metrics(metrics, objects)

    scores: dict[tuple[str, str], torch.Tensor] = {}
    results: dict[tuple[str, str], Any] = {}
    maps: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    from tqdm.auto import tqdm

    # One step per method's maps and per (method, metric) score.
    bar = tqdm(
        total=len(chosen_methods) * (len(chosen_metrics) + 1),
        disable=not progress,
        unit="step",
        desc="evaluate",
    )
    # The maps are computed, and the metrics run, in eval mode (the metrics enter it themselves too).
    with evaluation_mode(vm.module), bar:
        fixed = fixed_target(vm, x, target)
        rows = torch.arange(x.shape[0], device=x.device)
        for method_name, method in chosen_methods.items():
            explain = _per_pixel(make_explainer(method, batch_size), method_name in absolute_methods)
            bar.set_postfix_str(f"{method_name}: maps")
            start = time.perf_counter()
            maps[method_name] = explain_chunks(explain, vm, x, rows, fixed, x.shape[0], batch_size)
            seconds[f"{method_name}: maps"] = time.perf_counter() - start
            bar.update()
            for metric_name, (info, settings) in chosen_metrics.items():
                bar.set_postfix_str(f"{method_name}: {metric_name}")
                keywords = dict(settings)
                if info.needs_objects:
                    keywords.update(masks=masks, boxes=boxes)
                if "batch_size" in info.options:
                    keywords.setdefault("batch_size", batch_size)
                if info.needs_method:
                    keywords["method"] = explain
                start = time.perf_counter()
                result = info.function(vm, x, maps[method_name], fixed, **keywords)
                seconds[f"{method_name}: {metric_name}"] = time.perf_counter() - start
                results[method_name, metric_name] = result
                scores[method_name, metric_name] = info.sample_scores(result).detach().double().cpu()
                bar.update()

    records = []
    for (method_name, metric_name), values in scores.items():
        info = chosen_metrics[metric_name][0]
        valid = values[~values.isnan()]
        count = valid.numel()
        std = valid.std().item() if count > 1 else float("nan")
        records.append(
            {
                "method": method_name,
                "metric": metric_name,
                "mean": valid.mean().item() if count else float("nan"),
                "std": std,
                "sem": std / count**0.5 if count > 1 else float("nan"),
                "n": count,
                "better": "higher" if info.higher_is_better else "lower",
                "score": info.score,
            }
        )
    table = pd.DataFrame.from_records(records)
    wide = table.pivot(index="method", columns="metric", values="mean")[list(chosen_metrics)]
    ranking = pd.DataFrame(
        {
            name: wide[name].rank(ascending=not info.higher_is_better, method="min")
            for name, (info, _) in chosen_metrics.items()
        }
    )
    ranking["mean_rank"] = ranking.mean(axis=1)
    ranking = ranking.sort_values("mean_rank").reindex(columns=[*chosen_metrics, "mean_rank"])
    ranking.columns.name = None
    return Evaluation(table, ranking, scores, results, maps, seconds, skipped)
