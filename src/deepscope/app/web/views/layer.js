// Layer view: the activation grid of the current image for the layer (every channel, DeepVis-style, sortable
// by strength, click to enlarge), the layer's filters (a first Linear layer's weights as images), from the
// workspace its activation histogram, dead units and class selectivity, its visual concepts and its decoder
// inversion (layer-panels.js). The unit clicked is the URL's `unit`; its page is the unit view.

import * as api from "../lib/api.js";
import { gradient } from "../lib/colormaps.js";
import { failure, fill, h, latest, shapeText } from "../lib/dom.js";
import { drawColorFilters, drawGrid, drawMap, hit, outline, scaleOf } from "../lib/tiles.js";
import * as state from "../lib/state.js";
import { drawConcepts, drawInversion, drawSelectivity } from "./layer-panels.js";
import { stepUnit } from "./unit.js";

export function mount(root, context) {
  const header = h("div.panel");
  const grid = h("section.panel", { "aria-label": "activation grid" });
  const zoom = h("section.panel", { "aria-label": "selected unit" });
  const filters = h("section.panel", { "aria-label": "filters" });
  const statistics = h("section.panel", { "aria-label": "layer statistics" });
  const selectivity = h("section.panel", { "aria-label": "class selectivity" });
  const concepts = h("section.panel", { "aria-label": "visual concepts" });
  const inversion = h("section.panel", { "aria-label": "decoder inversion" });
  const page = h(
    "div.page",
    header,
    h("div.split", { style: { gridTemplateColumns: "minmax(0, 1fr) 300px" } }, grid, zoom),
    h("div.split", { style: { gridTemplateColumns: "minmax(0, 1fr) minmax(0, 1fr)" } }, filters, statistics),
    h("div.split", { style: { gridTemplateColumns: "minmax(0, 1fr) minmax(0, 1fr)" } }, selectivity, inversion),
    concepts,
  );
  root.append(page);
  const newGrid = latest();
  const newFilters = latest();
  const newStatistics = latest();
  const newSelectivity = latest();
  const newConcepts = latest();
  const newInversion = latest();
  let activations = null; // {layer, image, array, summary}
  let gridLayout = null;
  let gridCanvas = null;
  let layers = [];
  let filterCanvas = null;
  let filterLayout = null;

  const onReady = () => {
    drawStatistics(state.get());
    drawSelectivity(selectivity, state.get(), newSelectivity());
  };
  window.addEventListener("workspace-ready", onReady);
  const onKey = (event) => {
    const current = state.get();
    const units = activations?.array.shape[0];
    if (units && Number(current.unit) + 1 >= units && event.key === "ArrowRight") return;
    stepUnit(event, current.unit === undefined && activations ? { ...current, unit: "-1" } : current);
  };
  window.addEventListener("keydown", onKey);

  async function drawHeader(current) {
    let scanned;
    try {
      [layers, scanned] = await Promise.all([
        api.json(`/api/models/${current.model}/layers`, { cached: true }),
        // the layers the workspace scan recorded (histograms, dead units, top patches): none before a scan
        api.json(`/api/models/${current.model}/dataset`).then((d) => d.layers.filter((name) => !name.includes(":")), () => []),
      ]);
    } catch (error) {
      fill(header, failure(error));
      return false;
    }
    if (!current.layer) {
      const first = scanned[0] ?? layers.find((l) => l.spatial && /conv/i.test(l.op ?? ""))?.name ?? layers[0]?.name;
      state.set({ layer: first }, { replace: true });
      return false;
    }
    // A block that the graph shows collapsed is a layer too, though the full graph has no node of that name.
    const info = layers.find((l) => l.name === current.layer) ?? { name: current.layer, op: "block" };
    const sequence = scanned.includes(current.layer) ? scanned : layers.map((l) => l.name);
    const index = sequence.indexOf(current.layer);
    const step = (delta) => {
      const next = sequence[index + delta];
      if (next) state.set({ layer: next, unit: null });
    };
    const option = (name) => {
      const entry = layers.find((l) => l.name === name);
      return h("option", { value: name, selected: name === current.layer }, entry ? `${name}  ·  ${entry.op ?? ""} ${shapeText(entry.output_shape)}` : name);
    };
    fill(
      header,
      h(
        "div.title-row",
        h("button", { onclick: () => step(-1), disabled: index <= 0, title: "previous layer", "aria-label": "previous layer" }, "◀"),
        h(
          "select",
          {
            "aria-label": "layer",
            onchange: (event) => state.set({ layer: event.target.value, unit: null }),
          },
          scanned.length ? h("optgroup", { label: "scanned over the dataset" }, scanned.map(option)) : null,
          h("optgroup", { label: "every layer" }, layers.map((l) => option(l.name))),
          sequence.includes(current.layer) || layers.some((l) => l.name === current.layer) ? null : option(current.layer),
        ),
        h("button", { onclick: () => step(1), disabled: index < 0 || index === sequence.length - 1, title: "next layer", "aria-label": "next layer" }, "▶"),
        h("h1", current.layer),
        h("span.badge", info.op ?? info.kind),
        info.output_shape ? h("span.badge", shapeText(info.output_shape)) : null,
        info.units ? h("span.badge", `${info.units} units`) : null,
        h("a", { href: state.href({ view: "architecture" }), style: { marginLeft: "auto" } }, "show in the graph"),
      ),
    );
    return true;
  }

  async function drawGridPanel(current) {
    const isStale = newGrid();
    if (!current.image) {
      fill(grid, h("h2", "Activations"), h("div.empty", "Pick an image in the Image view to see this layer's activations."));
      return;
    }
    fill(grid, h("h2", "Activations"), h("div.loading", "Running the model…"));
    const query = { image: current.image, layer: current.layer };
    let array;
    let summary;
    try {
      [array, summary] = await Promise.all([
        api.array(api.path(`/api/models/${current.model}/activations`, query), { cached: true }),
        api.json(api.path(`/api/models/${current.model}/activations/summary`, query), { cached: true }),
      ]);
    } catch (error) {
      if (!isStale()) fill(grid, h("h2", "Activations"), failure(error));
      return;
    }
    if (isStale()) return;
    activations = { array, summary };
    paintGrid(current);
    drawZoom(current);
  }

  function paintGrid(current) {
    const { array, summary } = activations;
    const sort = current.sort ?? "strength";
    const perUnit = current.scale === "unit";
    const segmented = (key, value, options) =>
      h(
        "div.seg",
        options.map(([name, label]) =>
          h("button", { "aria-pressed": String(value === name), onclick: () => state.set({ [key]: name }, { replace: true }) }, label),
        ),
      );
    const head = h(
      "div.panel-head",
      h("h2", `Activations · ${array.shape[0]} ${array.shape.length === 3 ? "channels" : "units"}`),
      h("label.hint", "sort", segmented("sort", sort, [["strength", "by strength"], ["index", "by index"]])),
      array.shape.length === 3 ? h("label.hint", "scale", segmented("scale", perUnit ? "unit" : "layer", [["layer", "whole layer"], ["unit", "each unit"]])) : null,
    );
    const order = sort === "index" ? Array.from({ length: array.shape[0] }, (_, i) => i) : summary.order;
    const width = Math.max(grid.clientWidth - 34, 320);
    gridCanvas = h("canvas.grid-canvas", { "aria-label": "activation grid", "data-units": array.shape[0] });
    const tooltip = h("div.hint", { style: { minHeight: "18px" } }, "Click a channel to enlarge it; double-click opens its unit page.");
    if (array.shape.length === 3) {
      const [count, height, mapWidth] = array.shape;
      const tile = Math.max(22, Math.min(96, Math.floor(Math.sqrt((width * 560) / count)) - 2));
      const columns = Math.max(1, Math.floor((width + 2) / (tile + 2)));
      const layerScale = scaleOf(array.data);
      activations.layerScale = layerScale;
      const scales = new Map();
      const scaleFor = (index) => {
        if (!perUnit) return layerScale;
        if (!scales.has(index)) scales.set(index, scaleOf(array.data.subarray(index * height * mapWidth, (index + 1) * height * mapWidth)));
        return scales.get(index);
      };
      gridLayout = drawGrid(gridCanvas, { data: array.data, count, height, width: mapWidth }, { order, tile, columns, scaleFor });
      gridCanvas.dataset.tile = String(tile);
      gridCanvas.dataset.columns = String(columns);
      fill(
        grid,
        head,
        gridCanvas,
        tooltip,
        perUnit ? null : h("div", h("div.legend-bar", { style: { background: gradient(layerScale.colormap), width: "200px" } }), h("div.legend-ends", { style: { width: "200px" } }, h("span", layerScale.low.toPrecision(2)), h("span", layerScale.high.toPrecision(2)))),
      );
    } else {
      gridLayout = drawBars(gridCanvas, array.data, order, width);
      fill(grid, head, gridCanvas, tooltip);
    }
    gridCanvas.addEventListener("click", (event) => {
      const unit = hit(gridLayout, gridCanvas, event);
      if (unit >= 0) state.set({ unit: String(unit) });
    });
    gridCanvas.addEventListener("dblclick", (event) => {
      const unit = hit(gridLayout, gridCanvas, event);
      if (unit >= 0) state.set({ view: "unit", unit: String(unit) });
    });
    gridCanvas.addEventListener("mousemove", (event) => {
      const unit = hit(gridLayout, gridCanvas, event);
      tooltip.textContent = unit >= 0 ? `unit ${unit} · mean ${summary.strength[unit].toPrecision(3)} · rank ${summary.order.indexOf(unit) + 1} of ${summary.order.length}` : "";
    });
    if (current.unit !== undefined) outline(gridCanvas, gridLayout, Number(current.unit));
  }

  async function drawZoom(current) {
    if (!activations) return;
    const { array, summary } = activations;
    const unit = current.unit !== undefined ? Number(current.unit) : summary.order[0];
    fill(zoom, h("h2", `Unit ${unit}`));
    if (array.shape.length === 3) {
      const [, height, width] = array.shape;
      const values = array.data.subarray(unit * height * width, (unit + 1) * height * width);
      const canvas = h("canvas", { "aria-label": `unit ${unit} map` });
      // the grid's colors: the layer's scale, or the unit's own when the grid scales each unit
      const scale = drawMap(canvas, values, height, width, current.scale === "unit" ? scaleOf(values) : activations.layerScale);
      zoom.append(
        h("div.unit-zoom", canvas),
        h("div.legend-bar", { style: { background: gradient(scale.colormap), width: "224px" } }),
        h("div.legend-ends", { style: { width: "224px" } }, h("span", scale.low.toPrecision(2)), h("span", scale.high.toPrecision(2))),
      );
    }
    zoom.append(
      h(
        "div.stats",
        { style: { margin: "10px 0" } },
        h("div.stat", h("b", summary.strength[unit].toPrecision(3)), h("span", "mean")),
        h("div.stat", h("b", `${summary.order.indexOf(unit) + 1}`), h("span", `rank of ${summary.order.length}`)),
      ),
      h("button.primary", { onclick: () => state.set({ view: "unit", unit: String(unit) }) }, "Open the unit page →"),
      h("div.hint", { style: { marginTop: "8px" } }, "Top dataset patches, deconvnet projections, feature visualization, name and notes."),
    );
  }

  async function drawFilters(current) {
    const isStale = newFilters();
    fill(filters, h("h2", "Filters"), h("div.loading", "Loading…"));
    let weights;
    try {
      weights = await api.array(api.path(`/api/models/${current.model}/filters`, { layer: current.layer }), { cached: true });
    } catch (error) {
      if (isStale()) return;
      fill(filters, h("h2", "Filters"), error.status === 404 ? h("div.empty", error.message) : failure(error));
      return;
    }
    if (isStale()) return;
    const [out, inputs, kh, kw] = weights.shape;
    const width = Math.max(filters.clientWidth - 34, 300);
    filterCanvas = h("canvas.grid-canvas", { "aria-label": "filters" });
    let caption;
    if (inputs === 3 && kh * kw > 1) {
      const tile = Math.max(24, Math.min(64, Math.floor(Math.sqrt((width * 280) / out)) - 3));
      filterLayout = drawColorFilters(filterCanvas, weights.data, out, kh, kw, { tile, columns: Math.floor((width + 3) / (tile + 3)) });
      caption = `${out} filters of ${inputs}×${kh}×${kw}, each scaled to its own largest weight (gray: 0)`;
    } else if (kh * kw === 1) {
      // 1x1 convolutions mix channels: the weight matrix [out, in] says the mix.
      const scale = scaleOf(weights.data);
      const stretch = Math.max(1, Math.floor(width / inputs));
      drawMap(filterCanvas, weights.data, out, inputs, { ...scale, signed: true, colormap: "RdBu_r", low: -Math.max(-scale.low, scale.high), high: Math.max(-scale.low, scale.high) });
      filterCanvas.style.width = `${Math.min(width, inputs * stretch)}px`;
      filterCanvas.style.height = `${Math.min(420, out * stretch)}px`;
      filterLayout = null;
      caption = `1×1 kernels: the weight matrix, ${out} output rows × ${inputs} input columns (red positive, blue negative)`;
    } else if (layers.find((l) => l.name === current.layer)?.kind === "linear") {
      // a first Linear layer: each unit's weights over the pixels, shown as the image they read (Erhan et al. 2009)
      const tile = Math.max(20, Math.min(56, Math.floor(Math.sqrt((width * 280) / out)) - 2));
      const columns = Math.floor((width + 2) / (tile + 2));
      const summed = new Float32Array(out * kh * kw);
      for (let o = 0; o < out; o += 1) for (let i = 0; i < inputs; i += 1) for (let p = 0; p < kh * kw; p += 1) summed[o * kh * kw + p] += weights.data[(o * inputs + i) * kh * kw + p];
      filterLayout = drawGrid(filterCanvas, { data: summed, count: out, height: kh, width: kw }, { order: Array.from({ length: out }, (_, i) => i), tile, columns, scaleFor: (unit) => {
        const own = summed.subarray(unit * kh * kw, (unit + 1) * kh * kw).reduce((m, v) => Math.max(m, Math.abs(v)), 0) || 1;
        return { colormap: "RdBu_r", low: -own, high: own };
      } });
      filterCanvas.dataset.weightImages = String(out);
      caption = `${out} units, each one's weights over the ${kh}×${kw} input pixels as an image${inputs > 1 ? ` (summed over ${inputs} channels)` : ""}, scaled to its own largest weight (red positive, blue negative)`;
    } else {
      const tile = Math.max(20, Math.min(56, Math.floor(Math.sqrt((width * 280) / out)) - 2));
      const columns = Math.floor((width + 2) / (tile + 2));
      // one kernel per output: its input channels summed (a depthwise layer has one)
      const summed = new Float32Array(out * kh * kw);
      for (let o = 0; o < out; o += 1) for (let i = 0; i < inputs; i += 1) for (let p = 0; p < kh * kw; p += 1) summed[o * kh * kw + p] += weights.data[(o * inputs + i) * kh * kw + p];
      const extent = Math.max(...summed.map(Math.abs)) || 1;
      filterLayout = drawGrid(filterCanvas, { data: summed, count: out, height: kh, width: kw }, { order: Array.from({ length: out }, (_, i) => i), tile, columns, scaleFor: () => ({ colormap: "RdBu_r", low: -extent, high: extent }) });
      caption = `${out} kernels of ${kh}×${kw}${inputs > 1 ? `, summed over ${inputs} input channels` : ""} (red positive, blue negative)`;
    }
    fill(filters, h("h2", `Filters · ${weights.shape.join("×")}`), filterCanvas, h("div.hint", caption));
    if (filterLayout) {
      filterCanvas.addEventListener("click", (event) => {
        const unit = hit(filterLayout, filterCanvas, event);
        if (unit >= 0) state.set({ unit: String(unit) });
      });
      if (current.unit !== undefined) outline(filterCanvas, filterLayout, Number(current.unit));
    }
  }

  async function drawStatistics(current) {
    const isStale = newStatistics();
    fill(statistics, h("h2", "Over the dataset"), h("div.loading", "Loading…"));
    const base = `/api/models/${current.model}/layers/${encodeURIComponent(current.layer)}`;
    let histogram;
    let units;
    try {
      [histogram, units] = await Promise.all([api.json(`${base}/histogram`), api.json(`${base}/units`)]);
    } catch (error) {
      if (!isStale()) fill(statistics, h("h2", "Over the dataset"), error.status === 409 || error.status === 404 ? h("div.empty", error.message) : failure(error));
      return;
    }
    if (isStale()) return;
    const dead = units.dead.filter(Boolean).length;
    const chart = h("div.chart", { "aria-label": "activation histogram" });
    const strip = h("canvas.grid-canvas", { "aria-label": "unit means" });
    fill(
      statistics,
      h("h2", "Over the dataset"),
      h(
        "div.stats",
        h("div.stat", h("b", histogram.mean.toPrecision(3)), h("span", "mean")),
        h("div.stat", h("b", histogram.high.toPrecision(3)), h("span", "max")),
        h("div.stat", h("b", `${((100 * histogram.zeros) / histogram.total).toFixed(1)}%`), h("span", "zeros")),
        h("div.stat", { dataset: { dead } }, h("b", { style: { color: dead ? "var(--bad)" : "" } }, `${dead} / ${units.dead.length}`), h("span", "dead units")),
      ),
      h("div.hint", { style: { margin: "8px 0 2px" } }, "Histogram of every activation value (counts on a log scale; x on a signed log scale)"),
      chart,
      h("div.hint", { style: { margin: "10px 0 2px" } }, "Mean activation per unit", dead ? h("span", { style: { color: "var(--bad)" } }, " · red: dead (never positive)") : null),
      strip,
    );
    requestAnimationFrame(() => {
      drawHistogram(chart, histogram);
      const layout = drawUnitStrip(strip, units, Math.max(statistics.clientWidth - 34, 300));
      strip.addEventListener("click", (event) => {
        const box = strip.getBoundingClientRect();
        const unit = Math.floor(((event.clientX - box.left) / box.width) * layout.count);
        if (unit >= 0 && unit < layout.count) state.set({ unit: String(unit) });
      });
    });
  }

  return {
    async update(current, changed) {
      if (changed.has("model") || changed.has("layer")) {
        activations = null;
        if (!(await drawHeader(current))) return;
        drawGridPanel(current);
        drawFilters(current);
        drawStatistics(current);
        drawSelectivity(selectivity, current, newSelectivity());
        drawConcepts(concepts, current, newConcepts());
        drawInversion(inversion, current, newInversion());
        return;
      }
      if (changed.has("image")) {
        drawGridPanel(current);
        drawInversion(inversion, current, newInversion());
      }
      if (changed.has("unit")) drawSelectivity(selectivity, current, newSelectivity());
      if (changed.has("concepts")) drawConcepts(concepts, current, newConcepts());
      else if ((changed.has("sort") || changed.has("scale") || changed.has("unit")) && activations) {
        paintGrid(current);
        drawZoom(current);
      }
      if (changed.has("unit") && filterCanvas && filterLayout) drawFilters(current);
    },
    unmount() {
      window.removeEventListener("workspace-ready", onReady);
      window.removeEventListener("keydown", onKey);
      page.remove();
    },
  };
}

