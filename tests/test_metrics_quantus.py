"""deepscope.metrics against Quantus 0.6.0 on the same inputs, maps and settings (rtol 1e-5), and the places where
our definitions differ on purpose (each test named ``test_differs_*`` shows the difference; docs/metrics.md
says why)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deepscope as ds
from deepscope.metrics.similarity import ssim

quantus = pytest.importorskip("quantus")
# Quantus warns about its parameterization and about steps that change nothing (both beside the point here).
pytestmark = pytest.mark.filterwarnings("ignore")

RTOL = 1e-5
# Logit curves of the same model on differently composed batches differ in the last float32 bits.
ATOL = 1e-5


@pytest.fixture(scope="module")
def digits(lenet):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:8])
    with torch.no_grad():
        y = lenet(x).argmax(1)
    return x, y


def gradient(model, inputs, target):
    """Plain autograd gradient of the target score: the heat map the sanity checks recompute."""
    inputs = inputs.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(target(model(inputs)).sum(), inputs)
    return grad


def quantus_gradient(model, inputs, targets, **kwargs):
    """The same gradient as a Quantus explain_func (numpy in, numpy out)."""
    x = torch.as_tensor(inputs)
    classes = ds.targets.Classes(torch.as_tensor(targets, dtype=torch.long))
    return gradient(model, x, classes).numpy()


def random_maps(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def numpy(*tensors):
    return [t.detach().cpu().numpy() for t in tensors]


def close(ours, theirs, atol=ATOL):
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), np.asarray(theirs), rtol=RTOL, atol=atol)


@pytest.mark.parametrize("softmax", [False, True])
def test_pixel_flipping_equals_quantus(lenet, digits, softmax):
    x, y = digits
    maps = random_maps((8, 1, 28, 28))
    ours = ds.metrics.pixel_flipping(lenet, x, maps, y, per_step=16, replacement=0.0, softmax=softmax)
    metric = quantus.PixelFlipping(features_in_step=16, perturb_baseline=0.0, normalise=False, abs=False)
    theirs = metric(lenet.module, *numpy(x, y, maps), channel_first=True, softmax=softmax, device="cpu")
    # Quantus keeps the scores after each step; ours starts with the unperturbed input.
    close(ours.curve[:, 1:], theirs)
    close(
        ours.auc * (ours.curve.shape[1] - 1),
        [np.trapezoid([s0, *c]) for s0, c in zip(ours.curve[:, 0], theirs, strict=True)],
    )


def test_pixel_flipping_equals_quantus_on_color_feature_maps(efficientnet, photos):
    x = efficientnet.preprocess([photos["chelsea"], photos["coffee"]])
    y = torch.tensor([281, 967])
    maps = random_maps((2, 3, 224, 224))  # one value per input feature: features flip one by one
    step = 224 * 224 // 4
    ours = ds.metrics.pixel_flipping(efficientnet, x, maps, y, per_step=step, replacement=0.0)
    metric = quantus.PixelFlipping(features_in_step=step, perturb_baseline=0.0, normalise=False, abs=False)
    theirs = metric(efficientnet.module, *numpy(x, y, maps), channel_first=True, softmax=False, device="cpu")
    close(ours.curve[:, 1:], theirs, atol=1e-4)


@pytest.mark.parametrize(("order", "size"), [("morf", 4), ("lerf", 4), ("morf", 5)])
def test_region_perturbation_equals_quantus(lenet, digits, order, size):
    x, y = digits
    maps = random_maps((8, 1, 28, 28), seed=1)
    ours = ds.metrics.region_perturbation(
        lenet, x, maps, y, region_size=size, steps=30, order=order, replacement=0.0, softmax=True
    )
    metric = quantus.RegionPerturbation(
        patch_size=size, order=order, regions_evaluation=30, perturb_baseline=0.0, normalise=False, abs=False
    )
    theirs = metric(lenet.module, *numpy(x, y, maps), channel_first=True, softmax=True, device="cpu")
    # Quantus returns the drop f(x) - f(x_k) for k >= 1 (5 does not divide 28: both center the grid).
    close(ours.drop[:, 1:], theirs, atol=1e-6)


def test_randomization_equals_quantus_mprt(lenet, digits):
    x, y = digits
    target = ds.targets.Classes(y)
    maps = gradient(lenet, x, target)
    for order, quantus_order in (("cascading", "top_down"), ("independent", "independent")):
        ours = ds.metrics.randomization(
            lenet, x, maps, target, method=gradient, order=order, similarity="spearman", seed=43
        )
        metric = quantus.MPRT(layer_order=quantus_order, seed=42, abs=True, normalise=False)
        theirs = metric(
            lenet.module,
            *numpy(x, y, maps),
            explain_func=quantus_gradient,
            channel_first=True,
            softmax=False,
            device="cpu",
        )
        # Quantus also scores the unrandomized model ('original': the given maps against themselves).
        assert list(theirs) == ["original", *ours.layers]
        for step, layer in enumerate(ours.layers):
            close(ours.similarity["spearman"][:, step], theirs[layer], atol=1e-7)


def test_randomization_ssim_equals_skimage_on_2d_maps(lenet, digits):
    skimage_metrics = pytest.importorskip("skimage.metrics")
    x, y = digits
    target = ds.targets.Classes(y)
    maps = gradient(lenet, x, target)
    ours = ds.metrics.randomization(
        lenet, x, maps, target, method=gradient, layers=["fc3"], similarity="ssim", keep_maps=True
    )
    a = maps.abs() / maps.abs().flatten(1).amax(1).view(-1, 1, 1, 1)
    b = ours.maps[0].abs() / ours.maps[0].abs().flatten(1).amax(1).view(-1, 1, 1, 1)
    expected = []
    for first, second in zip(
        a[:, 0].numpy().astype(np.float64), b[:, 0].numpy().astype(np.float64), strict=True
    ):
        extent = max(first.max(), second.max()) - min(first.min(), second.min())
        expected.append(skimage_metrics.structural_similarity(first, second, data_range=extent))
    close(ours.similarity["ssim"][:, 0], expected, atol=1e-7)


def quantus_off_classes(y, classes, seed):
    """The off-class draw of Quantus's RandomLogit.evaluate_batch, replayed."""
    np.random.seed(seed)
    draw = np.random.randint(0, classes - 1, len(y))
    others = np.stack([np.delete(np.arange(classes), label) for label in y])
    return others[np.arange(len(y)), draw]


