"""deepscope: see inside computer-vision networks.

>>> import deepscope as ds
>>> vm = ds.load_model("zoo:efficientnet_lite0")
>>> x = vm.preprocess(list(ds.samples(["coffee"]).values()))
>>> vm.label(int(vm(x).argmax()))
'espresso'
"""

import lazy_loader

from deepscope._version import __version__

# Subpackages and names load on first use (scikit-image's lazy_loader): `import deepscope` and `deepscope --help`
# do not pay for torch and torchvision (about 3 s) until something needs them.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=["atlas", "attribution", "errors", "metrics", "probe", "render", "units", "workspace", "zoo"],
    submod_attrs={
        "attribution": ["attribute", "explain", "method", "methods", "targets"],
        "metrics": ["evaluate"],
        "probe": [
            "Graph",
            "ReceptiveField",
            "Recording",
            "capture",
            "find_layers",
            "get_layer",
            "graph",
            "layer_names",
            "receptive_field",
        ],
        "zoo": [
            "Preprocessing",
            "VisionModel",
            "as_vision_model",
            "datasets",
            "list_models",
            "load_dataset",
            "load_images",
            "load_model",
            "samples",
        ],
    },
)
__all__ = [*__all__, "__version__"]
