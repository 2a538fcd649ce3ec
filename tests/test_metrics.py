"""deepscope.metrics: mathematical properties, hand-checked cases, the cost model, references other than Quantus
(scipy, skimage, Captum), the model left as found, and errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import deepscope as ds
from deepscope.errors import SettingTypeError, SpecError
from deepscope.metrics import MetricError
from deepscope.render.curves import evaluation_plots

# ---- a linear model whose true per-pixel contributions are known ----


class Linear(nn.Module):
    """f(x)_k = sum(w_k * x) + b_k: removing feature i (to baseline r) changes f_k by exactly w_k,i (x_i - r_i)."""

    def __init__(self, shape=(1, 12, 12), classes=2, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(classes, *shape, generator=generator))
        self.bias = nn.Parameter(torch.randn(classes, generator=generator))

    def forward(self, x):
        return torch.einsum("bchw,kchw->bk", x, self.weight) + self.bias


def linear_case(samples=64, seed=0):
    model = Linear(seed=seed)
    x = torch.randn(samples, 1, 12, 12, generator=torch.Generator().manual_seed(seed + 1))
    contribution = (model.weight[0] * x).detach()  # exact contribution of each pixel to class 0 (baseline 0)
    return model, x, contribution


def best_aopc(contribution: torch.Tensor, counts: torch.Tensor, largest: bool = True) -> torch.Tensor:
    """The largest (smallest) AOPC any ordering can reach on a linear model: after k steps the drop is at most
    the sum of the counts[k] largest (smallest) contributions."""
    ordered = contribution.flatten(1).sort(1, descending=largest).values
    prefix = torch.cat([torch.zeros(len(ordered), 1), ordered.cumsum(1)], 1)
    return prefix[:, counts].mean(1)


def test_true_contributions_reach_the_best_possible_aopc():
    model, x, contribution = linear_case()
    result = ds.metrics.pixel_flipping(model, x, contribution, 0, per_step=4, replacement=0.0)
    counts = (result.fractions * 144).round().long()
    torch.testing.assert_close(result.aopc, best_aopc(contribution, counts), rtol=1e-5, atol=1e-4)
    # least relevant first: the true map reaches the smallest possible AOPC
    lerf = ds.metrics.pixel_flipping(model, x, contribution, 0, order="lerf", per_step=4, replacement=0.0)
    torch.testing.assert_close(
        lerf.aopc, best_aopc(contribution, counts, largest=False), rtol=1e-5, atol=1e-4
    )
    # and every other map does no better
    for other in (model.weight[0].detach().expand_as(x), contribution.abs(), torch.rand_like(x)):
        worse = ds.metrics.pixel_flipping(model, x, other, 0, per_step=4, replacement=0.0)
        assert bool((worse.aopc <= result.aopc + 1e-4).all())
        assert worse.aopc.mean() < result.aopc.mean() - 0.5


def test_random_maps_score_near_the_random_baseline():
    """For a random order, the expected drop after perturbing a fraction q of the pixels is q times the total
    drop, so the expected AOPC is mean_k(q_k) * (f(x) - f(baseline))."""
    model, x, contribution = linear_case(samples=256, seed=3)
    maps = torch.rand(x.shape, generator=torch.Generator().manual_seed(9))
    result = ds.metrics.pixel_flipping(model, x, maps, 0, per_step=4, replacement=0.0)
    expected = result.fractions.mean() * contribution.flatten(1).sum(1)
    spread = contribution.flatten(1).sum(1).abs().mean()
    assert abs((result.aopc - expected).mean()) < 0.05 * spread
    true = ds.metrics.pixel_flipping(model, x, contribution, 0, per_step=4, replacement=0.0)
    assert true.aopc.mean() > result.aopc.mean() + 5 * abs((result.aopc - expected).mean())


def test_region_perturbation_of_true_contributions_is_best_among_region_orders():
    model, x, contribution = linear_case()
    result = ds.metrics.region_perturbation(model, x, contribution, 0, region_size=3, replacement=0.0)
    cells = nn.functional.avg_pool2d(contribution, 3) * 9  # each cell's exact contribution
    counts = torch.arange(17)
    torch.testing.assert_close(result.aopc, best_aopc(cells, counts), rtol=1e-5, atol=1e-4)


def test_curves_hand_checked_on_a_linear_model():
    model, x, contribution = linear_case(samples=2)
    maps = torch.arange(144.0).view(1, 1, 12, 12).expand(2, 1, 12, 12)  # flips pixel 143 first, then 142...
    result = ds.metrics.pixel_flipping(model, x, maps, 0, per_step=100, replacement=0.0)
    start = model(x)[:, 0].detach()
    flat = contribution.flatten(1)
    expected = torch.stack([start, start - flat[:, 44:].sum(1), start - flat.sum(1)], 1)
    torch.testing.assert_close(result.curve, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(result.fractions, torch.tensor([0.0, 100 / 144, 1.0]))
    torch.testing.assert_close(result.aopc, (expected[:, :1] - expected).mean(1))
    torch.testing.assert_close(
        result.auc, torch.from_numpy(np.trapezoid(expected.numpy(), [0, 100 / 144, 1], axis=1)).float()
    )
    # insertion puts the same pixels back into the baseline
    inserted = ds.metrics.insertion(model, x, maps, 0, per_step=100, start=0.0, softmax=False)
    base = model(torch.zeros_like(x))[:, 0].detach()
    torch.testing.assert_close(
        inserted.curve, torch.stack([base, base + flat[:, 44:].sum(1), start], 1), rtol=1e-5, atol=1e-4
    )


def test_region_of_one_pixel_is_pixel_flipping(lenet):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:3])
    maps = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    regions = ds.metrics.region_perturbation(lenet, x, maps, region_size=1, steps=40, replacement="mean")
    pixels = ds.metrics.pixel_flipping(lenet, x, maps, per_step=1, replacement="mean")
    torch.testing.assert_close(regions.curve, pixels.curve[:, :41])


def test_replacements(lenet):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:2])
    fill = ds.metrics._common.replacement_values
    generator = torch.Generator().manual_seed(0)
    torch.testing.assert_close(fill(lenet, x, "black", None), lenet.normalize(torch.zeros_like(x)))
    torch.testing.assert_close(fill(lenet, x, "mean", None)[:, :, 5, 7], x.mean((2, 3)))
    noise = fill(lenet, x, "uniform", generator)
    pixels = noise * lenet.preprocessing.std[0] + lenet.preprocessing.mean[0]
    assert 0 <= pixels.min() < 0.05 and 0.95 < pixels.max() <= 1
    blurred = fill(lenet, x, "blur", None)
    assert blurred.std() < x.std() and abs(blurred.mean() - x.mean()) < 0.1
    torch.testing.assert_close(fill(lenet, x, torch.tensor(2.0), None), torch.full_like(x, 2.0))
    with pytest.raises(MetricError, match="unknown replacement 'noise'"):
        fill(lenet, x, "noise", None)
    with pytest.raises(MetricError, match="does not broadcast"):
        fill(lenet, x, torch.zeros(3, 5), None)


# ---- the cost model: one forward per perturbed input, in chunks of batch_size, no autograd ----


class Counting(nn.Module):
    """Records each call (batch size, inference mode, training flag) with a forward pre-hook: a model with hooks
    runs as it is, not as its forward-only copy (VisionModel.forward_only), so every call is seen."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[int, bool, bool]] = []
        self.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor]) -> None:
        self.calls.append((inputs[0].shape[0], torch.is_inference_mode_enabled(), self.training))

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_curves_run_in_chunks_under_inference_mode(lenet, batch_size):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:5])
    maps = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    counting = Counting(lenet.module)
    result = ds.metrics.pixel_flipping(
        lenet.with_module(counting), x, maps, per_step=98, batch_size=batch_size
    )
    steps = result.curve.shape[1] - 1
    assert sum(size for size, _, _ in counting.calls) == 5 + 5 * steps  # start + one per perturbed input
    assert all(size <= batch_size and inference for size, inference, _ in counting.calls)
    reference = ds.metrics.pixel_flipping(lenet, x, maps, per_step=98, batch_size=64)
    torch.testing.assert_close(result.curve, reference.curve, rtol=1e-5, atol=1e-5)


