"""deepscope.units: each display checked against brute force, a reference library, or a property."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

import deepscope as ds
from deepscope.errors import DeepscopeError, ImageError, LayerNotFoundError, UnitError
from deepscope.units import transforms as T
from deepscope.units.clustering import kmeans
from deepscope.units.objectives import Context
from deepscope.units.parameterizations import FourierImage
from deepscope.units.regularizers import Yosinski, gaussian_blur

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return ds.datasets.mnist5k()


@pytest.fixture(scope="module")
def digit_inputs(lenet, digits):
    return lenet.preprocess(digits.images)


def brute_force_top(model, x, layer, k, batch_size):
    """Every activation of the dataset kept in memory, then a full stable sort per unit."""
    outputs = []
    with torch.no_grad(), ds.capture(model, layer) as record:
        for start in range(0, len(x), batch_size):
            record.clear()
            model(x[start : start + batch_size])
            outputs.append(record.activations[layer])
    activation = torch.cat(outputs)
    if activation.ndim == 4:
        values, positions = activation.flatten(2).max(2)
    else:
        values, positions = activation, torch.full(activation.shape, -1)
    order = torch.sort(values, dim=0, descending=True, stable=True).indices[:k]  # ties: lower index first
    return values.gather(0, order).T, order.T, positions.gather(0, order).T, activation


# top_patches -----------------------------------------------------------------------------------------------


def test_top_patches_equal_brute_force_on_mnist(lenet, digits, digit_inputs, unchanged):
    with unchanged(lenet.module):
        found = ds.units.top_patches(lenet, digits, ["conv2", "fc1"], k=9, batch_size=500)
    for layer in ("conv2", "fc1"):
        values, samples, flat, _ = brute_force_top(lenet, digit_inputs, layer, 9, 500)
        hits = found[layer]
        assert torch.equal(hits.sample_indices, samples), layer
        assert torch.equal(hits.values, values), layer
        assert hits.seen == len(digits)
    conv = found["conv2"]
    _, _, flat, _ = brute_force_top(lenet, digit_inputs, "conv2", 9, 500)
    assert torch.equal(conv.positions[..., 0] * 10 + conv.positions[..., 1], flat)
    assert (found["fc1"].positions == -1).all()
    assert (found["fc1"].boxes == torch.tensor([0, 0, 28, 28])).all()


def test_top_patch_crops_are_the_receptive_field(lenet, digits):
    hits = ds.units.top_patches(lenet, digits, "conv2", units=[3, 11], k=5)["conv2"]
    assert hits.receptive_field.size == (14, 14) and hits.receptive_field.stride == (2, 2)
    assert hits.crops.shape == (2, 5, 1, 14, 14)
    for row in range(2):
        for rank in range(5):
            y, x = hits.positions[row, rank].tolist()
            top, left = 2 * y - 2, 2 * x - 2  # by hand: two 5x5 convs (padding 2, then 0) around a 2x2 pool
            pixels = lenet.pixels(digits.images[int(hits.sample_indices[row, rank])])[0]
            padded = torch.nn.functional.pad(pixels, (2, 2, 2, 2), value=0.5)
            assert torch.equal(hits.crops[row, rank], padded[:, top + 2 : top + 16, left + 2 : left + 16])
            assert hits.boxes[row, rank].tolist() == [
                max(top, 0),
                max(left, 0),
                min(top + 14, 28),
                min(left + 14, 28),
            ]


def test_top_patches_stream_once_and_accept_tensors(lenet, digits, digit_inputs):
    class Counting(torch.utils.data.Dataset):
        def __init__(self):
            self.reads = 0

        def __len__(self):
            return 700

        def __getitem__(self, index):
            self.reads += 1
            return digits[index]

    data = Counting()
    hits = ds.units.top_patches(lenet, data, "conv1", k=4, batch_size=128)["conv1"]
    unique = len(set(hits.sample_indices.flatten().tolist()))
    assert data.reads == 700 + unique  # one pass, then only the hits are read again to crop them
    from_tensors = ds.units.top_patches(lenet, digit_inputs[:700], "conv1", k=4, batch_size=128)["conv1"]
    assert torch.equal(from_tensors.sample_indices, hits.sample_indices)
    assert torch.allclose(from_tensors.crops, hits.crops, atol=1e-6)  # tensors are un-normalized for display


def test_top_patches_read_dict_items_with_numpy_color_images(lenet, digits):
    class Records(torch.utils.data.Dataset):  # as a Hugging Face ``datasets`` table gives them
        def __len__(self):
            return 300

        def __getitem__(self, index):  # in color: read in the model's mode, as the scan reads them
            image, label = digits[index]
            return {"img": np.asarray(image.convert("RGB")), "label": label}

    from_records = ds.units.top_patches(lenet, Records(), "conv2", k=4)["conv2"]
    from_tuples = ds.units.top_patches(lenet, digits.subset(range(300)), "conv2", k=4)["conv2"]
    uint8_images = torch.from_numpy(np.stack([np.asarray(image) for image in digits.images[:300]]))[:, None]
    from_uint8_tensor = ds.units.top_patches(lenet, uint8_images, "conv2", k=4)["conv2"]
    for hits in (from_records, from_uint8_tensor):
        assert torch.equal(hits.sample_indices, from_tuples.sample_indices)
        assert torch.equal(hits.crops, from_tuples.crops)


def test_top_patches_bad_input_is_named(lenet, digits, unchanged):
    with unchanged(lenet.module):
        with pytest.raises(
            UnitError, match=r"unit 16 is out of range for layer 'conv2', which has 16 channels"
        ):
            ds.units.top_patches(lenet, digits, "conv2", units=[16], k=3)
        with pytest.raises(LayerNotFoundError, match="conv2"):
            ds.units.top_patches(lenet, digits, "conv3", k=3)
        with pytest.raises(ValueError, match="projection must be"):
            ds.units.top_patches(lenet, digits, "conv2", projection="lrp")


# projection -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_projection_matches_captum(lenet, digit_inputs, rule, unchanged):
    from captum.attr import Deconvolution, GuidedBackprop

    reference_method = {"deconvnet": Deconvolution, "guided": GuidedBackprop}[rule]
    x = digit_inputs[:6]
    for layer, upto in (("conv2", 4), ("fc1", 8)):
        trunk = lenet.module[:upto]
        with torch.no_grad():
            activation = trunk(x)
        unit = 3
        with unchanged(lenet.module):
            ours = ds.units.project(lenet, x, layer, unit, rule=rule)
        for b in range(len(x)):
            if activation.ndim == 4:
                flat = int(activation[b, unit].flatten().argmax())
                y, xx = divmod(flat, activation.shape[3])
                target, value = (unit, y, xx), activation[b, unit, y, xx]
            else:
                target, value = unit, activation[b, unit]
            if value <= 0:
                continue  # the rules are positively homogeneous only: compare where the seed is positive
            reference = reference_method(trunk).attribute(x[b : b + 1], target=target)[0] * value
            assert torch.allclose(ours[b], reference, atol=1e-5), (layer, b)
    assert (lenet.module.conv1.weight.grad is None) and (lenet.module.fc1.weight.grad is None)


def test_top_patches_carry_projections(lenet, digits):
    hits = ds.units.top_patches(
        lenet, digits.subset(range(300)), "conv2", units=[5], k=3, projection="guided"
    )["conv2"]
    assert hits.projections.shape == hits.crops.shape
    x = lenet.preprocess(digits.images[int(hits.sample_indices[0, 0])])
    full = ds.units.project(lenet, x, "conv2", 5, rule="guided")[0]
    top, left = (2 * int(v) - 2 for v in hits.positions[0, 0].tolist())
    padded = torch.nn.functional.pad(full, (2, 2, 2, 2))
    assert torch.allclose(hits.projections[0, 0], padded[:, top + 2 : top + 16, left + 2 : left + 16])


# feature visualization --------------------------------------------------------------------------------------


def test_visualize_beats_every_real_digit(lenet, digit_inputs, unchanged):
    layer, unit = "conv2", 3
    best_real = ds.units.activations(lenet, digit_inputs, layer)[:, unit].mean((1, 2)).max()
    with unchanged(lenet.module):
        result = ds.units.visualize(lenet, f"{layer}:{unit}")
    assert result.image.min() >= 0 and result.image.max() <= 1
    rerun = ds.units.activations(lenet, lenet.normalize(result.image), layer)[:, unit].mean((1, 2))
    assert torch.allclose(rerun, result.value, atol=1e-5)
    assert rerun.item() > best_real.item()
    assert all(p.grad is None for p in lenet.module.parameters())


def jittered_values(model, image, layer, unit, d=4):
    """The channel objective on the image shifted by every (dy, dx) with |dy|, |dx| <= d (borders replicated)."""
    values = []
    for dy in range(-d, d + 1):
        for dx in range(-d, d + 1):
            if dy == dx == 0:
                continue
            matrix = torch.eye(3, dtype=torch.float64)[None]
            matrix[0, 0, 2], matrix[0, 1, 2] = dx, dy
            shifted = T._warp(image, matrix)
            values.append(ds.units.activations(model, model.normalize(shifted), layer)[0, unit].mean())
    return torch.stack(values)


def test_fourier_with_transforms_survives_jitter(lenet):
    drops = {}
    for transforms in ("standard", None):
        result = ds.units.visualize(lenet, "conv2:5", transforms=transforms)
        shifted = jittered_values(lenet, result.image, "conv2", 5)
        drops[transforms] = 1 - shifted.mean().item() / result.value.item()
    assert drops["standard"] < 0.2
    assert drops["standard"] < drops[None]  # the transformations are what buys the robustness


def test_visualize_objectives_compose_and_check(lenet, unchanged):
    vm = lenet
    result = ds.units.visualize(vm, "logit:3 - logit:5", steps=64, images=2, param="pixel", transforms=None)
    with torch.no_grad():
        logits = vm(vm.normalize(result.image))
    assert torch.allclose(result.value, logits[:, 3] - logits[:, 5], atol=1e-4)
    assert (logits.argmax(1) == 3).all()
    with unchanged(vm.module):
        with pytest.raises(
            UnitError, match=r"unit 20 is out of range for layer 'conv2', which has 16 channels \(0\.\.15\)"
        ):
            ds.units.visualize(vm, "conv2:20", steps=1)
        with pytest.raises(UnitError, match="10 classes"):
            ds.units.visualize(vm, "logit:10", steps=1)
        with pytest.raises(UnitError, match="outside layer 'conv2'"):
            ds.units.visualize(vm, "conv2:1@10,3", steps=1)
        with pytest.raises(UnitError, match="no spatial map"):
            ds.units.visualize(vm, "fc1:1@1,1", steps=1)
        with pytest.raises(LayerNotFoundError, match="Closest: conv2"):
            ds.units.visualize(vm, "conv22:1", steps=1)
        with pytest.raises(UnitError, match="cannot read objective"):
            ds.units.visualize(vm, "conv2:1 +", steps=1)
        with pytest.raises(UnitError, match="at least 2 images"):
            ds.units.visualize(vm, ds.units.objective("conv2:1") + ds.units.diversity("conv2"), steps=1)


def test_objective_strings_and_algebra():
    objective = ds.units.objective("2*conv2:1 - (conv2:3@4,5 + 0.5*logit:7) * fc1:2 + conv1")
    assert objective.layers == {"conv1", "conv2", "fc1"} and objective.needs_output
    generator = torch.Generator().manual_seed(0)
    activations = {
        "conv1": torch.randn(2, 6, 28, 28, generator=generator),
        "conv2": torch.randn(2, 16, 10, 10, generator=generator),
        "fc1": torch.randn(2, 120, generator=generator),
    }
    output = torch.randn(2, 10, generator=generator)
    context = Context(activations, output, torch.zeros(2, 1, 28, 28))
    expected = (
        2 * activations["conv2"][:, 1].mean((1, 2))
        - (activations["conv2"][:, 3, 4, 5] + 0.5 * output[:, 7]) * activations["fc1"][:, 2]
        + activations["conv1"].pow(2).mean((1, 2, 3))
    )
    assert torch.allclose(objective(context), expected)
    assert (
        repr(ds.units.objective("conv2:1 - conv2:2 - (conv2:3 - conv2:4)"))
        == "conv2:1 - conv2:2 - (conv2:3 - conv2:4)"
    )
    direction = ds.units.direction("conv2", torch.arange(16.0))
    assert torch.allclose(
        direction(context), torch.einsum("bchw,c->b", activations["conv2"], torch.arange(16.0)) / 100
    )
    for bad in ("", "conv2:", "conv2:-1", "logit", "logit:1@2,2", "conv2::1", "3 4", "(conv2:1"):
        with pytest.raises(UnitError):
            ds.units.objective(bad)


def test_diversity_is_minus_mean_gram_cosine():
    activation = torch.randn(3, 4, 5, 5)
    context = Context({"l": activation}, None, torch.zeros(3, 1, 5, 5))
    grams = [
        torch.nn.functional.normalize((a.flatten(1) @ a.flatten(1).T).flatten(), dim=0) for a in activation
    ]
    expected = torch.stack([-sum(grams[i] @ grams[j] for j in range(3) if j != i) / 3 for i in range(3)])
    assert torch.allclose(ds.units.diversity("l")(context), expected, atol=1e-6)


def test_multifaceted_init_gives_diverse_starts(lenet, digits):
    starts = ds.units.multifaceted_init(lenet, digits.subset(range(1000)), "fc3", unit=7, facets=3, top=45)
    assert starts.shape == (3, 1, 28, 28) and starts.min() >= 0 and starts.max() <= 1
    assert not torch.allclose(starts[0], starts[1])
    objective = ds.units.objective("fc3:7") + 0.5 * ds.units.diversity("fc1")
    result = ds.units.visualize(lenet, objective, init=starts, param="pixel", steps=32, transforms=None)
    assert result.image.shape == (3, 1, 28, 28)


def test_kmeans_recovers_separated_blobs():
    generator = torch.Generator().manual_seed(1)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.3 * torch.randn(20, 2, generator=generator) for c in centers])
    labels = kmeans(points, 3, seed=0)
    groups = {tuple(labels[i * 20 : (i + 1) * 20].unique().tolist()) for i in range(3)}
    assert len(groups) == 3 and all(len(g) == 1 for g in groups)


# parameterizations, transforms, regularizers ---------------------------------------------------------------


def test_fourier_parameterization_inverts_and_stays_in_range():
    pixels = torch.rand(2, 3, 17, 22) * 0.9 + 0.05
    image = FourierImage.from_pixels(pixels).image()
    assert torch.allclose(image, pixels, atol=1e-4)
    random = FourierImage.random(
        (1, 3, 32, 32), torch.Generator().manual_seed(0), torch.device("cpu")
    ).image()
    assert random.shape == (1, 3, 32, 32) and 0.4 < random.mean() < 0.6


def test_transforms_move_pixels_as_stated():
    image = torch.rand(1, 1, 12, 12)
    generator = torch.Generator().manual_seed(0)
    shifted = T.jitter(3)(image, generator)
    found = [
        (dy, dx)
        for dy in range(-3, 4)
        for dx in range(-3, 4)
        if torch.allclose(shifted[..., 3:-3, 3:-3], image[..., 3 - dy : 9 - dy, 3 - dx : 9 - dx], atol=1e-5)
    ]
    assert len(found) == 1
    assert torch.allclose(T.rotate([0])(image, generator), image, atol=1e-6)
    assert torch.allclose(T.scale([1.0])(image, generator), image, atol=1e-6)
    quarter = T.rotate([90])(image, generator)
    assert torch.allclose(
        quarter[0, 0], torch.rot90(image[0, 0], k=-1), atol=1e-5
    )  # y down: clockwise on screen
    assert T.pad(2)(image, generator).shape == (1, 1, 16, 16)
    # one fused resampling equals the two applied one after the other (on a smooth image, away from borders)
    coordinates = torch.linspace(0, 1, 12)
    smooth = (torch.sin(3 * coordinates)[:, None] * torch.cos(2 * coordinates)[None, :])[None, None]
    chain = [T.rotate([7]), T.scale([1.1])]
    fused = T.apply(chain, smooth, torch.Generator().manual_seed(0))
    stepwise = chain[1](chain[0](smooth, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(0))
    assert torch.allclose(fused[..., 3:9, 3:9], stepwise[..., 3:9, 3:9], atol=0.01)


def test_gaussian_blur_matches_scipy():
    image = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    for sigma in (0.5, 1.0, 3.0):
        ours = gaussian_blur(image, sigma).numpy()
        reference = np.stack(
            [[gaussian_filter(channel, sigma) for channel in sample] for sample in image.numpy()]
        )
        assert np.abs(ours - reference).max() < 1e-12


def test_yosinski_presets_and_clipping_rules():
    assert [ds.units.yosinski(n).decay for n in (1, 2, 3, 4)] == [0.0, 0.3, 0.0001, 0.0]
    assert [ds.units.yosinski(n).blur_radius for n in (1, 2, 3, 4)] == [0.5, 0.0, 1.0, 0.5]
    assert [ds.units.yosinski(n).norm_percentile for n in (1, 2, 3, 4)] == [50, 20, 0, 0]
    assert [ds.units.yosinski(n).contribution_percentile for n in (1, 2, 3, 4)] == [0, 0, 0, 90]
    with pytest.raises(ValueError, match="1, 2, 3 and 4"):
        ds.units.yosinski(5)
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4).expand(1, 3, 4, 4).clone()
    kept = Yosinski(norm_percentile=50).regularize(x, torch.zeros_like(x), step=1)
    assert (kept[:, :, :2] == 0).all() and torch.equal(kept[:, :, 2:], x[:, :, 2:])  # the 8 smallest norms go
    gradient = torch.ones_like(x)
    kept = Yosinski(contribution_percentile=75).regularize(x, gradient, step=1)
    assert (kept.flatten(2)[..., :12] == 0).all() and (kept.flatten(2)[..., 12:] != 0).all()
    assert torch.allclose(Yosinski(decay=0.25).regularize(x, gradient, step=1), 0.75 * x)
    progress = Yosinski(lr_policy="progress", max_lr=1e9, desired_progress=2.0).step_size(
        torch.full((1, 1, 2, 2), 0.5)
    )
    assert progress.item() == pytest.approx(2.0)  # lr * |g|^2 = desired progress


def test_yosinski_ascent_raises_the_unit(lenet, unchanged):
    for setting in (1, 3, 4):
        with unchanged(lenet.module):
            result = ds.units.visualize(
                lenet,
                "fc3:4",
                param="pixel",
                transforms=None,
                regularization=ds.units.yosinski(setting, steps=40),
            )
        # step 0 blurs the noise start (every setting here blurs); from there on the unit climbs
        assert result.history[-1] > result.history[1], setting
        assert result.value == result.history[-1]  # as in the toolbox, the last step only measures
    with pytest.raises(ValueError, match="param='pixel'"):
        ds.units.visualize(lenet, "fc3:4", regularization=ds.units.yosinski(3))


# inversion ---------------------------------------------------------------------------------------------------


def test_invert_first_conv_of_lenet(lenet, digits, digit_inputs, unchanged):
    x = digit_inputs[:3]
    with unchanged(lenet.module):
        result = ds.units.invert(lenet, x, "conv1", alpha_weight=0.0, schedule=[(300, 1.0), (200, 0.1)])
    assert (result.error < 0.1).all(), result.error
    rerun = ds.units.activations(lenet, lenet.normalize(result.image), "conv1")
    target = ds.units.activations(lenet, x, "conv1")
    assert torch.allclose(
        result.error, (rerun - target).flatten(1).norm(dim=1) / target.flatten(1).norm(dim=1), atol=1e-5
    )
    defaults = ds.units.invert(lenet, x, "conv1")
    assert defaults.energy[:, -1].lt(defaults.energy[:, 0]).all()
    assert defaults.tv_weight == pytest.approx(28 * 28 / 227**2)  # band 1, scaled to 28x28


def test_tv_weight_bands_follow_depth(efficientnet, lenet):
    from deepscope.units.inversion import depth_tv_weight

    assert [depth_tv_weight(lenet, name) for name in ("conv1", "conv2", "fc1", "fc3")] == [
        1.0,
        10.0,
        100.0,
        100.0,
    ]
    assert [depth_tv_weight(efficientnet, n) for n in ("_conv_stem", "_blocks.8", "_fc")] == [
        1.0,
        10.0,
        100.0,
    ]


@pytest.mark.slow
def test_inversion_error_grows_with_depth_on_efficientnet(efficientnet, photos):
    x = efficientnet.preprocess([photos["coffee"], photos["chelsea"]])
    strip = ds.units.invert_layers(efficientnet, x, ["_bn0", "_blocks.3", "_blocks.10", "_fc"])
    image_errors = torch.stack([r.image_error for r in strip], 1)  # [photo, layer]
    assert (image_errors.diff(dim=1) > 0).all(), image_errors  # less of the image survives deeper in
    assert (torch.stack([r.error for r in strip]) < 0.5).all()  # while each layer's features are matched


# activations, filters, renderings, leaving the model as found ---------------------------------------------


def test_activations_and_filters(lenet, digit_inputs, unchanged):
    with unchanged(lenet.module):
        maps = ds.units.activations(lenet, digit_inputs[:3], "conv1")
        kernels = ds.units.filters(lenet, "conv2")
    assert torch.allclose(maps, lenet.module.conv1(digit_inputs[:3]).detach())
    assert (
        torch.equal(kernels, lenet.module.conv2.weight.detach())
        and kernels.data_ptr() != lenet.module.conv2.weight.data_ptr()
    )
    with pytest.raises(UnitError, match="reads the output of pool2 .MaxPool2d., not the image's pixels"):
        ds.units.filters(lenet, "fc1")
    with pytest.raises(UnitError, match="no 2-d convolution kernel"):
        ds.units.filters(lenet, "relu1")


def test_renderings(lenet, digits):
    from deepscope.render.units import activation_grid, filter_grid, image_strip, patch_grid

    maps = torch.zeros(3, 4, 4)
    for channel, mean in ((0, 1.0), (1, 0.0), (2, 5.0)):
        maps[channel] += mean
        maps[channel, 3, channel] += 1.0  # each channel's own bright pixel in the bottom row
    grid = activation_grid(maps, tile_size=32, columns=3)
    assert grid.size == (3 * 33 + 1, 34)
    # order by mean: channels 2, 0, 1; tile t shows its channel's bright pixel at column 8 * channel
    for tile_index, channel in enumerate((2, 0, 1)):
        left = 1 + 33 * tile_index
        row = [grid.getpixel((left + 8 * column + 4, 29))[0] for column in range(3)]
        assert row[channel] == 255 and sum(row) == 255
    assert (
        filter_grid(ds.units.filters(lenet, "conv2")).size[0]
        > filter_grid(ds.units.filters(lenet, "conv1")).size[0]
    )
    hits = ds.units.top_patches(
        lenet, digits.subset(range(200)), "conv2", units=[0, 1], k=3, projection="deconvnet"
    )["conv2"]
    picture = patch_grid(hits, tile_size=28)
    assert picture.size == (6 * 29 + 1, 2 * 29 + 1)  # per unit: 3 crops, then 3 projections
    assert image_strip(torch.rand(2, 1, 28, 28), ["a", "b"]).size[0] == 2 * 113 + 1


def test_failing_calls_leave_the_model_as_found(lenet, digit_inputs, unchanged):
    lenet.module.train()
    try:
        with unchanged(lenet.module):
            for call in (
                lambda: ds.units.project(lenet, digit_inputs[:2], "conv2", 99),
                lambda: ds.units.invert(lenet, digit_inputs[:1], "nope"),
                lambda: ds.units.visualize(lenet, "fc1:500", steps=2),
                lambda: ds.units.activations(lenet, digit_inputs[:1], "conv9"),
            ):
                with pytest.raises((UnitError, LayerNotFoundError)):
                    call()
            ds.units.visualize(lenet, "conv1:0", steps=2)
            ds.units.top_patches(lenet, digit_inputs[:50], "conv1", k=2)
    finally:
        lenet.module.eval()


def test_units_command_writes_the_pictures(tmp_path, digits):
    from PIL import Image
    from typer.testing import CliRunner

    from deepscope.app import cli

    folder = tmp_path / "digits"
    folder.mkdir()
    for index in range(40):
        digits.images[index].save(folder / f"{index:03d}.png")
    out = tmp_path / "out"
    arguments = ["units", "zoo:lenet_mnist", "--layer", "conv2", "--data", str(folder), "--out", str(out)]
    result = CliRunner().invoke(
        cli.app, [*arguments, "--unit", "3", "--unit", "7", "--k", "4", "--steps", "8"]
    )
    assert result.exit_code == 0, result.output
    names = sorted(path.name for path in out.iterdir())
    assert names == ["activations.png", "features.png", "filters.png", "inversion.png", "top-patches.png"]
    assert Image.open(out / "top-patches.png").size[1] == 2 * (14 * 3 + 1) + 1  # 2 units, 14-pixel crops x3
    wrong = CliRunner().invoke(cli.app, ["units", "zoo:lenet_mnist", "--layer", "conv7"])
    assert wrong.exit_code != 0 and "conv2" in str(wrong.exception)


class ReusedReLU(nn.Module):
    """One ReLU module applied after both convolutions: 'act@0' and 'act@1' are its two calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def test_units_read_the_one_layer_grammar(unchanged):
    """'PATH@N' named one call of a reused module in attribution only; the units read every layer name the same
    way (and ds.graph gives these names)."""
    model = ReusedReLU().eval()
    x = torch.randn(5, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    with unchanged(model):
        second = ds.units.activations(model, x, "act@1")
        torch.testing.assert_close(second, torch.relu(model.conv2(torch.relu(model.conv1(x)))))
        torch.testing.assert_close(ds.units.activations(model, x, "fc:input"), second.mean((2, 3)))
        with pytest.raises(DeepscopeError, match="act@N"):
            ds.units.activations(model, x, "act")
        hits = ds.units.top_patches(model, x, ["act@0", "act@1"], k=2, crops=False)
        assert hits["act@1"].values.shape == (6, 2)
        torch.testing.assert_close(hits["act@1"].values[:, 0], second.amax((2, 3)).amax(0))
        gray = ds.VisionModel(model, "reused", ds.Preprocessing(mean=(0.0,), std=(1.0,), image_mode="L"))
        result = ds.units.visualize(gray, "act@1:2", steps=2, size=12, transforms=None)
        assert result.image.shape == (1, 1, 12, 12)
    assert {node.layer for node in ds.graph(model, x[:1]).nodes} >= {"act@0", "act@1"}


@pytest.mark.parametrize(
    ("inputs", "complaint"),
    [
        (torch.zeros(0, 1, 28, 28), "holds no image"),
        (torch.zeros(1, 1, 0, 0), "0x0 pixels"),
        (torch.zeros(2, 3, 28, 28), "reads 1-channel images .* 3 channels \\(shape \\[2, 3, 28, 28\\]\\)"),
        (torch.zeros(1, 28, 28), "add the batch dimension"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "vm.preprocess"),
        (torch.tensor([0.0, float("inf")]).repeat_interleave(784).view(2, 1, 28, 28), "sample 1 \\(of 2\\)"),
    ],
)
def test_bad_inputs_are_named_in_the_callers_terms(lenet, inputs, complaint, unchanged):
    """An empty batch, a 0x0 image or a wrong channel count failed inside the model (a message about its layers);
    NaN or infinity gave NaN maps without a word."""
    with unchanged(lenet.module):
        for call in (
            lambda: ds.units.activations(lenet, inputs, "conv2"),
            lambda: ds.units.project(lenet, inputs, "conv2", 0),
            lambda: ds.units.invert(lenet, inputs, "conv1", schedule=[(1, 1.0)]),
        ):
            with pytest.raises(ImageError, match=complaint):
                call()


def test_top_patches_skip_and_report_unreadable_samples_as_the_scan_does(lenet, tmp_path):
    """A folder with a truncated image aborted top_patches (and `deepscope units`, leaving partial pictures)."""
    digits = ds.datasets.mnist5k("test")
    folder = tmp_path / "digits"
    folder.mkdir()
    for index in range(12):
        digits.images[index].save(folder / f"{index:02d}.png")
    (folder / "04.png").write_bytes((folder / "04.png").read_bytes()[:40])
    data = ds.load_dataset(str(folder), lenet.labels)
    with pytest.warns(RuntimeWarning, match="1 of the 12 samples could not be read"):
        hits = ds.units.top_patches(lenet, data, "conv2", units=[0], k=11)["conv2"]
    assert [sample.index for sample in hits.skipped] == [4] and hits.seen == 11
    assert 4 not in hits.sample_indices.tolist() and hits.crops.shape[1] == 11
    x = lenet.preprocess(digits.images[:6])
    x[2, 0, 1, 1] = float("nan")
    with pytest.warns(RuntimeWarning, match="NaN or infinite"):
        from_tensor = ds.units.top_patches(lenet, x, "conv1", units=[0], k=5)["conv1"]
    assert [sample.index for sample in from_tensor.skipped] == [2]
    assert 2 not in from_tensor.sample_indices.tolist()
