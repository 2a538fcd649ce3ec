"""The heat-map gallery of ``deepscope demo``: every registered method on the bundled photos.

Methods are taken from the registry, so a family added later (LRP) joins the gallery by itself; a method that
cannot run on EfficientNet-Lite0 (attention rollout needs a transformer) is listed with the reason. Methods
that expand the batch run with small settings, given in the page, so that the section stays fast on a CPU.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

import torch

from deepscope.attribution.base import method_info, methods
from deepscope.attribution.explain import explain
from deepscope.attribution.passes import SharedPassMethod
from deepscope.errors import DeepscopeError
from deepscope.render.heatmap import grid
from deepscope.render.html import Report

# Small settings for the demo (the defaults follow the papers and cost more): name -> settings.
GALLERY_SETTINGS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"samples": 6},
    "occlusion": {"window": 56, "stride": 56},
    "rise": {"masks": 64},
    "score_cam": {"layer": "_blocks.4"},  # 40 channels instead of the head's 1280
    "prediction_difference": {"sampling": "marginal", "window": 56, "stride": 56, "samples": 2},
}
BATCH_SIZE = 8  # EfficientNet-Lite0 runs fastest per image in batches of about 8 on a CPU


def heatmap_gallery(vm, pixels: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[list[str]], list[str]]:
    """Run every registered method on ``pixels`` (``[B,3,H,W]`` in [0,1]): (maps, table rows, skipped)."""
    x = vm.normalize(pixels)
    names = [info.name for info in methods()]
    settings = {name: dict(GALLERY_SETTINGS.get(name, {})) for name in names}
    if "prediction_difference" in settings:
        settings["prediction_difference"]["data"] = x
    maps: dict[str, torch.Tensor] = {}
    rows: list[list[str]] = []
    skipped: list[str] = []
    shared = [n for n in names if _shares_pass(n) and not settings[n]]
    start = time.perf_counter()
    together = explain(vm, x, shared, batch_size=BATCH_SIZE)
    elapsed = time.perf_counter() - start
    for name in shared:
        maps[name] = together[name]
        rows.append(
            _row(name, f"{elapsed:.1f} s for all {len(shared)} (one shared pass)", together.layers.get(name))
        )
    for name in names:
        if name in shared:
            continue
        options = dict(settings[name])
        layer = options.pop("layer", None)
        start = time.perf_counter()
        try:
            found = explain(
                vm, x, [name], layer=layer, batch_size=BATCH_SIZE, **({name: options} if options else {})
            )
        except DeepscopeError as error:
            skipped.append(f"{name}: {error}")
            continue
        maps[name] = found[name]
        rows.append(_row(name, f"{time.perf_counter() - start:.1f} s", found.layers.get(name), options))
    return maps, rows, skipped


def _shares_pass(name: str) -> bool:
    method = method_info(name).method
    return issubclass(method, SharedPassMethod) and method.shares_pass


def _row(name: str, seconds: str, layer: str | None, options: dict | None = None) -> list[str]:
    info = method_info(name)
    shown = {k: v for k, v in (options or {}).items() if k != "data"}
    setting = ", ".join(f"{k}={v}" for k, v in shown.items())
    if layer:
        setting = ", ".join(filter(None, [f"layer={layer}", setting]))
    return [name, info.family, setting or "defaults", info.passes, seconds, info.reference]


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