def test_metrics_run_the_model_in_eval_mode_and_restore_it(unchanged):
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(64, 3),
    )
    model.train()
    counting = Counting(model)
    counting.train()
    x = torch.randn(4, 1, 4, 4)
    maps = torch.rand(4, 1, 4, 4)
    with unchanged(counting):
        first = ds.metrics.pixel_flipping(counting, x, maps, per_step=4)
        second = ds.metrics.pixel_flipping(counting, x, maps, per_step=4)
    torch.testing.assert_close(first.curve, second.curve)  # no dropout noise
    assert all(not training for _, _, training in counting.calls)


# ---- sanity checks ----


def gradient(model, inputs, target):
    inputs = inputs.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(target(model(inputs)).sum(), inputs)
    return grad


def test_gradients_decorrelate_as_layers_are_randomized(lenet, unchanged):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:16])
    target = ds.metrics.fixed_target(lenet, x)
    maps = gradient(lenet, x, target)
    with unchanged(lenet.module):
        result = ds.metrics.randomization(lenet, x, maps, target, method=gradient)
    spearman = result.mean()["spearman"]
    assert result.layers == ["fc3", "fc2", "fc1", "conv2", "conv1"]
    assert spearman[-1] < spearman[0] and spearman[-1] < 0.5
    assert result.mean()["ssim"][-1] < 0.3
    # a 'heat map' that ignores the model (the input itself) passes nothing: similarity stays 1
    ignores = ds.metrics.randomization(lenet, x, x, target, method=lambda model, inputs, t: inputs)
    torch.testing.assert_close(ignores.similarity["spearman"], torch.ones(16, 5, dtype=torch.float64))


