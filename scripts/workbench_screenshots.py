"""Screenshots of every workbench view for the README: docs/gallery/workbench-*.png.

    python scripts/workbench_screenshots.py            # starts `deepscope serve` itself (a scratch workspace)
    python scripts/workbench_screenshots.py --out DIR  # elsewhere

It serves the default models (EfficientNet-Lite0 on the bundled photos, LeNet-5 on the held-out digits), for
the comparison view LeNet-5 beside an untrained copy on the same digits, and for the panels of issue 19 (weight
images, class selectivity, visual concepts, decoder inversion, neuron clusters, two networks layer by layer)
LeNet-5 and the zoo MLP on the same digits, then drives headless chromium through the page objects of the
browser tests. A panel's picture is the panel alone. Needs Playwright (the dev extra) and Debian's chromium.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the page objects

VIEWPORT = {"width": 1440, "height": 940}
VIEWS = (
    "image",
    "architecture",
    "layer",
    "unit",
    "dataset",
    "compare",
    "weights",
    "selectivity",
    "concepts",
    "inversion",
    "clusters",
    "layers",
)


def untrained_lenet():
    """LeNet-5 with fresh random weights and the trained model's preprocessing and labels: what the comparison
    view compares the trained one with (`python:workbench_screenshots:untrained_lenet`)."""
    import torch

    import deepscope as ds
    from deepscope.zoo.lenet import lenet5

    torch.manual_seed(0)
    return replace(ds.load_model("zoo:lenet_mnist"), module=lenet5().eval(), name="untrained_lenet")


def lasso_around(base: str, label: int) -> str:
    """A lasso (the URL's `sel`) around the middle of the t-SNE cluster of the digits labeled `label`."""
    import urllib.request

    import numpy as np

    from deepscope.app.server.arrays import decode_array

    def array(path: str) -> np.ndarray:
        with urllib.request.urlopen(base + path) as response:
            return decode_array(response.read())[0]

    points = array("/api/models/lenet_mnist/dataset/points")
    layout = array("/api/models/lenet_mnist/dataset/layout?kind=tsne")[points[:, 1] == label]
    low, high = np.percentile(layout, 8, axis=0), np.percentile(layout, 92, axis=0)
    corners = [(low[0], low[1]), (high[0], low[1]), (high[0], high[1]), (low[0], high[1])]
    return "lasso:" + ";".join(f"{x:.5g},{y:.5g}" for x, y in corners)


def shoot(page, path: Path, panels=None) -> None:
    """The page as it shows, or only the box around ``panels`` (locators, on the screen together) when given."""
    page.wait_for_timeout(400)  # let the last canvases paint
    if panels:
        panels[0].scroll_into_view_if_needed()
        boxes = [panel.bounding_box() for panel in panels]
        left, top = min(b["x"] for b in boxes), min(b["y"] for b in boxes)
        right = max(b["x"] + b["width"] for b in boxes)
        bottom = max(b["y"] + b["height"] for b in boxes)
        page.screenshot(
            path=str(path), clip={"x": left, "y": top, "width": right - left, "height": bottom - top}
        )
    else:
        page.screenshot(path=str(path))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gallery")
    parser.add_argument("--views", nargs="+", choices=VIEWS, default=VIEWS, help="only these pictures")
    arguments = parser.parse_args()
    arguments.out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import expect, sync_playwright

    from pages.architecture import ArchitecturePage
    from pages.base import Workbench
    from pages.compare import ComparePage
    from pages.dataset import DatasetPage
    from pages.image import ImagePage
    from pages.layer import LayerPage
    from pages.server import launch_chromium, workbench

    expect.set_options(timeout=180_000)

    def image(bench: Workbench) -> None:
        methods = "grad_cam,layer_cam,integrated_gradients,guided_backprop"
        bench.open(model="efficientnet_lite0", view="image", image="photo:coffee", methods=methods)
        ImagePage(bench).wait_maps(timeout=180_000)

    def architecture(bench: Workbench) -> None:
        bench.open(model="efficientnet_lite0", view="architecture", image="photo:chelsea", open="_blocks.2")
        ArchitecturePage(bench).wait_drawn().wait_colored()

    def layer(bench: Workbench) -> None:
        bench.open(
            model="efficientnet_lite0", view="layer", image="photo:chelsea", layer="_conv_stem", unit="9"
        )
        LayerPage(bench).wait_grid()
        expect(bench.page.locator("section[aria-label='layer statistics'] .uplot")).to_be_visible()

    def unit(bench: Workbench) -> None:
        bench.open(model="lenet_mnist", view="unit", layer="conv2", unit="5", image="sample:lenet_mnist:7")
        expect(bench.page.locator("section[aria-label='top patches'] .tile")).to_have_count(9)
        bench.page.get_by_role("button", name="Visualize").click()
        expect(bench.page.locator(".featurevis img")).to_be_visible()

    def dataset(bench: Workbench) -> None:
        bench.open(model="lenet_mnist", view="dataset", layout="tsne", color="label")
        DatasetPage(bench).wait_scatter()  # (computes the t-SNE layout the first time)
        selection = lasso_around(bench.base, 7)
        bench.open(model="lenet_mnist", view="dataset", layout="tsne", color="label", sel=selection)
        DatasetPage(bench).wait_scatter()
        expect(bench.page.locator("section[aria-label='selection'] .sample").first).to_be_visible()

    def compare(bench: Workbench) -> None:
        bench.open(model="lenet_mnist", view="compare")
        expect(bench.page.locator("canvas[aria-label='CKA matrix']")).to_be_visible()

    def weights(bench: Workbench):
        bench.open(model="mlp_mnist", view="layer", layer="fc1", image="sample:mlp_mnist:3")
        page = LayerPage(bench).wait_grid()
        page.weight_images()
        return [page.panel("filters")]

    def selectivity(bench: Workbench):
        bench.open(model="mlp_mnist", view="layer", layer="fc3:input", unit="5", image="sample:mlp_mnist:3")
        page = LayerPage(bench)
        page.class_histograms(5)
        return [page.panel("class selectivity")]

    def concepts(bench: Workbench):
        bench.open(
            model="lenet_mnist", view="layer", layer="conv2", concepts="8", image="sample:lenet_mnist:3"
        )
        page = LayerPage(bench)
        page.find_concepts()
        return [page.panel("visual concepts")]

    def inversion(bench: Workbench):
        bench.open(model="lenet_mnist", view="layer", layer="conv1", image="sample:lenet_mnist:7")
        page = LayerPage(bench).wait_grid()
        page.train_decoder(epochs=5)
        page.compare_with_optimization(steps=200)
        return [page.panel("decoder inversion")]

    def clusters(bench: Workbench) -> None:
        bench.open(model="lenet_mnist", view="architecture", mode="clusters", k="4")
        ArchitecturePage(bench).wait_clusters()

    def layers(bench: Workbench):
        bench.page.set_viewport_size({"width": VIEWPORT["width"], "height": 1500})  # both panels at once
        bench.open(model="lenet_mnist", view="compare", b="mlp_mnist", layout="pca")
        page = ComparePage(bench).wait_cka()
        page.sparsity("mlp_mnist")
        page.layouts()
        return [bench.page.locator(f"section[aria-label='{name}']") for name in ("sparsity", "layouts")]

    default_views = {
        "image": image,
        "architecture": architecture,
        "layer": layer,
        "unit": unit,
        "dataset": dataset,
    }
    servers = [
        ((), (), None, default_views),
        (
            ("zoo:lenet_mnist", "python:workbench_screenshots:untrained_lenet"),
            ("--data", "mnist5k:test"),
            ROOT / "scripts",
            {"compare": compare},
        ),
        (
            ("zoo:lenet_mnist", "zoo:mlp_mnist"),
            ("--data", "mnist5k:test"),
            None,
            {
                "weights": weights,
                "selectivity": selectivity,
                "concepts": concepts,
                "inversion": inversion,
                "clusters": clusters,
                "layers": layers,
            },
        ),
    ]
    with tempfile.TemporaryDirectory() as scratch, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
        for index, (models, extra, pythonpath, views) in enumerate(servers):
            chosen = {name: show for name, show in views.items() if name in arguments.views}
            if not chosen:
                continue
            with workbench(Path(scratch) / str(index), models, extra, pythonpath=pythonpath) as base:
                bench = Workbench(page, base)
                for name, show in chosen.items():
                    panels = show(bench)
                    shoot(page, arguments.out / f"workbench-{name}.png", panels)
                    page.set_viewport_size(VIEWPORT)
                    if bench.errors:
                        sys.exit(f"the {name} view raised: {bench.errors}")
        browser.close()


if __name__ == "__main__":
    main()
