"""The API routes (all under ``/api``): each reads its arguments, asks :mod:`deepscope.app.server.compute` (the
library) for the answer in the worker pool, and answers JSON or a DSA1 array."""

from __future__ import annotations

import json
from collections import OrderedDict
from functools import partial
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse

import deepscope.app.server.compute as compute
from deepscope._version import __version__
from deepscope.app.server.arrays import MEDIA_TYPE, encode_array
from deepscope.app.server.images import ImageRecord
from deepscope.app.server.problems import NotComputedError
from deepscope.app.server.schemas import (
    ActivationSummary,
    ClassReportPayload,
    ClustersPayload,
    CompareLayoutsRequest,
    ComparisonPayload,
    ConceptsPayload,
    ConceptsRequest,
    ConfusedPairEntry,
    Confusion,
    DatasetSummary,
    DecoderInversion,
    ErrorBody,
    FaithfulnessRequest,
    GraphPayload,
    HeatmapMeta,
    HistogramPayload,
    ImageEntry,
    InversionRequest,
    InverterRequest,
    InverterState,
    JobPayload,
    JobStarted,
    LayerEntry,
    LayoutRequest,
    MethodEntry,
    ModelEntry,
    NewModel,
    Prediction,
    SampleEntry,
    SelectivityPayload,
    Status,
    Thumbnails,
    UnitNote,
    UnitPage,
    UnitStatistics,
    Uploaded,
    VisualizationRequest,
)
from deepscope.app.server.workbench import ServedModel, Workbench
from deepscope.errors import SettingError
from deepscope.render.images import png_bytes

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": "a JSON error"}
    for status in (400, 401, 403, 404, 409, 413, 422)
}
BINARY = {200: {"content": {MEDIA_TYPE: {}}, "description": "a DSA1 array (docs/workbench-api.md)"}}
PNG = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}
IMMUTABLE = "public, max-age=31536000, immutable"
router = APIRouter(responses=ERRORS)

ModelId = Annotated[str, "the model's id"]
ImageId = Annotated[str, Query(min_length=1, max_length=200, description="an image id (docs: Image ids)")]
LayerName = Annotated[str, Query(min_length=1, max_length=300, description="a layer name of the graph")]
Depth = Annotated[int | None, Query(ge=1, le=64, description="collapse modules deeper than this")]


def workbench(request: Request) -> Workbench:
    return request.app.state.bench


Bench = Annotated[Workbench, Depends(workbench)]