def test_independent_randomization_touches_one_layer_at_a_time(lenet):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:4])
    seen = []

    def record(model, inputs, target):
        seen.append({name: p.detach().clone() for name, p in model.module.named_parameters()})
        return gradient(model, inputs, target)

    target = ds.metrics.fixed_target(lenet, x)
    ds.metrics.randomization(
        lenet,
        x,
        gradient(lenet, x, target),
        target,
        method=record,
        order="independent",
        layers=["conv*", "fc3"],
    )
    trained = dict(lenet.module.named_parameters())
    for layer, parameters in zip(["conv1", "conv2", "fc3"], seen, strict=True):
        changed = {
            name.split(".")[0] for name, value in parameters.items() if not torch.equal(value, trained[name])
        }
        assert changed == {layer}


def test_randomization_of_a_block_and_bad_layers(efficientnet, photos, unchanged):
    x = efficientnet.preprocess([photos["chelsea"]])
    target = ds.metrics.fixed_target(efficientnet, x)
    maps = gradient(efficientnet, x, target)
    with unchanged(efficientnet.module):
        result = ds.metrics.randomization(
            efficientnet, x, maps, target, method=gradient, layers=["_fc", "_blocks.15"], keep_maps=True
        )
    # a coarse but true cascade: the second step randomizes block 15 and everything after it
    assert result.layers == ["_fc", "_blocks.15"] and result.randomized[0] == ["_fc"]
    assert {"_blocks.15._depthwise_conv", "_blocks.15._bn2", "_conv_head", "_bn1"} <= set(
        result.randomized[1]
    )
    assert not any(name.startswith("_blocks.14") for name in result.randomized[1])
    assert len(result.maps) == 2
    with pytest.raises(ds.errors.LayerNotFoundError):
        ds.metrics.randomization(efficientnet, x, maps, target, method=gradient, layers=["_fcc"])


def test_random_logit_draws_other_classes(lenet):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:6])
    target = ds.metrics.fixed_target(lenet, x)
    chosen = []

    def record(model, inputs, t):
        chosen.append(t.indices.clone())
        return gradient(model, inputs, t)

    maps = gradient(lenet, x, target)
    scores = ds.metrics.random_logit(lenet, x, maps, target, method=record, seed=3)
    assert scores.shape == (6,) and bool((scores < 0.9).all())
    assert bool((chosen[0] != target.indices).all()) and bool(((chosen[0] >= 0) & (chosen[0] < 10)).all())
    same = ds.metrics.random_logit(lenet, x, maps, target, method=lambda m, i, t: gradient(m, i, target))
    torch.testing.assert_close(same, torch.ones(6, dtype=torch.float64))
    with pytest.raises(MetricError, match="different from the explained one"):
        ds.metrics.random_logit(lenet, x, maps, target, method=gradient, off_target=target.indices)


# ---- similarity measures against scipy / skimage ----


def test_spearman_and_pearson_equal_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 50), generator=generator).double()  # many ties
    b = a + torch.randn(4, 50, generator=generator, dtype=torch.float64) * 2
    ours = ds.metrics.spearman(a, b)
    np.testing.assert_allclose(
        ours, [stats.spearmanr(u, v)[0] for u, v in zip(a, b, strict=True)], rtol=1e-10
    )
    np.testing.assert_allclose(
        ds.metrics.pearson(a, b), [stats.pearsonr(u, v)[0] for u, v in zip(a, b, strict=True)], rtol=1e-10
    )


def test_ssim_equals_skimage_on_images_and_channels():
    metrics = pytest.importorskip("skimage.metrics")
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(3, 2, 20, 17, generator=generator, dtype=torch.float64)
    b = a + 0.3 * torch.rand(3, 2, 20, 17, generator=generator, dtype=torch.float64)
    ours = ds.metrics.ssim(a, b, data_range=1.0)
    expected = [
        metrics.structural_similarity(u.numpy(), v.numpy(), data_range=1.0, channel_axis=0)
        for u, v in zip(a, b, strict=True)
    ]
    np.testing.assert_allclose(ours, expected, rtol=1e-10)
    one_d = ds.metrics.ssim(a[:, :1, :1], b[:, :1, :1], data_range=2.0)
    expected = [
        metrics.structural_similarity(u[0, 0].numpy(), v[0, 0].numpy(), data_range=2.0)
        for u, v in zip(a, b, strict=True)
    ]
    np.testing.assert_allclose(one_d, expected, rtol=1e-10)


