"""Decoder inversion (ds.units.train_inverter): against a mean-image baseline and the optimization-based inversion,
one forward pass per image, a self-describing file, the model and torch's generator left as found."""

from __future__ import annotations

import pytest
import torch

import deepscope as ds
from deepscope.errors import ImageError, SettingError, SettingTypeError, WeightsNotFoundError
from deepscope.units.inversion import relative_image_error
from deepscope.units.inverter import FORMAT, VERSION

# The decoder, trained for about a second, stays within this factor of the optimization's relative image error
# (500 steps per image) on LeNet-5's conv1 (measured: 1.5).
FACTOR_TO_OPTIMIZATION = 2.0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def training_digits():
    return ds.datasets.mnist5k("train").subset(range(1000))


@pytest.fixture(scope="module")
def conv1_inverter(lenet, training_digits):
    return ds.units.train_inverter(
        lenet, training_digits, "conv1", epochs=3, batch_size=16, lr=5e-3, width=8, seed=0
    )


@pytest.fixture(scope="module")
def held_out(lenet):
    return lenet.preprocess(ds.datasets.mnist5k("test").images[::125])  # 8 digits of several classes


def test_decoder_beats_the_mean_image_and_nears_the_optimization_on_lenet_conv1(
    lenet, training_digits, conv1_inverter, held_out
):
    decoded = conv1_inverter(held_out)
    assert decoded.shape == held_out.shape and decoded.min() >= 0 and decoded.max() <= 1
    decoder_error = relative_image_error(lenet, decoded, held_out).mean()
    mean_image = lenet.pixels(training_digits.images).mean(0, keepdim=True).expand_as(held_out)
    baseline_error = relative_image_error(lenet, mean_image, held_out).mean()
    optimized = ds.units.invert(lenet, held_out, "conv1", alpha_weight=0.0, schedule=[(300, 1.0), (200, 0.1)])
    optimization_error = optimized.image_error.mean()
    assert decoder_error < 0.5 * baseline_error, (decoder_error, baseline_error)
    assert decoder_error < FACTOR_TO_OPTIMIZATION * optimization_error, (decoder_error, optimization_error)
    assert conv1_inverter.losses[-1] < conv1_inverter.losses[0]


def test_an_inversion_is_one_forward_of_the_model_and_one_of_the_decoder(lenet, conv1_inverter, held_out):
    calls = {"model": 0, "decoder": 0}
    model_hook = lenet.module.register_forward_hook(lambda *_: calls.__setitem__("model", calls["model"] + 1))
    decoder_hook = conv1_inverter.decoder.register_forward_hook(
        lambda *_: calls.__setitem__("decoder", calls["decoder"] + 1)
    )
    try:
        conv1_inverter(held_out)
    finally:
        model_hook.remove()
        decoder_hook.remove()
    assert calls == {"model": 1, "decoder": 1}


def test_training_leaves_the_model_and_the_global_generator_as_found(lenet, unchanged):
    digits = ds.datasets.mnist5k("train").subset(range(64))
    state = torch.random.get_rng_state()
    lenet.module.train()
    try:
        with unchanged(lenet.module):
            first = ds.units.train_inverter(lenet, digits, "conv2", epochs=1, width=8, seed=3)
    finally:
        lenet.module.eval()
    assert torch.equal(torch.random.get_rng_state(), state)
    again = ds.units.train_inverter(lenet, digits, "conv2", epochs=1, width=8, seed=3)
    assert first.losses == again.losses  # seeded: the same decoder, trained the same way


def test_a_layer_of_vectors_is_decoded_from_a_small_map(lenet):
    digits = ds.datasets.mnist5k("train").subset(range(64))
    inverter = ds.units.train_inverter(lenet, digits, "fc1", epochs=1, width=8)
    assert inverter.decoder.feature_shape == (120,)
    assert inverter(lenet.preprocess(digits.images[:3])).shape == (3, 1, 28, 28)


