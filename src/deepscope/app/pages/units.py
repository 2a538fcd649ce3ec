"""Pictures of what a layer's units encode, for ``deepscope units`` and the demo page (data: any dataset that
:func:`deepscope.load_dataset` reads)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

from deepscope.render.units import (
    activation_grid,
    concept_grid,
    filter_grid,
    image_strip,
    inversion_comparison,
    patch_grid,
)
from deepscope.units import (
    activations,
    compare_inversions,
    concepts,
    filters,
    invert_layers,
    top_patches,
    train_inverter,
    visualize,
)
from deepscope.units.maps import has_weight_images
from deepscope.zoo.datasets import mnist5k, split_item
from deepscope.zoo.vision_model import VisionModel


def write_unit_pictures(
    vm: VisionModel,
    layer: str,
    out: Path,
    data=None,
    units: Sequence[int] | None = None,
    k: int = 9,
    steps: int = 128,
    batch_size: int = 64,
) -> Iterator[Path]:
    """Write the layer's pictures into ``out``: ``filters.png`` (convolutions, linear layers reading pixels),
    ``activations.png`` and ``top-patches.png`` (with data: the first sample's maps; each unit's top patches with
    deconvnet projections), ``features.png`` (feature visualization of each unit), ``inversion.png`` (with data:
    the first sample reconstructed from this layer). Yields each path as soon as it is written (the progress of
    the command)."""
    out.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, vm.preprocessing.channels, *(vm.input_size or (224, 224)), device=vm.device)
    channels = activations(vm, example, layer).shape[1]
    units = list(units) if units is not None else list(range(min(channels, 8)))

    def save(picture: Image.Image, name: str) -> Path:
        path = out / name
        picture.save(path)
        return path

    if has_weight_images(vm, layer, example):
        yield save(filter_grid(filters(vm, layer, example)), "filters.png")
    if data is not None:
        sample = split_item(data[0])[0]
        first = vm.preprocess([sample]) if isinstance(sample, Image.Image) else sample[None]
        maps = activations(vm, first, layer)
        if maps.ndim == 4:
            yield save(activation_grid(maps[0], limit=64), "activations.png")
        hits = top_patches(vm, data, layer, units=units, k=k, batch_size=batch_size, projection="deconvnet")[
            layer
        ]
        yield save(patch_grid(hits), "top-patches.png")
        strip = invert_layers(vm, first, [layer])
        original = vm.pixels([sample]) if isinstance(sample, Image.Image) else strip[0].image
        yield save(
            image_strip(
                torch.cat([original, strip[0].image]),
                ["input", f"{layer}: error {float(strip[0].error[0]):.2f}"],
            ),
            "inversion.png",
        )
    result = visualize(vm, [f"{layer}:{unit}" for unit in units], steps=steps)
    yield save(
        image_strip(result.image, [str(u) for u in units], tile_size=96, columns=min(len(units), 8)),
        "features.png",
    )


# demo section ---------------------------------------------------------------------------------------------------


def units_section(report, context) -> None:
    """LeNet on MNIST-5k and EfficientNet-Lite0 on the bundled photos: what units encode."""
    start = time.perf_counter()
    section = report.section("What units encode")
    lenet, digits = context.lenet, mnist5k()
    section.text(
        "LeNet-5 on the 5,000 MNIST digits. Left: conv2's activation maps for one digit (DeepVis view: each map "
        "scaled to its own range, strongest mean first, channel index on each tile). Middle: conv2's kernels, one "
        "row per filter, one tile per input channel. Right: for 6 conv2 units, the 6 digits that excite each most "
        "(one streaming pass, ties to the lower index), cropped to the unit's 14x14 receptive field, with the "
        "deconvnet projection of each hit beside it (Zeiler & Fergus 2014)."
    )
    x = lenet.preprocess(digits.images[:1])
    section.image(
        activation_grid(activations(lenet, x, "conv2")[0], tile_size=40, columns=8), "conv2 activations"
    )
    section.image(filter_grid(filters(lenet, "conv2"), tile_size=20), "conv2 kernels")
    hits = top_patches(lenet, digits, "conv2", units=range(6), k=6, batch_size=500, projection="deconvnet")[
        "conv2"
    ]
    section.image(patch_grid(hits, tile_size=40), "conv2 top-6 patches | deconvnet projections")

    features = visualize(lenet, [f"conv2:{unit}" for unit in range(8)], steps=192)
    classes = visualize(lenet, [f"logit:{digit}" for digit in range(10)], steps=192)
    best = activations(lenet, lenet.preprocess(digits.images), "conv2")[:, :8].mean((2, 3)).max(0).values
    section.text(
        "Feature visualization (Olah et al. 2017: Fourier parameterization, random pad/jitter/scale/rotate). Top: "
        "conv2 units 0-7, each caption the objective reached and, in brackets, the best of the 5,000 real digits. "
        "Bottom: the class models of digits 0-9 (Simonyan et al. 2014, unnormalized scores)."
    )
    section.image(
        image_strip(
            features.image,
            [f"{u}: {float(features.value[u]):.1f} ({float(best[u]):.1f})" for u in range(8)],
            tile_size=84,
        ),
        "conv2 units",
        pixelated=True,
    )
    section.image(
        image_strip(classes.image, [str(c) for c in range(10)], tile_size=84), "class models", pixelated=True
    )

    strip = invert_layers(lenet, x, ["conv1", "conv2", "fc1", "fc3"], schedule=[(200, 1.0), (100, 0.1)])
    section.text(
        "Inversion (Mahendran & Vedaldi 2015, their priors and weights): the digit reconstructed from each layer; "
        "captions give the relative feature error reached, then the relative image error."
    )
    section.image(
        image_strip(
            torch.cat([lenet.pixels(digits.images[0]), *[r.image for r in strip]]),
            ["input", *[f"{r.layer} {float(r.error[0]):.2f}/{float(r.image_error[0]):.2f}" for r in strip]],
            tile_size=84,
        ),
        "LeNet inversion strip",
        pixelated=True,
    )

    vm = context.efficientnet
    photo = context.photos["coffee"]
    section.text(
        "EfficientNet-Lite0 on a bundled photo: block 3's activations, and feature visualizations of four channels "
        "of blocks 5 and 10 (128x128, 96 steps each)."
    )
    maps = activations(vm, vm.preprocess([photo]), "_blocks.3")[0]
    section.image(
        activation_grid(maps, tile_size=40, columns=10, limit=40), "_blocks.3 activations (top 40 by mean)"
    )
    chosen = ["_blocks.5:3", "_blocks.5:17", "_blocks.10:0", "_blocks.10:40"]
    result = visualize(vm, chosen, size=128, steps=96)
    section.image(image_strip(result.image, chosen, tile_size=128), "Lite0 channels")
    context.timings["units_section_inner"] = time.perf_counter() - start


def concepts_section(report, context) -> None:
    """Demo section: LeNet's visual concepts, the MLP's weight images and predictions, and decoder against
    optimization inversion, at small settings that the page states."""
    section = report.section("Concepts, weight images and decoder inversion")
    lenet, mlp, digits = context.lenet, context.mlp, context.digits

    found = concepts(lenet, digits, "conv2", k=12, patches=8, batch_size=250)
    section.text(
        f"Visual concepts (Wang et al. 2015), ds.units.concepts: LeNet-5's conv2 gives a 16-channel vector at each of "
        f"its 10x10 positions; the {found.vectors:,} vectors of the {len(digits):,} held-out digits, normalized to "
        "unit length, are clustered into k=12 concepts by streaming mini-batch k-means (250 digits a batch, one "
        "pass moving the centers and one assigning; the default k is 32). Each row is a concept's 8 nearest "
        "patches, cropped to conv2's 14x14 receptive field; its caption gives the concept's share of the vectors, "
        f"its majority digit and that digit's share. Overall purity {found.purity:.0%}: at conv2 a concept is a "
        "stroke that many digits share, not a digit."
    )
    section.image(concept_grid(found, tile_size=40), "LeNet-5 conv2: 12 visual concepts", pixelated=True)

    _, mlp_top = mlp.predict(mlp.preprocess(digits.images), k=1)
    _, lenet_top = lenet.predict(lenet.preprocess(digits.images), k=1)
    mlp_classes, lenet_classes = mlp_top[:, 0].cpu(), lenet_top[:, 0].cpu()
    accuracy = (mlp_classes == digits.labels).float().mean().item()
    agreement = (mlp_classes == lenet_classes).float().mean().item()
    mistakes = torch.nonzero(mlp_classes != digits.labels).flatten()[:10].tolist()
    section.text(
        "A fully connected network, zoo:mlp_mnist (784-300-100-10, ReLU; trained by scripts/train_mlp.py on the "
        f"same 4,000 digits as LeNet-5): held-out accuracy {accuracy:.1%} on the {len(digits):,} others, the same "
        f"class as LeNet-5 on {agreement:.1%} of them. Its fc1 reads the pixels, so each of its 300 units has "
        "one weight per pixel: ds.units.filters(mlp, 'fc1') reshapes them to 28x28 images (Erhan et al. 2009), "
        "here the first 100, gray at zero, white positive. Below, the MLP's first mistakes: true digit, the "
        "MLP's class, LeNet-5's class."
    )
    section.image(
        filter_grid(filters(mlp, "fc1"), tile_size=40, max_filters=100, labels=False),
        "MLP fc1: weight images of units 0-99, row by row",
    )
    if mistakes:
        section.image(
            image_strip(
                mlp.pixels([digits.images[i] for i in mistakes]),
                [
                    f"{int(digits.labels[i])}: MLP {mlp.label(int(mlp_classes[i]))}, "
                    f"LeNet {lenet.label(int(lenet_classes[i]))}"
                    for i in mistakes
                ],
                columns=5,
            ),
            "the MLP's mistakes",
            pixelated=True,
        )

    # the training digits are stored by class: every fourth one gives all ten
    training = mnist5k("train")
    training = training.subset(range(0, len(training), 4))
    inverters = [train_inverter(lenet, training, layer, epochs=3, width=8) for layer in ("conv1", "conv2")]
    firsts = [int(torch.nonzero(digits.labels == digit)[0]) for digit in range(10)]
    x = lenet.preprocess([digits.images[i] for i in firsts])
    for inverter in inverters:
        inverter(x[:1])  # the first call pays a one-time setup that the time per image should not show
    comparison = compare_inversions(lenet, x, inverters, schedule=[(200, 1.0), (100, 0.1)])
    section.text(
        "Decoder inversion (Dosovitskiy & Brox 2016), ds.units.train_inverter: a small up-convolutional decoder "
        f"per layer (width 8; the default is 64) trained to map LeNet-5's conv1 and conv2 features back to the "
        f"digits, on {len(training):,} training digits for 3 epochs (the default is 10), then one forward pass per "
        "image; against the optimization-based inversion (Mahendran & Vedaldi 2015, 300 steps) of the first "
        "held-out digit of each class, by ds.units.compare_inversions. Mean relative image error, decoder / "
        "optimization: "
        + ", ".join(
            f"{layer} {float(decoder.mean()):.2f} / {float(optimized.mean()):.2f}"
            for layer, decoder, optimized in zip(
                comparison.layers, comparison.decoder_error, comparison.optimization_error, strict=True
            )
        )
        + "."
    )
    section.image(inversion_comparison(comparison, tile_size=40), "decoder against optimization inversion")