# ---- pointing game ----


def test_pointing_game_tolerance_and_boxes():
    maps = torch.zeros(3, 1, 40, 40)
    maps[:, 0, 20, 30] = 1.0  # the peak: row 20, column 30
    boxes = [
        torch.tensor([[0, 0, 10, 10]]),
        torch.tensor([[0, 0, 10, 10], [25, 18, 28, 23]]),
        torch.zeros(0, 4),
    ]
    x = torch.zeros(3, 3, 40, 40)
    strict = ds.metrics.pointing_game(None, x, maps, boxes=boxes, tolerance=0)
    assert strict[:2].tolist() == [0.0, 0.0] and np.isnan(strict[2].item())
    # the second sample's second box ends at column 27: the peak is 3 pixels away
    assert ds.metrics.pointing_game(None, x, maps, boxes=boxes, tolerance=3)[1].item() == 1.0
    assert ds.metrics.pointing_game(None, x, maps, boxes=boxes, tolerance=2.9)[1].item() == 0.0
    # channel maps count per pixel: the sum over channels
    color = torch.zeros(1, 3, 40, 40)
    color[0, :, 5, 5] = 0.4
    color[0, 0, 30, 30] = 1.0
    mask = torch.zeros(1, 40, 40, dtype=torch.bool)
    mask[0, :10, :10] = True
    assert ds.metrics.pointing_game(None, x[:1], color, masks=mask, tolerance=0).item() == 1.0
    with pytest.raises(MetricError, match="give masks or boxes"):
        ds.metrics.pointing_game(None, x, maps)


# ---- infidelity and max-sensitivity against Captum ----


def test_infidelity_equals_captum(lenet):
    captum_metrics = pytest.importorskip("captum.metrics")
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:4])
    y = lenet(x).argmax(1).detach()
    maps = gradient(lenet, x, ds.targets.Classes(y)) * x
    noise = torch.randn(6, 4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.2
    for normalize in (False, True):
        ours = ds.metrics.infidelity(lenet, x, maps, y, perturbation=noise, normalize=normalize)

        def perturb(inputs):
            flat = noise.transpose(0, 1).flatten(0, 1)  # Captum repeats each input: sample-major per image
            return flat, inputs - flat

        theirs = captum_metrics.infidelity(
            lenet.module, perturb, x, maps, target=y, n_perturb_samples=6, normalize=normalize
        )
        torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-6)
    # normalized infidelity does not depend on the map's scale
    torch.testing.assert_close(
        ds.metrics.infidelity(lenet, x, 100 * maps, y, perturbation=noise),
        ds.metrics.infidelity(lenet, x, maps, y, perturbation=noise),
    )


def test_infidelity_square_perturbations_and_max_sensitivity_on_smooth_maps(lenet):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:3])
    target = ds.metrics.fixed_target(lenet, x)
    maps = gradient(lenet, x, target) * x
    square = ds.metrics.infidelity(lenet, x, maps, target, perturbation="square", patch=6, samples=20)
    assert square.shape == (3,) and bool((square >= 0).all())
    # a map that does not move with the input has zero sensitivity; the gradient moves
    constant = ds.metrics.max_sensitivity(
        lenet, x, torch.ones_like(x), target, method=lambda m, i, t: torch.ones_like(i)
    )
    assert constant.abs().max() == 0
    moving = ds.metrics.max_sensitivity(lenet, x, maps, target, method=gradient, radius=0.5, samples=4)
    assert bool((moving > 0).all())


