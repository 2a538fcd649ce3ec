"""The workbench API, route by route, with its error paths (FastAPI's TestClient, the server in-process): LeNet-5
twice on the 1,000 held-out digits, so that two scans of the same data can be compared. Each answer is checked
against the library call the route stands for."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import deepscope as ds
from deepscope.app.server.app import create_app
from deepscope.app.server.arrays import decode_array, encode_array
from deepscope.app.server.security import Access
from deepscope.app.server.workbench import Settings, open_workbench

ROOT = Path(__file__).resolve().parent.parent
MODEL, TWIN = "lenet_mnist", "lenet_mnist-2"
SAMPLE = f"sample:{MODEL}:0"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("workbench")
    served = open_workbench(["zoo:lenet_mnist", "zoo:lenet_mnist"], "mnist5k:test", Settings(root=root))
    served.wait_for_scans(timeout=300)
    yield served
    served.close()


@pytest.fixture(scope="module")
def client(bench):
    with TestClient(create_app(bench), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def digits():
    return ds.datasets.mnist5k("test")


def array_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    return decode_array(response.content)[0]


def error_of(response, status: int, kind: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "kind"} and body["error"], body
    assert "Traceback" not in body["error"]
    if kind is not None:
        assert body["kind"] == kind, body
    return body["error"]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------
# the binary format


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int32, np.uint16])
def test_arrays_travel_with_their_dtype_and_shape(dtype):
    values = (np.arange(2 * 3 * 5) % 200).astype(dtype).reshape(2, 3, 5)
    data = encode_array(values, {"meta": {"note": "é"}})
    assert data[:4] == b"DSA1"
    length = int.from_bytes(data[4:8], "little")
    assert (8 + length) % 8 == 0  # the values start aligned for a typed array
    assert len(data) == 8 + length + values.nbytes
    decoded, header = decode_array(data)
    assert decoded.dtype == dtype and decoded.shape == (2, 3, 5)
    np.testing.assert_array_equal(decoded, values)
    assert header["meta"] == {"note": "é"} and header["shape"] == [2, 3, 5]


def test_arrays_narrow_what_the_browser_has_no_type_for():
    assert decode_array(encode_array(np.array([1.5], np.float64)))[0].dtype == np.float32
    assert decode_array(encode_array(np.array([True, False])))[0].tolist() == [1, 0]
    assert decode_array(encode_array(np.array([7], np.int64)))[0].dtype == np.int32
    with pytest.raises(ds.errors.SettingError, match="beyond int32"):
        encode_array(np.array([2**40]))
    with pytest.raises(ds.errors.SettingError, match="DSA1"):
        decode_array(b"PNG\x00")


# ----------------------------------------------------------------------------------------------------------
# server, models, graph


def test_status_lists_the_models_with_their_scans(client):
    body = client.get("/api/status").json()
    assert body["version"] == ds.__version__ and body["token_required"] is False
    assert [m["id"] for m in body["models"]] == [MODEL, TWIN]
    assert all(
        m["workspace"]["state"] == "ready" and m["workspace"]["samples"] == 1000 for m in body["models"]
    )


def test_models_and_labels(client):
    entry = client.get("/api/models").json()[0]
    assert entry["id"] == MODEL and entry["spec"] == "zoo:lenet_mnist" and entry["data"] == "mnist5k:test"
    assert (entry["classes"], entry["input_size"], entry["image_mode"], entry["channels"]) == (
        10,
        [28, 28],
        "L",
        1,
    )
    assert client.get(entry["labels_url"]).json() == [str(d) for d in range(10)]
    error_of(client.get("/api/models/resnet/labels"), 404, "NotFoundError")


def test_graph_is_the_library_graph_per_depth(client, lenet):
    full = client.get(f"/api/models/{MODEL}/graph").json()
    expected = ds.graph(lenet).to_dict()
    assert [n["id"] for n in full["nodes"]] == [n["id"] for n in expected["nodes"]]
    assert full["edges"] == expected["edges"] and full["model"] == MODEL
    conv2 = next(n for n in full["nodes"] if n["id"] == "conv2")
    assert (conv2["layer"], conv2["op"], conv2["output_shape"], conv2["params"]) == (
        "conv2",
        "Conv2d",
        [1, 16, 10, 10],
        2416,
    )
    shallow = client.get(f"/api/models/{MODEL}/graph?depth=1").json()
    assert shallow["depth"] == 1
    error_of(client.get(f"/api/models/{MODEL}/graph?depth=0"), 422, "RequestValidationError")


def test_layers_name_every_graph_layer_with_its_kind(client):
    found = {entry["name"]: entry for entry in client.get(f"/api/models/{MODEL}/layers").json()}
    assert found["conv1"] == {
        "name": "conv1",
        "kind": "conv",
        "op": "Conv2d",
        "output_shape": [1, 6, 28, 28],
        "units": 6,
        "spatial": True,
    }
    assert (
        found["fc1"]["kind"] == "linear" and found["fc1"]["spatial"] is False and found["fc1"]["units"] == 120
    )
    assert found["relu1"]["kind"] == "other"


def test_models_added_over_http_are_held_to_safe_specs_and_the_root(client, bench, tmp_path):
    error_of(client.post("/api/models", json={"spec": "python:os:getcwd"}), 403, "ForbiddenSpecError")
    message = error_of(
        client.post("/api/models", json={"spec": "zoo:lenet_mnist", "workspace": str(tmp_path)}),
        403,
        "ForbiddenPathError",
    )
    assert "outside" in message and str(bench.root) in message
    error_of(client.post("/api/models", json={"spec": "zoo:lenet_mnist", "workspace": "../../etc"}), 403)
    error_of(client.post("/api/models", json={"spec": "zoo:nothing"}), 400, "SpecError")
    assert [m["id"] for m in client.get("/api/models").json()] == [MODEL, TWIN]


# ----------------------------------------------------------------------------------------------------------
# images


def test_images_list_photos_and_dataset_samples(client, digits):
    listed = client.get(f"/api/images?model={MODEL}&samples=2").json()
    photos = [entry for entry in listed if entry["source"] == "bundled"]
    assert [p["id"] for p in photos] == [f"photo:{name}" for name in ds.samples()]
    samples = [entry for entry in listed if entry["source"] == "dataset"]
    assert [s["id"] for s in samples] == [SAMPLE, f"sample:{MODEL}:1"]
    response = client.get(samples[1]["url"])
    assert response.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(response.content))), np.asarray(digits[1][0])
    )
    coffee = client.get("/api/images/photo:coffee")
    assert Image.open(io.BytesIO(coffee.content)).size == ds.samples(["coffee"])["coffee"].size
    error_of(client.get("/api/images/photo:dog"), 404, "NotFoundError")
    error_of(client.get(f"/api/images/sample:{MODEL}:1000"), 404, "NotFoundError")
    error_of(client.get("/api/images/0123"), 404, "NotFoundError")


def test_an_upload_is_kept_under_its_hash(client, bench):
    picture = Image.fromarray((np.arange(32 * 40 * 3) % 251).astype(np.uint8).reshape(32, 40, 3))
    data = png(picture)
    answer = client.post("/api/images", files={"file": ("stripes.png", data, "image/png")})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    import hashlib

    assert body == {
        "id": hashlib.sha256(data).hexdigest(),
        "url": f"/api/images/{body['id']}",
        "width": 40,
        "height": 32,
    }
    assert (bench.root / "uploads" / f"{body['id']}.png").read_bytes() == data
    assert body["id"] in [entry["id"] for entry in client.get("/api/images").json()]
    back = Image.open(io.BytesIO(client.get(body["url"]).content))
    np.testing.assert_array_equal(np.asarray(back), np.asarray(picture))
    # the upload is an image like any other for the model
    assert client.get(f"/api/models/{MODEL}/predict?image={body['id']}").status_code == 200


def test_blobs_are_immutable_and_named_by_their_hash(client, bench):
    url = bench.blobs.put(png(Image.new("RGB", (3, 3), "red")))
    answer = client.get(url)
    assert (
        answer.status_code == 200 and answer.headers["cache-control"] == "public, max-age=31536000, immutable"
    )
    import hashlib

    assert url.endswith(f"{hashlib.sha256(answer.content).hexdigest()}.png")
    error_of(client.get("/api/blobs/" + "0" * 64 + ".png"), 404, "NotFoundError")
    error_of(client.get("/api/blobs/..%2F..%2Fetc%2Fpasswd"), 404)


# ----------------------------------------------------------------------------------------------------------
# one image through the model


def model_input(lenet, digits, index: int) -> torch.Tensor:
    return lenet.preprocess([digits[index][0]])


def test_predict_is_the_models_top_k(client, lenet, digits):
    answer = client.get(f"/api/models/{MODEL}/predict?image=sample:{MODEL}:5&k=3").json()
    probabilities, classes = lenet.predict(model_input(lenet, digits, 5), k=3)
    assert [entry["class"] for entry in answer] == classes[0].tolist()
    assert [entry["label"] for entry in answer] == [str(c) for c in classes[0].tolist()]
    np.testing.assert_allclose(
        [entry["probability"] for entry in answer], probabilities[0].numpy(), rtol=1e-6
    )
    error_of(client.get(f"/api/models/{MODEL}/predict?image={SAMPLE}&k=0"), 422)


def test_activations_are_the_layers_raw_output(client, lenet, digits):
    x = model_input(lenet, digits, 0)
    maps = array_of(client.get(f"/api/models/{MODEL}/activations?image={SAMPLE}&layer=conv2"))
    np.testing.assert_allclose(maps, ds.units.activations(lenet, x, "conv2")[0].numpy(), rtol=1e-6)
    units = array_of(client.get(f"/api/models/{MODEL}/activations?image={SAMPLE}&layer=fc1"))
    assert units.shape == (120,)
    summary = client.get(f"/api/models/{MODEL}/activations/summary?image={SAMPLE}&layer=conv2").json()
    strength = maps.reshape(16, -1).mean(1)
    np.testing.assert_allclose(summary["strength"], strength, rtol=1e-5)
    assert summary["order"] == np.argsort(-strength, kind="stable").tolist() and summary["shape"] == [
        16,
        10,
        10,
    ]
    message = error_of(
        client.get(f"/api/models/{MODEL}/activations?image={SAMPLE}&layer=conv9"), 404, "LayerNotFoundError"
    )
    assert "conv2" in message  # the closest names


def test_strength_is_the_mean_absolute_activation_of_each_node(client, lenet, digits):
    answer = client.get(f"/api/models/{MODEL}/strength?image={SAMPLE}").json()
    x = model_input(lenet, digits, 0)
    with ds.capture(lenet, ["conv1", "fc3"]) as recording:
        lenet(x)
    assert answer["conv1"] == pytest.approx(float(recording.activations["conv1"].abs().mean()), rel=1e-5)
    assert answer["fc3"] == pytest.approx(float(recording.activations["fc3"].abs().mean()), rel=1e-5)
    nodes = {n["id"] for n in client.get(f"/api/models/{MODEL}/graph").json()["nodes"] if n["layer"]}
    assert set(answer) == nodes


def test_filters_of_a_convolution_and_of_nothing_else(client, lenet):
    kernels = array_of(client.get(f"/api/models/{MODEL}/filters?layer=conv1"))
    np.testing.assert_array_equal(kernels, lenet.module.conv1.weight.detach().numpy())
    message = error_of(client.get(f"/api/models/{MODEL}/filters?layer=fc1"), 404, "UnitError")
    assert "linear layer" in message and "pixels" in message
    error_of(client.get(f"/api/models/{MODEL}/filters?layer=relu1"), 404, "UnitError")


def test_filters_of_a_linear_layer_on_the_pixels_are_pictures(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    vm = ds.as_vision_model(net, preprocessing=ds.Preprocessing(crop=(8, 8)), labels=list("abcd"))
    bench = open_workbench([vm], settings=Settings(root=tmp_path))
    with TestClient(create_app(bench)) as client:
        weights = array_of(client.get(f"/api/models/{bench.models.__iter__().__next__()}/filters?layer=1"))
    bench.close()
    np.testing.assert_array_equal(weights, net[1].weight.detach().reshape(4, 3, 8, 8).numpy())


# ----------------------------------------------------------------------------------------------------------
# heat maps


def test_methods_are_the_registry(client):
    listed = {entry["name"]: entry for entry in client.get("/api/methods").json()}
    assert list(listed) == [info.name for info in ds.methods()]
    assert listed["grad_cam"]["needs_layer"] and listed["grad_cam"]["colormap"] == "inferno"
    steps = next(o for o in listed["integrated_gradients"]["options"] if o["name"] == "steps")
    assert steps == {"name": "steps", "type": "int", "default": 50, "required": False}


def test_a_heat_map_is_the_methods_map_with_channels_summed(client, lenet, digits):
    x = model_input(lenet, digits, 3)
    answer = client.get(f"/api/models/{MODEL}/heatmap?image=sample:{MODEL}:3&method=grad_cam")
    values = array_of(answer)
    expected = ds.attribute(lenet, x, "grad_cam")[0, 0].numpy()
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
    meta = decode_array(answer.content)[1]["meta"]
    assert json.loads(answer.headers["x-deepscope-meta"]) == meta
    top = int(lenet.predict(x, k=1)[1][0, 0])
    assert (meta["target_used"], meta["target_label"], meta["signed"], meta["colormap"]) == (
        top,
        str(top),
        False,
        "inferno",
    )
    assert meta["layer_used"] == ds.attribution.default_layer(lenet, x)
    assert (meta["min"], meta["max"]) == pytest.approx(
        (float(expected.min()), float(expected.max())), rel=1e-5
    )
    assert (meta["width"], meta["height"], meta["crop"]) == (28, 28, [0.0, 0.0, 28.0, 28.0])
    again = client.get(f"/api/models/{MODEL}/heatmap/meta?image=sample:{MODEL}:3&method=grad_cam").json()
    assert again == meta


def test_heat_map_options_targets_and_pixel_space_maps(client, lenet, digits):
    x = model_input(lenet, digits, 4)
    options = json.dumps({"steps": 8})
    answer = client.get(
        f"/api/models/{MODEL}/heatmap",
        params={
            "image": f"sample:{MODEL}:4",
            "method": "integrated_gradients",
            "target": "7",
            "options": options,
        },
    )
    expected = ds.attribute(lenet, x, "integrated_gradients", target=7, steps=8)[0].sum(0).numpy()
    np.testing.assert_allclose(array_of(answer), expected, rtol=1e-4, atol=1e-6)
    meta = json.loads(answer.headers["x-deepscope-meta"])
    assert (
        meta["target_used"] == 7
        and meta["signed"]
        and meta["colormap"] == "RdBu_r"
        and meta["layer_used"] is None
    )
    occlusion = client.get(
        f"/api/models/{MODEL}/heatmap",
        params={
            "image": f"sample:{MODEL}:4",
            "method": "occlusion",
            "options": json.dumps({"window": [4, 4], "stride": 4}),
        },
    )
    assert array_of(occlusion).shape == (28, 28)
    layer = client.get(
        f"/api/models/{MODEL}/heatmap?image=sample:{MODEL}:4&method=grad_cam&layer=conv1&target=1"
    )
    np.testing.assert_allclose(
        array_of(layer),
        ds.attribute(lenet, x, "grad_cam", target=1, layer="conv1")[0, 0].numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("query", "status", "kind"),
    [
        ("method=gradcam", 400, "MethodError"),
        ("method=grad_cam&target=10", 400, "TargetError"),
        ("method=grad_cam&target=cat", 400, "TargetError"),
        ("method=grad_cam&layer=conv9", 404, "LayerNotFoundError"),
        ("method=saliency&layer=conv1", 400, "MethodError"),
        ("method=integrated_gradients&options=%7B%22stepz%22%3A3%7D", 400, "MethodError"),
        ("method=integrated_gradients&options=%7B%22steps%22%3A%22many%22%7D", 400, "SettingTypeError"),
        ("method=integrated_gradients&options=%5B1%5D", 400, "SettingTypeError"),
        ("method=integrated_gradients&options=%7Bsteps", 400, "SettingError"),
    ],
)
def test_heat_map_mistakes_are_named(client, query, status, kind):
    error_of(client.get(f"/api/models/{MODEL}/heatmap?image={SAMPLE}&{query}"), status, kind)


def test_eight_clients_at_once_get_the_maps_they_would_get_alone(bench, client):
    app = client.app

    async def ask(requests_):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as async_client:
            return await asyncio.gather(*(async_client.get(url) for url in requests_))

    for method in ("grad_cam", "saliency", "layer_cam"):
        urls = [
            f"/api/models/{MODEL}/heatmap?image=sample:{MODEL}:{i}&method={method}" for i in range(10, 18)
        ]
        together = asyncio.run(ask(urls))
        alone = [client.get(url) for url in urls]
        batched = [json.loads(r.headers["x-deepscope-meta"])["batched"] for r in together]
        assert max(batched) > 1, f"no request of {method} shared a pass: {batched}"
        assert all(json.loads(r.headers["x-deepscope-meta"])["batched"] == 1 for r in alone)
        for shared, single in zip(together, alone, strict=True):
            np.testing.assert_allclose(array_of(shared), array_of(single), rtol=1e-5, atol=1e-6)
            a, b = (
                json.loads(shared.headers["x-deepscope-meta"]),
                json.loads(single.headers["x-deepscope-meta"]),
            )
            assert a["target_used"] == b["target_used"]
    # a bad request among good ones fails alone
    urls = [f"/api/models/{MODEL}/heatmap?image=sample:{MODEL}:{i}&method=grad_cam&target=2" for i in (1, 2)]
    urls.append(f"/api/models/{MODEL}/heatmap?image=sample:{MODEL}:99999&method=grad_cam&target=2")
    answers = asyncio.run(ask(urls))
    assert [a.status_code for a in answers] == [200, 200, 404]


def test_faithfulness_is_deletion_and_insertion_of_the_map(client, bench, lenet, digits):
    started = client.post(
        f"/api/models/{MODEL}/faithfulness",
        json={"image": f"sample:{MODEL}:6", "method": "saliency", "target": "top1"},
    )
    assert started.status_code == 202
    job = bench.jobs.wait(started.json()["job"], timeout=120)
    assert job["state"] == "done", job
    x = model_input(lenet, digits, 6)
    target = int(lenet.predict(x, k=1)[1][0, 0])
    maps = ds.attribute(lenet, x, "saliency", target=target)
    assert job["result"]["deletion_auc"] == pytest.approx(
        float(ds.metrics.deletion(lenet, x, maps, target).auc[0]), rel=1e-5
    )
    assert job["result"]["insertion_auc"] == pytest.approx(
        float(ds.metrics.insertion(lenet, x, maps, target).auc[0]), rel=1e-5
    )
    polled = client.get(f"/api/jobs/{job['id']}").json()
    assert polled["state"] == "done" and polled["progress"] == 1.0
    # kept in the workspace: a second request answers from it
    again = bench.jobs.wait(
        client.post(
            f"/api/models/{MODEL}/faithfulness", json={"image": f"sample:{MODEL}:6", "method": "saliency"}
        ).json()["job"]
    )
    assert again["result"] == job["result"]
    error_of(
        client.post(f"/api/models/{MODEL}/faithfulness", json={"image": "photo:dog", "method": "saliency"}),
        404,
    )
    error_of(client.get("/api/jobs/nothing"), 404, "NotFoundError")


# ----------------------------------------------------------------------------------------------------------
# layers and units from the workspace


def test_histogram_and_unit_statistics_are_the_workspaces(client, bench):
    ws = bench.models[MODEL].workspace
    histogram = client.get(f"/api/models/{MODEL}/layers/conv2/histogram").json()
    expected = ws.activation_histogram("conv2")
    assert histogram["counts"] == expected.counts.tolist() and histogram["total"] == expected.total
    units = client.get(f"/api/models/{MODEL}/layers/conv2/units").json()
    assert units["dead"] == ws.unit_statistics("conv2")["dead"].tolist()
    np.testing.assert_allclose(units["max"], ws.unit_statistics("conv2")["max"], rtol=1e-6)
    message = error_of(client.get(f"/api/models/{MODEL}/layers/relu1/histogram"), 404, "LayerNotFoundError")
    assert "conv2" in message  # the recorded layers are named


def test_unit_page_top_patches_map_and_notes(client, bench, lenet, digits):
    page = client.get(f"/api/models/{MODEL}/units/conv2/5?image={SAMPLE}").json()
    assert page["top_state"] == "ready" and len(page["top"]) == 9
    ws = bench.models[MODEL].workspace
    _, indices = ws.top_k("conv2")
    assert sorted(hit["sample"] for hit in page["top"]) == sorted(indices[5][:9].tolist())
    hits = ds.units.top_patches(lenet, digits, "conv2", units=[5], k=9)["conv2"]
    assert [hit["sample"] for hit in page["top"]] == hits.sample_indices[0].tolist()
    crop = Image.open(io.BytesIO(client.get(page["top"][0]["crop_url"]).content))
    np.testing.assert_allclose(np.asarray(crop) / 255, hits.crops[0, 0, 0].numpy(), atol=1 / 255)
    assert client.get(page["top"][0]["projection_url"]).status_code == 200
    unit_map = array_of(client.get(page["map_url"]))
    np.testing.assert_allclose(
        unit_map, ds.units.activations(lenet, model_input(lenet, digits, 0), "conv2")[0, 5].numpy(), rtol=1e-6
    )
    assert page["visualization"] == {"state": "none", "url": None, "job": None}
    assert client.put(
        f"/api/models/{MODEL}/units/conv2/5/note", json={"name": "loops", "notes": "closed curves"}
    ).json() == {"name": "loops", "notes": "closed curves"}
    again = client.get(f"/api/models/{MODEL}/units/conv2/5").json()
    assert (again["name"], again["notes"], again["map_url"]) == ("loops", "closed curves", None)
    assert [row["value"]["name"] for row in ws.feedback("unit_note")] == ["loops"]
    # a layer the scan did not record has no top samples, and says so
    other = client.get(f"/api/models/{MODEL}/units/relu2/1").json()
    assert other["top_state"] == "not_recorded" and other["top"] == [] and "conv2" in other["top_message"]


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        ("units/conv2/16", 404, "UnitError"),
        ("units/conv9/0", 404, "LayerNotFoundError"),
        ("units/conv2/-1", 404, "UnitError"),
        ("units/conv2/1?image=photo:dog", 404, "NotFoundError"),
        ("units/conv2/x", 422, "RequestValidationError"),
    ],
)
def test_unknown_units_are_named(client, path, status, kind):
    error_of(client.get(f"/api/models/{MODEL}/{path}"), status, kind)


def test_feature_visualization_is_a_job_kept_in_the_workspace(client, bench, lenet):
    started = client.post(f"/api/models/{MODEL}/units/conv1/2/visualization", json={"steps": 8})
    assert started.status_code == 202
    job = bench.jobs.wait(started.json()["job"], timeout=120)
    assert job["state"] == "done", job
    expected = ds.units.visualize(lenet, "conv1:2", steps=8)
    assert job["result"]["value"] == pytest.approx(float(expected.value[0]), rel=1e-4)
    picture = Image.open(io.BytesIO(client.get(job["result"]["url"]).content))
    np.testing.assert_allclose(np.asarray(picture) / 255, expected.image[0, 0].numpy(), atol=1 / 255 + 1e-6)
    page = client.get(f"/api/models/{MODEL}/units/conv1/2?steps=8").json()
    assert page["visualization"] == {"state": "done", "url": job["result"]["url"], "job": None}
    again = client.post(f"/api/models/{MODEL}/units/conv1/2/visualization", json={"steps": 8}).json()
    assert again["state"] == "done"  # from the workspace, at once
    error_of(client.post(f"/api/models/{MODEL}/units/conv1/2/visualization", json={"steps": 0}), 422)


# ----------------------------------------------------------------------------------------------------------
# the dataset


def test_dataset_summary_points_and_samples(client, bench):
    ws = bench.models[MODEL].workspace
    summary = client.get(f"/api/models/{MODEL}/dataset").json()
    assert summary["samples"] == 1000 and summary["labeled"] and summary["classes"] == ws.classes
    assert summary["accuracy"] == pytest.approx(float((ws.predictions == ws.labels).mean()))
    assert summary["layers"] == ws.layers and summary["embedding_layer"] == "fc3:input"
    points = array_of(client.get(f"/api/models/{MODEL}/dataset/points"))
    assert points.shape == (1000, 5)
    np.testing.assert_array_equal(points[:, 0], ws.indices)
    np.testing.assert_array_equal(points[:, 1], ws.labels)
    np.testing.assert_array_equal(points[:, 2], ws.predictions)
    np.testing.assert_array_equal(points[:, 3], ws.labels == ws.predictions)
    np.testing.assert_allclose(points[:, 4], ws.probabilities.max(1), rtol=1e-6)
    chosen = client.get(f"/api/models/{MODEL}/dataset/samples?indices=3,1,2").json()
    assert [s["index"] for s in chosen] == [3, 1, 2]
    assert chosen[0]["image_id"] == f"sample:{MODEL}:3" and chosen[0]["label"] == int(ws.labels[3])
    error_of(client.get(f"/api/models/{MODEL}/dataset/samples?indices=1,x"), 400, "SettingError")
    error_of(client.get(f"/api/models/{MODEL}/dataset/samples?indices=5000"), 404)
    error_of(client.get(f"/api/models/{MODEL}/dataset/samples"), 400)


def test_confusion_cells_class_report_and_confused_pairs(client, bench):
    ws = bench.models[MODEL].workspace
    confusion = client.get(f"/api/models/{MODEL}/dataset/confusion").json()
    assert confusion["matrix"] == ws.confusion_matrix().tolist()
    pairs = client.get(f"/api/models/{MODEL}/dataset/confused_pairs?n=3").json()
    assert [(p["label"], p["predicted"], p["count"]) for p in pairs] == [
        (p.label, p.predicted, p.count) for p in ws.most_confused(n=3)
    ]
    label, predicted = pairs[0]["label"], pairs[0]["predicted"]
    cell = client.get(f"/api/models/{MODEL}/dataset/samples?cell={label},{predicted}").json()
    assert len(cell) == confusion["matrix"][label][predicted]
    assert all((s["label"], s["prediction"], s["correct"]) == (label, predicted, False) for s in cell)
    report = client.get(f"/api/models/{MODEL}/dataset/class_report").json()
    np.testing.assert_allclose(report["recall"], ws.class_report().recall)
    assert report["support"] == ws.class_report().support.tolist()


def test_layouts_are_jobs_and_arrays(client, bench):
    error_of(client.get(f"/api/models/{MODEL}/dataset/layout?kind=pca"), 404, "NotComputedError")
    started = client.post(f"/api/models/{MODEL}/dataset/layout", json={"kind": "pca"})
    job = bench.jobs.wait(started.json()["job"], timeout=120)
    assert job["state"] == "done"
    layout = array_of(client.get(job["result"]["url"]))
    np.testing.assert_allclose(layout, bench.models[MODEL].workspace.layout("pca"), rtol=1e-6)
    assert {"kind": "pca", "layer": "fc3:input"} in client.get(f"/api/models/{MODEL}/dataset").json()[
        "layouts_available"
    ]
    assert client.post(f"/api/models/{MODEL}/dataset/layout", json={"kind": "pca"}).json()["state"] == "done"
    error_of(client.post(f"/api/models/{MODEL}/dataset/layout", json={"kind": "mds"}), 422)
    error_of(client.post(f"/api/models/{MODEL}/dataset/layout", json={"kind": "pca", "layer": "relu1"}), 404)
    error_of(client.get(f"/api/models/{MODEL}/dataset/layout?kind=mds"), 400, "SettingError")


def test_thumbnails_are_sprite_sheets_in_row_order(client, bench):
    sheets = client.get(f"/api/models/{MODEL}/dataset/thumbnails").json()
    thumbnails = bench.models[MODEL].workspace.thumbnails
    assert sheets["count"] == 1000 and sheets["cell"] == [28, 28] and sheets["per_page"] == 1024
    sheet = np.asarray(Image.open(io.BytesIO(client.get(sheets["pages"][0]).content)))
    row = 37
    top, left = (row // sheets["columns"]) * 28, (row % sheets["columns"]) * 28
    np.testing.assert_array_equal(sheet[top : top + 28, left : left + 28], thumbnails[row, :, :, 0])


def test_two_scans_of_the_same_data_compare(client, bench):
    answer = client.get(f"/api/compare?a={MODEL}&b={TWIN}").json()
    expected = ds.atlas.compare(bench.models[MODEL].workspace, bench.models[TWIN].workspace)
    np.testing.assert_allclose(answer["cka"]["matrix"], expected.cka, rtol=1e-6)
    assert answer["agreement"] == 1.0 and answer["confusion_a"] == answer["confusion_b"]
    error_of(client.get(f"/api/compare?a={MODEL}&b=nothing"), 404)


def test_dataset_views_wait_for_the_scan_and_say_so(tmp_path):
    bench = open_workbench(["zoo:lenet_mnist"], settings=Settings(root=tmp_path))
    with TestClient(create_app(bench)) as client:
        message = error_of(client.get(f"/api/models/{MODEL}/dataset"), 409, "WorkspaceNotReadyError")
        assert "--data" in message
        page = client.get(f"/api/models/{MODEL}/units/conv2/0").json()
        assert page["top_state"] == "no_workspace"
        # the note of a model without a scan is kept in its (empty) workspace
        client.put(f"/api/models/{MODEL}/units/conv2/0/note", json={"name": "edge"})
        assert client.get(f"/api/models/{MODEL}/units/conv2/0").json()["name"] == "edge"
    bench.close()


def test_models_on_other_data_do_not_compare(tmp_path, digits):
    bench = open_workbench(["zoo:lenet_mnist"], digits.subset(range(40), "forty"), Settings(root=tmp_path))
    bench.add_model("zoo:lenet_mnist", digits.subset(range(40, 80), "forty more"))
    bench.wait_for_scans(120)
    with TestClient(create_app(bench)) as client:
        message = error_of(client.get(f"/api/compare?a={MODEL}&b={TWIN}"), 400, "UnknownCompareError")
        assert "same data" in message
    bench.close()


# ----------------------------------------------------------------------------------------------------------
# bad input over HTTP


def test_bad_uploads_are_refused_and_the_server_keeps_serving(client, bench, unchanged):
    module = bench.models[MODEL].vm.module
    module.train()  # the user's model as the user left it: deepscope must not change its mode
    whole = png(Image.new("RGB", (64, 64), "blue"))
    try:
        with unchanged(module):
            uploads = {
                "not an image": (b"%PDF-1.4 this is no image", 422, "not an image"),
                "a truncated PNG": (whole[: len(whole) // 2], 422, "cannot be decoded"),
                "a 0-byte file": (b"", 422, "empty"),
                "a 50-megapixel image": (png(Image.new("L", (10_000, 5_000))), 413, "megapixels"),
            }
            for name, (data, status, words) in uploads.items():
                message = error_of(
                    client.post("/api/images", files={"file": ("x.png", data, "image/png")}), status
                )
                assert words in message, (name, message)
            error_of(
                client.post("/api/images", files={"file": ("big.bin", b"0" * (20 * 1024 * 1024 + 1))}), 413
            )
            error_of(client.post("/api/images"), 422, "RequestValidationError")
            for query in ("method=grad_cam&target=99", "method=gradcam", "method=grad_cam&layer=nowhere"):
                error_of(
                    client.get(f"/api/models/{MODEL}/heatmap?image={SAMPLE}&{query}"),
                    400 if "layer" not in query else 404,
                )
            error_of(client.get(f"/api/models/{MODEL}/units/conv1/6"), 404)
            error_of(client.get("/api/models/nothing/predict?image=photo:coffee"), 404)
            assert (
                client.get(f"/api/models/{MODEL}/heatmap?image={SAMPLE}&method=grad_cam").status_code == 200
            )
        assert client.get("/api/status").status_code == 200
    finally:
        module.eval()


def test_a_decompression_bomb_is_refused_before_decoding(bench):
    from deepscope.app.server.images import UploadLimits, decode_upload

    bomb = png(Image.new("1", (20_000, 20_000)))  # 400 megapixels in a few kilobytes
    assert len(bomb) < 2_000_000
    for limits in (UploadLimits(), UploadLimits(max_pixels=10**12)):
        with pytest.raises(ds.errors.ImageError, match="decompression bomb"):
            decode_upload(bomb, limits)
    large = png(Image.new("1", (10_000, 5_000)))
    with pytest.raises(ds.errors.DeepscopeError, match="50.0 megapixels"):
        decode_upload(large, UploadLimits())


def test_a_bug_is_a_500_without_its_traceback(bench):
    app = create_app(bench, web=None)

    @app.get("/api/broken")
    async def broken():
        raise KeyError("a secret path /home/user")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/api/broken")
    assert answer.status_code == 500
    assert answer.json() == {
        "error": "internal error (KeyError); the server log has the traceback",
        "kind": "InternalError",
    }


# ----------------------------------------------------------------------------------------------------------
# the token


def test_a_token_is_required_beyond_loopback_and_checked_on_every_route(bench):
    access = Access.for_host("0.0.0.0")
    assert access.required and Access.for_host("127.0.0.1").required is False
    assert Access.for_host("::1").required is False and Access.for_host("192.168.1.5").required
    original, bench.access = bench.access, access
    try:
        with TestClient(create_app(bench)) as client:
            for path in ("/api/status", f"/api/models/{MODEL}/layers", "/api/openapi.json", "/"):
                error_of(client.get(path), 401, "TokenError")
            error_of(client.get("/api/status", headers={"Authorization": "Bearer wrong"}), 401, "TokenError")
            assert client.get("/api/status", headers={"Authorization": f"Bearer {access.token}"}).json()[
                "token_required"
            ]
        with TestClient(create_app(bench)) as client:
            first = client.get(f"/?token={access.token}")
            assert first.status_code == 200 and first.cookies.get("deepscope_token") == access.token
            assert client.get(f"/api/models/{MODEL}/layers").status_code == 200  # the cookie now
    finally:
        bench.access = original


def test_serve_beyond_loopback_prints_a_token_url_and_requires_it(tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [
        sys.executable,
        "-m",
        "deepscope.app.cli",
        "serve",
        "zoo:lenet_mnist",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--no-browser",
        "--workspace",
        str(tmp_path),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment
    )
    try:
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=([0-9a-f]{48})", line)
        assert match, line
        port, token = match.groups()
        deadline = time.monotonic() + 60
        while True:
            try:
                refused = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert refused.status_code == 401 and refused.json()["kind"] == "TokenError"
        allowed = httpx.get(
            f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"Bearer {token}"}
        )
        assert allowed.status_code == 200 and allowed.json()["token_required"] is True
    finally:
        process.terminate()
        process.wait(timeout=30)
