"""The workbench in a real browser: Debian's chromium driven by Playwright against `deepscope serve` (the
default models: EfficientNet-Lite0 on the bundled photos, LeNet-5 on the held-out digits).

Each test acts as a person would (clicks, a lasso, a copied link) and checks what the page shows against what
the server's API says independently (the points and layout arrays, the confusion matrix, the layer list).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as Polygon
from PIL import Image
from playwright.sync_api import expect

from pages.architecture import ArchitecturePage
from pages.base import Workbench
from pages.dataset import DatasetPage
from pages.image import ImagePage
from pages.layer import LayerPage
from pages.server import chromium, get_array, get_json, opened_workbench, workbench

expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    with workbench(tmp_path_factory.mktemp("workbench")) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def bench(browser, server):
    with opened_workbench(browser, server) as page:
        yield page


def test_the_page_opens_on_an_image_with_its_predictions_and_heat_maps(bench):
    bench.open()
    assert bench.view() == "image"
    state = bench.state()
    assert state["model"] == "efficientnet_lite0"
    image = ImagePage(bench)
    classes = [c for c, _ in image.predictions()]
    expected = get_json(bench.base, f"/api/models/efficientnet_lite0/predict?image={state['image']}&k=5")
    assert classes == [p["class"] for p in expected]
    maps = image.wait_maps()
    assert maps and set(maps.values()) == {"done"}


def test_clicking_a_graph_node_opens_its_layer_with_one_tile_per_channel(bench):
    bench.open(model="efficientnet_lite0", view="architecture", image="photo:coffee")
    graph = ArchitecturePage(bench).wait_drawn().wait_colored()
    layers = {layer["name"]: layer for layer in get_json(bench.base, "/api/models/efficientnet_lite0/layers")}
    assert "_conv_stem" in graph.layers()
    graph.click_node("_conv_stem")
    layer = LayerPage(bench).wait_grid()
    assert bench.state()["view"] == "layer" and bench.state()["layer"] == "_conv_stem"
    assert layer.units_in_grid() == layers["_conv_stem"]["units"] == 32
    layer.click_tile(0)
    summary = get_json(
        bench.base, "/api/models/efficientnet_lite0/activations/summary?image=photo:coffee&layer=_conv_stem"
    )
    strongest = summary["order"][0]
    assert bench.state()["unit"] == str(strongest)
    assert layer.selected_unit_title().lower() == f"unit {strongest}"
    bench.page.go_back()
    expect(bench.page.locator("#view[data-view='layer']")).to_be_attached()
    assert "unit" not in bench.state()
    bench.page.go_back()
    ArchitecturePage(bench).wait_drawn()
    assert bench.view() == "architecture"


def test_a_block_expands_into_its_operations(bench):
    bench.open(model="efficientnet_lite0", view="architecture", image="photo:coffee")
    graph = ArchitecturePage(bench).wait_drawn()
    collapsed = graph.node_count()
    graph.expand("_blocks.2")
    expect(bench.page.locator(".graph-node[data-layer='_blocks.2._project_conv']")).to_be_visible()
    assert graph.node_count() > collapsed
    assert bench.state()["open"] == "_blocks.2"
    # the residual addition of the block is drawn as a skip connection
    assert bench.page.locator(".graph-edge.skip").count() >= 1
    # a layer inside a collapsed block is found by name: its block opens, the view centers on it
    graph.find("_blocks.9._project_conv")
    assert set(bench.state()["open"].split(",")) == {"_blocks.2", "_blocks.9"}
    graph.click_node("_blocks.9._project_conv")
    expect(bench.page.locator("#view[data-view='layer']")).to_be_attached()


def test_picking_a_photo_shows_one_heat_map_per_chosen_method_and_a_class_retargets_them(bench):
    bench.open(model="efficientnet_lite0", view="image", image="photo:chelsea", methods="grad_cam,saliency")
    image = ImagePage(bench)
    image.pick("photo:coffee")
    assert bench.state()["image"] == "photo:coffee"
    assert image.wait_maps() == {"grad_cam": "done", "saliency": "done"}
    predictions = image.predictions()
    image.click_prediction(2)
    assert bench.state()["target"] == str(predictions[2][0])
    assert image.wait_maps() == {"grad_cam": "done", "saliency": "done"}
    expect(bench.page.locator(".map-card[data-method='grad_cam'] .hint").first).to_contain_text(
        predictions[2][1]
    )
    image.toggle_method("layer_cam")
    assert set(bench.state()["methods"].split(",")) == {"grad_cam", "saliency", "layer_cam"}
    assert set(image.wait_maps()) == {"grad_cam", "saliency", "layer_cam"}


def test_an_uploaded_photo_is_explained_and_a_file_that_is_not_an_image_is_refused(bench, tmp_path):
    picture = tmp_path / "gradient.png"
    rows = np.linspace(0, 255, 96, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(rows, (96, 1))] * 3, axis=-1)).save(picture)
    bench.open(model="efficientnet_lite0", view="image", image="photo:chelsea", methods="grad_cam")
    image = ImagePage(bench)
    image.upload(picture)
    digest = hashlib.sha256(picture.read_bytes()).hexdigest()
    expect(bench.page).to_have_url(re.compile(f"image={digest}"))
    expect(bench.page.locator(f".thumb[data-image='{digest}'][aria-pressed='true']")).to_be_visible()
    assert image.wait_maps() == {"grad_cam": "done"}
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    image.upload(text)
    expect(bench.page.locator(".picker .failure")).to_be_visible()
    assert "image" in bench.page.locator(".picker .failure").inner_text().lower()


def lenet_table(server: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    points, _ = get_array(server, "/api/models/lenet_mnist/dataset/points")
    layout, _ = get_array(server, f"/api/models/lenet_mnist/dataset/layout?kind={kind}")
    return points, layout


def normalized(layout: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """The page's normalization: centered on the layout's bounding box, its longer side spanning [-1, 1] / 1.05."""
    low, high = layout.min(0), layout.max(0)
    center = (low + high) / 2
    half = (high - low).max() / 2 * 1.05
    return (layout - center) / half, half, center


def test_lasso_around_a_cluster_shows_exactly_the_samples_inside(bench):
    bench.open(model="lenet_mnist", view="dataset", layout="pca", color="label")
    dataset = DatasetPage(bench).wait_scatter()
    points, layout = lenet_table(bench.base, "pca")
    gl, half, center = normalized(layout)
    # the scatter draws where the page object says: hovering a point shows that sample
    row = int(np.argmin(np.abs(gl).sum(1)))
    assert f"#{int(points[row, 0])}" in dataset.hover(*dataset.screen_of(*gl[row]))
    # a lasso around the digits labeled 1 (a tight cluster in PCA): a polygon around their middle 80%
    ones = gl[points[:, 1] == 1]
    lo, hi = np.percentile(ones, 10, axis=0), np.percentile(ones, 90, axis=0)
    corners = [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])]
    dataset.lasso([dataset.screen_of(x, y) for x, y in corners])
    expect(bench.page.locator("section[aria-label='selection'] .sample").first).to_be_visible()
    shown = dataset.selected()
    # the URL holds the polygon in layout coordinates; the samples inside it, computed here from the API's arrays
    polygon = np.array(
        [
            [float(v) for v in pair.split(",")]
            for pair in bench.state()["sel"].removeprefix("lasso:").split(";")
        ]
    )
    inside = Polygon(polygon).contains_points(layout)
    expected = sorted(int(i) for i in points[inside, 0])
    assert shown == expected
    assert 20 < len(shown) < len(points)
    # and that polygon is the one drawn on the screen (to the lasso's pixel precision)
    drawn = np.array(corners) * half + center
    assert np.abs(polygon.min(0) - drawn.min(0)).max() < 0.02 * half * 2
    assert np.abs(polygon.max(0) - drawn.max(0)).max() < 0.02 * half * 2


def test_a_confusion_cell_shows_its_samples(bench):
    bench.open(model="lenet_mnist", view="dataset", layout="pca")
    dataset = DatasetPage(bench).wait_scatter()
    points, _ = get_array(bench.base, "/api/models/lenet_mnist/dataset/points")
    matrix = np.array(get_json(bench.base, "/api/models/lenet_mnist/dataset/confusion")["matrix"])
    off_diagonal = matrix - np.diag(np.diag(matrix))
    label, prediction = np.unravel_index(off_diagonal.argmax(), matrix.shape)
    dataset.click_cell(int(label), int(prediction))
    assert bench.state()["sel"] == f"cell:{label},{prediction}"
    chosen = (points[:, 1] == label) & (points[:, 2] == prediction)
    assert dataset.selected(count=int(chosen.sum())) == sorted(int(i) for i in points[chosen, 0])
    # a diagonal cell too (more samples than one screen row)
    dataset.click_cell(3, 3)
    chosen = (points[:, 1] == 3) & (points[:, 2] == 3)
    assert dataset.selected(count=int(chosen.sum())) == sorted(int(i) for i in points[chosen, 0])


def test_a_copied_url_opened_in_a_fresh_page_shows_the_same_view(bench, browser):
    bench.open(model="lenet_mnist", view="dataset", layout="pca")
    dataset = DatasetPage(bench).wait_scatter()
    dataset.click_cell(9, 9)
    bench.page.locator(".seg button[data-color='correct']").click()
    points, _ = get_array(bench.base, "/api/models/lenet_mnist/dataset/points")
    selected = dataset.selected(count=int(((points[:, 1] == 9) & (points[:, 2] == 9)).sum()))
    copied = bench.page.url
    fresh_context = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        fresh = Workbench(fresh_context.new_page(), bench.base)
        fresh.page.goto(copied)
        again = DatasetPage(fresh).wait_scatter()
        assert fresh.state() == bench.state()
        assert again.selected(count=len(selected)) == selected
        expect(fresh.page.locator(".seg button[data-color='correct']")).to_have_attribute(
            "aria-pressed", "true"
        )
        expect(fresh.page.locator("#tabs a[aria-current='page']")).to_have_text("Dataset")
        # a unit page too
        fresh.page.goto(
            f"{bench.base}/?model=lenet_mnist&view=unit&layer=conv2&unit=5&image=sample:lenet_mnist:7"
        )
        expect(fresh.page.locator(".title-row h1")).to_have_text("conv2 : 5")
        expect(fresh.page.locator("section[aria-label='top patches'] .tile")).to_have_count(9)
        assert fresh.errors == []
    finally:
        fresh_context.close()


def test_the_views_link_through_the_url_and_the_back_button_walks_them(bench):
    bench.open(
        model="lenet_mnist", view="image", image="sample:lenet_mnist:3", methods="saliency", layout="pca"
    )
    ImagePage(bench).wait_maps()
    bench.go_to("architecture")
    ArchitecturePage(bench).wait_drawn().click_node("conv1")
    LayerPage(bench).wait_grid()
    assert LayerPage(bench).units_in_grid() == 6
    bench.go_to("dataset")
    DatasetPage(bench).wait_scatter()
    for view in ("layer", "architecture", "image"):
        bench.page.go_back()
        expect(bench.page.locator(f"#view[data-view='{view}']")).to_be_attached()
    assert bench.state()["image"] == "sample:lenet_mnist:3"


def test_the_vendored_libraries_are_the_pinned_ones():
    script = Path(__file__).resolve().parents[1] / "scripts" / "vendor_js.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_unit_page_visualizes_on_request_and_keeps_its_name_and_notes(bench):
    bench.open(model="lenet_mnist", view="unit", layer="conv1", unit="2", image="sample:lenet_mnist:5")
    page = bench.page
    expect(page.locator("section[aria-label='top patches'] .tile")).to_have_count(9)
    expect(page.locator("section[aria-label='unit map'] canvas").first).to_be_visible()
    page.get_by_role("button", name="Visualize").click()
    expect(page.locator(".featurevis img")).to_be_visible(timeout=120_000)
    page.get_by_label("unit name").fill("left edges")
    page.get_by_label("unit notes").fill("fires on the left side of strokes")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("section[aria-label='name and notes']")).to_contain_text("saved")
    page.reload()
    expect(page.get_by_label("unit name")).to_have_value("left edges")
    expect(page.get_by_label("unit notes")).to_have_value("fires on the left side of strokes")
    # the visualization was kept: shown at once, no button
    expect(page.locator(".featurevis img")).to_be_visible()
    # a top patch opens its sample in the Image view
    first = page.locator("section[aria-label='top patches'] .tile").first
    sample = first.get_attribute("data-sample")
    first.click()
    expect(page.locator("#view[data-view='image']")).to_be_attached()
    assert bench.state()["image"] == f"sample:lenet_mnist:{sample}"


def test_a_heat_map_is_scored_by_deletion_and_insertion_on_request(bench):
    bench.open(model="lenet_mnist", view="image", image="sample:lenet_mnist:2", methods="grad_cam")
    image = ImagePage(bench)
    assert image.wait_maps() == {"grad_cam": "done"}
    card = bench.page.locator(".map-card[data-method='grad_cam']")
    card.get_by_role("button", name="Deletion / insertion").click()
    expect(card.locator(".auc b")).to_have_count(2, timeout=120_000)
    deletion, insertion = (float(text) for text in card.locator(".auc b").all_inner_texts())
    assert 0 <= deletion <= 1 and 0 <= insertion <= 1
    expect(card.locator(".uplot")).to_be_visible()


@pytest.mark.slow
def test_a_500_node_graph_expands_fully_and_its_nodes_open_their_layers(browser, tmp_path):
    with workbench(tmp_path, ["torchvision:resnet152?weights=none"]) as base:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        try:
            bench = Workbench(context.new_page(), base)
            bench.open(model="resnet152", view="architecture", image="photo:coffee", depth="99")
            graph = ArchitecturePage(bench).wait_drawn().wait_colored()
            full = get_json(base, "/api/models/resnet152/graph")
            assert graph.node_count() == len(full["nodes"]) >= 500
            graph.find("layer3.20.conv2")
            graph.click_node("layer3.20.conv2")
            assert LayerPage(bench).wait_grid().units_in_grid() == 256
            assert bench.errors == []
        finally:
            context.close()
