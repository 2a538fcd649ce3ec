"""``ds.evaluate``: run several heat-map methods through several metrics on the same samples and rank them.

Each method's maps are computed once (``batch_size`` at a time) and compared on one footing: per-pixel
relevance, i.e. pixel-space maps ``[B,C,H,W]`` are summed over channels (the convention of Bach et al. 2015 and
Samek et al. 2017), layer-space maps ``[B,1,H,W]`` are used as they are. The sanity and robustness metrics
recompute maps with the same reduction.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn

from deepscope.attribution.targets import TargetLike
from deepscope.metrics._common import (
    DEFAULT_BATCH_SIZE,
    Explainer,
    MetricError,
    check_batch_size,
    explain_chunks,
    make_explainer,
    pixel_maps,
)
from deepscope.metrics.faithfulness import (
    Curve,
    deletion,
    infidelity,
    insertion,
    pixel_flipping,
    region_perturbation,
)
from deepscope.metrics.localisation import pointing_game
from deepscope.metrics.robustness import max_sensitivity
from deepscope.metrics.sanity import Randomization, fixed_target, random_logit, randomization
from deepscope.zoo.datasets import is_map_style, load_dataset, split_item
from deepscope.zoo.images import convert_mode
from deepscope.zoo.vision_model import VisionModel, as_vision_model


@dataclass(frozen=True)
class MetricSpec:
    """How :func:`evaluate` runs one metric and reads one number per sample from its result."""

    name: str
    function: Callable[..., Any]
    score: str  # what the number is
    summary: Callable[[Any], torch.Tensor]
    higher_is_better: bool
    needs_method: bool = False
    needs_objects: bool = False


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("pixel_flipping", pixel_flipping, "AOPC, most relevant first", lambda r: r.aopc, True),
        MetricSpec(
            "region_perturbation", region_perturbation, "AOPC, most relevant first", lambda r: r.aopc, True
        ),
        MetricSpec("deletion", deletion, "AUC of the probability", lambda r: r.auc, False),
        MetricSpec("insertion", insertion, "AUC of the probability", lambda r: r.auc, True),
        MetricSpec("infidelity", infidelity, "infidelity", lambda r: r, False),
        MetricSpec("max_sensitivity", max_sensitivity, "relative max-sensitivity", lambda r: r, False, True),
        MetricSpec(
            "randomization",
            randomization,
            "Spearman to the trained maps, mean over layers",
            lambda r: r.score,
            False,
            True,
        ),
        MetricSpec("random_logit", random_logit, "SSIM to another class's map", lambda r: r, False, True),
        MetricSpec("pointing_game", pointing_game, "hit rate", lambda r: r, True, needs_objects=True),
    )
}


@dataclass
class Evaluation:
    """What :func:`evaluate` returns.

    ``table``: a tidy pandas DataFrame, one row per (method, metric): ``mean``, ``std`` (sample standard
    deviation), ``sem`` (standard error), ``n`` (samples with a score), ``better`` ('higher' or 'lower') and
    what ``score`` is. ``ranking``: methods x metrics ranks (1 = best) and their ``mean_rank``, best first.
    ``scores[(method, metric)]`` holds the per-sample numbers, ``results[(method, metric)]`` the metric's own
    result (a :class:`Curve`, a :class:`Randomization`, a tensor), ``maps[method]`` the maps evaluated.
    """

    table: Any
    ranking: Any
    scores: dict[tuple[str, str], torch.Tensor]
    results: dict[tuple[str, str], Any]
    maps: dict[str, torch.Tensor] = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)

    def curves(self, metric: str) -> dict[str, Curve]:
        """The curves of a curve metric, per method."""
        return {m: r for (m, name), r in self.results.items() if name == metric and isinstance(r, Curve)}

    def randomizations(self) -> dict[str, Randomization]:
        return {m: r for (m, name), r in self.results.items() if isinstance(r, Randomization)}


def _data(model: VisionModel, data: Any, limit: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Preprocessed inputs and, where every sample has one, labels."""
    labels = None
    if isinstance(data, (str, os.PathLike)):
        data = load_dataset(data, model.labels)
    if isinstance(data, torch.Tensor):
        x = data[:limit]
    elif isinstance(data, Mapping):
        x = model.preprocess(list(data.values())[:limit])
    elif is_map_style(data):
        count = len(data) if limit is None else min(limit, len(data))
        items = [split_item(data[index]) for index in range(count)]
        images = [image for image, _ in items]
        if images and all(isinstance(image, Image.Image) for image in images):
            x = model.preprocess([convert_mode(image, model.image_mode) for image in images])
        elif images and all(isinstance(image, torch.Tensor) for image in images):
            x = torch.stack(images)
        else:
            raise MetricError("dataset samples must all be PIL images or all [C,H,W] tensors")
        if all(label is not None for _, label in items):
            labels = torch.tensor([label for _, label in items])
    else:
        raise MetricError(
            "data must be a preprocessed [B,C,H,W] tensor, a dataset (e.g. ds.load_dataset('mnist5k:test')), a "
            f"list of PIL images or a dict of them; got {type(data).__name__}"
        )
    if x.ndim != 4 or x.shape[0] == 0:
        raise MetricError(f"no samples to evaluate (inputs of shape {list(x.shape)})")
    return x.to(model.device), labels


