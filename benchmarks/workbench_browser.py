"""The workbench page's speed in headless chromium, printed in one run:

- first render: from navigation to the shell, and to each view drawn (`deepscope serve` with the default models);
- a synthetic workspace of 100,000 points (10 clusters; served to the page by Playwright's request interception,
  so the page runs exactly as against a server): frames per second while the scatter pans and zooms, and the
  time from the end of a lasso around one cluster (10,000 points) to its grid on the page.

    python benchmarks/workbench_browser.py [--points 100000] [--device cpu|cuda]

Targets (issue 18): first render < 1 s; >= 30 frames/s; lasso grid < 200 ms. Timings depend on the machine
(and here on software WebGL: chromium runs with --disable-gpu), so the frame rates are also printed against the
vendored scatter plot alone on the same points, canvas and events (its own ceiling on this renderer).
"""

from __future__ import annotations

import argparse
import io
import json
import mimetypes
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the page objects and the server launcher
sys.path.insert(0, str(ROOT / "src"))
WEB = ROOT / "src" / "deepscope" / "app" / "web"
SYNTHETIC = "http://synthetic.workbench"


def first_render(browser, device: str) -> dict[str, float]:
    """Seconds from navigation to the shell and to each view drawn, against the real server."""
    from playwright.sync_api import expect

    from pages.base import Workbench
    from pages.server import workbench

    timings = {}
    with (
        tempfile.TemporaryDirectory() as scratch,
        workbench(Path(scratch), extra=["--device", device]) as base,
    ):
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        bench = Workbench(page, base)
        bench.open(model="lenet_mnist", view="image", methods="saliency")  # warm the server's caches once
        expect(page.locator(".map-card[data-state='done']")).to_have_count(1, timeout=120_000)
        for view, ready in [
            ("image", ".prediction"),
            ("architecture", ".graph-wrap[data-nodes] .graph-node"),
            ("layer", "canvas[aria-label='activation grid']"),
        ]:
            page.goto("about:blank")
            start = time.perf_counter()
            page.goto(f"{base}/?model=lenet_mnist&view={view}&image=sample:lenet_mnist:0&methods=saliency")
            expect(page.locator("#view[data-view]")).to_be_attached()
            shell = time.perf_counter() - start
            expect(page.locator(ready).first).to_be_visible(timeout=60_000)
            timings[f"{view}: shell"] = shell
            timings[f"{view}: drawn"] = time.perf_counter() - start
        page.close()
    return timings


def encode(array: np.ndarray) -> bytes:
    from deepscope.app.server.arrays import encode_array

    return encode_array(array)


