"""The metric registry drives these tests: every registered metric runs on a tiny random model (in train mode,
with batch norm and dropout) and returns the documented form, runs the model in eval mode only and leaves it as
found, and refuses wrong options through ds.evaluate with a MetricError; ds.evaluate and the CLI list what the
registry holds."""

from __future__ import annotations

import typing

import pytest
import torch
from torch import nn

import deepscope as ds
from deepscope.metrics import Curve, MetricError, Randomization

BATCH = 4


def tiny_model(seen_training: list[bool]) -> nn.Module:
    """Conv, batch norm, dropout and a 3-class head on 3 x 8 x 8 inputs, left in train mode. Every forward
    (also of a copy: the hook is a plain function, which a deep copy shares) records whether any submodule of
    the module that ran was in train mode."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    )

    def record(module: nn.Module, inputs: tuple[torch.Tensor]) -> None:
        seen_training.append(any(sub.training for sub in module.modules()))

    model.register_forward_pre_hook(record)
    return model.train()


def gradient(model, inputs, target):
    inputs = inputs.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(target(model(inputs)).sum(), inputs)
    return grad


def inputs_and_masks() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(BATCH, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    return x, masks


def arguments(info: ds.metrics.MetricInfo, masks: torch.Tensor) -> dict:
    """What the metric needs besides (model, x, maps, target), as its registry entry says."""
    needed = {}
    if info.needs_method:
        needed["method"] = gradient
    if info.needs_objects:
        needed["masks"] = masks
    return needed


METRICS = ds.metrics.metrics()
EVALUATES_OWN = ("method", "masks", "boxes")  # options that ds.evaluate sets itself


@pytest.mark.parametrize("info", METRICS, ids=[info.name for info in METRICS])
def test_every_metric_returns_its_documented_form_in_eval_mode(info, unchanged):
    seen_training: list[bool] = []
    model = tiny_model(seen_training)
    x, masks = inputs_and_masks()
    maps = torch.rand(BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(2))  # as the gradient
    with unchanged(model):
        result = info.function(model, x, maps, None, **arguments(info, masks))
    assert isinstance(result, typing.get_type_hints(info.function)["return"])
    scores = info.sample_scores(result)
    assert scores.shape == (BATCH,) and scores.is_floating_point() and bool(scores.isfinite().all())
    if isinstance(result, Curve):
        assert result.curve.shape == (BATCH, result.fractions.numel())
        assert result.fractions[0] == 0 and result.fractions[-1] <= 1
    if isinstance(result, Randomization):
        assert all(values.shape == (BATCH, len(result.layers)) for values in result.similarity.values())
    # the model ran (except for the pointing game, which reads the maps only), and never in train mode
    assert info.needs_objects or seen_training
    assert not any(seen_training)


@pytest.mark.parametrize("info", METRICS, ids=[info.name for info in METRICS])
def test_evaluate_refuses_wrong_options_of_every_metric(info):
    model = tiny_model([])
    x, masks = inputs_and_masks()
    methods = {"gradient": gradient}

    def run(settings: dict) -> None:
        ds.evaluate(model, x, methods, {info.name: settings}, masks=masks)

    with pytest.raises(MetricError, match=f"{info.name} has no option 'no_such_option'.*Its options: "):
        run({"no_such_option": 1})
    settable = [option for option in info.options if option not in EVALUATES_OWN]
    for option in settable:  # a near miss of a real option is named
        with pytest.raises(MetricError, match=f"Did you mean: {option}"):
            run({option + "s": 1})
    if "batch_size" in info.options:
        with pytest.raises(MetricError, match="batch_size must be a positive int"):
            run({"batch_size": 0})
    for option in EVALUATES_OWN:
        if option in info.options:
            with pytest.raises(MetricError, match=f"{option} is not a setting here"):
                run({option: None})


def test_evaluate_runs_the_whole_registry_by_default_in_eval_mode(unchanged):
    seen_training: list[bool] = []
    model = tiny_model(seen_training)
    x, masks = inputs_and_masks()
    with unchanged(model):
        with_objects = ds.evaluate(model, x, {"gradient": gradient}, masks=masks)
        without = ds.evaluate(model, x, {"gradient": gradient})
    assert list(with_objects.ranking.columns) == [info.name for info in METRICS] + ["mean_rank"]
    assert list(without.ranking.columns) == [info.name for info in METRICS if not info.needs_objects] + [
        "mean_rank"
    ]
    table = with_objects.table.set_index("metric")
    for info in METRICS:
        assert table.loc[info.name, "better"] == ("higher" if info.higher_is_better else "lower")
        assert table.loc[info.name, "score"] == info.score
    assert seen_training and not any(seen_training)


def test_registry_entries_describe_their_functions():
    assert {info.family for info in METRICS} == set(ds.metrics.FAMILIES)
    for info in METRICS:
        assert getattr(ds.metrics, info.name) is info.function
        assert ds.metrics.metric_info(info.name) is info
        assert info.reference and info.score
        assert info.function.__doc__ and ">>>" in info.function.__doc__
    assert [info.name for info in ds.metrics.metrics("sanity")] == ["randomization", "random_logit"]
    with pytest.raises(MetricError, match="unknown metric 'randomisation'.*Did you mean: randomization"):
        ds.metrics.metric_info("randomisation")
    with pytest.raises(MetricError, match="family must be one of"):
        ds.metrics.metrics("faithfulnes")


def test_register_refuses_inconsistent_entries():
    def no_method(model, x, attributions, target=None, *, seed: int = 0) -> torch.Tensor:
        return attributions.flatten(1).sum(1)

    common = {"score": "sum", "per_sample": None, "higher_is_better": True, "reference": "none"}
    before = ds.metrics.metrics()
    with pytest.raises(MetricError, match="registered twice"):
        ds.metrics.register("deletion", family="faithfulness", **common)(no_method)
    with pytest.raises(MetricError, match="needs_method=True but its options are"):
        ds.metrics.register("summed", family="sanity", needs_method=True, **common)(no_method)
    with pytest.raises(MetricError, match="needs_objects=True but its options are"):
        ds.metrics.register("summed", family="localization", needs_objects=True, **common)(no_method)
    with pytest.raises(MetricError, match="family must be one of"):
        ds.metrics.register("summed", family="speed", **common)
    assert ds.metrics.metrics() == before


def test_metrics_command_lists_the_registry():
    from typer.testing import CliRunner

    from deepscope.app import cli

    result = CliRunner().invoke(cli.app, ["metrics"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.output.splitlines() if not line.startswith(" ")]
    assert listed == [info.name for info in METRICS]
