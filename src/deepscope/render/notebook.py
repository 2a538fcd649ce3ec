"""How deepscope's results show themselves in a notebook: a picture and a short summary instead of a tensor dump.

The results are made in layers below this one (attribution, units, probe, metrics, atlas), which must not draw.
So the pictures are attached from here, through IPython's display formatters: ``import deepscope`` inside IPython
tells them, by module and class name, that :func:`html` or :func:`svg` shows each result (nothing is imported until
a result is shown). Both work without IPython too.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

import numpy as np

from deepscope.render.images import data_uri


def html(result: Any) -> str:
    """An HTML fragment showing ``result``: a summary line, and its picture where it has one."""
    for kind in type(result).__mro__:
        shown = _HTML.get(kind.__name__)
        if shown is not None:
            return shown(result)
    return f"<pre>{escape(repr(result))}</pre>"


def svg(result: Any) -> str:
    """A graph as an SVG node-link diagram."""
    from deepscope.render.graph_svg import graph_svg

    return graph_svg(result)


def _figure(picture, caption: str = "") -> str:
    title = f"<div style='font:12px sans-serif;color:#444'>{escape(caption)}</div>" if caption else ""
    return f"{title}<img src='{data_uri(picture)}' style='max-width:100%;image-rendering:auto'/>"


def _summary(text: str) -> str:
    return f"<div style='font:13px sans-serif;margin:4px 0'>{text}</div>"


def _explanation(result) -> str:
    from deepscope.render.heatmap import grid

    layers = "".join(
        f"; {escape(name)} read layer <code>{escape(layer)}</code>" for name, layer in result.layers.items()
    )
    text = _summary(
        f"<b>{len(result)} heat map{'s' if len(result) != 1 else ''}</b> ({escape(str(result.passes))}){layers}"
    )
    if not result:
        return text
    return text + _figure(grid(dict(result), cell=112).image)


def _evaluation(result) -> str:
    from deepscope.render.curves import evaluation_plots

    text = _summary(f"<b>evaluation</b> of {len(result.maps)} method(s); ranks (1 = best):")
    pictures = "".join(
        _figure(picture, name.replace("_", " ")) for name, picture in evaluation_plots(result).items()
    )
    return text + result.ranking.to_html(float_format=lambda v: f"{v:.3g}") + pictures


def _top_patches(result) -> str:
    from deepscope.render.units import patch_grid

    text = _summary(
        f"<b>top patches</b> of {len(result.units)} unit(s) of <code>{escape(result.layer)}</code> over "
        f"{result.seen} samples, best first"
    )
    return text + (_figure(patch_grid(result)) if result.crops is not None else "")


def _visualization(result) -> str:
    from deepscope.render.units import image_strip

    values = ", ".join(f"{float(v):.3g}" for v in result.value[:8])
    text = _summary(
        f"<b>feature visualization</b> of <code>{escape(result.objective)}</code>: objective {values}"
    )
    labels = [f"{float(v):.3g}" for v in result.value]
    return text + _figure(image_strip(result.image.detach().cpu(), labels, tile_size=128))


def _inversion(result) -> str:
    from deepscope.render.units import image_strip

    errors = ", ".join(f"{float(v):.3f}" for v in result.error[:8])
    text = _summary(
        f"<b>inversion</b> from <code>{escape(result.layer)}</code>: relative feature error {errors}"
    )
    return text + _figure(image_strip(result.image.detach().cpu(), None, tile_size=128))


def _recording(result) -> str:
    rows = []
    for name in result.layers:
        calls = result.activations.all(name)
        shapes = ", ".join(str(list(tensor.shape)) for tensor in calls) or "did not run"
        gradients = ""
        if result.gradients is not None:
            gradients = ", ".join(str(list(t.shape)) for t in result.gradients.all(name)) or "none"
        rows.append(f"<tr><td><code>{escape(name)}</code></td><td>{shapes}</td><td>{gradients}</td></tr>")
    header = "<tr><th>layer</th><th>activations</th><th>gradients</th></tr>"
    return _summary("<b>recording</b>") + f"<table>{header}{''.join(rows)}</table>"


def _workspace(result) -> str:
    from deepscope.render.charts import confusion_image

    state = "complete" if result.complete else "incomplete"
    labels = result.labels
    accuracy = ""
    if labels is not None and (labels >= 0).any():
        known = labels >= 0
        accuracy = f", accuracy {float((result.predictions[known] == labels[known]).mean()):.1%}"
    text = _summary(
        f"<b>workspace</b> {escape(str(result.path))}: {escape(result.run.model)} on {escape(result.run.dataset)}, "
        f"{len(result.indices)} samples ({len(result.skipped)} skipped){accuracy}, {len(result.layers)} layers, "
        f"{state}"
    )
    if labels is None or not len(result.indices):
        return text
    return text + _figure(confusion_image(result.confusion_matrix(), result.classes), "confusion matrix")


def _comparison(result) -> str:
    from deepscope.render.charts import heatmap_image

    text = _summary(
        f"<b>comparison</b>: accuracy {result.accuracy_a:.1%} vs {result.accuracy_b:.1%}, the two agree on "
        f"{result.agreement:.1%} of the samples"
    )
    picture = heatmap_image(np.asarray(result.cka), result.layers_a, result.layers_b, "linear CKA")
    return text + _figure(picture, "layer-by-layer CKA")


_HTML: dict[str, Callable[[Any], str]] = {
    "Explanation": _explanation,
    "Evaluation": _evaluation,
    "TopPatches": _top_patches,
    "Visualization": _visualization,
    "Inversion": _inversion,
    "Recording": _recording,
    "Workspace": _workspace,
    "Comparison": _comparison,
}
