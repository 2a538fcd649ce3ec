"""The JSON payloads of the workbench API as pydantic models: the OpenAPI schema (``/api/openapi.json``) is the
written contract, and docs/workbench-api.md explains it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    error: str = Field(description="One sentence naming the problem and, where it can, the fix")
    kind: str = Field(description="The deepscope error class (InternalError for a bug)")


class WorkspaceState(BaseModel):
    state: Literal["none", "queued", "scanning", "ready", "failed"]
    progress: float
    samples: int
    message: str


class ModelStatus(BaseModel):
    id: str
    workspace: WorkspaceState


class Status(BaseModel):
    version: str
    token_required: bool
    models: list[ModelStatus]


class ModelEntry(BaseModel):
    id: str
    name: str
    spec: str
    classes: int
    labels_url: str
    input_size: list[int] | None
    image_mode: str
    channels: int
    data: str | None
    workspace: WorkspaceState


class NewModel(BaseModel):
    spec: str = Field(max_length=300, description="zoo:, torchvision: or timm: spec")
    data: str | None = Field(
        default=None, max_length=300, description="A data spec (mnist5k:test, samples...)"
    )
    workspace: str | None = Field(default=None, max_length=1000, description="A directory under the root")


class GraphNode(BaseModel):
    id: str
    op: str
    module: str | None
    output_shape: list[int] | None
    params: int
    scope: str
    attrs: dict[str, Any]
    layer: str | None


class GraphPayload(BaseModel):
    model: str
    nodes: list[GraphNode]
    edges: list[list[str]]
    tracer: str
    notes: list[str]
    depth: int | None


class LayerEntry(BaseModel):
    name: str
    kind: Literal["conv", "linear", "other"]
    op: str
    output_shape: list[int]
    units: int | None
    spatial: bool


class ImageEntry(BaseModel):
    id: str
    name: str
    source: Literal["bundled", "upload", "dataset"]
    url: str
    width: int
    height: int


class Uploaded(BaseModel):
    id: str
    url: str
    width: int
    height: int


class Prediction(BaseModel):
    class_: int = Field(alias="class", serialization_alias="class")
    label: str
    probability: float

    model_config = {"populate_by_name": True}


class ActivationSummary(BaseModel):
    layer: str
    shape: list[int]
    strength: list[float | None]
    order: list[int]


class HistogramPayload(BaseModel):
    layer: str
    kind: str
    lower: list[float | None]
    upper: list[float | None]
    counts: list[int]
    low: float | None
    high: float | None
    mean: float | None
    total: int
    zeros: int
    positives: int


class UnitStatistics(BaseModel):
    layer: str
    dead: list[bool]
    mean: list[float | None]
    max: list[float | None]
    activity: list[float | None]


class TopPatch(BaseModel):
    sample: int
    value: float | None
    box: list[int]
    crop_url: str
    projection_url: str


class VisualizationState(BaseModel):
    state: Literal["none", "queued", "running", "done", "failed"]
    url: str | None
    job: str | None


class UnitPage(BaseModel):
    layer: str
    unit: int
    map_url: str | None
    width: int | None
    height: int | None
    crop: list[float] | None
    top: list[TopPatch]
    top_state: Literal["ready", "not_recorded", "no_workspace"]
    top_message: str
    visualization: VisualizationState
    name: str
    notes: str


class VisualizationRequest(BaseModel):
    steps: int = Field(default=256, ge=1, le=2048)


class UnitNote(BaseModel):
    name: str = Field(default="", max_length=200)
    notes: str = Field(default="", max_length=20000)


class OptionEntry(BaseModel):
    name: str
    type: str
    default: Any
    required: bool


class MethodEntry(BaseModel):
    name: str
    family: str
    space: Literal["pixel", "layer"]
    needs_layer: bool
    sensitivity: bool
    passes: str
    reference: str
    colormap: str
    options: list[OptionEntry]


class HeatmapMeta(BaseModel):
    method: str
    min: float | None
    max: float | None
    signed: bool
    colormap: str
    layer_used: str | None
    target_used: int
    target_label: str
    passes: str
    batched: int
    width: int
    height: int
    crop: list[float]


class FaithfulnessRequest(BaseModel):
    image: str = Field(max_length=200)
    method: str = Field(max_length=100)
    target: str = Field(default="top1", max_length=200)
    layer: str | None = Field(default=None, max_length=300)
    options: dict[str, Any] = Field(default_factory=dict)


class JobPayload(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "done", "failed"]
    progress: float
    message: str
    result: Any = None


class JobStarted(BaseModel):
    job: str
    state: Literal["queued", "running", "done", "failed"]


class LayoutRequest(BaseModel):
    kind: Literal["tsne", "umap", "pca"] = "tsne"
    layer: str | None = Field(default=None, max_length=300)


class LayoutKey(BaseModel):
    kind: str
    layer: str


class DatasetSummary(BaseModel):
    dataset: str
    samples: int
    classes: list[str]
    labeled: bool
    accuracy: float | None
    layers: list[str]
    embedding_layer: str
    layouts_available: list[LayoutKey]
    run: int


class Thumbnails(BaseModel):
    cell: list[int]
    channels: int
    per_page: int
    columns: int
    count: int
    pages: list[str]


class Confusion(BaseModel):
    classes: list[str]
    matrix: list[list[int]]


class SampleEntry(BaseModel):
    index: int
    row: int
    label: int
    prediction: int
    confidence: float | None
    correct: bool | None
    source: str
    image_id: str
    url: str


class ClassReportPayload(BaseModel):
    classes: list[str]
    precision: list[float | None]
    recall: list[float | None]
    f1: list[float | None]
    support: list[int]
    accuracy: float | None


class ConfusedPairEntry(BaseModel):
    label: int
    predicted: int
    label_name: str
    predicted_name: str
    count: int
    samples: list[int]


class CKAPayload(BaseModel):
    layers_a: list[str]
    layers_b: list[str]
    matrix: list[list[float | None]]


class ComparisonPayload(BaseModel):
    a: str
    b: str
    cka: CKAPayload
    classes: list[str]
    sparsity_a: list[float | None] = Field(description="Per layer of cka.layers_a: the share of values <= 0")
    sparsity_b: list[float | None]
    confusion_a: list[list[int]]
    confusion_b: list[list[int]]
    accuracy_a: float | None
    accuracy_b: float | None
    agreement: float | None


class CompareLayoutsRequest(BaseModel):
    a: str = Field(max_length=100)
    b: str = Field(max_length=100)
    kind: Literal["tsne", "umap", "pca"] = "pca"


class SelectivitySummary(BaseModel):
    units: int
    defined: int = Field(description="Units whose index is defined (non-negative class means, not all zero)")
    mean_index: float | None
    median_index: float | None
    one_class: int
    all_classes: int


class SelectivityPayload(BaseModel):
    layer: str
    classes: list[str]
    class_counts: list[int]
    threshold: float
    index: list[float | None] = Field(description="Each unit's class selectivity index (None: undefined)")
    preferred: list[int]
    one_class: list[int] = Field(description="The units that respond to one class only")
    all_classes: list[int] = Field(description="The units that respond to every class")
    most_selective: list[int]
    summary: SelectivitySummary


class ConceptsRequest(BaseModel):
    k: int = Field(default=12, ge=1, le=256, description="How many concepts")
    patches: int = Field(default=8, ge=1, le=32, description="Nearest patches shown per concept")
    epochs: int = Field(default=1, ge=0, le=20, description="Passes moving the centers")


class ConceptPatch(BaseModel):
    sample: int
    distance: float | None
    url: str


class Concept(BaseModel):
    index: int
    size: int
    share: float | None
    purity: float | None
    majority: int | None
    majority_label: str | None
    patches: list[ConceptPatch]


class ConceptsPayload(BaseModel):
    layer: str
    k: int
    vectors: int
    epochs: int
    purity: float | None
    concepts: list[Concept]


class ClusterLayer(BaseModel):
    layer: str
    units: int
    labels: list[int] = Field(description="Each unit's cluster")
    sizes: list[int]
    representatives: list[list[int]] = Field(description="Per cluster, dataset indices, best first")


class ClustersPayload(BaseModel):
    model: str
    layers: list[ClusterLayer]
    edges: list[list[list[float | None]]] = Field(
        description="edges[i][a][b]: summed |weights| from cluster b of layers[i] to cluster a of layers[i+1]"
    )


class InverterRequest(BaseModel):
    epochs: int = Field(default=5, ge=1, le=200)
    width: int = Field(default=32, ge=4, le=256, description="The decoder's channels")


class InverterState(BaseModel):
    layer: str
    trained: bool
    losses: list[float | None]
    settings: dict[str, Any]
    job: str | None = None


class DecoderInversion(BaseModel):
    layer: str
    image: str
    original_url: str
    decoded_url: str
    decoder_error: float | None
    decoder_seconds: float | None


class InversionRequest(BaseModel):
    image: str = Field(max_length=200)
    steps: int = Field(default=200, ge=1, le=4000, description="Optimization steps of ds.units.invert")