def test_a_callable_method_on_a_color_model_runs_channels_last_with_the_same_results(vgg11_bn):
    seen = []

    def recording_gradient(model, inputs, target):
        seen.append(inputs.is_contiguous(memory_format=torch.channels_last))
        return gradient(model, inputs, target)

    # float64, so that the two layouts' different float rounding does not reorder the ranks of near-equal values
    model = copy.deepcopy(vgg11_bn).double()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    results = {}
    for layout in ("fast", "standard"):
        vm = ds.VisionModel(model, "vgg")
        vm.channels_last = layout == "fast"
        target = ds.metrics.fixed_target(vm, x)
        maps = gradient(vm, x, target)
        noise = (
            torch.randn(2, *x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.1
        )
        results[layout] = (
            ds.metrics.max_sensitivity(vm, x, maps, target, method=recording_gradient, perturbations=noise),
            ds.metrics.random_logit(vm, x, maps, target, method=recording_gradient, similarity="spearman"),
            ds.metrics.randomization(
                vm, x, maps, target, method=recording_gradient, layers=["classifier.6", "classifier.3"]
            ).similarity["spearman"],
        )
        assert set(seen) == {layout == "fast"}
        seen.clear()
    for fast, standard in zip(*results.values(), strict=True):
        torch.testing.assert_close(fast, standard, rtol=1e-9, atol=1e-9)


# ---- the model left as found, errors ----


def test_every_metric_leaves_the_model_as_found(lenet, unchanged):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:2])
    target = ds.metrics.fixed_target(lenet, x)
    maps = gradient(lenet, x, target)
    masks = torch.zeros(2, 28, 28, dtype=torch.bool)
    masks[:, 10:20, 10:20] = True
    calls = [
        lambda: ds.metrics.pixel_flipping(lenet, x, maps, per_step=98),
        lambda: ds.metrics.region_perturbation(lenet, x, maps, region_size=7),
        lambda: ds.metrics.deletion(lenet, x, maps),
        lambda: ds.metrics.insertion(lenet, x, maps),
        lambda: ds.metrics.infidelity(lenet, x, maps, samples=4),
        lambda: ds.metrics.max_sensitivity(lenet, x, maps, target, method=gradient, samples=2),
        lambda: ds.metrics.randomization(lenet, x, maps, target, method=gradient),
        lambda: ds.metrics.random_logit(lenet, x, maps, target, method=gradient),
        lambda: ds.metrics.pointing_game(lenet, x, maps, masks=masks),
    ]
    lenet.module.fc1.weight.grad = torch.ones_like(lenet.module.fc1.weight)  # existing grads stay as they are
    try:
        state = torch.random.get_rng_state()
        for call in calls:
            with unchanged(lenet.module):
                call()
        assert torch.equal(torch.random.get_rng_state(), state)  # seeded draws do not touch the global RNG
        with unchanged(lenet.module), pytest.raises(ds.targets.TargetError):
            ds.metrics.pixel_flipping(lenet, x, maps, target=12)
    finally:
        lenet.module.fc1.weight.grad = None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda vm, x: ds.metrics.pixel_flipping(vm, x, torch.rand(2, 1, 14, 14)), "upsample the maps"),
        (lambda vm, x: ds.metrics.pixel_flipping(vm, x, torch.rand(3, 1, 28, 28)), "do not fit inputs"),
        (lambda vm, x: ds.metrics.pixel_flipping(vm, x, torch.rand(2, 2, 28, 28)), "2 channels"),
        (lambda vm, x: ds.metrics.pixel_flipping(vm, x, x, order="best"), "order must be"),
        (lambda vm, x: ds.metrics.pixel_flipping(vm, x, x, per_step=0), "per_step must be"),
        (lambda vm, x: ds.metrics.pixel_flipping(vm, x, x, batch_size=0), "batch_size must be"),
        (lambda vm, x: ds.metrics.region_perturbation(vm, x, x, region_size=0), "region_size must be"),
        (lambda vm, x: ds.metrics.infidelity(vm, x, x, perturbation="salt"), "perturbation must be"),
        (
            lambda vm, x: ds.metrics.infidelity(vm, x, x, perturbation=torch.zeros(2, 5)),
            "explicit perturbations",
        ),
        (lambda vm, x: ds.metrics.randomization(vm, x, x, method="no_such"), "unknown heat-map method"),
        (
            lambda vm, x: ds.metrics.randomization(vm, x, x, method=gradient, order="bottom_up"),
            "order must be",
        ),
        (
            lambda vm, x: ds.metrics.randomization(vm, x, x, method=gradient, similarity="hog"),
            "unknown similarity",
        ),
        (lambda vm, x: ds.metrics.max_sensitivity(vm, x, x, method=gradient, radius=0), "radius must be"),
    ],
)
def test_bad_settings_name_the_problem(lenet, call, message):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:2])
    with pytest.raises(ds.errors.DeepscopeError, match=message):
        call(lenet, x)


# ---- evaluate ----


def ink(model, x, target):
    return x


def noise(model, x, target):
    return torch.rand(x.shape, generator=torch.Generator().manual_seed(0)).to(x.device)