/** A linear layer's units as bars, in `order`; the layout for hit tests (one column per unit). */
function drawBars(canvas, values, order, width) {
  const columns = order.length;
  const barWidth = Math.max(1, Math.min(12, Math.floor(width / columns)));
  canvas.width = columns * barWidth;
  canvas.height = 140;
  canvas.style.width = `${columns * barWidth}px`;
  canvas.style.height = "140px";
  const context = canvas.getContext("2d");
  const extent = Math.max(...values.map(Math.abs)) || 1;
  order.forEach((unit, position) => {
    const v = values[unit] / extent;
    context.fillStyle = v >= 0 ? "#f5a623" : "#4f9cf9";
    const top = 70 - Math.max(v, 0) * 68;
    context.fillRect(position * barWidth, top, Math.max(barWidth - 1, 1), Math.abs(v) * 68);
  });
  return { tile: barWidth, gap: 0, columns, order, count: columns, rows: 1 };
}

/** The histogram's non-empty bins as bars, x on a signed log scale (asinh), counts on a log scale. */
function drawHistogram(element, histogram) {
  const scale = Math.max(Math.abs(histogram.low), Math.abs(histogram.high)) * 1e-3 || 1e-3;
  const forward = (v) => Math.asinh(v / scale);
  const centers = histogram.lower.map((low, i) => forward((low + histogram.upper[i]) / 2));
  const order = centers.map((_, i) => i).sort((a, b) => centers[a] - centers[b]);
  const x = order.map((i) => centers[i]);
  const y = order.map((i) => histogram.counts[i]);
  new globalThis.uPlot(
    {
      width: Math.max(element.clientWidth, 280),
      height: 170,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: false }, y: { distr: 3 } },
      axes: [
        {
          stroke: "#8b95a3",
          grid: { stroke: "#2a313b" },
          font: "10px sans-serif",
          values: (_, ticks) => ticks.map((t) => Number((scale * Math.sinh(t)).toPrecision(2))),
        },
        { stroke: "#8b95a3", grid: { stroke: "#2a313b" }, font: "10px sans-serif", size: 44 },
      ],
      series: [{}, { stroke: "#4f9cf9", fill: "rgba(79,156,249,0.35)", paths: globalThis.uPlot.paths.bars({ size: [0.9, 12] }), points: { show: false } }],
    },
    [x, y],
    element,
  );
}

/** Each unit's mean as a bar, dead units in red. */
function drawUnitStrip(canvas, units, width) {
  const count = units.mean.length;
  const barWidth = Math.max(1, Math.min(10, Math.floor(width / count)));
  canvas.width = count * barWidth;
  canvas.height = 70;
  canvas.style.width = `${count * barWidth}px`;
  const context = canvas.getContext("2d");
  const extent = Math.max(...units.mean.map(Math.abs), 1e-12);
  units.mean.forEach((mean, unit) => {
    const fraction = Math.abs(mean) / extent;
    context.fillStyle = units.dead[unit] ? "#ff6b6b" : mean >= 0 ? "#4f9cf9" : "#8b95a3";
    const height = units.dead[unit] ? 70 : Math.max(1, fraction * 68);
    context.fillRect(unit * barWidth, 70 - height, Math.max(barWidth - (barWidth > 2 ? 1 : 0), 1), height);
  });
  return { count };
}