def _methods(methods: str | Sequence[str] | Mapping[str, Any]) -> dict[str, tuple[str | Explainer, dict]]:
    if isinstance(methods, str):
        methods = [name.strip() for name in methods.split(",") if name.strip()]
    if isinstance(methods, Mapping):
        chosen = {}
        for name, setting in methods.items():
            if callable(setting):
                chosen[name] = (setting, {})
            elif isinstance(setting, Mapping):
                chosen[name] = (
                    setting.get("method", name),
                    {k: v for k, v in setting.items() if k != "method"},
                )
            else:
                raise MetricError(f"method {name!r}: give a callable or a dict of settings, got {setting!r}")
    else:
        chosen = {name: (name, {}) for name in methods}
    if not chosen:
        raise MetricError("no heat-map method to evaluate")
    return chosen


def _metrics(metrics: str | Sequence[str] | Mapping[str, Mapping] | None, objects: bool) -> dict[str, dict]:
    if metrics is None:
        return {name: {} for name, spec in METRICS.items() if objects or not spec.needs_objects}
    if isinstance(metrics, str):
        metrics = [name.strip() for name in metrics.split(",") if name.strip()]
    chosen = (
        {name: dict(settings) for name, settings in metrics.items()}
        if isinstance(metrics, Mapping)
        else {name: {} for name in metrics}
    )
    for name in chosen:
        if name not in METRICS:
            from deepscope.errors import suggestion

            raise MetricError(
                f"unknown metric {name!r}.{suggestion(name, METRICS)} Known: {', '.join(METRICS)}"
            )
        if METRICS[name].needs_objects and not objects:
            raise MetricError(f"{name} needs the objects: pass masks= or boxes= to evaluate")
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
) -> Evaluation:
    """Evaluate heat-map methods with metrics on the same samples; return a tidy table and a ranking.

    ``data``: a preprocessed ``[B,C,H,W]`` batch, a data spec or dataset (``"mnist5k:test"``, a folder; see
    :func:`deepscope.load_dataset`), a list of PIL images or a dict of them (``ds.samples()``); ``limit`` keeps
    the first samples. A dataset's (or list's) images are read as image folders are, in the model's mode
    (grayscale replicated to RGB, alpha dropped); a dict's images must be in it already. ``methods``:
    registry names (list or 'a,b'), or a dict name -> settings for ``ds.attribute`` (``{"layer": ...}``,
    ``"method"`` to reuse one method under several names) or name -> callable ``(model, x, target) -> maps``.
    ``metrics``: names from ``deepscope.metrics.evaluate.METRICS`` (default: all, the pointing game only with
    ``masks``/``boxes``), or a dict name -> keyword settings of that metric function. ``target``: None (each
    sample's top-1 class, the usual choice), 'label' (the dataset's labels) or any target. ``absolute``: True, or
    the names of the methods whose maps are ranked by magnitude (absolute values, taken before the channel sum):
    the sensitivity maps (saliency, SmoothGrad, guided backprop), whose sign gives a direction of change rather
    than evidence for the class. Every metric sends its perturbed inputs through the model ``batch_size`` at a
    time under ``torch.inference_mode()``.

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
    check_batch_size(batch_size)
    x, labels = _data(vm, data, limit)
    if isinstance(target, str):
        if target != "label" or labels is None:
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
    fixed = fixed_target(vm, x, target)
    rows = torch.arange(x.shape[0], device=x.device)

    scores: dict[tuple[str, str], torch.Tensor] = {}
    results: dict[tuple[str, str], Any] = {}
    maps: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    for method_name, (method, config) in chosen_methods.items():
        explain = _per_pixel(make_explainer(method, batch_size, config), method_name in absolute_methods)
        start = time.perf_counter()
        maps[method_name] = explain_chunks(explain, vm, x, rows, fixed, x.shape[0], batch_size)
        seconds[f"{method_name}: maps"] = time.perf_counter() - start
        for metric_name, settings in chosen_metrics.items():
            spec = METRICS[metric_name]
            keywords = dict(settings)
            if spec.needs_objects:
                keywords.update(masks=masks, boxes=boxes)
            else:
                keywords.setdefault("batch_size", batch_size)
            if spec.needs_method:
                keywords["method"] = explain
            start = time.perf_counter()
            result = spec.function(vm, x, maps[method_name], fixed, **keywords)
            seconds[f"{method_name}: {metric_name}"] = time.perf_counter() - start
            results[method_name, metric_name] = result
            scores[method_name, metric_name] = spec.summary(result).detach().double().cpu()

    records = []
    for (method_name, metric_name), values in scores.items():
        spec = METRICS[metric_name]
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
                "better": "higher" if spec.higher_is_better else "lower",
                "score": spec.score,
            }
        )
    table = pd.DataFrame.from_records(records)
    wide = table.pivot(index="method", columns="metric", values="mean")[list(chosen_metrics)]
    ranking = pd.DataFrame(
        {
            name: wide[name].rank(ascending=not METRICS[name].higher_is_better, method="min")
            for name in chosen_metrics
        }
    )
    ranking["mean_rank"] = ranking.mean(axis=1)
    ranking = ranking.sort_values("mean_rank").reindex(columns=[*chosen_metrics, "mean_rank"])
    ranking.columns.name = None
    return Evaluation(table, ranking, scores, results, maps, seconds)