def test_evaluate_table_and_ranking(lenet, unchanged):
    masks = torch.zeros(8, 28, 28, dtype=torch.bool)
    masks[:, 6:22, 6:22] = True
    with unchanged(lenet.module):
        result = ds.evaluate(
            lenet,
            ds.datasets.mnist5k("test"),
            {"gradient x input": lambda m, x, t: gradient(m, x, t) * x, "random": noise},
            {
                "pixel_flipping": {"per_step": 16},
                "deletion": {},
                "randomization": {"layers": ["fc3", "conv1"]},
                "pointing_game": {"tolerance": 2},
            },
            masks=masks,
            limit=8,
        )
    table = result.table.set_index(["method", "metric"])
    assert len(table) == 8 and set(table["n"]) == {8}
    assert table.loc[("gradient x input", "pixel_flipping"), "better"] == "higher"
    assert table.loc[("random", "deletion"), "better"] == "lower"
    # the ranking follows each metric's direction: gradient x input beats noise on both faithfulness metrics
    assert result.ranking.loc["gradient x input", "pixel_flipping"] == 1
    assert result.ranking.loc["gradient x input", "deletion"] == 1
    assert list(result.ranking.columns) == [
        "pixel_flipping",
        "deletion",
        "randomization",
        "pointing_game",
        "mean_rank",
    ]
    # the table's numbers are the metric functions' own, on per-pixel maps
    maps = gradient(lenet, result_inputs(lenet), ds.metrics.fixed_target(lenet, result_inputs(lenet)))
    direct = ds.metrics.pixel_flipping(lenet, result_inputs(lenet), maps * result_inputs(lenet), per_step=16)
    assert table.loc[("gradient x input", "pixel_flipping"), "mean"] == pytest.approx(
        direct.aopc.mean().item(), rel=1e-5
    )
    assert set(result.curves("pixel_flipping")) == {"gradient x input", "random"}
    pictures = evaluation_plots(result)
    assert set(pictures) == {"pixel_flipping", "deletion", "randomization"}


def result_inputs(lenet):
    return lenet.preprocess(ds.datasets.mnist5k("test").images[:8])


def test_evaluate_reduces_color_maps_to_pixels_and_takes_labels(efficientnet, photos):
    seen = []

    def color(model, x, target):
        seen.append(x.shape[0])
        return gradient(model, x, target) * x

    result = ds.evaluate(
        efficientnet, photos, {"gradient x input": color}, {"deletion": {"per_step": 224 * 56}}, batch_size=2
    )
    assert result.maps["gradient x input"].shape == (5, 1, 224, 224)
    assert seen == [2, 2, 1]  # maps computed batch_size at a time
    assert result.curves("deletion")["gradient x input"].curve.shape == (5, 5)


def test_evaluate_reads_dict_items_with_numpy_color_images(lenet):
    digits = ds.datasets.mnist5k("test")
    # in color: read in the model's mode, as the scan reads them
    records = [{"image": np.asarray(digits[i][0].convert("RGB")), "label": digits[i][1]} for i in range(4)]
    from_records = ds.evaluate(lenet, records, {"ink": ink}, ["deletion"])
    from_tuples = ds.evaluate(lenet, digits, {"ink": ink}, ["deletion"], limit=4)
    assert from_records.table.equals(from_tuples.table)


def test_evaluate_errors(lenet):
    digits = ds.datasets.mnist5k("test")
    with pytest.raises(MetricError, match="unknown metric 'aopc'"):
        ds.evaluate(lenet, digits, {"ink": ink}, ["aopc"], limit=2)
    with pytest.raises(MetricError, match="pointing_game needs the objects"):
        ds.evaluate(lenet, digits, {"ink": ink}, ["pointing_game"], limit=2)
    with pytest.raises(SpecError, match="unknown data spec 'mnist'.*mnist5k"):
        ds.evaluate(lenet, "mnist", {"ink": ink}, ["deletion"])
    with pytest.raises(SettingTypeError, match="data must be"):
        ds.evaluate(lenet, 3, {"ink": ink}, ["deletion"])
    with pytest.raises(MetricError, match="target='label' needs"):
        ds.evaluate(lenet, torch.zeros(2, 1, 28, 28), {"ink": ink}, ["deletion"], target="label")
    with pytest.raises(MetricError, match="target must be None, 'label' or a target"):
        ds.evaluate(lenet, digits, {"ink": ink}, ["deletion"], target="labels", limit=2)
    labeled = ds.evaluate(lenet, "mnist5k:test", {"ink": ink}, {"deletion": {}}, target="label", limit=3)
    assert labeled.table["n"].tolist() == [3]


@pytest.mark.parametrize(
    "data",
    [[], {}, torch.zeros(0, 1, 28, 28)],
    ids=["empty list", "empty dict", "empty batch"],
)
def test_evaluate_says_when_the_data_is_empty(lenet, data):
    with pytest.raises(MetricError, match="no samples to evaluate: the data is empty"):
        ds.evaluate(lenet, data, {"ink": ink}, ["deletion"])


def test_evaluate_says_limit_zero_keeps_no_sample(lenet):
    digits = ds.datasets.mnist5k("test")
    for data in (digits, dict(zip("ab", digits.images[:2], strict=True)), torch.zeros(2, 1, 28, 28)):
        with pytest.raises(MetricError, match="no samples to evaluate: limit=0 keeps none of the"):
            ds.evaluate(lenet, data, {"ink": ink}, ["deletion"], limit=0)
    with pytest.raises(MetricError, match="limit must be >= 0"):
        ds.evaluate(lenet, digits, {"ink": ink}, ["deletion"], limit=-1)
    with pytest.raises(SettingTypeError, match="limit must be None or an int"):
        ds.evaluate(lenet, digits, {"ink": ink}, ["deletion"], limit=2.0)


