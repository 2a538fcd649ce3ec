"""The work behind the routes: each function calls the library (models, probes, units, attribution, metrics,
atlas) and turns its result into plain data (JSON-ready values or NumPy arrays). Synchronous; the routes run
them in the workbench's worker pool. Nothing here is computed that the library does not compute; the
functions only choose, cache and reshape (TensorBoard's route / impl split: these are the impls)."""

from __future__ import annotations

import json
import math
import tempfile
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepscope.app.server.jobs import Job
from deepscope.app.server.problems import (
    NotComputedError,
    NotFoundError,
    UnknownCompareError,
    WorkspaceNotReadyError,
)
from deepscope.app.server.workbench import ServedModel, Workbench
from deepscope.atlas.clusters import neuron_clusters
from deepscope.atlas.compare import compare
from deepscope.atlas.layouts import LAYOUTS
from deepscope.atlas.workspace import Workspace
from deepscope.attribution.base import Method, method, method_info, methods, type_name
from deepscope.attribution.explain import explain
from deepscope.attribution.targets import TargetError
from deepscope.errors import SettingError, SettingTypeError, UnitError, suggestion
from deepscope.metrics.faithfulness import deletion, insertion
from deepscope.probe.graph import graph
from deepscope.probe.hooks import layer_hooks
from deepscope.probe.layers import parse_layer
from deepscope.render.heatmap import DIVERGING, SEQUENTIAL, reduce_channels
from deepscope.render.images import scale_each, to_pil
from deepscope.units.concepts import concepts
from deepscope.units.featurevis import visualize
from deepscope.units.inversion import pixel_normalization, relative_image_error
from deepscope.units.inverter import Inverter, compare_inversions, load_inverter, train_inverter
from deepscope.units.maps import activations as layer_activations
from deepscope.units.maps import filters as weight_images
from deepscope.units.patches import top_patches
from deepscope.zoo.state import evaluation_mode

# The version of every artifact this module keeps in a workspace: bump it when what one holds changes, and
# the old ones are computed again.
ARTIFACT_VERSION = 1
TOP_PATCHES = 9


def finite(value: float) -> float | None:
    """A float for JSON: None where it is NaN or infinite."""
    value = float(value)
    return value if math.isfinite(value) else None


def finite_list(values: Any) -> list[float | None]:
    return [finite(v) for v in np.asarray(values, dtype=np.float64).ravel()]


# ----------------------------------------------------------------------------------------------------------
# models and their graphs


def model_entry(bench: Workbench, served: ServedModel) -> dict[str, Any]:
    vm = served.vm
    return {
        "id": served.id,
        "name": vm.name,
        "spec": served.spec,
        "classes": len(vm.labels) if vm.labels is not None else 0,
        "labels_url": f"/api/models/{served.id}/labels",
        "input_size": list(vm.input_size) if vm.input_size is not None else None,
        "image_mode": vm.image_mode,
        "channels": vm.preprocessing.channels,
        "data": served.data_name,
        "workspace": workspace_entry(bench, served),
    }


def workspace_entry(bench: Workbench, served: ServedModel) -> dict[str, Any]:
    state = bench.status_of(served)
    return {
        "state": state.state,
        "progress": state.progress,
        "samples": state.samples,
        "message": state.message,
    }


def graph_payload(served: ServedModel, depth: int | None) -> dict[str, Any]:
    """``ds.graph(vm, depth=depth).to_dict()`` with the model id; computed once per depth."""
    with served.lock:
        cached = served.graphs.get(depth)
    if cached is not None:
        return cached
    example = _example(served)
    payload = {"model": served.id, **graph(served.vm, example, depth=depth).to_dict()}
    with served.lock:
        served.graphs[depth] = payload
    return payload


def _example(served: ServedModel) -> torch.Tensor:
    size = served.vm.input_size or (224, 224)
    return torch.zeros(1, served.vm.preprocessing.channels, *size, device=served.vm.device)


def layer_list(served: ServedModel) -> list[dict[str, Any]]:
    """Every node of the full graph that has a layer name, with its kind and width."""
    found = []
    for node in graph_payload(served, None)["nodes"]:
        if not node["layer"]:
            continue
        shape = node["output_shape"] or []
        op = node["op"]
        kind = "conv" if op.startswith("Conv") else "linear" if op == "Linear" else "other"
        found.append(
            {
                "name": node["layer"],
                "kind": kind,
                "op": op,
                "output_shape": list(shape),
                "units": int(shape[1]) if len(shape) >= 2 else None,
                "spatial": len(shape) == 4 and shape[2] * shape[3] > 1,
            }
        )
    return found


def check_layer(served: ServedModel, layer: str) -> str:
    """``layer`` if the model has it (a clear 404 listing close names otherwise)."""
    parse_layer(served.vm, layer)
    return layer


# ----------------------------------------------------------------------------------------------------------
# one image through a model


def predict(bench: Workbench, served: ServedModel, image: str, k: int) -> list[dict[str, Any]]:
    x = bench.model_input(served, image)
    probabilities, classes = served.vm.predict(x, k=k)
    return [
        {"class": int(c), "label": served.vm.label(int(c)), "probability": float(p)}
        for p, c in zip(probabilities[0].tolist(), classes[0].tolist(), strict=True)
    ]


