"""The workbench routes of the issue-19 methods (unit selectivity, weight images of a fully connected layer, visual
concepts, neuron clusters, decoder inversion, two networks layer by layer), route by route with their error paths:
LeNet-5 and the zoo MLP on the 1,000 held-out digits, as `deepscope serve zoo:lenet_mnist zoo:mlp_mnist --data
mnist5k:test` serves them, and the MLP once more without data. Each answer is checked against the library call
the route stands for, made here on its own."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import deepscope as ds
from deepscope.app.server.app import create_app
from deepscope.app.server.arrays import decode_array
from deepscope.app.server.workbench import Settings, open_workbench

LENET, MLP, BARE = "lenet_mnist", "mlp_mnist", "mlp_mnist-2"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    served = open_workbench(
        ["zoo:lenet_mnist", "zoo:mlp_mnist"],
        "mnist5k:test",
        Settings(root=tmp_path_factory.mktemp("methods")),
    )
    served.add_model("zoo:mlp_mnist")  # no data: no workspace, nothing to learn from
    served.wait_for_scans(timeout=300)
    yield served
    served.close()


@pytest.fixture(scope="module")
def client(bench):
    with TestClient(create_app(bench), raise_server_exceptions=False) as test_client:
        yield test_client


def workspace(bench, model: str) -> ds.atlas.Workspace:
    return bench.models[model].workspace


def array_of(response) -> tuple[np.ndarray, dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    return decode_array(response.content)


def error_of(response, status: int, kind: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] and "Traceback" not in body["error"]
    if kind is not None:
        assert body["kind"] == kind, body
    return body["error"]


def finished(client, bench, response) -> dict:
    """The result of the job a POST started."""
    assert response.status_code == 202, response.text
    payload = bench.jobs.wait(response.json()["job"], timeout=300)
    assert payload["state"] == "done", payload
    assert client.get(f"/api/jobs/{payload['id']}").json()["state"] == "done"
    return payload["result"]


def picture(client, url: str) -> Image.Image:
    response = client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


# ----------------------------------------------------------------------------------------------------------
# the MLP next to LeNet-5


def test_the_mlp_is_served_with_its_scan_of_the_same_digits(client):
    entries = {entry["id"]: entry for entry in client.get("/api/models").json()}
    mlp = entries[MLP]
    assert (mlp["spec"], mlp["data"], mlp["input_size"], mlp["classes"]) == (
        "zoo:mlp_mnist",
        "mnist5k:test",
        [28, 28],
        10,
    )
    assert mlp["workspace"]["state"] == "ready" and mlp["workspace"]["samples"] == 1000
    assert entries[BARE]["workspace"]["state"] == "none"
    layers = {layer["name"]: layer for layer in client.get(f"/api/models/{MLP}/layers").json()}
    assert (layers["fc1"]["kind"], layers["fc1"]["units"]) == ("linear", 300)


def test_the_weights_of_the_mlp_first_layer_are_its_filters_as_images(client):
    weights, _ = array_of(client.get(f"/api/models/{MLP}/filters?layer=fc1"))
    module = ds.load_model("zoo:mlp_mnist").module.fc1
    assert weights.shape == (300, 1, 28, 28)
    np.testing.assert_array_equal(weights, module.weight.detach().numpy().reshape(300, 1, 28, 28))
    message = error_of(client.get(f"/api/models/{MLP}/filters?layer=fc2"), 404, "UnitError")
    assert "pixels" in message
    error_of(client.get(f"/api/models/{MLP}/filters?layer=fc9"), 404, "LayerNotFoundError")


def test_two_networks_compare_layer_by_layer_with_their_sparsity(client, bench):
    body = client.get(f"/api/compare?a={LENET}&b={MLP}").json()
    expected = ds.atlas.compare(workspace(bench, LENET), workspace(bench, MLP))
    assert body["cka"]["layers_a"] == expected.layers_a and body["cka"]["layers_b"] == expected.layers_b
    np.testing.assert_allclose(body["sparsity_a"], expected.sparsity_a)
    np.testing.assert_allclose(body["sparsity_b"], expected.sparsity_b)
    # sparsity is the share of values <= 0: a ReLU output has its zeros, from the scan's histogram of every value
    histogram = workspace(bench, MLP).activation_histogram("fc3:input")
    at = expected.layers_b.index("fc3:input")
    assert body["sparsity_b"][at] == pytest.approx(1 - histogram.positives / histogram.total)
    assert 0 < body["agreement"] < 1  # two different networks


def test_the_layouts_of_every_layer_of_both_networks_are_one_job(client, bench):
    result = finished(
        client, bench, client.post("/api/compare/layouts", json={"a": LENET, "b": MLP, "kind": "pca"})
    )
    assert [entry["layer"] for entry in result["a"]] == workspace(bench, LENET).layers
    assert [entry["layer"] for entry in result["b"]] == workspace(bench, MLP).layers
    for side, model in (("a", LENET), ("b", MLP)):
        entry = result[side][-1]
        layout, _ = array_of(client.get(entry["url"]))
        np.testing.assert_allclose(layout, workspace(bench, model).layout("pca", entry["layer"]), rtol=1e-6)
    error_of(client.post("/api/compare/layouts", json={"a": LENET, "b": MLP, "kind": "mds"}), 422)
    error_of(client.post("/api/compare/layouts", json={"a": LENET, "b": "nobody"}), 404, "NotFoundError")
    started = client.post("/api/compare/layouts", json={"a": LENET, "b": BARE})
    payload = bench.jobs.wait(started.json()["job"], timeout=60)
    assert payload["state"] == "failed" and "no data" in payload["message"]


# ----------------------------------------------------------------------------------------------------------
# unit selectivity


def test_the_selectivity_of_a_layer_is_the_workspace_selectivity(client, bench):
    body = client.get(f"/api/models/{MLP}/layers/fc3:input/selectivity").json()
    expected = workspace(bench, MLP).selectivity("fc3:input")
    assert body["classes"] == [str(d) for d in range(10)] and sum(body["class_counts"]) == 1000
    np.testing.assert_allclose(np.array(body["index"], dtype=float), expected.index, equal_nan=True)
    assert body["preferred"] == expected.preferred.tolist()
    assert body["most_selective"] == expected.most_selective(8).tolist()
    # one class, every class: counted here from the class means and the threshold (half the highest mean)
    means = expected.class_means
    responding = (means >= body["threshold"] * means.max(1, keepdims=True)).sum(1)
    defined = ~np.isnan(expected.index)
    assert body["one_class"] == np.flatnonzero(defined & (responding == 1)).tolist()
    assert body["all_classes"] == np.flatnonzero(defined & (responding == 10)).tolist()
    assert body["summary"]["one_class"] == len(body["one_class"]) > 0
    assert body["summary"]["units"] == 100


def test_a_unit_has_one_activation_histogram_per_class(client, bench):
    counts, header = array_of(client.get(f"/api/models/{MLP}/layers/fc3:input/selectivity/7"))
    expected = workspace(bench, MLP).selectivity("fc3:input")
    assert counts.dtype == np.int32 and counts.shape == (10, 20)
    np.testing.assert_array_equal(counts, expected.histograms[7])
    np.testing.assert_array_equal(counts.sum(1), expected.class_counts)
    assert header["preferred"] == int(expected.preferred[7])
    assert header["index"] == pytest.approx(expected.index[7])
    np.testing.assert_allclose(header["edges"], expected.edges[7])
    # a pre-activation layer has negative class means: histograms, but no index
    _, header = array_of(client.get(f"/api/models/{LENET}/layers/conv1/selectivity/0"))
    assert header["index"] is None


def test_selectivity_errors(client):
    error_of(client.get(f"/api/models/{MLP}/layers/fc3:input/selectivity/100"), 404, "UnitError")
    error_of(client.get(f"/api/models/{MLP}/layers/relu9/selectivity"), 404, "LayerNotFoundError")
    error_of(client.get(f"/api/models/{BARE}/layers/fc1/selectivity"), 409, "WorkspaceNotReadyError")
    error_of(client.get("/api/models/nobody/layers/fc1/selectivity"), 404, "NotFoundError")
    error_of(client.get(f"/api/models/{MLP}/layers/fc1/selectivity/x"), 422)


# ----------------------------------------------------------------------------------------------------------
# visual concepts


def test_concepts_are_a_job_kept_in_the_workspace_and_equal_the_library_ones(client, bench):
    url = f"/api/models/{LENET}/layers/conv2/concepts"
    error_of(client.get(f"{url}?k=5&patches=4"), 404, "NotComputedError")
    result = finished(client, bench, client.post(url, json={"k": 5, "patches": 4}))
    assert client.get(f"{url}?k=5&patches=4").json() == result
    expected = ds.units.concepts(
        ds.load_model("zoo:lenet_mnist"), ds.datasets.mnist5k("test"), "conv2", 5, patches=4
    )
    assert (result["layer"], result["k"], result["vectors"]) == ("conv2", 5, 100_000)
    assert result["purity"] == pytest.approx(expected.purity)
    assert [c["size"] for c in result["concepts"]] == expected.sizes.tolist()
    assert [c["majority"] for c in result["concepts"]] == expected.majority.tolist()
    first = result["concepts"][0]
    assert [p["sample"] for p in first["patches"]] == expected.nearest.sample_indices[0].tolist()
    assert picture(client, first["patches"][0]["url"]).size == tuple(expected.nearest.crops.shape[-2:])
    # asked again: done at once, from the workspace
    again = client.post(url, json={"k": 5, "patches": 4}).json()
    assert again["state"] == "done"


def test_concept_errors(client, bench):
    url = f"/api/models/{LENET}/layers/conv2/concepts"
    error_of(client.post(url, json={"k": 0}), 422)
    error_of(client.post(url, json={"patches": 99}), 422)
    error_of(client.post(f"/api/models/{LENET}/layers/conv9/concepts", json={}), 404, "LayerNotFoundError")
    error_of(client.post(f"/api/models/{BARE}/layers/fc1/concepts", json={}), 409, "WorkspaceNotReadyError")
    error_of(client.get(f"{url}?k=1000"), 422)
    error_of(client.get(f"/api/models/{LENET}/layers/conv9/concepts"), 404, "LayerNotFoundError")


# ----------------------------------------------------------------------------------------------------------
# neuron clusters


def test_neuron_clusters_are_the_library_clusters_with_their_edges(client, bench):
    body = client.get(f"/api/models/{MLP}/clusters?k=3&samples=4").json()
    ws = workspace(bench, MLP)
    expected = ds.atlas.neuron_clusters(ws, ds.load_model("zoo:mlp_mnist"), k=3, samples=4)
    assert [entry["layer"] for entry in body["layers"]] == ["fc1", "fc2", "fc3"]
    for entry, found in zip(body["layers"], expected.layers, strict=True):
        assert entry["labels"] == found.labels.tolist() and sum(entry["sizes"]) == entry["units"]
        assert entry["representatives"] == [[int(i) for i in row if i >= 0] for row in found.representatives]
    # an edge is the summed |weights| between the units of two clusters, summed here from the weights
    fc2 = ds.load_model("zoo:mlp_mnist").module.fc2.weight.detach().abs().numpy()
    source, target = np.array(body["layers"][0]["labels"]), np.array(body["layers"][1]["labels"])
    for a in range(3):
        for b in range(3):
            assert body["edges"][0][a][b] == pytest.approx(
                fc2[np.ix_(target == a, source == b)].sum(), rel=1e-5
            )
    chosen = client.get(f"/api/models/{LENET}/clusters?layers=conv1,conv2&k=2").json()
    assert [entry["layer"] for entry in chosen["layers"]] == ["conv1", "conv2"]


def test_neuron_cluster_errors(client):
    error_of(client.get(f"/api/models/{LENET}/clusters?k=7"), 400, "SettingError")  # conv1 has 6 units
    error_of(client.get(f"/api/models/{LENET}/clusters?layers=conv1"), 400, "SettingError")
    error_of(client.get(f"/api/models/{LENET}/clusters?layers=conv1,conv7"), 404, "LayerNotFoundError")
    error_of(client.get(f"/api/models/{BARE}/clusters"), 409, "WorkspaceNotReadyError")
    error_of(client.get(f"/api/models/{LENET}/clusters?k=0"), 422)


# ----------------------------------------------------------------------------------------------------------
# decoder inversion


def test_a_decoder_is_trained_as_a_job_then_inverts_an_image_in_one_forward(client, bench):
    base = f"/api/models/{LENET}/layers/conv1"
    image = f"sample:{LENET}:3"
    assert client.get(f"{base}/inverter").json() == {
        "layer": "conv1",
        "trained": False,
        "losses": [],
        "settings": {},
        "job": None,
    }
    error_of(client.get(f"{base}/inversion?image={image}"), 404, "NotComputedError")
    error_of(client.post(f"{base}/inversion", json={"image": image}), 404, "NotComputedError")
    trained = finished(client, bench, client.post(f"{base}/inverter", json={"epochs": 2, "width": 8}))
    assert trained["trained"] and len(trained["losses"]) == 2 and trained["settings"]["samples"] == 1000
    assert client.get(f"{base}/inverter").json() == {**trained, "job": None}
    answer = client.get(f"{base}/inversion?image={image}").json()
    # the decoder kept in the workspace is the file Inverter.save writes: the library loads it and agrees
    vm = ds.load_model("zoo:lenet_mnist")
    stored = bench.models[LENET].artifacts().artifact("inverter", "mnist5k:test|conv1")
    inverter = ds.units.load_inverter(stored.path, vm)
    x = vm.preprocess(ds.datasets.mnist5k("test").images[3:4])
    mean, std = vm.preprocessing.mean[0], vm.preprocessing.std[0]
    pixels = x * std + mean  # the image the model saw; the error is relative to its distance from the mean
    error = (inverter(x) - pixels).norm() / (pixels - mean).norm()
    assert answer["decoder_error"] == pytest.approx(float(error), rel=1e-4)
    assert answer["decoder_error"] < 1  # better than the mean image
    decoded = np.asarray(picture(client, answer["decoded_url"]), dtype=np.float32) / 255
    np.testing.assert_allclose(decoded, inverter(x)[0, 0].numpy(), atol=1 / 255 + 1e-6)
    assert picture(client, answer["original_url"]).size == (28, 28)


def test_the_decoder_is_compared_with_the_optimization_on_request(client, bench):
    base = f"/api/models/{LENET}/layers/conv1"
    image = f"sample:{LENET}:4"
    finished(client, bench, client.post(f"{base}/inverter", json={"epochs": 1, "width": 8}))
    result = finished(client, bench, client.post(f"{base}/inversion", json={"image": image, "steps": 30}))
    vm = ds.load_model("zoo:lenet_mnist")
    stored = bench.models[LENET].artifacts().artifact("inverter", "mnist5k:test|conv1")
    x = vm.preprocess(ds.datasets.mnist5k("test").images[4:5])
    expected = ds.units.compare_inversions(
        vm, x, [ds.units.load_inverter(stored.path, vm)], schedule=[(30, 1.0)]
    )
    assert result["steps"] == 30
    assert result["decoder_error"] == pytest.approx(float(expected.decoder_error[0, 0]), rel=1e-4)
    assert result["optimization_error"] == pytest.approx(float(expected.optimization_error[0, 0]), rel=1e-3)
    assert result["optimization_seconds"] > result["decoder_seconds"] > 0
    assert picture(client, result["optimized_url"]).size == (28, 28)


def test_decoder_errors(client, bench):
    base = f"/api/models/{LENET}/layers/conv1"
    error_of(client.post(f"{base}/inverter", json={"epochs": 0}), 422)
    error_of(client.post(f"/api/models/{LENET}/layers/conv9/inverter", json={}), 404, "LayerNotFoundError")
    error_of(client.post(f"/api/models/{BARE}/layers/fc1/inverter", json={}), 409, "WorkspaceNotReadyError")
    error_of(client.get(f"/api/models/{LENET}/layers/conv9/inverter"), 404, "LayerNotFoundError")
    finished(client, bench, client.post(f"{base}/inverter", json={"epochs": 1, "width": 8}))
    error_of(client.get(f"{base}/inversion?image=photo:nothing"), 404, "NotFoundError")
    error_of(client.post(f"{base}/inversion", json={"image": f"sample:{LENET}:0", "steps": 0}), 422)
    error_of(client.get(f"{base}/inversion"), 422)