def test_evaluate_says_which_sample_is_which_kind(lenet):
    image = ds.datasets.mnist5k("test").images[0]
    tensor = lenet.preprocess([image])[0]
    mixed = [image, tensor, image, "a path", tensor[:, :14]]
    message = (
        r"samples must be all PIL images or all \[C,H,W\] tensors of one shape; found PIL images: samples 0, 2; "
        r"tensors of shape \[1, 28, 28\]: sample 1; str: sample 3; tensors of shape \[1, 14, 28\]: sample 4"
    )
    with pytest.raises(MetricError, match=message):
        ds.evaluate(lenet, mixed, {"ink": ink}, ["deletion"])
    with pytest.raises(MetricError, match=r"samples must be all PIL images; found PIL images: sample 'a'; "):
        ds.evaluate(lenet, {"a": image, "b": tensor}, {"ink": ink}, ["deletion"])
    # samples of one kind are read as before: tensors are model inputs, images are preprocessed
    as_tensors = ds.evaluate(lenet, [tensor, tensor], {"ink": ink}, ["deletion"])
    as_images = ds.evaluate(lenet, [image, image], {"ink": ink}, ["deletion"])
    assert as_tensors.table["mean"].tolist() == pytest.approx(as_images.table["mean"].tolist())


class Viewing(nn.Module):
    """An old-style model that flattens with .view, which channels-last feature maps do not allow."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


def test_models_that_cannot_take_channels_last_inputs_still_work():
    model = Viewing()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    result = ds.metrics.pixel_flipping(model, x, maps, 0, per_step=16, replacement=0.0)
    with torch.no_grad():
        last = model(torch.zeros_like(x))[:, 0]
    torch.testing.assert_close(result.curve[:, -1], last)


def test_random_perturbations_do_not_depend_on_batch_size(lenet):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:3])
    target = ds.metrics.fixed_target(lenet, x)
    maps = gradient(lenet, x, target)
    for perturbation in ("gaussian", "square"):
        small = ds.metrics.infidelity(
            lenet, x, maps, target, perturbation=perturbation, samples=5, batch_size=2
        )
        large = ds.metrics.infidelity(
            lenet, x, maps, target, perturbation=perturbation, samples=5, batch_size=64
        )
        torch.testing.assert_close(small, large)
    small = ds.metrics.max_sensitivity(lenet, x, maps, target, method=gradient, samples=3, batch_size=2)
    large = ds.metrics.max_sensitivity(lenet, x, maps, target, method=gradient, samples=3, batch_size=64)
    torch.testing.assert_close(small, large)


class Gain(nn.Module):
    """A module with a parameter but no reset_parameters(): no randomization step can re-initialize it."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.full((1,), 2.0))

    def forward(self, x):
        return x * self.gain


