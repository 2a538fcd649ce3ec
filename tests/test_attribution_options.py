"""Method options and specs: each method declares its options once (types, defaults, checks), the registry lists
them, ds.method(name, **options) makes one checked immutable value, and attribute / explain / the command line
take it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import deepscope as ds
from deepscope.attribution.base import MethodError, OptionInfo, parse_methods
from deepscope.errors import SettingError, SettingTypeError

NAMES = [info.name for info in ds.methods()]


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


def required_values(name: str) -> dict:
    """Values for the options without a default (prediction difference's reference images)."""
    return {
        option.name: torch.zeros(4, 3, 8, 8)
        for option in ds.attribution.method_info(name).options
        if option.required
    }


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_option_is_refused_naming_close_matches_and_the_methods_options(name):
    info = ds.attribution.method_info(name)
    declared = [option.name for option in info.options]
    misspelt = (declared[0][:-1] + "x") if declared else "steps"
    with pytest.raises(MethodError, match=f"{name} has no option '{misspelt}'") as refused:
        ds.method(name, **required_values(name), **{misspelt: 1})
    assert f"Its options: {', '.join(declared) or 'none'}" in str(refused.value)
    if declared:
        assert f"Did you mean: {declared[0]}" in str(refused.value)
    with pytest.raises(MethodError, match=f"has no option '{misspelt}'"):  # the class refuses it too
        info.method(tiny_net(), **required_values(name), **{misspelt: 1})


@pytest.mark.parametrize("name", NAMES)
def test_every_declared_option_is_accepted_with_its_default(name):
    info = ds.attribution.method_info(name)
    defaults = {option.name: option.default for option in info.options if not option.required}
    required = required_values(name)
    spec = ds.method(name, **required, **defaults)
    assert spec.changed().keys() == required.keys()  # the defaults are not counted as choices
    assert all(isinstance(option, OptionInfo) for option in info.options)
    built = spec.build(tiny_net())
    assert isinstance(built, info.method) and built.options is not spec.options


@pytest.mark.parametrize("name", NAMES)
def test_quick_options_are_accepted_for_small_and_large_inputs(name):
    info = ds.attribution.method_info(name)
    for size in ((16, 16), (224, 224)):
        quick = info.quick_options(size)
        assert set(quick) <= {option.name for option in info.options}
        ds.method(name, **required_values(name), **quick)


def test_options_are_checked_for_type_and_range_when_the_spec_is_made():
    with pytest.raises(SettingTypeError, match=r"option steps must be int, got '8' \(str\)"):
        ds.method("integrated_gradients", steps="8")
    with pytest.raises(SettingTypeError, match="option relu must be bool"):
        ds.method("grad_cam", relu=1)
    with pytest.raises(SettingTypeError, match=r"option window must be int \| tuple\[int, int\] \| None"):
        ds.method("occlusion", window=[4, 4])
    ds.method("rise", p=1)  # an int is a float
    with pytest.raises(MethodError, match="rise needs 0 < p <= 1, got 2"):
        ds.method("rise", p=2)
    with pytest.raises(MethodError, match="unknown integration rule 'simpson'"):
        ds.method("integrated_gradients", rule="simpson")
    with pytest.raises(MethodError, match="prediction_difference has no default for data: pass data="):
        ds.method("prediction_difference", window=4)


def test_the_steps_error_says_what_was_passed_and_what_is_allowed():
    with pytest.raises(MethodError) as refused:
        ds.method("integrated_gradients", steps=0)
    assert str(refused.value) == "steps must be an int >= 1, got steps=0"  # not the default rule's name
    with pytest.raises(MethodError, match=r"rule='riemann_trapezoid' needs steps >= 2 .*got steps=1"):
        ds.method("integrated_gradients", rule="riemann_trapezoid", steps=1)


def test_a_spec_is_one_immutable_value_callable_as_model_inputs_target():
    net, x = tiny_net(), torch.rand(2, 3, 8, 8)
    spec = ds.method("smoothgrad", samples=3, seed=1, batch_size=2)
    assert repr(spec) == "Method('smoothgrad', samples=3, seed=1, batch_size=2)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.options.samples = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.layer = "0"
    torch.testing.assert_close(
        spec(net, x, target=1), ds.attribute(net, x, "smoothgrad", 1, samples=3, seed=1)
    )
    torch.testing.assert_close(spec(net, x, 1), ds.attribute(net, x, spec, target=1))
    more = spec.replace(samples=5)
    assert (more.options.samples, more.options.seed, more.batch_size, spec.options.samples) == (5, 1, 2, 3)
    with pytest.raises(MethodError, match="has no option 'sample'"):
        spec.replace(sample=5)


def test_layers_are_settings_of_layer_methods_only():
    net, x = tiny_net(), torch.rand(2, 3, 8, 8)
    spec = ds.method("grad_cam", layer="0", relu=True)
    assert repr(spec) == "Method('grad_cam', relu=True, layer='0')"
    torch.testing.assert_close(spec(net, x), ds.attribute(net, x, "grad_cam", layer="0", relu=True))
    with pytest.raises(MethodError, match=r"saliency reads no layer, so it takes none \(got layer='0'\)"):
        ds.method("saliency", layer="0")
    with pytest.raises(MethodError, match="reads no layer"):
        ds.attribute(net, x, "saliency", layer="0")
    with pytest.raises(ds.errors.LayerNotFoundError, match="Closest"):
        ds.method("grad_cam", layer="00")(net, x)  # checked against the model when it runs


def test_call_settings_fill_in_a_spec_and_may_not_contradict_it():
    net, x = tiny_net(), torch.rand(2, 3, 8, 8)
    spec = ds.method("grad_cam", layer="1")
    torch.testing.assert_close(ds.attribute(net, x, spec, layer="1"), spec(net, x))
    with pytest.raises(MethodError, match=r"sets layer='1', the call layer='0'; say it once"):
        ds.attribute(net, x, spec, layer="0")
    with pytest.raises(MethodError, match=r"options relu given beside the spec .*spec.replace\(relu=...\)"):
        ds.attribute(net, x, spec, relu=True)
    explanation = ds.explain(net, x, ["saliency", "cam", spec], layer="1", batch_size=1)
    assert explanation.layers == {"cam": "1", "grad_cam": "1"}  # the call's layer: layer methods only
    with pytest.raises(MethodError, match="sets layer='1'"):
        ds.explain(net, x, ["saliency", spec], layer="0")
    with pytest.raises(SettingTypeError, match="a method must be a name or a ds.method"):
        ds.explain(net, x, ["saliency", 3])


def test_batch_size_errors_are_setting_errors():
    with pytest.raises(SettingError, match="batch_size must be >= 1, got 0"):
        ds.method("saliency", batch_size=0)
    with pytest.raises(SettingTypeError, match="batch_size must be an int"):
        ds.attribute(tiny_net(), torch.rand(1, 3, 8, 8), "saliency", batch_size=2.0)


def test_option_infos_parse_text_in_their_type():
    options = {option.name: option for option in ds.attribution.method_info("occlusion").options}
    assert options["window"].parse("8") == 8 and options["window"].parse("8,4") == (8, 4)
    assert options["window"].parse("none") is None and options["fill"].parse("0.5") == 0.5
    assert ds.attribution.method_info("rise").options[3].parse("false") is False
    with pytest.raises(SettingError, match="option window takes int | tuple"):
        options["window"].parse("big")
    data = ds.attribution.method_info("prediction_difference").options[0]
    assert (data.name, data.required, str(data)) == ("data", True, "data: Tensor")
    with pytest.raises(SettingError, match=r"give it from Python"):
        data.parse("images")


def test_command_line_options_become_specs():
    specs = parse_methods("grad_cam,cam,smoothgrad", ["relu=true", "smoothgrad.samples=4", "cam.upsample=no"])
    assert [repr(spec) for spec in specs] == [
        "Method('grad_cam', relu=True)",
        "Method('cam', upsample=False, relu=True)",
        "Method('smoothgrad', samples=4)",
    ]
    with pytest.raises(MethodError, match="none of saliency has an option 'steps'"):
        parse_methods("saliency", ["steps=3"])
    with pytest.raises(MethodError, match="'rise', which is not among the methods"):
        parse_methods("saliency", ["rise.masks=3"])
    with pytest.raises(MethodError, match="smoothgrad has no option 'sample'.*Did you mean: samples"):
        parse_methods("smoothgrad", ["smoothgrad.sample=3"])
    with pytest.raises(SettingError, match="KEY=VALUE"):
        parse_methods("smoothgrad", ["samples"])