def synthetic_workspace(
    count: int, classes: int = 10, seed: int = 0
) -> tuple[dict[str, tuple[str, bytes]], np.ndarray, np.ndarray]:
    """A dataset of `count` points in `classes` round clusters: the routes (path -> (content type, body)) that
    serve it, its layout [count, 2] and its labels."""
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    angles = 2 * np.pi * labels / classes
    centers = np.stack([np.cos(angles), np.sin(angles)], 1) * 10
    layout = (centers + generator.normal(0, 1.0, (count, 2))).astype(np.float32)
    predictions = np.where(generator.random(count) < 0.9, labels, (labels + 1) % classes)
    confidence = generator.uniform(0.3, 1.0, count)
    points = np.stack([np.arange(count), labels, predictions, predictions == labels, confidence], 1)
    sheet = io.BytesIO()
    Image.fromarray((generator.random((32 * 28, 32 * 28)) * 255).astype(np.uint8)).save(sheet, "PNG")
    per_page = 1024
    names = [str(c) for c in range(classes)]
    matrix = np.zeros((classes, classes), int)
    np.add.at(matrix, (labels, predictions), 1)
    model = {
        "id": "synthetic",
        "name": "synthetic",
        "spec": "synthetic",
        "classes": classes,
        "labels_url": "/api/models/synthetic/labels",
        "input_size": [28, 28],
        "image_mode": "L",
        "channels": 1,
        "data": "synthetic",
        "workspace": {"state": "ready", "progress": 1.0, "samples": count, "message": "synthetic"},
    }
    as_json = lambda value: ("application/json", json.dumps(value).encode())  # noqa: E731
    base = "/api/models/synthetic/dataset"
    return (
        {
            "/api/status": as_json({"version": "bench", "token_required": False, "models": [model]}),
            "/api/models": as_json([model]),
            "/api/images": as_json([]),
            base: as_json(
                {
                    "dataset": "synthetic",
                    "samples": count,
                    "classes": names,
                    "labeled": True,
                    "accuracy": float((predictions == labels).mean()),
                    "layers": [],
                    "embedding_layer": "synthetic",
                    "layouts_available": [{"kind": "pca", "layer": "synthetic"}],
                    "run": 1,
                }
            ),
            f"{base}/points": ("application/octet-stream", encode(points.astype(np.float32))),
            f"{base}/layout": ("application/octet-stream", encode(layout)),
            f"{base}/thumbnails": as_json(
                {
                    "cell": [28, 28],
                    "channels": 1,
                    "per_page": per_page,
                    "columns": 32,
                    "count": count,
                    "pages": ["/sheet.png"] * (-(-count // per_page)),
                }
            ),
            "/sheet.png": ("image/png", sheet.getvalue()),
            f"{base}/confusion": as_json({"classes": names, "matrix": matrix.tolist()}),
            f"{base}/class_report": as_json(
                {
                    "classes": names,
                    "precision": [0.9] * classes,
                    "recall": [0.9] * classes,
                    "f1": [0.9] * classes,
                    "support": np.bincount(labels).tolist(),
                    "accuracy": 0.9,
                }
            ),
            f"{base}/confused_pairs": as_json([]),
        },
        layout,
        labels,
    )


def serve_synthetic(page, routes: dict[str, tuple[str, bytes]]) -> None:
    """Answer the page's requests from the web folder and the synthetic routes, as the server would."""

    def handle(route):
        path = route.request.url.removeprefix(SYNTHETIC).split("?")[0]
        if path in routes:
            kind, body = routes[path]
            return route.fulfill(status=200, content_type=kind, body=body)
        file = WEB / (path.lstrip("/") or "index.html")
        if path.startswith("/api/") or not file.is_file():
            return route.fulfill(status=404, content_type="application/json", body=b'{"error": "not here"}')
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if file.suffix == ".js":
            kind = "text/javascript"
        return route.fulfill(status=200, content_type=kind, body=file.read_bytes())

    page.route(f"{SYNTHETIC}/**", handle)


# The floor for the frame rates: the vendored regl-scatterplot alone, drawing the same points at the same size
# and color on a canvas of the same size, driven by the same events. On software WebGL it is the renderer's
# own speed; the workbench can only add to its cost.
BARE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8">
<script src="/vendor/regl/regl.min.js"></script>
<script type="importmap">{ "imports": { "regl": "/lib/regl.js", "pub-sub-es": "/vendor/pub-sub-es/index.js" } }</script>
<style>body { margin: 0; background: #0b0e12; } .scatter-box { position: relative; }</style>
</head><body><div class="scatter-box"><canvas></canvas></div>
<script type="module">
import createScatterplot from "/vendor/regl-scatterplot/regl-scatterplot.esm.js";
const size = new URLSearchParams(location.search);
const box = document.querySelector(".scatter-box");
box.style.width = size.get("width") + "px";
box.style.height = size.get("height") + "px";
const [x, y, value] = await Promise.all(["x", "y", "value"].map(async (name) =>
  new Float32Array(await (await fetch("/bare/" + name)).arrayBuffer())));
const scatter = createScatterplot({ canvas: box.querySelector("canvas"), width: "auto", height: "auto", pointSize: 2 });
scatter.set({ colorBy: "valueA", pointColor: ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
  "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"] });
await scatter.draw({ x: Array.from(x, (v) => v / 14), y: Array.from(y, (v) => v / 14), valueA: Array.from(value) },
  { zDataType: "categorical" });
document.body.dataset.drawn = "yes";
</script></body></html>"""


def bare_scatter_speed(browser, layout: np.ndarray, labels: np.ndarray, width: float, height: float) -> dict:
    """Frames per second of the vendored scatter plot alone on the same points, canvas size and events."""
    routes = {
        "/bare.html": ("text/html", BARE_PAGE.encode()),
        "/bare/x": ("application/octet-stream", layout[:, 0].astype(np.float32).tobytes()),
        "/bare/y": ("application/octet-stream", layout[:, 1].astype(np.float32).tobytes()),
        "/bare/value": ("application/octet-stream", labels.astype(np.float32).tobytes()),
    }
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    serve_synthetic(page, routes)
    page.goto(f"{SYNTHETIC}/bare.html?width={width:.0f}&height={height:.0f}")
    page.wait_for_selector("body[data-drawn='yes']", timeout=120_000)
    results = {
        "bare plot: zoom (frames/s)": page.evaluate(FRAME_COUNTER, 3),
        "bare plot: pan (frames/s)": page.evaluate(PAN_COUNTER, 3),
    }
    page.close()
    return results


FRAME_COUNTER = """async (seconds) => {
  const canvas = document.querySelector('.scatter-box canvas');
  const box = canvas.getBoundingClientRect();
  const x = box.left + box.width / 2, y = box.top + box.height / 2;
  let frames = 0;
  const start = performance.now();
  await new Promise((done) => {
    const step = (now) => {
      frames += 1;
      const t = (now - start) / 1000;
      // zoom in and out, then pan: what a person does exploring the layout
      canvas.dispatchEvent(new WheelEvent('wheel', {clientX: x, clientY: y, deltaY: Math.sin(t * 3) * 40, bubbles: true}));
      if (t < seconds) requestAnimationFrame(step); else done();
    };
    requestAnimationFrame(step);
  });
  return frames / ((performance.now() - start) / 1000);
}"""

PAN_COUNTER = """async (seconds) => {
  const canvas = document.querySelector('.scatter-box canvas');
  const box = canvas.getBoundingClientRect();
  const x = box.left + box.width / 2, y = box.top + box.height / 2;
  const mouse = (type, dx, dy) => canvas.dispatchEvent(new MouseEvent(type, {
    clientX: x + dx, clientY: y + dy, buttons: type === 'mouseup' ? 0 : 1, bubbles: true, view: window}));
  mouse('mousedown', 0, 0);
  let frames = 0;
  const start = performance.now();
  await new Promise((done) => {
    const step = (now) => {
      frames += 1;
      const t = (now - start) / 1000;
      // a drag in a circle: the plot pans with the pointer every frame
      mouse('mousemove', Math.sin(t * 2) * 150, Math.cos(t * 2) * 90);
      if (t < seconds) requestAnimationFrame(step); else done();
    };
    requestAnimationFrame(step);
  });
  mouse('mouseup', 0, 0);
  return frames / ((performance.now() - start) / 1000);
}"""


def scatter_speed(browser, count: int) -> dict[str, float]:
    from playwright.sync_api import expect

    from pages.base import Workbench
    from pages.dataset import DatasetPage

    routes, layout, labels = synthetic_workspace(count)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    serve_synthetic(page, routes)
    bench = Workbench(page, SYNTHETIC)
    start = time.perf_counter()
    bench.open(model="synthetic", view="dataset", layout="pca", color="label")
    dataset = DatasetPage(bench).wait_scatter()
    results = {f"{count:,} points drawn (s)": time.perf_counter() - start}
    results["zoom (frames/s)"] = page.evaluate(FRAME_COUNTER, 3)
    results["pan (frames/s)"] = page.evaluate(PAN_COUNTER, 3)
    canvas = page.locator(".scatter-box canvas").bounding_box()
    page.get_by_role("button", name="Reset view").click()
    page.wait_for_timeout(800)
    # a lasso around cluster 0 (10% of the points)
    low, high = layout.min(0), layout.max(0)
    center, half = (low + high) / 2, (high - low).max() / 2 * 1.05
    cluster = (layout[labels == 0] - center) / half
    lo, hi = cluster.min(0) - 0.02, cluster.max(0) + 0.02
    corners = [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])]
    page.evaluate(
        """() => {
      window.__lassoUp = null; window.__gridShown = null;
      // the last mouse-up before the grid shows ends the lasso (the Lasso button's click comes before it)
      window.addEventListener('mouseup', () => { window.__lassoUp = performance.now(); }, {capture: true});
      const section = document.querySelector("section[aria-label='selection']");
      new MutationObserver((_, observer) => {
        if (Number(section.dataset.count) > 0 && section.querySelector('.sample')) {
          window.__gridShown = performance.now(); observer.disconnect();
        }
      }).observe(section, {attributes: true, childList: true, subtree: true});
    }"""
    )
    dataset.lasso([dataset.screen_of(x, y) for x, y in corners])
    expect(page.locator("section[aria-label='selection'] .sample").first).to_be_visible()
    selected = dataset.selection_count()
    elapsed = page.evaluate("() => window.__gridShown - window.__lassoUp")
    results[f"lasso of {selected:,} points -> grid (ms)"] = elapsed
    page.close()
    results.update(bare_scatter_speed(browser, layout, labels, canvas["width"], canvas["height"]))
    for gesture in ("zoom", "pan"):
        results[f"{gesture}: ours / bare plot"] = (
            results[f"{gesture} (frames/s)"] / results[f"bare plot: {gesture} (frames/s)"]
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--device", default="cpu", help="device of the served models (first render)")
    arguments = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from pages.server import launch_chromium

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        print(f"first render (deepscope serve, --device {arguments.device}); target < 1 s")
        for name, seconds in first_render(browser, arguments.device).items():
            print(f"  {name:24s} {seconds:6.3f} s")
        print(
            f"synthetic workspace of {arguments.points:,} points; targets >= 30 frames/s, lasso grid < 200 ms"
        )
        for name, value in scatter_speed(browser, arguments.points).items():
            print(f"  {name:34s} {value:8.2f}" if "/ bare" in name else f"  {name:34s} {value:8.1f}")
        browser.close()


if __name__ == "__main__":
    main()