def test_randomization_reports_parameters_it_cannot_reset():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), Gain(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    result = ds.metrics.randomization(
        model, x, gradient(model, x, ds.metrics.fixed_target(model, x)), method=gradient
    )
    assert result.layers == ["3", "0"] and result.randomized == [["3"], ["0"]]
    assert result.untouched == ["1"]
    assert (
        ds.metrics.randomization(model, x, x, method=gradient, order="independent", layers="3").untouched
        == []
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_on_cuda_equal_cpu(lenet, unchanged):
    import copy

    gpu = lenet.with_module(copy.deepcopy(lenet.module).cuda())
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:6])
    target = ds.metrics.fixed_target(lenet, x)
    maps = gradient(lenet, x, target)
    noise = torch.randn(4, 6, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.1
    masks = lenet.pixels(ds.datasets.mnist5k("test").images[:6])[:, 0] > 0.5
    calls = {
        "pixel_flipping": lambda vm, x, a: ds.metrics.pixel_flipping(vm, x, a, per_step=16).curve,
        "region_perturbation": lambda vm, x, a: (
            ds.metrics.region_perturbation(vm, x, a, replacement="mean").curve
        ),
        "deletion": lambda vm, x, a: ds.metrics.deletion(vm, x, a).curve,
        "insertion": lambda vm, x, a: ds.metrics.insertion(vm, x, a).curve,
        "infidelity": lambda vm, x, a: ds.metrics.infidelity(vm, x, a, perturbation=noise),
        "max_sensitivity": lambda vm, x, a: ds.metrics.max_sensitivity(
            vm, x, a, method=gradient, perturbations=noise
        ),
        "random_logit": lambda vm, x, a: ds.metrics.random_logit(
            vm, x, a, method=gradient, off_target=[1] * 6
        ),
        "pointing_game": lambda vm, x, a: ds.metrics.pointing_game(vm, x, a, masks=masks),
    }
    with unchanged(gpu.module):
        for name, call in calls.items():
            on_cpu = call(lenet, x, maps)
            on_gpu = call(gpu, x.cuda(), maps.cuda())
            torch.testing.assert_close(on_gpu.cpu().double(), on_cpu.double(), rtol=1e-4, atol=1e-4, msg=name)
        # random draws differ between the devices' generators; the checks run and keep their meaning
        randomized = ds.metrics.randomization(gpu, x.cuda(), maps.cuda(), method=gradient)
        assert randomized.mean()["spearman"][-1] < 0.5
        result = ds.evaluate(
            gpu, x.cuda(), ["saliency", "grad_cam"], ["deletion", "randomization"], absolute=True
        )
        assert result.maps["saliency"].is_cuda and result.table["n"].tolist() == [6, 6, 6, 6]


def test_evaluate_command_prints_the_table_and_writes_plots(tmp_path):
    from typer.testing import CliRunner

    from deepscope.app import cli

    out = tmp_path / "evaluation"
    result = CliRunner().invoke(
        cli.app,
        [
            "evaluate",
            "zoo:lenet_mnist",
            "mnist5k:test",
            "--methods",
            "saliency,grad_cam",
            "--metrics",
            "deletion,randomization",
            "--layers",
            "fc3,conv2",
            "--absolute",
            "saliency",
            "--limit",
            "6",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # the progress goes to stderr
    assert lines[0].split() == ["method", "metric", "mean", "std", "n", "better"]
    assert (
        sum(line.startswith(("saliency", "grad_cam")) for line in lines) == 6
    )  # 4 table rows + 2 ranking rows
    assert "Ranking (1 = best):" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["deletion.png", "randomization.png", "table.csv"]
    table = (out / "table.csv").read_text().splitlines()
    assert table[0].startswith("method,metric,mean,std,sem,n,better") and len(table) == 5


def test_guided_backprop_fails_the_randomization_check_and_gradients_pass(lenet):
    """Adebayo et al. 2018: guided backprop's maps hardly change when the top layers lose their weights; the
    gradient's do. Registry methods, LeNet-5, 16 digits."""
    x = lenet.preprocess(ds.datasets.mnist5k("test").subset(range(0, 1000, 63)).images)
    target = ds.metrics.fixed_target(lenet, x)
    first_step = {}
    for method in ("guided_backprop", "saliency", "grad_cam"):
        maps = ds.attribute(lenet, x, method, target=target)
        result = ds.metrics.randomization(lenet, x, maps, target, method=method, similarity="spearman")
        first_step[method] = result.mean()["spearman"][0].item()
    assert first_step["guided_backprop"] > 0.8
    assert first_step["saliency"] < 0.7 and first_step["grad_cam"] < 0.7


def test_guided_backprop_ignores_the_top_of_efficientnet(efficientnet, photos):
    x = efficientnet.preprocess([photos["chelsea"], photos["coffee"]])
    target = ds.metrics.fixed_target(efficientnet, x)
    similarity = {}
    for method in ("guided_backprop", "saliency"):
        maps = ds.attribute(efficientnet, x, method, target=target)
        result = ds.metrics.randomization(
            efficientnet, x, maps, target, method=method, layers=["_fc", "_blocks.14"], similarity="spearman"
        )
        similarity[method] = result.mean()["spearman"]
    assert bool(
        (similarity["guided_backprop"] > 0.9).all()
    )  # the classifier and two blocks random: no change
    assert bool((similarity["saliency"] < 0.6).all())


def test_unreadable_samples_are_skipped_and_reported_as_the_scan_does(lenet, tmp_path):
    """A folder with a truncated image aborted evaluate (and units) although the scan skips it: one policy."""
    digits = ds.datasets.mnist5k("test")
    folder = tmp_path / "digits" / "3"
    folder.mkdir(parents=True)
    for index in range(5):
        digits.images[index].save(folder / f"{index}.png")
    (folder / "2.png").write_bytes((folder / "2.png").read_bytes()[:40])
    data = ds.load_dataset(str(tmp_path / "digits"), lenet.labels)

    def ink(model, x, target):
        return x

    with pytest.warns(RuntimeWarning, match="1 of the samples could not be read"):
        result = ds.evaluate(lenet, data, {"ink": ink}, ["deletion"])
    assert [(sample.index, sample.source) for sample in result.skipped] == [(2, "3/2.png")]
    assert "cannot be decoded" in result.skipped[0].error or "truncated" in result.skipped[0].error
    assert result.maps["ink"].shape[0] == 4 and int(result.table["n"].iloc[0]) == 4
    workspace = ds.atlas.scan(lenet, data, out=tmp_path / "ws")
    assert [sample.index for sample in workspace.skipped] == [2]