def activations(bench: Workbench, served: ServedModel, image: str, layer: str) -> np.ndarray:
    """The layer's raw output for the image: ``[C, h, w]`` or ``[units]``."""
    check_layer(served, layer)
    x = bench.model_input(served, image)
    return layer_activations(served.vm, x, layer)[0].float().cpu().numpy()


def activation_summary(bench: Workbench, served: ServedModel, image: str, layer: str) -> dict[str, Any]:
    values = activations(bench, served, image, layer)
    strength = values.reshape(values.shape[0], -1).mean(1) if values.ndim > 1 else values
    order = np.argsort(-strength, kind="stable")
    return {
        "layer": layer,
        "shape": list(values.shape),
        "strength": finite_list(strength),
        "order": [int(i) for i in order],
    }


def strength(bench: Workbench, served: ServedModel, image: str, depth: int | None) -> dict[str, float]:
    """Mean absolute activation of each graph node with a layer name, from one forward with hooks on them."""
    nodes = [node for node in graph_payload(served, depth)["nodes"] if node["layer"]]
    x = bench.model_input(served, image)
    found: dict[str, float] = {}

    def record(name: str, tensor: torch.Tensor) -> None:
        found[name] = float(tensor.detach().abs().float().mean())

    layers = list(dict.fromkeys(node["layer"] for node in nodes))
    with (
        torch.inference_mode(),
        evaluation_mode(served.vm.module),
        layer_hooks(served.vm.module, layers, record),
    ):
        served.vm(x)
    return {node["id"]: found[node["layer"]] for node in nodes if node["layer"] in found}


def filters(served: ServedModel, layer: str) -> np.ndarray:
    """``ds.units.filters``: a convolution's kernels ``[out, in, kh, kw]``, or the weights of a Linear layer that
    reads the pixels as images ``[out, C, H, W]``."""
    return weight_images(served.vm, layer).float().cpu().numpy()


# ----------------------------------------------------------------------------------------------------------
# heat maps


def method_spec(name: str, options: str | None, layer: str | None) -> Method:
    """A checked ``ds.method`` spec from the query's method name, its JSON options and layer."""
    given: dict[str, Any] = {}
    if options:
        try:
            given = json.loads(options)
        except json.JSONDecodeError as error:
            raise SettingError(f'options must be a JSON object such as {{"steps": 16}}: {error}') from None
        if not isinstance(given, dict):
            raise SettingTypeError(f"options must be a JSON object, got {type(given).__name__}")
    info = method_info(name)
    declared = {option.name: option for option in info.options}
    for key, value in list(given.items()):
        option = declared.get(key)
        if option is not None and isinstance(value, list) and typing.get_origin(option.type) is not list:
            given[key] = tuple(value)  # JSON has no tuples: a pair such as a window size comes as a list
    return method(name, layer=layer or None, **given)


def parse_target(served: ServedModel, target: str) -> int | None:
    """``top1`` -> None; a class index or an exact class name -> its index."""
    text = target.strip()
    if text in ("", "top1"):
        return None
    labels = served.vm.labels
    classes = len(labels) if labels is not None else None
    if text.lstrip("-").isdigit():
        index = int(text)
        if index < 0 or (classes is not None and index >= classes):
            raise TargetError(
                f"target {index} is out of range for {served.id} with {classes} classes (0..{classes - 1 if classes else 0})"
            )
        return index
    if labels is not None and text in labels:
        return labels.index(text)
    raise TargetError(
        f"target {text!r} is neither 'top1', a class index nor a class name of {served.id}."
        f"{suggestion(text, labels or [])}"
    )


