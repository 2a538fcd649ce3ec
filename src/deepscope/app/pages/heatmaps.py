"""The heat-map gallery of ``deepscope demo``: every registered method on the bundled photos.

Methods are taken from the registry, so a family added later (LRP) joins the gallery by itself; a method that
cannot run on EfficientNet-Lite0 (attention rollout needs a transformer) is listed with the reason. Methods
that expand the batch run with their quick options (``Attribution.quick_options``, shown in the page), so that
the section stays fast on a CPU.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

import torch

from deepscope.attribution.base import Method, method, method_info, methods
from deepscope.attribution.explain import explain
from deepscope.attribution.passes import SharedPassMethod
from deepscope.errors import DeepscopeError
from deepscope.render.heatmap import grid
from deepscope.render.html import Report

# Score-CAM masks the input once per channel of its layer: block 4 of EfficientNet-Lite0 has 40 channels, the
# head 1280.
SCORE_CAM_LAYER = "_blocks.4"
BATCH_SIZE = 8  # EfficientNet-Lite0 runs fastest per image in batches of about 8 on a CPU


def gallery_methods(x: torch.Tensor) -> list[Method]:
    """Every registered method with its quick options for inputs like ``x`` (``Attribution.quick_options``);
    prediction difference samples its windows from the photos themselves."""
    specs = []
    for info in methods():
        options: dict[str, Any] = info.quick_options((int(x.shape[-2]), int(x.shape[-1])))
        if info.name == "prediction_difference":
            options["data"] = x
        if info.name == "score_cam":
            options["layer"] = SCORE_CAM_LAYER
        specs.append(method(info.name, batch_size=BATCH_SIZE, **options))
    return specs


def heatmap_gallery(vm, pixels: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[list[str]], list[str]]:
    """Run every registered method on ``pixels`` (``[B,3,H,W]`` in [0,1]): (maps, table rows, skipped)."""
    x = vm.normalize(pixels)
    specs = gallery_methods(x)
    maps: dict[str, torch.Tensor] = {}
    rows: list[list[str]] = []
    skipped: list[str] = []
    shared = [spec for spec in specs if _shares_pass(spec)]
    start = time.perf_counter()
    together = explain(vm, x, shared)
    elapsed = time.perf_counter() - start
    for spec in shared:
        maps[spec.name] = together[spec.name]
        rows.append(
            _row(
                spec,
                f"{elapsed:.1f} s for all {len(shared)} (one shared pass)",
                together.layers.get(spec.name),
            )
        )
    for spec in specs:
        if spec in shared:
            continue
        start = time.perf_counter()
        try:
            found = explain(vm, x, [spec])
        except DeepscopeError as error:
            skipped.append(f"{spec.name}: {error}")
            continue
        maps[spec.name] = found[spec.name]
        rows.append(_row(spec, f"{time.perf_counter() - start:.1f} s", found.layers.get(spec.name)))
    return maps, rows, skipped


def _shares_pass(spec: Method) -> bool:
    method_class = spec.info.method
    return issubclass(method_class, SharedPassMethod) and method_class.shares_pass


def _row(spec: Method, seconds: str, layer: str | None) -> list[str]:
    info = spec.info
    shown = {key: value for key, value in spec.changed().items() if key != "data"}
    setting = ", ".join(f"{key}={value}" for key, value in shown.items())
    if layer:
        setting = ", ".join(filter(None, [f"layer={layer}", setting]))
    return [spec.name, info.family, setting or "defaults", info.passes, seconds, info.reference]


def heatmaps_section(report: Report, context) -> None:
    vm = context.efficientnet
    pixels = vm.pixels(list(context.photos.values()))
    maps, rows, skipped = heatmap_gallery(vm, pixels)
    _, top = vm.predict(vm.normalize(pixels), k=1)
    section = report.section("Heat maps")
    section.text(
        "Every heat-map method in the registry (ds.methods()) on the bundled photos with EfficientNet-Lite0, "
        "explaining each photo's top class. Signed maps: red positive, blue negative; CAMs: their positive part. "
        "Methods that expand the batch run with the small settings listed (their defaults follow the papers)."
    )
    labels = [vm.label(int(c)) for c in top[:, 0]]
    for family in dict.fromkeys(method_info(name).family for name in maps):  # one grid per family, in order
        chosen = {name: found for name, found in maps.items() if method_info(name).family == family}
        figure = grid(chosen, pixels, labels=labels, cell=112)
        section.html(f"<h3>{escape(family)}</h3>" + f'<div class="scroll">{_image_tag(figure.image)}</div>')
    section.table(["method", "family", "settings", "cost (passes)", "time, 5 photos", "reference"], rows)
    for line in skipped:
        section.text(f"Not shown: {line}")


def _image_tag(picture) -> str:
    from deepscope.render.images import data_uri

    return f'<img src="{data_uri(picture)}" alt="{escape("heat maps")}">'