def flat_ssim(a, b):
    """Quantus's SSIM: skimage's on the flattened maps (a 1-D signal)."""
    return ssim(a.reshape(a.shape[0], 1, 1, -1), b.reshape(b.shape[0], 1, 1, -1))


def test_random_logit_equals_quantus(lenet, digits):
    x, y = digits
    target = ds.targets.Classes(y)
    maps = gradient(lenet, x, target)
    off = quantus_off_classes(y.numpy(), 10, seed=42)
    for ours_similarity, theirs_similarity in (
        ("spearman", quantus.similarity_func.correlation_spearman),
        (flat_ssim, quantus.similarity_func.ssim),
    ):
        ours = ds.metrics.random_logit(
            lenet,
            x,
            maps,
            target,
            method=gradient,
            off_target=off,
            similarity=ours_similarity,
            normalize=False,
        )
        metric = quantus.RandomLogit(
            num_classes=10, seed=42, similarity_func=theirs_similarity, normalise=False, abs=False
        )
        theirs = metric(
            lenet.module, *numpy(x, y, maps), explain_func=quantus_gradient, channel_first=True, device="cpu"
        )
        close(ours, theirs, atol=1e-7)


def test_pointing_game_equals_quantus_without_tolerance(digits):
    x, _ = digits
    maps = random_maps((8, 1, 28, 28), seed=2)
    masks = random_maps((8, 1, 28, 28), seed=3) > 0.7
    ours = ds.metrics.pointing_game(None, x, maps, masks=masks, tolerance=0)
    theirs = quantus.PointingGame(normalise=False, abs=False)(
        None, *numpy(x), np.zeros(8, dtype=int), *numpy(maps, masks.float()), channel_first=True
    )
    assert ours.tolist() == [float(hit) for hit in theirs]
    assert 0 < ours.sum() < 8  # both outcomes occur