def binary(
    array: np.ndarray, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(encode_array(array, extra), media_type=MEDIA_TYPE, headers=headers)


# --------------------------------------------------------------------------------------------------------------
# server


@router.get("/status", response_model=Status)
async def status(bench: Bench) -> dict[str, Any]:
    return {
        "version": __version__,
        "token_required": bench.access.required,
        "models": [
            {"id": served.id, "workspace": compute.workspace_entry(bench, served)}
            for served in bench.models.values()
        ],
    }


@router.get("/jobs/{job_id}", response_model=JobPayload)
async def job(job_id: str, bench: Bench) -> dict[str, Any]:
    return bench.jobs.get(job_id).payload()


@router.get("/blobs/{name}", response_class=FileResponse, responses=PNG)
async def blob(name: str, bench: Bench) -> FileResponse:
    digest = name.removesuffix(".png")
    return FileResponse(
        bench.blobs.path(digest), media_type="image/png", headers={"Cache-Control": IMMUTABLE}
    )


# --------------------------------------------------------------------------------------------------------------
# models


@router.get("/models", response_model=list[ModelEntry])
async def models(bench: Bench) -> list[dict[str, Any]]:
    return [compute.model_entry(bench, served) for served in bench.models.values()]


@router.post("/models", response_model=ModelEntry, status_code=201)
async def add_model(body: NewModel, bench: Bench) -> dict[str, Any]:
    served = await bench.run(partial(bench.add_model, body.spec, body.data, body.workspace, from_http=True))
    return compute.model_entry(bench, served)


@router.get("/models/{model}/labels", response_model=list[str])
async def labels(model: ModelId, bench: Bench) -> list[str]:
    vm = bench.model(model).vm
    return list(vm.labels) if vm.labels is not None else []


@router.get("/models/{model}/graph", response_model=GraphPayload)
async def model_graph(model: ModelId, bench: Bench, depth: Depth = None) -> dict[str, Any]:
    served = bench.model(model)
    return await bench.run(compute.graph_payload, served, depth)


@router.get("/models/{model}/layers", response_model=list[LayerEntry])
async def layers(model: ModelId, bench: Bench) -> list[dict[str, Any]]:
    return await bench.run(compute.layer_list, bench.model(model))


# --------------------------------------------------------------------------------------------------------------
# images


def _image_entry(record: ImageRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "source": record.source,
        "url": f"/api/images/{record.id}",
        "width": record.width,
        "height": record.height,
    }


@router.get("/images", response_model=list[ImageEntry])
async def images(
    bench: Bench,
    model: Annotated[str | None, Query(max_length=100)] = None,
    samples: Annotated[int, Query(ge=0, le=1000)] = 24,
) -> list[dict[str, Any]]:
    entries = [_image_entry(record) for record in await bench.run(bench.images.records)]
    if model is not None:
        served = bench.model(model)
        if served.dataset is not None:
            for index in range(min(samples, len(served.dataset))):
                picture = await bench.run(served.sample_picture, index)
                image_id = f"sample:{served.id}:{index}"
                record = ImageRecord(image_id, f"{served.data_name}[{index}]", "dataset", *picture.size)
                entries.append(_image_entry(record))
    return entries


@router.post("/images", response_model=Uploaded, status_code=201)
async def upload(
    bench: Bench, file: Annotated[UploadFile, File(description="one image file")]
) -> dict[str, Any]:
    limit = bench.settings.limits.max_bytes
    data = await file.read(limit + 1)
    record = await bench.run(bench.images.add, data, file.filename)
    return {
        "id": record.id,
        "url": f"/api/images/{record.id}",
        "width": record.width,
        "height": record.height,
    }


@router.get("/images/{image_id}", response_class=Response, responses=PNG)
async def image(image_id: str, bench: Bench) -> Response:
    picture = await bench.run(bench.picture, image_id)
    data = await bench.run(png_bytes, picture)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


# --------------------------------------------------------------------------------------------------------------
# one image through a model


@router.get("/models/{model}/predict", response_model=list[Prediction])
async def predict(model: ModelId, image: ImageId, bench: Bench, k: Annotated[int, Query(ge=1, le=1000)] = 5):
    return await bench.run(compute.predict, bench, bench.model(model), image, k)


@router.get("/models/{model}/activations", response_class=Response, responses=BINARY)
async def activations(model: ModelId, image: ImageId, layer: LayerName, bench: Bench) -> Response:
    values = await bench.run(compute.activations, bench, bench.model(model), image, layer)
    return binary(values)


@router.get("/models/{model}/activations/summary", response_model=ActivationSummary)
async def activation_summary(
    model: ModelId, image: ImageId, layer: LayerName, bench: Bench
) -> dict[str, Any]:
    return await bench.run(compute.activation_summary, bench, bench.model(model), image, layer)


@router.get("/models/{model}/strength", response_model=dict[str, float])
async def strength(model: ModelId, image: ImageId, bench: Bench, depth: Depth = None) -> dict[str, float]:
    return await bench.run(compute.strength, bench, bench.model(model), image, depth)


@router.get("/models/{model}/filters", response_class=Response, responses=BINARY)
async def filters(model: ModelId, layer: LayerName, bench: Bench) -> Response:
    return binary(await bench.run(compute.filters, bench.model(model), layer))


# --------------------------------------------------------------------------------------------------------------
# layer statistics and units


@router.get("/models/{model}/layers/{layer}/histogram", response_model=HistogramPayload)
async def histogram(model: ModelId, layer: str, bench: Bench) -> dict[str, Any]:
    return await bench.run(compute.histogram, bench.model(model), layer)


@router.get("/models/{model}/layers/{layer}/units", response_model=UnitStatistics)
async def unit_statistics(model: ModelId, layer: str, bench: Bench) -> dict[str, Any]:
    return await bench.run(compute.unit_statistics, bench.model(model), layer)


@router.get("/models/{model}/units/{layer}/{unit}", response_model=UnitPage)
async def unit_page(
    model: ModelId,
    layer: str,
    unit: int,
    bench: Bench,
    image: Annotated[str | None, Query(max_length=200)] = None,
    steps: Annotated[int, Query(ge=1, le=2048)] = 256,
) -> dict[str, Any]:
    served = bench.model(model)
    units = await bench.run(compute.layer_units, served, layer)
    compute.check_unit(layer, unit, units)
    state, message, top = await bench.run(compute.unit_top, bench, served, layer, unit)
    found = await bench.run(compute.visualization_found, served, layer, unit, steps)
    running = bench.jobs.active("featurevis", f"{served.id}|{compute.visualization_key(layer, unit, steps)}")
    if found is not None:
        visualization = {"state": "done", "url": found["url"], "job": None}
    elif running is not None:
        visualization = {"state": running.state, "url": None, "job": running.id}
    else:
        visualization = {"state": "none", "url": None, "job": None}
    note = await bench.run(compute.unit_note, served, layer, unit)
    map_url, box = None, {"width": None, "height": None, "crop": None}
    if image is not None:
        # An unknown image is a 404 here rather than in the map's own fetch.
        await bench.run(bench.model_input, served, image)
        map_url = f"/api/models/{served.id}/units/{layer}/{unit}/map?image={image}"
        box = await bench.run(compute.image_box, bench, served, image)
    return {
        "layer": layer,
        "unit": unit,
        "map_url": map_url,
        **box,
        "top": top,
        "top_state": state,
        "top_message": message,
        "visualization": visualization,
        **note,
    }


@router.get("/models/{model}/units/{layer}/{unit}/map", response_class=Response, responses=BINARY)
async def unit_map(model: ModelId, layer: str, unit: int, image: ImageId, bench: Bench) -> Response:
    return binary(await bench.run(compute.unit_map, bench, bench.model(model), layer, unit, image))


@router.post("/models/{model}/units/{layer}/{unit}/visualization", response_model=JobStarted, status_code=202)
async def start_visualization(
    model: ModelId, layer: str, unit: int, bench: Bench, body: VisualizationRequest | None = None
) -> dict[str, Any]:
    served = bench.model(model)
    steps = (body or VisualizationRequest()).steps
    units = await bench.run(compute.layer_units, served, layer)
    compute.check_unit(layer, unit, units)
    key = f"{served.id}|{compute.visualization_key(layer, unit, steps)}"
    found = await bench.run(compute.visualization_found, served, layer, unit, steps)
    if found is not None:
        started = bench.jobs.finished("featurevis", key, found, "kept in the workspace")
    else:
        started = bench.jobs.submit(
            "featurevis",
            key,
            partial(_visualization_job, bench, served, layer, unit, steps),
            f"feature visualization of {layer}:{unit}",
        )
    return {"job": started.id, "state": started.state}


def _visualization_job(bench: Workbench, served: ServedModel, layer: str, unit: int, steps: int, job) -> Any:
    return compute.visualization(bench, served, layer, unit, steps, job)


@router.put("/models/{model}/units/{layer}/{unit}/note", response_model=UnitNote)
async def save_note(model: ModelId, layer: str, unit: int, body: UnitNote, bench: Bench) -> dict[str, str]:
    served = bench.model(model)
    units = await bench.run(compute.layer_units, served, layer)
    compute.check_unit(layer, unit, units)
    return await bench.run(compute.save_unit_note, served, layer, unit, body.name, body.notes)


# --------------------------------------------------------------------------------------------------------------
# heat maps


@router.get("/methods", response_model=list[MethodEntry])
async def methods() -> list[dict[str, Any]]:
    return compute.method_list()


HEATMAP_META_KEPT = 512


async def _heatmap(
    bench: Workbench, model: str, image: str, method: str, target: str, layer: str | None, options: str | None
) -> tuple[np.ndarray, dict[str, Any]]:
    served = bench.model(model)
    spec = compute.method_spec(method, options, layer)
    if layer:
        compute.check_layer(served, layer)
    wanted = compute.parse_target(served, target)
    await bench.run(bench.model_input, served, image)  # a bad image fails alone, before any batch
    spec = compute.resolved_spec(served, spec)
    kind = "top1" if wanted is None else "class"
    key: Any = (served.id, repr(spec), kind) if compute.batchable(spec) else object()
    values, meta = await bench.batcher.submit(
        key, compute.MapRequest(image, wanted), partial(compute.heatmaps, bench, served, spec)
    )
    cache: OrderedDict = bench.heatmap_meta
    cache[f"{model}|{image}|{method}|{target}|{layer}|{options}"] = meta
    while len(cache) > HEATMAP_META_KEPT:
        cache.popitem(last=False)
    return values, meta


HeatmapQuery = Annotated[str, Query(max_length=100, description="a method name (GET /api/methods)")]
TargetQuery = Annotated[str, Query(max_length=200, description="top1, a class index or a class name")]
OptionsQuery = Annotated[str | None, Query(max_length=4000, description="method options as a JSON object")]
LayerQuery = Annotated[str | None, Query(max_length=300)]


@router.get("/models/{model}/heatmap", response_class=Response, responses=BINARY)
async def heatmap(
    model: ModelId,
    image: ImageId,
    method: HeatmapQuery,
    bench: Bench,
    target: TargetQuery = "top1",
    layer: LayerQuery = None,
    options: OptionsQuery = None,
) -> Response:
    values, meta = await _heatmap(bench, model, image, method, target, layer, options)
    return binary(values, {"meta": meta}, {"X-Deepscope-Meta": json.dumps(meta)})


@router.get("/models/{model}/heatmap/meta", response_model=HeatmapMeta)
async def heatmap_meta(
    model: ModelId,
    image: ImageId,
    method: HeatmapQuery,
    bench: Bench,
    target: TargetQuery = "top1",
    layer: LayerQuery = None,
    options: OptionsQuery = None,
) -> dict[str, Any]:
    found = bench.heatmap_meta.get(f"{model}|{image}|{method}|{target}|{layer}|{options}")
    if found is not None:
        return found
    return (await _heatmap(bench, model, image, method, target, layer, options))[1]


@router.post("/models/{model}/faithfulness", response_model=JobStarted, status_code=202)
async def start_faithfulness(model: ModelId, body: FaithfulnessRequest, bench: Bench) -> dict[str, Any]:
    served = bench.model(model)
    spec = compute.method_spec(body.method, json.dumps(body.options) if body.options else None, body.layer)
    wanted = compute.parse_target(served, body.target)
    await bench.run(bench.model_input, served, body.image)
    key = f"{served.id}|{body.image}|{spec!r}|{wanted}"
    started = bench.jobs.submit(
        "faithfulness",
        key,
        partial(compute.faithfulness, bench, served, body.image, spec, wanted),
        f"deletion and insertion of {spec!r}",
    )
    return {"job": started.id, "state": started.state}


# --------------------------------------------------------------------------------------------------------------
# the dataset


@router.get("/models/{model}/dataset", response_model=DatasetSummary)
def dataset(model: ModelId, bench: Bench) -> dict[str, Any]:
    return compute.dataset_summary(bench.model(model))


@router.get("/models/{model}/dataset/points", response_class=Response, responses=BINARY)
def points(model: ModelId, bench: Bench) -> Response:
    return binary(compute.points(bench.model(model)))


@router.post("/models/{model}/dataset/layout", response_model=JobStarted, status_code=202)
async def start_layout(model: ModelId, body: LayoutRequest, bench: Bench) -> dict[str, Any]:
    served = bench.model(model)
    ws = served.ready_workspace()
    name = compute.layout_layer(ws, body.layer)
    key = f"{served.id}|{body.kind}|{name}"
    if not compute.layout_found(served, body.kind, name):
        started = bench.jobs.submit(
            "layout",
            key,
            partial(compute.compute_layout, served, body.kind, body.layer),
            f"{body.kind} layout",
        )
    else:
        result = compute.layout_result(served, body.kind, name, body.layer is not None)
        started = bench.jobs.finished("layout", key, result, "kept in the workspace")
    return {"job": started.id, "state": started.state}


@router.get("/models/{model}/dataset/layout", response_class=Response, responses=BINARY)
def layout(
    model: ModelId,
    bench: Bench,
    kind: Annotated[str, Query(max_length=10)] = "tsne",
    layer: LayerQuery = None,
) -> Response:
    return binary(compute.stored_layout(bench.model(model), kind, layer))


@router.get("/models/{model}/dataset/thumbnails", response_model=Thumbnails)
def thumbnails(model: ModelId, bench: Bench) -> dict[str, Any]:
    return compute.thumbnail_sheets(bench, bench.model(model))


@router.get("/models/{model}/dataset/confusion", response_model=Confusion)
def confusion(model: ModelId, bench: Bench) -> dict[str, Any]:
    return compute.confusion(bench.model(model))


def _integers(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SettingError(f"{what} must be whole numbers separated by commas, got {text!r}") from None


@router.get("/models/{model}/dataset/samples", response_model=list[SampleEntry])
def dataset_samples(
    model: ModelId,
    bench: Bench,
    indices: Annotated[str | None, Query(max_length=100_000, description="dataset indices, 1,2,3")] = None,
    cell: Annotated[str | None, Query(max_length=40, description="LABEL,PREDICTION")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 200,
) -> list[dict[str, Any]]:
    if (indices is None) == (cell is None):
        raise SettingError("give either indices=1,2,3 or cell=LABEL,PREDICTION")
    pair = None
    if cell is not None:
        numbers = _integers(cell, "cell")
        if len(numbers) != 2:
            raise SettingError(f"cell is LABEL,PREDICTION (two class indices), got {cell!r}")
        pair = (numbers[0], numbers[1])
    chosen = _integers(indices, "indices") if indices is not None else None
    return compute.samples(bench.model(model), chosen, pair, limit)


@router.get("/models/{model}/dataset/class_report", response_model=ClassReportPayload)
def class_report(model: ModelId, bench: Bench) -> dict[str, Any]:
    return compute.class_report(bench.model(model))


@router.get("/models/{model}/dataset/confused_pairs", response_model=list[ConfusedPairEntry])
def confused_pairs(
    model: ModelId, bench: Bench, n: Annotated[int, Query(ge=1, le=1000)] = 10
) -> list[dict[str, Any]]:
    return compute.confused_pairs(bench.model(model), n)


@router.get("/compare", response_model=ComparisonPayload)
async def comparison(
    a: Annotated[str, Query(max_length=100)], b: Annotated[str, Query(max_length=100)], bench: Bench
) -> dict[str, Any]:
    return await bench.run(compute.comparison, bench.model(a), bench.model(b))


@router.post("/compare/layouts", response_model=JobStarted, status_code=202)
async def start_comparison_layouts(body: CompareLayoutsRequest, bench: Bench) -> dict[str, Any]:
    a, b = bench.model(body.a), bench.model(body.b)
    started = bench.jobs.submit(
        "compare_layouts",
        f"{a.id}|{b.id}|{body.kind}",
        partial(compute.comparison_layouts, a, b, body.kind),
        f"{body.kind} layouts of every layer of {a.id} and {b.id}",
    )
    return {"job": started.id, "state": started.state}


# --------------------------------------------------------------------------------------------------------------
# unit selectivity, visual concepts, neuron clusters, decoder inversion


@router.get("/models/{model}/layers/{layer}/selectivity", response_model=SelectivityPayload)
async def selectivity(model: ModelId, layer: str, bench: Bench) -> dict[str, Any]:
    return await bench.run(compute.selectivity, bench.model(model), layer)


@router.get("/models/{model}/layers/{layer}/selectivity/{unit}", response_class=Response, responses=BINARY)
async def unit_selectivity(model: ModelId, layer: str, unit: int, bench: Bench) -> Response:
    counts, extra = await bench.run(compute.unit_selectivity, bench.model(model), layer, unit)
    return binary(counts, extra)


ConceptCount = Annotated[int, Query(ge=1, le=256, description="how many concepts")]
PatchCount = Annotated[int, Query(ge=1, le=32, description="nearest patches per concept")]
EpochCount = Annotated[int, Query(ge=0, le=20, description="passes moving the centers")]


@router.get("/models/{model}/layers/{layer}/concepts", response_model=ConceptsPayload)
async def concepts(
    model: ModelId,
    layer: str,
    bench: Bench,
    k: ConceptCount = 12,
    patches: PatchCount = 8,
    epochs: EpochCount = 1,
) -> dict[str, Any]:
    served = bench.model(model)
    await bench.run(compute.check_layer, served, layer)
    found = await bench.run(compute.concepts_found, bench, served, layer, k, patches, epochs)
    if found is None:
        raise NotComputedError(
            f"the {k} concepts of {layer!r} are not computed yet; POST /api/models/{served.id}/layers/{layer}/concepts "
            f'{{"k": {k}}} starts them'
        )
    return found


@router.post("/models/{model}/layers/{layer}/concepts", response_model=JobStarted, status_code=202)
async def start_concepts(
    model: ModelId, layer: str, bench: Bench, body: ConceptsRequest | None = None
) -> dict[str, Any]:
    served = bench.model(model)
    body = body or ConceptsRequest()
    compute.data_of(served)
    await bench.run(compute.check_layer, served, layer)
    key = f"{served.id}|{compute.concepts_key(layer, body.k, body.patches, body.epochs)}"
    found = await bench.run(compute.concepts_found, bench, served, layer, body.k, body.patches, body.epochs)
    if found is not None:
        started = bench.jobs.finished("concepts", key, found, "kept in the workspace")
    else:
        started = bench.jobs.submit(
            "concepts",
            key,
            partial(compute.compute_concepts, bench, served, layer, body.k, body.patches, body.epochs),
            f"{body.k} visual concepts of {layer}",
        )
    return {"job": started.id, "state": started.state}


LayerList = Annotated[
    str | None,
    Query(max_length=4000, description="recorded layers, comma-separated (default: conv / linear)"),
]


@router.get("/models/{model}/clusters", response_model=ClustersPayload)
async def clusters(
    model: ModelId,
    bench: Bench,
    layers: LayerList = None,
    k: Annotated[int, Query(ge=1, le=64, description="clusters per layer")] = 4,
    samples: Annotated[int, Query(ge=1, le=32, description="representative samples per cluster")] = 6,
) -> dict[str, Any]:
    names = [name.strip() for name in layers.split(",") if name.strip()] if layers else None
    return await bench.run(compute.clusters, bench.model(model), names, k, samples)


@router.get("/models/{model}/layers/{layer}/inverter", response_model=InverterState)
async def inverter(model: ModelId, layer: str, bench: Bench) -> dict[str, Any]:
    served = bench.model(model)
    await bench.run(compute.check_layer, served, layer)
    found = await bench.run(compute.inverter_state, served, layer)
    running = bench.jobs.active("inverter", f"{served.id}|{layer}")
    return {**found, "job": running.id if running is not None else None}


@router.post("/models/{model}/layers/{layer}/inverter", response_model=JobStarted, status_code=202)
async def start_inverter(
    model: ModelId, layer: str, bench: Bench, body: InverterRequest | None = None
) -> dict[str, Any]:
    served = bench.model(model)
    body = body or InverterRequest()
    compute.data_of(served)
    await bench.run(compute.check_layer, served, layer)
    started = bench.jobs.submit(
        "inverter",
        f"{served.id}|{layer}",
        partial(compute.train_decoder, served, layer, body.epochs, body.width),
        f"training a decoder from {layer}",
    )
    return {"job": started.id, "state": started.state}


@router.get("/models/{model}/layers/{layer}/inversion", response_model=DecoderInversion)
async def decoder_inversion(model: ModelId, layer: str, image: ImageId, bench: Bench) -> dict[str, Any]:
    return await bench.run(compute.decoder_inversion, bench, bench.model(model), layer, image)


@router.post("/models/{model}/layers/{layer}/inversion", response_model=JobStarted, status_code=202)
async def start_inversion_comparison(
    model: ModelId, layer: str, body: InversionRequest, bench: Bench
) -> dict[str, Any]:
    served = bench.model(model)
    await bench.run(compute.check_layer, served, layer)
    await bench.run(compute.stored_inverter, served, layer)  # no decoder yet: a 404 now, not a failed job
    await bench.run(bench.model_input, served, body.image)
    started = bench.jobs.submit(
        "inversion",
        f"{served.id}|{layer}|{body.image}|{body.steps}",
        partial(compute.inversion_comparison, bench, served, layer, body.image, body.steps),
        f"decoder and optimization inversion from {layer}",
    )
    return {"job": started.id, "state": started.state}
