// Dataset view (the workspace of a scanned dataset): the t-SNE / UMAP / PCA layout as a WebGL scatter
// (regl-scatterplot) colored by label, prediction, correctness or confidence, a thumbnail on hover, a lasso
// whose samples show as a grid; the confusion matrix (a cell's samples on click), the class report, the
// confidence histograms and the most-confused pairs.
//
// The selection is the URL's `sel`: "lasso:x,y;x,y;..." (the polygon in layout coordinates, so that a copied
// link selects the same samples) or "cell:LABEL,PRED".

import createScatterplot from "../vendor/regl-scatterplot/regl-scatterplot.esm.js";
import * as api from "../lib/api.js";
import { column } from "../lib/arrays.js";
import { categorical, confusionColor, ramp } from "../lib/colormaps.js";
import { failure, fill, h, latest } from "../lib/dom.js";
import * as state from "../lib/state.js";

const KINDS = ["tsne", "umap", "pca"];
const COLOR_BY = [
  ["label", "label"],
  ["prediction", "prediction"],
  ["correct", "correct?"],
  ["confidence", "confidence"],
];
// The grid shows this many samples of a selection (the count says how many there are).
const GRID_LIMIT = 600;
const SAMPLE_SIZE = 64;

export function mount(root, context) {
  const toolbar = h("div.toolbar");
  const box = h("div.scatter-box");
  const hoverCard = h("div.hover-card");
  box.append(hoverCard);
  const legend = h("div.legend");
  const scatterPanel = h("section.panel", { "aria-label": "layout" }, toolbar, box, h("div", { style: { marginTop: "8px" } }, legend));
  const summary = h("div.panel");
  const selection = h("section.panel", { "aria-label": "selection" });
  const confusion = h("section.panel", { "aria-label": "confusion matrix" });
  const report = h("section.panel", { "aria-label": "class report" });
  const pairs = h("section.panel", { "aria-label": "most confused pairs" });
  const histograms = h("section.panel", { "aria-label": "confidence histograms" });
  const page = h(
    "div.dataset-layout",
    h("div.page", { style: { padding: 0 } }, summary, scatterPanel, selection),
    h("div.page", { style: { padding: 0 } }, confusion, pairs, report, histograms),
  );
  root.append(page);
  const newData = latest();
  const newLayout = latest();
  const newSelection = latest();
  let info = null; // GET dataset
  let points = null; // {index, label, prediction, correct, confidence} columns, by row
  let rowOfIndex = null;
  let sprites = null;
  let coordinates = null; // {x, y} normalized to [-1, 1], and the transform back to layout space
  let scatter = null;
  let applyingSelection = false;
  let lassoDrawn = null; // {sel, rows}: the lasso the person just drew, with the rows the plot selected

  const onReady = () => {
    if (!info) load(state.get());
  };
  window.addEventListener("workspace-ready", onReady);

  async function load(current) {
    const isStale = newData();
    fill(summary, h("div.loading", "Loading the workspace…"));
    const base = `/api/models/${current.model}/dataset`;
    try {
      const [description, table, thumbnails] = await Promise.all([
        api.json(base),
        api.array(`${base}/points`, { cached: true }),
        api.json(`${base}/thumbnails`, { cached: true }),
      ]);
      if (isStale()) return;
      info = description;
      points = {
        index: column(table, 0),
        label: column(table, 1),
        prediction: column(table, 2),
        correct: column(table, 3),
        confidence: column(table, 4),
      };
      rowOfIndex = new Map(Array.from(points.index, (index, row) => [index, row]));
      sprites = thumbnails;
    } catch (error) {
      if (isStale()) return;
      const waiting = error.status === 409;
      fill(summary, waiting ? h("div.empty", error.message, " The views fill in when the scan is done.") : failure(error));
      for (const panel of [selection, confusion, report, pairs, histograms]) fill(panel);
      scatterPanel.hidden = true;
      return;
    }
    scatterPanel.hidden = false;
    drawSummary();
    drawToolbar(current);
    drawConfusion(current);
    drawReport(current);
    drawPairs(current);
    drawHistograms();
    await drawLayout(current);
  }

  function drawSummary() {
    const wrong = points.correct.filter((c) => c === 0).length;
    fill(
      summary,
      h(
        "div.stats",
        h("div.stat", h("b", info.samples.toLocaleString()), h("span", `samples · ${info.dataset}`)),
        h("div.stat", h("b", info.classes.length.toLocaleString()), h("span", "classes")),
        info.accuracy !== null ? h("div.stat", h("b", `${(info.accuracy * 100).toFixed(1)}%`), h("span", "accuracy")) : null,
        info.labeled ? h("div.stat", h("b", { style: { color: "var(--bad)" } }, wrong.toLocaleString()), h("span", "misclassified")) : null,
        h("div.stat", h("b.mono", { style: { fontSize: "13px" } }, info.embedding_layer ?? "—"), h("span", "embedding layer")),
      ),
    );
  }

  function drawToolbar(current) {
    const kind = current.layout ?? "tsne";
    const color = current.color ?? (info.labeled ? "label" : "prediction");
    const seg = (key, value, options) =>
      h(
        "div.seg",
        options.map(([name, label]) =>
          h("button", { "aria-pressed": String(value === name), dataset: { [key]: name }, onclick: () => state.set({ [key]: name }) }, label),
        ),
      );
    const lasso = h(
      "button",
      {
        "aria-pressed": "false",
        title: "draw a lasso around points (or hold Shift and drag)",
        onclick: () => {
          const on = lasso.getAttribute("aria-pressed") !== "true";
          lasso.setAttribute("aria-pressed", String(on));
          scatter?.set({ mouseMode: on ? "lasso" : "panZoom" });
        },
      },
      "Lasso",
    );
    fill(
      toolbar,
      h("label", "layout", seg("layout", kind, KINDS.map((k) => [k, k === "tsne" ? "t-SNE" : k.toUpperCase()]))),
      h("label", "color", seg("color", color, COLOR_BY.filter(([name]) => info.labeled || !["label", "correct"].includes(name)))),
      lasso,
      h("button", { onclick: () => scatter?.zoomToOrigin({ transition: true }), title: "show every point" }, "Reset view"),
      h("span.hint", "drag: pan · wheel: zoom · shift-drag: lasso · double-click: clear"),
    );
  }

  async function drawLayout(current) {
    const isStale = newLayout();
    const kind = current.layout ?? "tsne";
    const route = `/api/models/${current.model}/dataset/layout`;
    page.dataset.drawn = "false";
    let layout;
    try {
      layout = await api.array(api.path(route, { kind }), { cached: true });
    } catch (error) {
      if (error.status !== 404) {
        if (!isStale()) showInBox(failure(error));
        return;
      }
      const bar = progressOverlay(`computing the ${kind} layout`);
      try {
        await api.job(route, { kind }, bar.update);
        layout = await api.array(api.path(route, { kind }), { cached: true });
      } catch (jobError) {
        if (!isStale()) showInBox(failure(jobError));
        return;
      }
    }
    if (isStale()) return;
    showInBox(null);
    coordinates = normalized(layout);
    if (!scatter) createPlot();
    await paintPoints(current);
    await applySelection(current);
    page.dataset.drawn = "true";
  }

  function showInBox(element) {
    for (const old of box.querySelectorAll(".box-message")) old.remove();
    if (element) box.append(h("div.box-message", { style: { position: "absolute", inset: "20px", zIndex: 2 } }, element));
  }

  function progressOverlay(label) {
    const text = h("span.progress-text", label);
    const bar = h("div.progress-fill");
    showInBox(h("div.progress", bar, text));
    return {
      update(progress, message) {
        bar.style.width = `${Math.round(progress * 100)}%`;
        text.textContent = `${label}: ${Math.round(progress * 100)}% ${message ?? ""}`;
      },
    };
  }

  function createPlot() {
    const canvas = h("canvas", { "aria-label": "scatter plot" });
    box.prepend(canvas);
    scatter = createScatterplot({
      canvas,
      width: "auto",
      height: "auto",
      pointSize: pointSizeFor(coordinates.x.length),
      pointSizeSelected: 2,
      pointOutlineWidth: 1,
      opacityInactiveScale: 0.25,
      backgroundColor: [0.043, 0.055, 0.071, 1],
      pointColorActive: [1, 1, 1, 1],
      pointColorHover: [1, 1, 1, 1],
      lassoColor: [0.96, 0.65, 0.14, 1],
      lassoMinDelay: 8,
      lassoMinDist: 3,
      deselectOnDblClick: true,
      // events at once rather than after the next frame: a lasso's samples show without waiting for a redraw
      syncEvents: true,
    });
    // How far the pointer travelled with the button down in the last gesture: a lasso closed where it started
    // ends with a click, which the plot takes for picking the point there; the lasso's selection must stand.
    let dragged = 0;
    let last = null;
    canvas.addEventListener("pointerdown", (event) => {
      dragged = 0;
      last = [event.clientX, event.clientY];
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!event.buttons || !last) return;
      dragged += Math.hypot(event.clientX - last[0], event.clientY - last[1]);
      last = [event.clientX, event.clientY];
    });
    scatter.subscribe("lassoEnd", ({ coordinates: polygon }) => {
      if (applyingSelection) return;
      const text = polygon.map((p) => toLayout(p).map((v) => Number(v.toPrecision(5))).join(",")).join(";");
      // the plot has selected the points inside already: the selection grid takes them as they are
      lassoDrawn = { sel: `lasso:${text}`, rows: scatter.get("selectedPoints") };
      state.set({ sel: lassoDrawn.sel });
    });
    scatter.subscribe("select", ({ points: rows }) => {
      if (applyingSelection || rows.length !== 1) return;
      if (dragged > 10) applySelection(state.get());
      else state.set({ sel: `rows:${rows[0]}` });
    });
    scatter.subscribe("deselect", () => {
      if (!applyingSelection && state.get().sel?.startsWith("lasso:")) state.set({ sel: null });
    });
    scatter.subscribe("pointOver", (row) => showHover(row));
    scatter.subscribe("pointOut", () => (hoverCard.style.display = "none"));
  }

  async function paintPoints(current) {
    const color = current.color ?? (info.labeled ? "label" : "prediction");
    const count = info.classes.length;
    let values;
    let palette;
    let dataType = "categorical";
    if (color === "confidence") {
      values = points.confidence;
      palette = ramp("viridis", 64);
      dataType = "continuous";
    } else if (color === "correct") {
      values = points.correct.map((c) => (c === 1 ? 0 : c === 0 ? 1 : 2));
      palette = ["#3ecf8e", "#ff6b6b", "#5a6574"];
    } else {
      const source = color === "label" ? points.label : points.prediction;
      values = source.map((c) => (c < 0 ? count : c));
      palette = [...categorical(count), "#5a6574"];
    }
    scatter.set({ colorBy: "valueA", pointColor: palette });
    await scatter.draw({ x: coordinates.x, y: coordinates.y, valueA: Array.from(values) }, { zDataType: dataType });
    drawLegend(color, palette);
  }

  function drawLegend(color, palette) {
    if (color === "confidence") {
      fill(legend, h("span", "confidence of the prediction: "), h("span", { style: { display: "inline-block", width: "160px", height: "10px", borderRadius: "3px", background: `linear-gradient(to right, ${palette[0]}, ${palette[32]}, ${palette[63]})` } }), h("span", " 0 → 1"));
    } else if (color === "correct") {
      fill(legend, h("span", h("i", { style: { background: palette[0] } }), "correct"), h("span", h("i", { style: { background: palette[1] } }), "misclassified"));
    } else if (info.classes.length <= 40) {
      fill(legend, info.classes.map((name, i) => h("span", h("i", { style: { background: palette[i] } }), name)));
    } else {
      fill(legend, h("span.hint", `${info.classes.length} classes, one hue each; hover a point for its class`));
    }
  }

  function normalized(layout) {
    const x = column(layout, 0);
    const y = column(layout, 1);
    const range = (values) => {
      let low = Infinity;
      let high = -Infinity;
      for (const v of values) {
        if (v < low) low = v;
        if (v > high) high = v;
      }
      return [low, high];
    };
    const [x0, x1] = range(x);
    const [y0, y1] = range(y);
    // one scale for both axes (a layout's distances mean the same in x and y), 5% margin
    const half = (Math.max(x1 - x0, y1 - y0) / 2) * 1.05 || 1;
    const cx = (x0 + x1) / 2;
    const cy = (y0 + y1) / 2;
    return {
      x: Array.from(x, (v) => (v - cx) / half),
      y: Array.from(y, (v) => (v - cy) / half),
      toLayout: ([gx, gy]) => [cx + gx * half, cy + gy * half],
      fromLayout: ([lx, ly]) => [(lx - cx) / half, (ly - cy) / half],
    };
  }
  const toLayout = (point) => coordinates.toLayout(point);

  function pointSizeFor(count) {
    return count > 50000 ? 2 : count > 10000 ? 3 : count > 2000 ? 4 : count > 200 ? 6 : 10;
  }

  function showHover(row) {
    const position = scatter.getScreenPosition(row);
    if (!position) return;
    const label = points.label[row];
    const prediction = points.prediction[row];
    fill(
      hoverCard,
      thumbnail(row, 96),
      h("div", `#${points.index[row]}`),
      label >= 0 ? h("div", "label ", h("b", info.classes[label])) : null,
      h("div", "predicted ", h("b", { style: { color: points.correct[row] === 0 ? "var(--bad)" : "" } }, info.classes[prediction])),
      h("div.hint", `confidence ${(points.confidence[row] * 100).toFixed(1)}%`),
    );
    hoverCard.style.display = "block";
    const [x, y] = position;
    hoverCard.style.left = `${Math.min(x + 12, box.clientWidth - 130)}px`;
    hoverCard.style.top = `${Math.min(y + 12, box.clientHeight - 180)}px`;
  }

  /** A sample's thumbnail from the sprite sheets, as an element `size` pixels wide. */
  function thumbnail(row, size) {
    const [cellHeight, cellWidth] = sprites.cell;
    const page = Math.floor(row / sprites.per_page);
    const slot = row % sprites.per_page;
    const x = slot % sprites.columns;
    const y = Math.floor(slot / sprites.columns);
    const height = (size * cellHeight) / cellWidth;
    return h("div.sprite", {
      style: {
        width: `${size}px`,
        height: `${height}px`,
        backgroundImage: `url("${api.url(sprites.pages[page])}")`,
        backgroundSize: `${sprites.columns * size}px auto`,
        backgroundPosition: `-${x * size}px -${y * height}px`,
        imageRendering: cellWidth < size ? "pixelated" : "auto",
        borderRadius: "3px",
      },
    });
  }

  async function applySelection(current) {
    const isStale = newSelection();
    const sel = current.sel ?? "";
    let rows = null;
    let title = "";
    if (sel.startsWith("lasso:") && lassoDrawn?.sel === sel) {
      rows = [...lassoDrawn.rows].sort((a, b) => a - b);
      title = "lasso";
    } else if (sel.startsWith("lasso:") && coordinates) {
      // a lasso from the URL (a copied link, the back button): the rows inside its polygon
      const polygon = sel
        .slice(6)
        .split(";")
        .map((pair) => pair.split(",").map(Number));
      rows = rowsInPolygon(polygon);
      title = "lasso";
      applyingSelection = true;
      try {
        scatter.select(rows, { preventEvent: true });
      } finally {
        applyingSelection = false;
      }
    } else if (sel.startsWith("cell:")) {
      const [label, prediction] = sel.slice(5).split(",").map(Number);
      title = `label ${info.classes[label] ?? label} → predicted ${info.classes[prediction] ?? prediction}`;
      try {
        const samples = await api.json(api.path(`/api/models/${current.model}/dataset/samples`, { cell: `${label},${prediction}`, limit: GRID_LIMIT }));
        if (isStale()) return;
        rows = samples.map((s) => s.row ?? rowOfIndex.get(s.index));
      } catch (error) {
        if (!isStale()) fill(selection, h("h2", "Selection"), failure(error));
        return;
      }
      applyingSelection = true;
      try {
        scatter?.select(rows, { preventEvent: true });
      } finally {
        applyingSelection = false;
      }
    } else if (sel.startsWith("rows:")) {
      // points clicked in the plot (rows of the workspace)
      rows = sel.slice(5).split(",").map(Number);
      title = rows.length === 1 ? "point" : "points";
      applyingSelection = true;
      try {
        scatter?.select(rows, { preventEvent: true });
      } finally {
        applyingSelection = false;
      }
    } else {
      applyingSelection = true;
      try {
        scatter?.deselect({ preventEvent: true });
      } finally {
        applyingSelection = false;
      }
    }
    drawSelection(current, rows, title);
  }

  /** The rows whose layout position lies inside the polygon (even-odd rule), in layout coordinates. */
  function rowsInPolygon(polygon) {
    const inside = [];
    const gl = polygon.map((p) => coordinates.fromLayout(p));
    const { x, y } = coordinates;
    for (let row = 0; row < x.length; row += 1) {
      let hit = false;
      for (let i = 0, j = gl.length - 1; i < gl.length; j = i, i += 1) {
        const [xi, yi] = gl[i];
        const [xj, yj] = gl[j];
        if (yi > y[row] !== yj > y[row] && x[row] < ((xj - xi) * (y[row] - yi)) / (yj - yi) + xi) hit = !hit;
      }
      if (hit) inside.push(row);
    }
    return inside;
  }

  function drawSelection(current, rows, title) {
    if (!rows) {
      fill(selection, h("h2", "Selection"), h("div.empty", "Lasso points in the layout, or click a cell of the confusion matrix, to see those samples here."));
      selection.dataset.count = "0";
      return;
    }
    const correct = rows.filter((row) => points.correct[row] === 1).length;
    const labeled = rows.filter((row) => points.correct[row] >= 0).length;
    const grid = h(
      "div.samples",
      { "aria-label": "selected samples" },
      rows.slice(0, GRID_LIMIT).map((row) =>
        h(
          "button.sample",
          {
            class: points.correct[row] === 0 ? "sample wrong" : "sample",
            dataset: { index: points.index[row] },
            title: `#${points.index[row]}: ${points.label[row] >= 0 ? `${info.classes[points.label[row]]} → ` : ""}${info.classes[points.prediction[row]]} (${(points.confidence[row] * 100).toFixed(0)}%); open in the Image view`,
            onclick: () => state.set({ view: "image", image: `sample:${current.model}:${points.index[row]}`, target: null }),
          },
          thumbnail(row, SAMPLE_SIZE),
          h("span.tag", info.classes[points.prediction[row]]),
        ),
      ),
    );
    fill(
      selection,
      h(
        "div.panel-head",
        h("h2", `Selection · ${title}`),
        h("span.badge", `${rows.length.toLocaleString()} samples`),
        labeled ? h("span.badge", `${((100 * correct) / labeled).toFixed(1)}% correct`) : null,
        h("button", { onclick: () => state.set({ sel: null }) }, "Clear"),
      ),
      grid,
      rows.length > GRID_LIMIT ? h("div.hint", `showing the first ${GRID_LIMIT} of ${rows.length.toLocaleString()}`) : null,
    );
    selection.dataset.count = String(rows.length);
  }

  async function drawConfusion(current) {
    let matrix;
    try {
      matrix = await api.json(`/api/models/${current.model}/dataset/confusion`, { cached: true });
    } catch (error) {
      fill(confusion, h("h2", "Confusion matrix"), h("div.empty", error.message));
      return;
    }
    // Many classes (ImageNet): only those that occur as a label or a prediction.
    const active = matrix.classes.map((_, i) => i).filter((i) => matrix.matrix[i].some((v) => v > 0) || matrix.matrix.some((row) => row[i] > 0));
    const shown = active.length > 40 ? active.slice(0, 40) : active;
    const selected = (current.sel ?? "").startsWith("cell:") ? current.sel.slice(5) : null;
    const rowTotals = matrix.matrix.map((row) => row.reduce((a, b) => a + b, 0));
    const size = shown.length > 20 ? 16 : 30;
    const cells = [h("div.axis", "")];
    for (const p of shown) cells.push(h("div.axis", { title: matrix.classes[p] }, matrix.classes[p].slice(0, 3)));
    for (const t of shown) {
      cells.push(h("div.axis.row", { title: matrix.classes[t] }, matrix.classes[t].slice(0, 10)));
      for (const p of shown) {
        const count = matrix.matrix[t][p];
        const fraction = rowTotals[t] ? count / rowTotals[t] : 0;
        cells.push(
          h(
            "button.cell",
            {
              style: { background: confusionColor(count, rowTotals[t], t === p), color: fraction > 0.6 ? "#06101f" : "#e4e7eb" },
              title: `label ${matrix.classes[t]}, predicted ${matrix.classes[p]}: ${count}`,
              "aria-pressed": String(selected === `${t},${p}`),
              dataset: { label: t, prediction: p, count },
              onclick: () => count && state.set({ sel: `cell:${t},${p}` }),
            },
            count ? (count > 999 ? `${Math.round(count / 1000)}k` : count) : "",
          ),
        );
      }
    }
    fill(
      confusion,
      h("div.panel-head", h("h2", "Confusion matrix"), h("span.hint", "rows: label · columns: predicted · click a cell")),
      h("div.matrix", { style: { gridTemplateColumns: `72px repeat(${shown.length}, ${size}px)` } }, cells),
      active.length > shown.length ? h("div.hint", `${shown.length} of the ${active.length} classes that occur`) : null,
    );
  }

  async function drawReport(current) {
    let classReport;
    try {
      classReport = await api.json(`/api/models/${current.model}/dataset/class_report`, { cached: true });
    } catch (error) {
      fill(report, h("h2", "Class report"), h("div.empty", error.message));
      return;
    }
    const rows = classReport.classes.map((name, i) => ({ name, i, precision: classReport.precision[i], recall: classReport.recall[i], f1: classReport.f1[i], support: classReport.support[i] })).filter((r) => r.support > 0);
    rows.sort((a, b) => (a.f1 ?? -1) - (b.f1 ?? -1));
    const cell = (v) => h("td.bar-cell", h("i", { style: { width: `${(v ?? 0) * 100}%` } }), h("span", v === null || v === undefined ? "—" : v.toFixed(3)));
    fill(
      report,
      h("div.panel-head", h("h2", "Class report"), h("span.hint", "worst F1 first")),
      h(
        "div.scroll",
        h(
          "table.report",
          h("thead", h("tr", h("th", "class"), h("th", "precision"), h("th", "recall"), h("th", "F1"), h("th", "support"))),
          h("tbody", rows.map((r) => h("tr", h("td", r.name), cell(r.precision), cell(r.recall), cell(r.f1), h("td", r.support)))),
        ),
      ),
    );
  }

  async function drawPairs(current) {
    let confused;
    try {
      confused = await api.json(api.path(`/api/models/${current.model}/dataset/confused_pairs`, { n: 8 }), { cached: true });
    } catch (error) {
      fill(pairs, h("h2", "Most confused"), h("div.empty", error.message));
      return;
    }
    fill(
      pairs,
      h("h2", "Most confused pairs"),
      confused.length === 0
        ? h("div.empty", "No confusions.")
        : h(
            "div.pairs",
            confused.map((pair) =>
              h(
                "button",
                { onclick: () => state.set({ sel: `cell:${pair.label},${pair.predicted}` }), title: "show these samples" },
                h("span", h("b", pair.label_name), " taken for ", h("b", pair.predicted_name)),
                h("span.badge", pair.count),
              ),
            ),
          ),
    );
  }

  function drawHistograms() {
    const bins = 20;
    const counts = { correct: new Array(bins).fill(0), wrong: new Array(bins).fill(0) };
    for (let row = 0; row < points.confidence.length; row += 1) {
      const bin = Math.min(bins - 1, Math.floor(points.confidence[row] * bins));
      if (points.correct[row] === 0) counts.wrong[bin] += 1;
      else counts.correct[bin] += 1;
    }
    const chart = h("div.chart");
    const key = info.labeled
      ? h("span.hint", h("span", { style: { color: "#3ecf8e" } }, "■"), " correct ", h("span", { style: { color: "#ff6b6b" } }, "■"), " misclassified")
      : h("span.hint", "of the predictions (the data has no labels)");
    fill(histograms, h("div.panel-head", h("h2", "Confidence"), key), chart);
    requestAnimationFrame(() => {
      const x = Array.from({ length: bins }, (_, i) => (i + 0.5) / bins);
      new globalThis.uPlot(
        {
          width: Math.max(chart.clientWidth, 280),
          height: 160,
          legend: { show: false },
          cursor: { drag: { x: false, y: false } },
          scales: { x: { time: false, range: [0, 1] } },
          axes: [
            { stroke: "#8b95a3", grid: { stroke: "#2a313b" }, font: "10px sans-serif" },
            { stroke: "#8b95a3", grid: { stroke: "#2a313b" }, font: "10px sans-serif", size: 40 },
          ],
          series: [
            {},
            info.labeled
              ? { stroke: "#3ecf8e", fill: "rgba(62,207,142,0.35)", paths: globalThis.uPlot.paths.bars({ size: [0.45, 40], align: -1 }), points: { show: false } }
              : { stroke: "#4f9cf9", fill: "rgba(79,156,249,0.35)", paths: globalThis.uPlot.paths.bars({ size: [0.9, 40] }), points: { show: false } },
            info.labeled ? { stroke: "#ff6b6b", fill: "rgba(255,107,107,0.45)", paths: globalThis.uPlot.paths.bars({ size: [0.45, 40], align: 1 }), points: { show: false } } : null,
          ].filter(Boolean),
        },
        info.labeled ? [x, counts.correct, counts.wrong] : [x, counts.correct],
        chart,
      );
    });
  }

  return {
    async update(current, changed) {
      if (changed.has("model") || !info) {
        await load(current);
        return;
      }
      if (!points) return;
      if (changed.has("layout") || changed.has("color")) drawToolbar(current);
      if (changed.has("layout")) await drawLayout(current);
      else if (changed.has("color")) await paintPoints(current);
      if (changed.has("sel")) {
        await applySelection(current);
        drawConfusion(current);
      }
    },
    unmount() {
      window.removeEventListener("workspace-ready", onReady);
      newData();
      newLayout();
      newSelection();
      scatter?.destroy();
      page.remove();
    },
  };
}
