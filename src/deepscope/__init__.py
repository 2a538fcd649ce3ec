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


# Results that display as pictures in notebooks: (module, class) -> the MIME type (see deepscope.render.notebook).
_DISPLAYS = {
    ("deepscope.attribution.explain", "Explanation"): "text/html",
    ("deepscope.metrics.evaluate", "Evaluation"): "text/html",
    ("deepscope.units.patches", "TopPatches"): "text/html",
    ("deepscope.units.featurevis", "Visualization"): "text/html",
    ("deepscope.units.inversion", "Inversion"): "text/html",
    ("deepscope.probe.capture", "Recording"): "text/html",
    ("deepscope.probe.graph", "Graph"): "image/svg+xml",
    ("deepscope.atlas.workspace", "Workspace"): "text/html",
    ("deepscope.atlas.compare", "Comparison"): "text/html",
}


def _shown(mime: str):
    def show(result):  # render (and torch) load when a result is first shown, not at import
        from deepscope.render import notebook

        return notebook.svg(result) if mime == "image/svg+xml" else notebook.html(result)

    return show


def _show_results_in_notebooks() -> None:
    """Inside IPython (Jupyter), results display as pictures: the result classes live below deepscope.render,
    which draws, so IPython's display formatters are told by class name which result shows how (nothing is
    imported until a result is shown). Outside IPython this does nothing."""
    import sys

    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    if shell is None:
        return
    formatters = shell.display_formatter.formatters
    for (module, name), mime in _DISPLAYS.items():
        formatters[mime].for_type_by_name(module, name, _shown(mime))


_show_results_in_notebooks()