def test_an_inverter_saves_and_loads_with_its_format_and_checks(tmp_path, lenet, conv1_inverter, held_out):
    path = conv1_inverter.save(tmp_path / "inverters" / "conv1.pt")
    saved = torch.load(path, weights_only=True)
    assert (saved["format"], saved["version"], saved["layer"], saved["model"]) == (
        FORMAT,
        VERSION,
        "conv1",
        "lenet_mnist",
    )
    assert saved["feature_shape"] == [6, 28, 28] and saved["image_shape"] == [1, 28, 28]
    loaded = ds.units.load_inverter(path, lenet)
    torch.testing.assert_close(loaded(held_out), conv1_inverter(held_out))
    assert loaded.losses == conv1_inverter.losses and loaded.settings == conv1_inverter.settings

    retrained = lenet.with_module(ds.zoo.lenet.lenet5().eval())  # the same layout, other weights
    with pytest.raises(SettingError, match="other weights"):
        ds.units.load_inverter(path, retrained)
    assert ds.units.load_inverter(path, retrained, strict=False).layer == "conv1"
    newer = tmp_path / "newer.pt"
    torch.save({**saved, "version": VERSION + 1}, newer)
    with pytest.raises(SettingError, match="format version 2"):
        ds.units.load_inverter(newer, lenet)
    text = tmp_path / "notes.pt"
    text.write_text("not an archive")
    with pytest.raises(SettingError, match="not a deepscope inverter file"):
        ds.units.load_inverter(text, lenet)
    with pytest.raises(WeightsNotFoundError, match="no inverter file"):
        ds.units.load_inverter(tmp_path / "missing.pt", lenet)
    other = tmp_path / "other.pt"
    torch.save({**saved, "feature_shape": [6, 14, 14]}, other)
    with pytest.raises(SettingError, match=r"decodes \[6, 14, 14\] features"):
        ds.units.load_inverter(other, lenet)


def test_bad_input_is_named(lenet, conv1_inverter, unchanged):
    digits = ds.datasets.mnist5k("train").subset(range(8))
    with unchanged(lenet.module):
        with pytest.raises(SettingError, match="epochs must be an int >= 1, got 0"):
            ds.units.train_inverter(lenet, digits, "conv1", epochs=0)
        with pytest.raises(SettingTypeError, match="width must be an int, got float"):
            ds.units.train_inverter(lenet, digits, "conv1", width=8.0)
        with pytest.raises(SettingError, match="lr must be > 0, got 0"):
            ds.units.train_inverter(lenet, digits, "conv1", lr=0)
        with pytest.raises(SettingError, match="one layer"):
            ds.units.train_inverter(lenet, digits, "conv*")
        with pytest.raises(ImageError, match="makes \\[1, 28, 28\\] images"):
            conv1_inverter(torch.zeros(1, 1, 32, 32))


def test_comparison_with_the_optimization_and_its_picture(lenet, training_digits, conv1_inverter, held_out):
    from deepscope.render.units import inversion_comparison

    fc1 = ds.units.train_inverter(lenet, training_digits.subset(range(200)), "fc1", epochs=1, width=8)
    x = held_out[:3]
    found = ds.units.compare_inversions(lenet, x, [conv1_inverter, fc1], schedule=[(20, 1.0)])
    assert found.layers == ["conv1", "fc1"]
    assert found.decoded.shape == found.optimized.shape == (2, 3, 1, 28, 28)
    torch.testing.assert_close(found.decoded[0], conv1_inverter(x))
    torch.testing.assert_close(found.decoder_error[1], relative_image_error(lenet, fc1(x), x))
    assert (found.decoder_seconds < found.optimization_seconds).all()  # one pass against 20 steps
    picture = inversion_comparison(found, tile_size=28)
    assert picture.height >= 5 * 29 + 1  # the inputs, then two rows per layer
    with pytest.raises(SettingError, match="no inverters"):
        ds.units.compare_inversions(lenet, x, [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_an_inverter_trains_and_inverts_on_cuda(tmp_path, lenet, training_digits, held_out):
    import copy

    gpu = lenet.with_module(copy.deepcopy(lenet.module).cuda())
    inverter = ds.units.train_inverter(
        gpu, training_digits, "conv1", epochs=3, batch_size=16, lr=5e-3, width=8
    )
    decoded = inverter(held_out.cuda())
    assert decoded.device.type == "cuda"
    optimized = ds.units.invert(lenet, held_out, "conv1", alpha_weight=0.0, schedule=[(300, 1.0), (200, 0.1)])
    error = relative_image_error(gpu, decoded, held_out.cuda()).mean().cpu()
    assert error < FACTOR_TO_OPTIMIZATION * optimized.image_error.mean()
    loaded = ds.units.load_inverter(inverter.save(tmp_path / "conv1.pt"), gpu)
    torch.testing.assert_close(loaded(held_out.cuda()), decoded)