@dataclass
class TopClass:
    """Each sample's top-1 class, scored as ``target=None`` scores it (the class with the largest output),
    remembering which class that was: one pass gives the map and the class it explains."""

    chosen: torch.Tensor
    rows: torch.Tensor | None = None

    def __call__(self, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 2:
            raise TargetError("'top1' needs a model whose output is [batch, classes]")
        indices = output.detach().argmax(1)
        rows = self.rows if self.rows is not None else torch.arange(len(indices))
        self.chosen[rows.cpu()] = indices.cpu()
        return output.gather(1, indices[:, None])[:, 0]

    def select(self, rows: torch.Tensor) -> TopClass:
        rows = rows.cpu()
        return TopClass(self.chosen, rows if self.rows is None else self.rows[rows])


def batchable(spec: Method) -> bool:
    """Whether requests for ``spec`` may share a batch: a method with a random ``seed`` draws its noise for the
    whole batch, so its map for one image would depend on the others."""
    return all(option.name != "seed" for option in spec.info.options)


def resolved_spec(served: ServedModel, spec: Method) -> Method:
    """``spec`` with the default layer filled in once it is known for this model (saves the probe pass)."""
    if spec.info.needs_layer and spec.layer is None:
        known = served.default_layers.get(_input_shape(served))
        if known is not None:
            return spec.replace(layer=known)
    return spec


def _input_shape(served: ServedModel) -> tuple[int, ...]:
    return tuple(served.vm.input_size or ())


@dataclass(frozen=True)
class MapRequest:
    image: str
    target: int | None


def heatmaps(
    bench: Workbench, served: ServedModel, spec: Method, requests: Sequence[MapRequest]
) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """Maps ``[H, W]`` (channels summed) and their meta for several images, in one ``ds.explain`` call."""
    x = torch.cat([bench.model_input(served, request.image) for request in requests])
    targets = [request.target for request in requests]
    recorder: TopClass | None = None
    if all(target is None for target in targets) and getattr(spec.info.method, "shares_pass", False):
        # The map's own forward scores the top class: record it there instead of paying a forward for it.
        recorder = TopClass(torch.full((len(requests),), -1, dtype=torch.long))
        target: Any = recorder
    elif any(target is None for target in targets):
        _, top = served.vm.predict(x, k=1)
        target = [int(top[i, 0]) if t is None else t for i, t in enumerate(targets)]
    else:
        target = targets
    result = explain(served.vm, x, [spec], target=target)
    maps = result[spec.name].detach()
    layer_used = result.layers.get(spec.name)
    if layer_used is not None and spec.layer is None:
        with served.lock:
            served.default_layers[_input_shape(served)] = layer_used
    used = recorder.chosen.tolist() if recorder is not None else list(target)
    family = spec.info.family
    answers = []
    for index in range(len(requests)):
        values = reduce_channels(maps[index], "sum").float().cpu().numpy()
        low, high = float(values.min()), float(values.max())
        signed = family != "cam" and low < 0
        answers.append(
            (
                values,
                {
                    "method": spec.name,
                    "min": finite(low),
                    "max": finite(high),
                    "signed": signed,
                    "colormap": DIVERGING if signed else SEQUENTIAL,
                    "layer_used": layer_used,
                    "target_used": int(used[index]),
                    "target_label": served.vm.label(int(used[index])),
                    "passes": str(result.passes),
                    "batched": len(requests),
                    **image_box(bench, served, requests[index].image),
                },
            )
        )
    return answers


def image_box(bench: Workbench, served: ServedModel, image: str) -> dict[str, Any]:
    """The image's size and the box of it the model sees, ``crop: [left, top, right, bottom]`` in its own pixels
    (``Preprocessing.crop_box``), so that a map of the input is drawn over that part of the photo."""
    width, height = bench.picture(image, served).size
    return {"width": width, "height": height, "crop": list(served.vm.preprocessing.crop_box(width, height))}


def method_list() -> list[dict[str, Any]]:
    found = []
    for info in methods():
        found.append(
            {
                "name": info.name,
                "family": info.family,
                "space": info.space,
                "needs_layer": info.needs_layer,
                "sensitivity": info.sensitivity,
                "passes": info.passes,
                "reference": info.reference,
                "colormap": SEQUENTIAL if info.family == "cam" else DIVERGING,
                "options": [
                    {
                        "name": option.name,
                        "type": type_name(option.type),
                        "default": _jsonable(option.default),
                        "required": option.required,
                    }
                    for option in info.options
                ],
            }
        )
    return found


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return str(value)


def faithfulness(
    bench: Workbench, served: ServedModel, image: str, spec: Method, target: int | None, job: Job
) -> dict[str, Any]:
    """Deletion and insertion (Petsiuk et al. 2018) of the method's map for the image; kept in the workspace."""
    key = f"{image}|{spec!r}|{target}"
    store = served.artifacts()
    found = store.artifact("faithfulness", key, ARTIFACT_VERSION)
    if found is not None:
        return found.meta
    job.report(0.05, "computing the heat map")
    x = bench.model_input(served, image)
    if target is None:
        target = int(served.vm.predict(x, k=1)[1][0, 0])
    maps = explain(served.vm, x, [spec], target=target)[spec.name]
    job.report(0.2, "deleting the most relevant pixels first")
    deleted = deletion(served.vm, x, maps, target)
    job.report(0.6, "inserting the most relevant pixels first")
    inserted = insertion(served.vm, x, maps, target)
    result = {
        "deletion_auc": finite(deleted.auc[0]),
        "insertion_auc": finite(inserted.auc[0]),
        "fractions": finite_list(deleted.fractions),
        "deletion": finite_list(deleted.curve[0].cpu()),
        "insertion": finite_list(inserted.curve[0].cpu()),
        "target": target,
    }
    with served.lock:
        store.put_artifact("faithfulness", key, np.zeros(0, np.float32), result, ARTIFACT_VERSION)
    return result


# ----------------------------------------------------------------------------------------------------------
# units


def unit_map(bench: Workbench, served: ServedModel, layer: str, unit: int, image: str) -> np.ndarray:
    values = activations(bench, served, image, layer)
    check_unit(layer, unit, values.shape[0])
    return values[unit] if values.ndim > 1 else values[unit : unit + 1]


def check_unit(layer: str, unit: int, units: int) -> None:
    """A :class:`UnitError` unless the layer of ``units`` units has ``unit``."""
    if not 0 <= unit < units:
        raise UnitError(f"layer {layer!r} has units 0..{units - 1}, not {unit}")


def layer_units(served: ServedModel, layer: str) -> int:
    """The number of units (channels) of a layer, from the graph or a probe."""
    for entry in layer_list(served):
        if entry["name"] == layer and entry["units"] is not None:
            return entry["units"]
    check_layer(served, layer)
    return int(layer_activations(served.vm, _example(served), layer).shape[1])


def unit_top(
    bench: Workbench, served: ServedModel, layer: str, unit: int
) -> tuple[str, str, list[dict[str, Any]]]:
    """``(state, message, top)``: the unit's top samples of the scan, with their receptive-field crops and
    deconvnet projections (computed once, kept in the workspace)."""
    if served.workspace is None:
        return "no_workspace", "the model's scan is not done (or it has no data)", []
    ws = served.workspace
    if layer not in ws.layers:
        return (
            "not_recorded",
            f"the scan recorded {', '.join(ws.layers)}; {layer!r} is not among them, so it has no top samples",
            [],
        )
    values, indices = ws.top_k(layer)
    check_unit(layer, unit, values.shape[0])
    chosen = [int(i) for i in indices[unit][:TOP_PATCHES] if i >= 0]
    if not chosen:
        return "ready", "no sample activated this unit", []
    key = f"{ws.run.fingerprint}|{layer}|{unit}"
    store = ws.store
    found = store.artifact("unit_top", key, ARTIFACT_VERSION)
    if found is None:
        items = [served.dataset[i] for i in chosen]
        hits = top_patches(served.vm, items, layer, units=[unit], k=len(chosen), projection="deconvnet")[
            layer
        ]
        crops = hits.crops[0].float().cpu().clamp(0, 1)
        projections = scale_each(hits.projections[0].float().cpu(), symmetric=True)
        pictures = torch.stack([crops, projections]).mul(255).round().to(torch.uint8).numpy()
        meta = {
            "samples": [chosen[int(i)] for i in hits.sample_indices[0].tolist()],
            "values": finite_list(hits.values[0].cpu()),
            "boxes": hits.boxes[0].tolist(),
        }
        with served.lock:
            found = store.put_artifact("unit_top", key, pictures, meta, ARTIFACT_VERSION)
    pictures, meta = found.load(), found.meta
    top = []
    for index, sample in enumerate(meta["samples"]):
        top.append(
            {
                "sample": sample,
                "value": meta["values"][index],
                "box": meta["boxes"][index],
                "crop_url": bench.blobs.put_picture(to_pil(torch.from_numpy(pictures[0, index]) / 255)),
                "projection_url": bench.blobs.put_picture(to_pil(torch.from_numpy(pictures[1, index]) / 255)),
            }
        )
    return "ready", "", top


def visualization_key(layer: str, unit: int, steps: int) -> str:
    return f"{layer}:{unit}|steps={steps}"


def visualization_found(served: ServedModel, layer: str, unit: int, steps: int) -> dict[str, Any] | None:
    found = served.artifacts().artifact("featurevis", visualization_key(layer, unit, steps), ARTIFACT_VERSION)
    return None if found is None else found.meta


def visualization(
    bench: Workbench, served: ServedModel, layer: str, unit: int, steps: int, job: Job
) -> dict[str, Any]:
    """Feature visualization of the unit (``ds.units.visualize``, Olah et al. 2017's defaults), kept in the
    workspace with the PNG in the blob store."""
    found = visualization_found(served, layer, unit, steps)
    if found is not None:
        return found
    job.report(0.02, f"optimizing an image for {steps} steps")
    result = visualize(served.vm, f"{layer}:{unit}", steps=steps)
    picture = to_pil(result.image[0].float().cpu())
    url = bench.blobs.put_picture(picture)
    meta = {"url": url, "value": finite(result.value[0]), "steps": steps}
    pixels = np.asarray(picture)
    with served.lock:
        served.artifacts().put_artifact(
            "featurevis", visualization_key(layer, unit, steps), pixels, meta, ARTIFACT_VERSION
        )
    return meta


def unit_note(served: ServedModel, layer: str, unit: int) -> dict[str, str]:
    """The latest name and notes a user gave the unit."""
    store = served.artifacts()
    for row in reversed(store.feedback("unit_note")):
        if row["layer"] == layer and row["unit"] == unit:
            return {"name": row["value"].get("name", ""), "notes": row["value"].get("notes", "")}
    return {"name": "", "notes": ""}


def save_unit_note(served: ServedModel, layer: str, unit: int, name: str, notes: str) -> dict[str, str]:
    value = {"name": name, "notes": notes}
    with served.lock:
        if served.workspace is not None:
            served.workspace.add_feedback("unit_note", value, layer=layer, unit=unit)
        else:
            served.artifacts().add_feedback("unit_note", value, layer=layer, unit=unit)
    return value


# ----------------------------------------------------------------------------------------------------------
# the dataset (workspace)


def dataset_summary(served: ServedModel) -> dict[str, Any]:
    ws = served.ready_workspace()
    labels = ws.labels
    accuracy = None
    if labels is not None:
        known = labels >= 0
        accuracy = finite((ws.predictions[known] == labels[known]).mean()) if known.any() else None
    return {
        "dataset": ws.run.dataset,
        "samples": len(ws.indices),
        "classes": ws.classes,
        "labeled": labels is not None,
        "accuracy": accuracy,
        "layers": ws.layers,
        "embedding_layer": ws.embedding_layer,
        "layouts_available": [
            {"kind": record.kind, "layer": record.layer}
            for record in ws.store.layouts(ws.run.id)
            if record.kind in LAYOUTS and not record.params
        ],
        "run": ws.run.id,
    }


def points(served: ServedModel) -> np.ndarray:
    ws = served.ready_workspace()
    predictions = ws.predictions
    labels = ws.labels if ws.labels is not None else np.full(len(predictions), -1)
    correct = np.where(labels >= 0, (labels == predictions).astype(np.float32), -1.0)
    confidence = ws.probabilities[np.arange(len(predictions)), predictions]
    return np.stack([ws.indices, labels, predictions, correct, confidence], axis=1).astype(np.float32)


def layout_layer(ws: Workspace, layer: str | None) -> str:
    name = layer or ws.embedding_layer
    if name not in ws.layers:
        ws.embeddings(name)  # raises the workspace's own LayerNotFoundError with the recorded layers
    return name


def check_layout_kind(kind: str) -> str:
    if kind not in LAYOUTS:
        raise SettingError(f"unknown layout {kind!r}; choose one of {', '.join(LAYOUTS)}")
    return kind


def layout_found(served: ServedModel, kind: str, layer: str | None) -> bool:
    ws = served.ready_workspace()
    return ws.store.find_layout(ws.run.id, check_layout_kind(kind), layout_layer(ws, layer), {}) is not None


def layout_result(served: ServedModel, kind: str, layer: str, named: bool) -> dict[str, Any]:
    """What a layout job answers: where to fetch the layout."""
    query = f"kind={kind}" + (f"&layer={layer}" if named else "")
    return {"kind": kind, "layer": layer, "url": f"/api/models/{served.id}/dataset/layout?{query}"}


def stored_layout(served: ServedModel, kind: str, layer: str | None) -> np.ndarray:
    ws = served.ready_workspace()
    name = layout_layer(ws, layer)
    path = ws.store.find_layout(ws.run.id, check_layout_kind(kind), name, {})
    if path is None:
        raise NotComputedError(
            f"the {kind} layout of {name!r} is not computed yet; POST /api/models/{served.id}/dataset/layout "
            f'{{"kind": "{kind}"}} starts it'
        )
    return np.load(path).astype(np.float32)


def compute_layout(served: ServedModel, kind: str, layer: str | None, job: Job) -> dict[str, Any]:
    ws = served.ready_workspace()
    name = layout_layer(ws, layer)
    job.report(0.05, f"{kind} of {len(ws.indices)} samples of {name}")
    ws.layout(kind, name)  # computed, then stored in one short transaction of its own
    return layout_result(served, kind, name, layer is not None)


def thumbnail_sheets(bench: Workbench, served: ServedModel, per_page: int = 1024) -> dict[str, Any]:
    """The scan's thumbnails as sprite sheets of ``per_page`` cells (32 columns), rows in scan order."""
    ws = served.ready_workspace()
    key = f"{ws.path}|{ws.run.id}"
    cached = bench.thumbnails.get(key)
    if cached is not None:
        return cached
    thumbnails = ws.thumbnails
    if thumbnails is None:
        raise NotFoundError(f"the scan of {served.id} kept no thumbnails (thumbnail_size=0)")
    count, height, width, channels = thumbnails.shape
    columns = 32
    pages = []
    for start in range(0, count, per_page):
        page = thumbnails[start : start + per_page]
        rows = math.ceil(len(page) / columns)
        sheet = np.zeros((rows * height, columns * width, channels), np.uint8)
        for offset, picture in enumerate(page):
            row, column = divmod(offset, columns)
            sheet[row * height : (row + 1) * height, column * width : (column + 1) * width] = picture
        pages.append(bench.blobs.put_picture(to_pil(torch.from_numpy(sheet).permute(2, 0, 1) / 255)))
    payload = {
        "cell": [height, width],
        "channels": channels,
        "per_page": per_page,
        "columns": columns,
        "count": count,
        "pages": pages,
    }
    bench.thumbnails[key] = payload
    return payload


def confusion(served: ServedModel) -> dict[str, Any]:
    ws = served.ready_workspace()
    return {"classes": ws.classes, "matrix": ws.confusion_matrix().tolist()}


def samples(
    served: ServedModel, indices: Sequence[int] | None, cell: tuple[int, int] | None, limit: int
) -> list[dict[str, Any]]:
    ws = served.ready_workspace()
    rows_of = {int(index): row for row, index in enumerate(ws.indices)}
    predictions = ws.predictions
    labels = ws.labels if ws.labels is not None else np.full(len(predictions), -1)
    if cell is not None:
        label, predicted = cell
        rows = np.flatnonzero((labels == label) & (predictions == predicted)).tolist()
    else:
        missing = [i for i in indices or [] if i not in rows_of]
        if missing:
            raise NotFoundError(
                f"samples {missing[:10]} are not among the {len(rows_of)} scanned samples of {served.id}"
            )
        rows = [rows_of[i] for i in indices or []]
    rows = rows[:limit]
    sources = ws.store.sources([int(ws.indices[r]) for r in rows]) if rows else []
    found = []
    for row, source in zip(rows, sources, strict=True):
        index = int(ws.indices[row])
        label = int(labels[row])
        image_id = f"sample:{served.id}:{index}"
        found.append(
            {
                "index": index,
                "row": int(row),
                "label": label,
                "prediction": int(predictions[row]),
                "confidence": finite(ws.probabilities[row, predictions[row]]),
                "correct": None if label < 0 else bool(label == predictions[row]),
                "source": source,
                "image_id": image_id,
                "url": f"/api/images/{image_id}",
            }
        )
    return found


def class_report(served: ServedModel) -> dict[str, Any]:
    report = served.ready_workspace().class_report()
    return {
        "classes": report.classes,
        "precision": finite_list(report.precision),
        "recall": finite_list(report.recall),
        "f1": finite_list(report.f1),
        "support": [int(s) for s in report.support],
        "accuracy": finite(report.accuracy),
    }


def confused_pairs(served: ServedModel, n: int) -> list[dict[str, Any]]:
    ws = served.ready_workspace()
    return [
        {
            "label": int(pair.label),
            "predicted": int(pair.predicted),
            "label_name": ws.classes[pair.label],
            "predicted_name": ws.classes[pair.predicted],
            "count": int(pair.count),
            "samples": [int(s) for s in pair.samples],
        }
        for pair in ws.most_confused(n=n)
    ]


def histogram(served: ServedModel, layer: str) -> dict[str, Any]:
    found = served.ready_workspace().activation_histogram(layer)
    return {
        "layer": layer,
        "kind": found.kind,
        "lower": finite_list(found.lower),
        "upper": finite_list(found.upper),
        "counts": [int(c) for c in found.counts],
        "low": finite(found.low),
        "high": finite(found.high),
        "mean": finite(found.mean),
        "total": int(found.total),
        "zeros": int(found.zeros),
        "positives": int(found.positives),
    }


def unit_statistics(served: ServedModel, layer: str) -> dict[str, Any]:
    stats = served.ready_workspace().unit_statistics(layer)
    return {
        "layer": layer,
        "dead": [bool(d) for d in stats["dead"]],
        "mean": finite_list(stats["mean"]),
        "max": finite_list(stats["max"]),
        "activity": finite_list(stats["activity"]),
    }


def _comparable(a: ServedModel, b: ServedModel) -> tuple[Workspace, Workspace]:
    wa, wb = a.ready_workspace(), b.ready_workspace()
    if wa.dataset_fingerprint != wb.dataset_fingerprint:
        raise UnknownCompareError(
            f"{a.id} was scanned on {wa.run.dataset} and {b.id} on {wb.run.dataset}; a comparison needs both "
            "scans on the same data (start the server with both models and one --data)"
        )
    return wa, wb


def comparison(a: ServedModel, b: ServedModel) -> dict[str, Any]:
    """``ds.atlas.compare`` of two models' scans of the same data: CKA, each layer's sparsity, the confusions."""
    wa, wb = _comparable(a, b)
    result = compare(wa, wb)
    return {
        "a": a.id,
        "b": b.id,
        "cka": {
            "layers_a": result.layers_a,
            "layers_b": result.layers_b,
            "matrix": [finite_list(row) for row in result.cka],
        },
        "classes": result.classes,
        "sparsity_a": finite_list(result.sparsity_a),
        "sparsity_b": finite_list(result.sparsity_b),
        "confusion_a": result.confusion_a.tolist(),
        "confusion_b": result.confusion_b.tolist(),
        "accuracy_a": finite(result.accuracy_a),
        "accuracy_b": finite(result.accuracy_b),
        "agreement": finite(result.agreement),
    }


# ----------------------------------------------------------------------------------------------------------
# unit selectivity (workspace)


def selectivity(served: ServedModel, layer: str) -> dict[str, Any]:
    """``ws.selectivity(layer)`` at the layer's level: each unit's index and preferred class, and which units
    respond to one class only and which to every class."""
    found = served.ready_workspace().selectivity(layer)
    summary = found.summary()
    return {
        "layer": layer,
        "classes": found.classes,
        "class_counts": [int(c) for c in found.class_counts],
        "threshold": found.threshold,
        "index": finite_list(found.index),
        "preferred": [int(c) for c in found.preferred],
        "one_class": [int(u) for u in found.one_class_units],
        "all_classes": [int(u) for u in found.all_class_units],
        "most_selective": [int(u) for u in found.most_selective(8)],
        "summary": {
            "units": int(summary["units"]),
            "defined": int(summary["defined"]),
            "mean_index": finite(summary["mean_index"]),
            "median_index": finite(summary["median_index"]),
            "one_class": int(summary["one_class"]),
            "all_classes": int(summary["all_classes"]),
        },
    }


def unit_selectivity(served: ServedModel, layer: str, unit: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One unit's activation histogram per class ``[classes, bins]`` (int32) and, for the array's header, its
    bin edges, class means, index and preferred class."""
    found = served.ready_workspace().selectivity(layer)
    check_unit(layer, unit, len(found.index))
    return found.histograms[unit].astype(np.int32), {
        "edges": finite_list(found.edges[unit]),
        "class_means": finite_list(found.class_means[unit]),
        "index": finite(found.index[unit]),
        "preferred": int(found.preferred[unit]),
        "classes": found.classes,
    }


# ----------------------------------------------------------------------------------------------------------
# visual concepts (a job over the model's data, kept in the workspace)


def data_of(served: ServedModel) -> Any:
    if served.dataset is None:
        raise WorkspaceNotReadyError(
            f"model {served.id!r} was given no data; concepts and decoders are learned over a dataset: start the "
            "server with --data DATA"
        )
    return served.dataset


def concepts_key(layer: str, k: int, patches: int, epochs: int) -> str:
    return f"{layer}|k={k}|patches={patches}|epochs={epochs}"


def concepts_found(
    bench: Workbench, served: ServedModel, layer: str, k: int, patches: int, epochs: int
) -> dict[str, Any] | None:
    """The concepts kept in the workspace as the page shows them, or None."""
    found = served.artifacts().artifact(
        "concepts", f"{served.data_name}|{concepts_key(layer, k, patches, epochs)}", ARTIFACT_VERSION
    )
    if found is None:
        return None
    crops, meta = found.load(), found.meta
    for concept in meta["concepts"]:
        for patch in concept["patches"]:
            patch["url"] = bench.blobs.put_picture(to_pil(torch.from_numpy(crops[patch.pop("slot")]) / 255))
    return meta


def compute_concepts(
    bench: Workbench, served: ServedModel, layer: str, k: int, patches: int, epochs: int, job: Job
) -> dict[str, Any]:
    """``ds.units.concepts`` of the layer over the model's data (Wang et al. 2015): each concept's share of the
    feature vectors, its majority class and purity, and its nearest patches, kept in the workspace."""
    found = concepts_found(bench, served, layer, k, patches, epochs)
    if found is not None:
        return found
    data = data_of(served)
    check_layer(served, layer)
    job.report(0.05, f"clustering the feature vectors of {layer} over {len(data)} samples into {k} concepts")
    result = concepts(served.vm, data, layer, k, patches=patches, epochs=epochs)
    job.report(0.9, "cropping the nearest patches")
    nearest = result.nearest
    crops = nearest.crops.float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    purity = result.concept_purity
    majority = result.majority
    kept, listed = [], []
    for index in range(result.k):
        chosen = []
        for rank in range(nearest.sample_indices.shape[1]):
            sample = int(nearest.sample_indices[index, rank])
            if sample < 0:
                continue  # a concept holding fewer images than patches asked for
            chosen.append(
                {"sample": sample, "distance": finite(-nearest.values[index, rank]), "slot": len(kept)}
            )
            kept.append(crops[index, rank])
        major = int(majority[index]) if majority is not None else -1
        listed.append(
            {
                "index": index,
                "size": int(result.sizes[index]),
                "share": finite(float(result.sizes[index]) / max(result.vectors, 1)),
                "purity": finite(purity[index]) if purity is not None else None,
                "majority": major if major >= 0 else None,
                "majority_label": result.class_name(major) if major >= 0 else None,
                "patches": chosen,
            }
        )
    meta = {
        "layer": result.layer,
        "k": result.k,
        "vectors": result.vectors,
        "epochs": epochs,
        "purity": finite(result.purity) if result.purity is not None else None,
        "concepts": listed,
    }
    pictures = torch.stack(kept).numpy() if kept else np.zeros((0, 1, 1, 1), np.uint8)
    with served.lock:
        served.artifacts().put_artifact(
            "concepts",
            f"{served.data_name}|{concepts_key(layer, k, patches, epochs)}",
            pictures,
            meta,
            ARTIFACT_VERSION,
        )
    return concepts_found(bench, served, layer, k, patches, epochs)


# ----------------------------------------------------------------------------------------------------------
# neuron clusters (workspace + weights)


def clusters(served: ServedModel, layers: list[str] | None, k: int, samples: int) -> dict[str, Any]:
    """``ds.atlas.neuron_clusters`` of the recorded layers: each layer's clusters with their units and
    representative samples, and the summed absolute weights between the clusters of consecutive layers."""
    ws = served.ready_workspace()
    if layers:
        for name in layers:
            layout_layer(ws, name)  # a layer the scan did not record: the workspace's own error, listing them
    found = neuron_clusters(ws, served.vm, layers or None, k=k, samples=samples, example=_example(served))
    return {
        "model": served.id,
        "layers": [
            {
                "layer": entry.layer,
                "units": len(entry.labels),
                "labels": [int(c) for c in entry.labels],
                "sizes": [int(s) for s in entry.sizes],
                "representatives": [[int(i) for i in row if i >= 0] for row in entry.representatives],
            }
            for entry in found.layers
        ],
        "edges": [[finite_list(row) for row in edge] for edge in found.edges],
    }


# ----------------------------------------------------------------------------------------------------------
# decoder inversion (a decoder trained over the model's data, kept in the workspace)


def inverter_found(served: ServedModel, layer: str) -> Any:
    return served.artifacts().artifact("inverter", f"{served.data_name}|{layer}", ARTIFACT_VERSION)


def inverter_state(served: ServedModel, layer: str) -> dict[str, Any]:
    """Whether the layer has a trained decoder, and how it was trained."""
    found = inverter_found(served, layer)
    if found is None:
        return {"layer": layer, "trained": False, "losses": [], "settings": {}}
    return {"layer": layer, "trained": True, **found.meta}


def train_decoder(served: ServedModel, layer: str, epochs: int, width: int, job: Job) -> dict[str, Any]:
    """``ds.units.train_inverter`` on the model's data; the decoder is kept in the workspace as the bytes
    ``Inverter.save`` writes."""
    data = data_of(served)
    check_layer(served, layer)
    job.report(0.02, f"training a decoder from {layer} for {epochs} epochs on {len(data)} samples")
    inverter = train_inverter(served.vm, data, layer, epochs=epochs, width=width)
    meta = {
        "losses": finite_list(inverter.losses),
        "settings": {key: _jsonable(value) for key, value in inverter.settings.items()},
    }
    with tempfile.TemporaryDirectory() as folder:
        saved = inverter.save(Path(folder) / "inverter.pt").read_bytes()
    with served.lock:
        served.artifacts().put_artifact(
            "inverter", f"{served.data_name}|{layer}", saved, meta, ARTIFACT_VERSION
        )
        served.inverters.pop(layer, None)
    return {"layer": layer, "trained": True, **meta}


def stored_inverter(served: ServedModel, layer: str) -> Inverter:
    """The layer's decoder from the workspace (loaded once), or :class:`NotComputedError`."""
    with served.lock:
        cached = served.inverters.get(layer)
    if cached is not None:
        return cached
    found = inverter_found(served, layer)
    if found is None:
        raise NotComputedError(
            f"no decoder of {layer!r} is trained yet; POST /api/models/{served.id}/layers/{layer}/inverter starts "
            "its training"
        )
    inverter = load_inverter(found.path, served.vm)
    with served.lock:
        served.inverters[layer] = inverter
    return inverter


def decoder_inversion(bench: Workbench, served: ServedModel, layer: str, image: str) -> dict[str, Any]:
    """The image reconstructed from its features at ``layer`` by the trained decoder, in one forward pass."""
    check_layer(served, layer)
    inverter = stored_inverter(served, layer)
    x = bench.model_input(served, image)
    started = time.perf_counter()
    decoded = inverter(x)
    seconds = time.perf_counter() - started
    mean, std = pixel_normalization(served.vm, x.shape[1], x.device)
    return {
        "layer": layer,
        "image": image,
        "original_url": bench.blobs.put_picture(to_pil((x[0].float() * std[0] + mean[0]).clamp(0, 1))),
        "decoded_url": bench.blobs.put_picture(to_pil(decoded[0])),
        "decoder_error": finite(relative_image_error(served.vm, decoded, x)[0]),
        "decoder_seconds": finite(seconds),
    }


def inversion_comparison(
    bench: Workbench, served: ServedModel, layer: str, image: str, steps: int, job: Job
) -> dict[str, Any]:
    """``ds.units.compare_inversions``: the decoder's one forward against ``steps`` steps of optimization."""
    inverter = stored_inverter(served, layer)
    x = bench.model_input(served, image)
    job.report(0.05, f"optimizing an image for {steps} steps and decoding it")
    comparison = compare_inversions(served.vm, x, [inverter], schedule=[(steps, 1.0)])
    return {
        "layer": layer,
        "image": image,
        "steps": steps,
        "original_url": bench.blobs.put_picture(to_pil(comparison.original[0])),
        "decoded_url": bench.blobs.put_picture(to_pil(comparison.decoded[0, 0])),
        "optimized_url": bench.blobs.put_picture(to_pil(comparison.optimized[0, 0])),
        "decoder_error": finite(comparison.decoder_error[0, 0]),
        "optimization_error": finite(comparison.optimization_error[0, 0]),
        "decoder_seconds": finite(comparison.decoder_seconds[0]),
        "optimization_seconds": finite(comparison.optimization_seconds[0]),
    }


# ----------------------------------------------------------------------------------------------------------
# two models layer by layer


def comparison_layouts(a: ServedModel, b: ServedModel, kind: str, job: Job) -> dict[str, Any]:
    """``ds.atlas.compare(..., layout=kind)``: every recorded layer's layout of both models, stored in their
    workspaces; the answer says where to fetch each."""
    wa, wb = _comparable(a, b)
    check_layout_kind(kind)
    job.report(0.05, f"{kind} layouts of {len(wa.layers) + len(wb.layers)} layers")
    result = compare(wa, wb, layout=kind)
    return {
        "kind": kind,
        "a": [layout_result(a, kind, name, True) for name in result.layers_a],
        "b": [layout_result(b, kind, name, True) for name in result.layers_b],
    }