def test_infidelity_equals_quantus_on_its_grid_sweep(lenet, digits):
    """Quantus's Infidelity replaces the cells of a patch grid with the baseline one after another,
    cumulatively, and averages (f(x) - f(x_k) - sum a * (x - x_k))^2 over the sweep. Given exactly those
    perturbations I_k = x - x_k, ours is the same expectation."""
    x, y = digits
    maps = random_maps((8, 1, 28, 28), seed=4) - 0.5
    patch = 7
    cells = torch.arange(28) // patch
    cell_of_pixel = cells[:, None] * (28 // patch) + cells[None, :]
    sweep = torch.stack([(cell_of_pixel <= k).float()[None, None] * x for k in range((28 // patch) ** 2)])
    ours = ds.metrics.infidelity(lenet, x, maps, y, perturbation=sweep, normalize=False, softmax=True)
    metric = quantus.Infidelity(
        perturb_patch_sizes=[patch], n_perturb_samples=1, perturb_baseline=0.0, normalise=False, abs=False
    )
    theirs = metric(lenet.module, *numpy(x, y, maps), channel_first=True, softmax=True, device="cpu")
    close(ours, theirs, atol=1e-7)


def test_max_sensitivity_equals_quantus(lenet, digits):
    x, y = digits
    target = ds.targets.Classes(y)
    maps = gradient(lenet, x, target)
    samples, radius = 5, 0.2
    np.random.seed(
        7
    )  # Quantus draws its noise from numpy's global generator, one [B, features] array per step
    noise = np.stack([np.random.uniform(-radius, radius, (8, 28 * 28)) for _ in range(samples)])
    noise = torch.as_tensor(noise, dtype=torch.float32).view(samples, 8, 1, 28, 28)
    ours = ds.metrics.max_sensitivity(lenet, x, maps, target, method=gradient, perturbations=noise)
    np.random.seed(7)
    metric = quantus.MaxSensitivity(nr_samples=samples, lower_bound=radius, normalise=False, abs=False)
    theirs = metric(
        lenet.module, *numpy(x, y, maps), explain_func=quantus_gradient, channel_first=True, device="cpu"
    )
    close(ours, theirs, atol=1e-6)


# ---- where we differ on purpose ----


def test_differs_pixel_flipping_flips_whole_pixels_for_one_channel_maps(efficientnet, photos):
    """A [B,1,H,W] map ranks pixels: we replace all three channels of a pixel together. Quantus broadcasts the
    map to the channels and flips features, so tied channel values are flipped in numpy's arbitrary order and
    a step can end half-way through a pixel."""
    x = efficientnet.preprocess([photos["chelsea"]])
    maps = random_maps((1, 1, 224, 224), seed=5)
    step = 224 * 224 // 4
    ours = ds.metrics.pixel_flipping(efficientnet, x, maps, [281], per_step=step, replacement=0.0)
    assert ours.curve.shape == (1, 5)
    theirs = quantus.PixelFlipping(features_in_step=step, perturb_baseline=0.0, normalise=False, abs=False)(
        efficientnet.module, *numpy(x), np.array([281]), *numpy(maps), channel_first=True, softmax=False
    )
    assert len(theirs[0]) == 12  # 3 x 224 x 224 features in steps of a quarter of the pixels
    # after all pixels: the same all-black input in both
    close(ours.curve[0, -1], theirs[0][-1], atol=1e-4)
    assert not np.allclose(ours.curve[0, 1], theirs[0][0], rtol=1e-3)


def test_differs_mean_replacement_is_the_image_mean(lenet, digits):
    """'mean' is each image's own per-channel mean. Quantus's 'mean' is the mean of the array as perturbed so
    far (it drifts from step to step) and, in region perturbation, includes the edge padding."""
    x, y = digits
    maps = random_maps((8, 1, 28, 28), seed=6)
    ours = ds.metrics.pixel_flipping(lenet, x, maps, y, per_step=16, replacement="mean", softmax=True)
    metric = quantus.PixelFlipping(features_in_step=16, perturb_baseline="mean", normalise=False, abs=False)
    theirs = np.asarray(metric(lenet.module, *numpy(x, y, maps), channel_first=True, softmax=True))
    assert np.allclose(ours.curve[:, 1], theirs[:, 0], rtol=RTOL, atol=ATOL)  # first step: the same mean
    assert not np.allclose(ours.curve[:, 1:], theirs, rtol=1e-3)


def test_differs_uniform_replacement_is_noise_per_feature(lenet, digits):
    """'uniform' draws one noise value per feature (Samek et al. 2017's noise). Quantus 0.6.0's batched
    'uniform' draws one value per sample and step and fills the whole step with it."""
    x, y = digits
    maps = random_maps((8, 1, 28, 28), seed=7)
    np.random.seed(0)
    metric = quantus.RegionPerturbation(
        patch_size=4, regions_evaluation=5, perturb_baseline="uniform", normalise=False, abs=False
    )
    captured = []
    original = metric.perturb_func

    def spy(arr, indices, **kwargs):
        perturbed = original(arr=arr, indices=indices, **kwargs)
        captured.append(np.take_along_axis(perturbed, indices, axis=1))
        return perturbed

    metric.perturb_func = spy
    metric(lenet.module, *numpy(x, y, maps), channel_first=True, softmax=True)
    assert all(np.ptp(values, axis=1).max() == 0 for values in captured)  # one value per sample and step
    fill = ds.metrics._common.replacement_values(lenet, x, "uniform", torch.Generator().manual_seed(0))
    assert fill.flatten(1).std(1).min() > 0.1  # ours: fresh noise per pixel


def test_differs_ssim_compares_images_not_flattened_vectors(lenet, digits):
    """Our SSIM slides a 7x7 window over the 2-D map (Wang et al. 2004, as Adebayo et al. use it); Quantus's
    ssim flattens the map first and slides a 7-sample window along the vector."""
    x, y = digits
    target = ds.targets.Classes(y)
    maps = gradient(lenet, x, target).abs()
    other = gradient(lenet, x, ds.targets.Classes((y + 1) % 10)).abs()
    theirs = quantus.similarity_func.ssim(
        *[m.reshape(8, -1).numpy().astype(np.float64) for m in (maps, other)], batched=True
    )
    close(flat_ssim(maps, other), theirs, atol=1e-7)  # we reproduce theirs on request...
    assert not np.allclose(ssim(maps, other).numpy(), theirs, atol=1e-3)  # ...but default to 2-D SSIM


def test_differs_pointing_game_empty_masks_are_left_out():
    """A sample without the object scores NaN (Zhang et al. leave it out); Quantus 0.6.0 writes NaN into a
    boolean array, which stores True: a hit."""
    x = torch.zeros(2, 1, 8, 8)
    maps = random_maps((2, 1, 8, 8))
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, :4] = 1
    ours = ds.metrics.pointing_game(None, x, maps, masks=masks, tolerance=0)
    theirs = quantus.PointingGame(normalise=False, abs=False)(
        None, *numpy(x), np.zeros(2, dtype=int), *numpy(maps, masks), channel_first=True
    )
    assert np.isnan(ours[1].item()) and bool(theirs[1]) is True


def test_differs_infidelity_samples_random_perturbations(lenet, digits):
    """Yeh et al.'s infidelity is an expectation over random perturbations I. Quantus's is a deterministic
    cumulative sweep over a patch grid (repeated n_perturb_samples times); with the default patch size 4 its
    padding bug does not bite on 28x28 images (it does with 5-pixel patches), and both differ from ours on Gaussian noise."""
    x, y = digits
    maps = random_maps((8, 1, 28, 28), seed=8) - 0.5
    ours = ds.metrics.infidelity(lenet, x, maps, y, samples=16, normalize=False)
    metric = quantus.Infidelity(perturb_patch_sizes=[4], n_perturb_samples=1, normalise=False, abs=False)
    theirs = metric(lenet.module, *numpy(x, y, maps), channel_first=True, softmax=False)
    assert not np.allclose(ours.numpy(), theirs, rtol=0.1)
    # a patch size that does not divide the image: Quantus indexes the unpadded array with padded indices
    odd = quantus.Infidelity(perturb_patch_sizes=[5], n_perturb_samples=1, normalise=False, abs=False)
    with pytest.raises(ValueError, match="cannot reshape"):
        odd(lenet.module, *numpy(x, y, maps), channel_first=True, softmax=False)
