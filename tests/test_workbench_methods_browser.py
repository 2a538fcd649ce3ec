"""The issue-19 panels of the workbench in a real browser (Debian's chromium driven by Playwright) against
`deepscope serve zoo:lenet_mnist zoo:mlp_mnist --data mnist5k:test`: a convolutional and a fully connected
network on the same 1,000 held-out digits. Each test opens a panel as a person would and checks what it shows
against what the server's API says on its own."""

from __future__ import annotations

import numpy as np
import pytest
from playwright.sync_api import expect

from pages.architecture import ArchitecturePage
from pages.compare import ComparePage
from pages.layer import LayerPage
from pages.server import chromium, get_array, get_json, opened_workbench, workbench

expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    models = ["zoo:lenet_mnist", "zoo:mlp_mnist"]
    with workbench(tmp_path_factory.mktemp("methods"), models, ["--data", "mnist5k:test"]) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def bench(browser, server):
    with opened_workbench(browser, server) as page:
        yield page


def test_the_mlp_first_layer_shows_its_weights_as_images(bench):
    bench.open(model="mlp_mnist", view="layer", layer="fc1", image="sample:mlp_mnist:3")
    layer = LayerPage(bench).wait_grid()
    weights, _ = get_array(bench.base, "/api/models/mlp_mnist/filters?layer=fc1")
    assert layer.weight_images() == weights.shape[0] == 300
    expect(layer.panel("filters")).to_contain_text("28×28 input pixels")


def test_the_selectivity_panel_shows_the_layer_summary_and_a_unit_per_class(bench):
    bench.open(model="mlp_mnist", view="layer", layer="fc3:input", unit="5", image="sample:mlp_mnist:3")
    layer = LayerPage(bench)
    summary = get_json(bench.base, "/api/models/mlp_mnist/layers/fc3:input/selectivity")["summary"]
    assert layer.selectivity_counts() == {
        "one_class": summary["one_class"],
        "all_classes": summary["all_classes"],
    }
    _, header = get_array(bench.base, "/api/models/mlp_mnist/layers/fc3:input/selectivity/5")
    assert layer.class_histograms(5) == (10, header["preferred"])
    # another unit, chosen by its bar in the index strip, and the URL follows
    strip = layer.panel("class selectivity").locator("canvas[aria-label='selectivity index per unit']")
    box = strip.bounding_box()
    strip.click(position={"x": box["width"] * (40.5 / 100), "y": box["height"] / 2})
    assert bench.state()["unit"] == "40"
    _, header = get_array(bench.base, "/api/models/mlp_mnist/layers/fc3:input/selectivity/40")
    assert layer.class_histograms(40) == (10, header["preferred"])


def test_the_concepts_panel_finds_k_concepts_with_their_nearest_patches(bench):
    bench.open(model="lenet_mnist", view="layer", layer="conv2", concepts="6", image="sample:lenet_mnist:3")
    shown = LayerPage(bench).find_concepts()
    found = get_json(bench.base, "/api/models/lenet_mnist/layers/conv2/concepts?k=6")
    assert len(shown) == found["k"] == 6
    assert sorted(c["index"] for c in shown) == list(range(6))
    patches = {c["index"]: len(c["patches"]) for c in found["concepts"]}
    assert {c["index"]: c["patches"] for c in shown} == patches
    # largest concept first, captioned with its share of the vectors
    largest = max(found["concepts"], key=lambda c: c["size"])
    first = bench.page.locator("section[aria-label='visual concepts'] .concept").first
    assert first.get_attribute("data-index") == str(largest["index"])
    expect(first).to_contain_text(f"{largest['share'] * 100:.0f}% of vectors")
    # another k is another job: the panel offers it again, the URL keeps it
    bench.page.get_by_label("number of concepts").select_option("4")
    assert bench.state()["concepts"] == "4"
    assert len(LayerPage(bench).find_concepts()) == 4


def test_a_decoder_is_trained_in_the_panel_and_inverts_next_to_the_optimization(bench):
    bench.open(model="lenet_mnist", view="layer", layer="conv1", image="sample:lenet_mnist:7")
    layer = LayerPage(bench).wait_grid()
    caption = layer.train_decoder(epochs=2)
    answer = get_json(bench.base, "/api/models/lenet_mnist/layers/conv1/inversion?image=sample:lenet_mnist:7")
    assert f"error {answer['decoder_error']:.3f}" in caption
    state = get_json(bench.base, "/api/models/lenet_mnist/layers/conv1/inverter")
    assert state["trained"] and len(state["losses"]) == 2
    optimized = layer.compare_with_optimization(steps=50)
    assert "optimization, 50 steps" in optimized
    # another image: the kept decoder inverts it at once
    bench.open(model="lenet_mnist", view="layer", layer="conv1", image="sample:lenet_mnist:8")
    answer = get_json(bench.base, "/api/models/lenet_mnist/layers/conv1/inversion?image=sample:lenet_mnist:8")
    expect(
        layer.panel("decoder inversion").locator("figure[data-kind='decoded'] figcaption")
    ).to_contain_text(f"error {answer['decoder_error']:.3f}")


def test_the_architecture_shows_neuron_clusters_with_their_weighted_edges(bench):
    bench.open(model="mlp_mnist", view="architecture")
    graph = ArchitecturePage(bench).wait_drawn()
    graph.show_clusters()
    assert bench.state()["mode"] == "clusters"
    found = get_json(bench.base, "/api/models/mlp_mnist/clusters?k=4")
    assert graph.clusters() == {layer["layer"]: len(layer["sizes"]) for layer in found["layers"]}
    expected = sorted(w for matrix in found["edges"] for row in matrix for w in row if w)
    assert np.allclose(sorted(graph.cluster_edges()), expected, rtol=1e-6)
    samples = bench.page.locator(".cluster-node[data-layer='fc1'][data-cluster='0'] image.cluster-sample")
    assert (
        samples.evaluate_all("nodes => nodes.map(n => Number(n.dataset.sample))")
        == (found["layers"][0]["representatives"][0])
    )
    bench.page.get_by_label("clusters per layer").select_option("3")
    graph.wait_clusters()
    expect(bench.page.locator(".cluster-node[data-layer='fc3']")).to_have_count(3)
    graph.click_cluster("fc2", 1)
    expect(bench.page.locator("#view[data-view='layer']")).to_be_attached()
    assert bench.state()["layer"] == "fc2"
    bench.page.go_back()
    ArchitecturePage(bench).wait_clusters()


def test_lenet_and_the_mlp_compare_layer_by_layer(bench):
    bench.open(model="lenet_mnist", view="compare", b="mlp_mnist")
    compare = ComparePage(bench).wait_cka()
    answer = get_json(bench.base, "/api/compare?a=lenet_mnist&b=mlp_mnist")
    for model, layers, values in (
        ("lenet_mnist", answer["cka"]["layers_a"], answer["sparsity_a"]),
        ("mlp_mnist", answer["cka"]["layers_b"], answer["sparsity_b"]),
    ):
        shown = compare.sparsity(model)
        assert list(shown) == layers
        assert np.allclose(list(shown.values()), values)
    layouts = compare.layouts()
    assert layouts == {
        "lenet_mnist": {layer: 1000 for layer in answer["cka"]["layers_a"]},
        "mlp_mnist": {layer: 1000 for layer in answer["cka"]["layers_b"]},
    }
    expect(bench.page.locator("section[aria-label='layouts'] .layout-rows[data-kind='pca']")).to_be_attached()
    expect(bench.page.locator(".seg button[data-layout='pca']")).to_have_attribute("aria-pressed", "true")
