"""deepscope: see inside computer-vision networks.

>>> import deepscope as ds
>>> vm = ds.load_model("zoo:efficientnet_lite0")
>>> x = vm.preprocess(list(ds.samples(["coffee"]).values()))
>>> vm.label(int(vm(x).argmax()))
'espresso'
"""

from deepscope import atlas, errors, metrics, render, units, workspace
from deepscope.attribution import attribute, explain, methods, targets
from deepscope.metrics import evaluate
from deepscope.probe import (
    Graph,
    ReceptiveField,
    Recording,
    capture,
    find_layers,
    get_layer,
    graph,
    layer_names,
    receptive_field,
)
from deepscope.zoo import (
    Preprocessing,
    VisionModel,
    as_vision_model,
    datasets,
    list_models,
    load_dataset,
    load_images,
    load_model,
    samples,
)

__version__ = "0.1.0"

__all__ = [
    "Graph",
    "Preprocessing",
    "ReceptiveField",
    "Recording",
    "VisionModel",
    "__version__",
    "as_vision_model",
    "atlas",
    "attribute",
    "capture",
    "datasets",
    "errors",
    "evaluate",
    "explain",
    "find_layers",
    "get_layer",
    "graph",
    "layer_names",
    "list_models",
    "load_dataset",
    "load_images",
    "load_model",
    "methods",
    "metrics",
    "receptive_field",
    "render",
    "samples",
    "targets",
    "units",
    "workspace",
]
