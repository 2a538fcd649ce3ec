// Compare view: two models scanned on the same data, layer by layer (Yu et al. 2016; ds.atlas.compare): the CKA
// similarity matrix, each layer's sparsity as bars, each layer's 2-D layout of the samples side by side (a job,
// kind in the URL's `layout`), and both confusion matrices.

import * as api from "../lib/api.js";
import { COLORMAPS, categorical, confusionColor, gradient } from "../lib/colormaps.js";
import { failure, fill, h, latest, progressBar } from "../lib/dom.js";
import * as state from "../lib/state.js";

export function mount(root, context) {
  const header = h("div.panel");
  const cka = h("section.panel", { "aria-label": "CKA" });
  const left = h("section.panel", { "aria-label": "confusion A" });
  const right = h("section.panel", { "aria-label": "confusion B" });
  const sparsity = h("section.panel", { "aria-label": "sparsity" });
  const layouts = h("section.panel", { "aria-label": "layouts" });
  const page = h(
    "div.page",
    header,
    cka,
    sparsity,
    layouts,
    h("div.split", { style: { gridTemplateColumns: "1fr 1fr" } }, left, right),
  );
  root.append(page);
  const newComparison = latest();
  const newLayouts = latest();

  async function draw(current) {
    const isStale = newComparison();
    const others = context.models.filter((m) => m.id !== current.model);
    const b = current.b ?? others[0]?.id;
    fill(
      header,
      h(
        "div.toolbar",
        h("b", context.model(current.model).name ?? current.model),
        h("span.hint", "compared with"),
        h(
          "select",
          { "aria-label": "second model", onchange: (event) => state.set({ b: event.target.value }) },
          others.map((m) => h("option", { value: m.id, selected: m.id === b }, m.name ?? m.id)),
        ),
      ),
    );
    if (!b) {
      fill(cka, h("div.empty", "Start the server with two models scanned on the same data to compare them."));
      return;
    }
    for (const panel of [cka, sparsity, left, right]) fill(panel, h("div.loading", "Comparing…"));
    fill(layouts);
    let comparison;
    try {
      comparison = await api.json(api.path("/api/compare", { a: current.model, b }), { cached: true });
    } catch (error) {
      if (!isStale()) {
        fill(cka, failure(error));
        for (const panel of [sparsity, left, right]) fill(panel);
      }
      return;
    }
    if (isStale()) return;
    drawCka(comparison);
    drawSparsity(comparison);
    drawLayouts(comparison, current);
    drawConfusion(left, comparison.a, comparison.classes, comparison.confusion_a, comparison.accuracy_a);
    drawConfusion(right, comparison.b, comparison.classes, comparison.confusion_b, comparison.accuracy_b);
  }

  function drawCka(comparison) {
    const { layers_a: rows, layers_b: columns, matrix } = comparison.cka;
    const cell = Math.max(10, Math.min(56, Math.floor(640 / Math.max(rows.length, columns.length))));
    const canvas = h("canvas", { "aria-label": "CKA matrix", width: columns.length * cell, height: rows.length * cell });
    const context = canvas.getContext("2d");
    const lut = COLORMAPS.inferno;
    rows.forEach((_, i) =>
      columns.forEach((__, j) => {
        const at = Math.round(Math.max(0, Math.min(1, matrix[i][j] ?? 0)) * 255) * 3;
        context.fillStyle = `rgb(${lut[at]},${lut[at + 1]},${lut[at + 2]})`;
        context.fillRect(j * cell, i * cell, cell - 1, cell - 1);
        if (cell >= 36 && matrix[i][j] !== null) {
          context.fillStyle = matrix[i][j] > 0.6 ? "#101317" : "#e4e7eb";
          context.font = "11px ui-monospace, monospace";
          context.textAlign = "center";
          context.fillText(matrix[i][j].toFixed(2), j * cell + cell / 2, i * cell + cell / 2 + 4);
        }
      }),
    );
    const readout = h("div.hint", "hover a cell");
    canvas.addEventListener("mousemove", (event) => {
      const box = canvas.getBoundingClientRect();
      const j = Math.floor((event.clientX - box.left) / cell);
      const i = Math.floor((event.clientY - box.top) / cell);
      if (rows[i] !== undefined && columns[j] !== undefined) readout.textContent = `${rows[i]} ↔ ${columns[j]}: CKA ${matrix[i][j]?.toFixed(3)}`;
    });
    fill(
      cka,
      h("div.panel-head", h("h2", "Layer similarity (linear CKA)"), h("span.hint", `rows: ${comparison.a} · columns: ${comparison.b}`), comparison.agreement !== undefined ? h("span.badge", `predictions agree on ${(comparison.agreement * 100).toFixed(1)}%`) : null),
      h(
        "div",
        { style: { display: "grid", gridTemplateColumns: "auto auto 1fr", gap: "8px", alignItems: "start" } },
        h("div.mono", { style: { display: "grid", gridAutoRows: `${cell}px`, fontSize: "10px", color: "var(--muted)", textAlign: "right" } }, rows.map((name) => h("div", { style: { lineHeight: `${cell}px`, whiteSpace: "nowrap" } }, name))),
        h("div", canvas, h("div.mono", { style: { display: "flex", fontSize: "10px", color: "var(--muted)" } }, columns.map((name) => h("div", { style: { width: `${cell}px`, writingMode: "vertical-rl", height: "90px", overflow: "hidden" } }, name)))),
        h("div", readout, h("div.legend-bar", { style: { background: gradient("inferno") } }), h("div.legend-ends", h("span", "0"), h("span", "1"))),
      ),
    );
  }

  function drawSparsity(comparison) {
    const side = (name, layers, values) =>
      h(
        "div.sparsity-side",
        h("h3", name),
        layers.map((layer, i) =>
          h(
            "div.sparsity-row",
            { dataset: { layer, sparsity: values[i] } },
            h("span.mono", layer),
            h("div.sparsity-bar", h("i", { style: { width: `${(values[i] ?? 0) * 100}%` } })),
            h("span.mono", values[i] === null ? "–" : `${(values[i] * 100).toFixed(1)}%`),
          ),
        ),
      );
    fill(
      sparsity,
      h("div.panel-head", h("h2", "Sparsity per layer"), h("span.hint", "the share of each layer's output values that are not positive, over the dataset")),
      h(
        "div.split",
        { style: { gridTemplateColumns: "1fr 1fr" } },
        side(comparison.a, comparison.cka.layers_a, comparison.sparsity_a),
        side(comparison.b, comparison.cka.layers_b, comparison.sparsity_b),
      ),
    );
  }

  async function drawLayouts(comparison, current) {
    const isStale = newLayouts();
    const kind = ["pca", "tsne", "umap"].includes(current.layout) ? current.layout : "pca";
    const head = h(
      "div.panel-head",
      h("h2", "Each layer's layout of the samples"),
      h(
        "div.seg",
        ["pca", "tsne", "umap"].map((name) =>
          h("button", { "aria-pressed": String(name === kind), dataset: { layout: name }, onclick: () => state.set({ layout: name }) }, name === "tsne" ? "t-SNE" : name.toUpperCase()),
        ),
      ),
      h("span.hint", "colored by label"),
    );
    const bar = progressBar(`${kind} layouts`);
    fill(layouts, head, bar.element);
    let result;
    let points;
    try {
      [result, ...points] = await Promise.all([
        api.job("/api/compare/layouts", { a: comparison.a, b: comparison.b, kind }, bar.update),
        api.array(`/api/models/${comparison.a}/dataset/points`, { cached: true }),
        api.array(`/api/models/${comparison.b}/dataset/points`, { cached: true }),
      ]);
    } catch (error) {
      if (!isStale()) fill(layouts, head, failure(error));
      return;
    }
    if (isStale()) return;
    const colors = categorical(comparison.classes.length);
    const row = (model, entries, table) =>
      h(
        "div.layout-row",
        h("div.mono.hint", model),
        entries.map((entry) => {
          const canvas = h("canvas", { width: 150, height: 150, "aria-label": `${model} ${entry.layer}` });
          api.array(entry.url, { cached: true }).then((layout) => {
            if (!isStale()) paintLayout(canvas, layout, table, colors);
          });
          return h("figure.layout-cell", { dataset: { layer: entry.layer, model } }, canvas, h("figcaption.mono", entry.layer));
        }),
      );
    fill(
      layouts,
      head,
      h("div.layout-rows", { dataset: { kind } }, row(comparison.a, result.a, points[0]), row(comparison.b, result.b, points[1])),
      h("div.legend", comparison.classes.slice(0, 20).map((name, i) => h("span", h("i", { style: { background: colors[i] } }), name))),
    );
  }

  function drawConfusion(panel, name, classes, matrix, accuracy) {
    const shown = classes.map((_, i) => i).filter((i) => matrix[i].some((v) => v > 0)).slice(0, 30);
    const cells = [h("div.axis", "")];
    for (const p of shown) cells.push(h("div.axis", classes[p].slice(0, 3)));
    for (const t of shown) {
      const total = matrix[t].reduce((a, b) => a + b, 0);
      cells.push(h("div.axis.row", classes[t].slice(0, 10)));
      for (const p of shown) {
        const count = matrix[t][p];
        cells.push(h("div.cell", { style: { background: confusionColor(count, total, t === p), color: count / total > 0.6 ? "#06101f" : "#e4e7eb", cursor: "default" }, title: `${classes[t]} → ${classes[p]}: ${count}` }, count || ""));
      }
    }
    fill(
      panel,
      h("div.panel-head", h("h2", `Confusion · ${name}`), accuracy !== null && accuracy !== undefined ? h("span.badge", `${(accuracy * 100).toFixed(1)}% accuracy`) : null),
      h("div.matrix", { style: { gridTemplateColumns: `72px repeat(${shown.length}, ${shown.length > 20 ? 16 : 28}px)` } }, cells),
    );
  }

  return {
    async update(current, changed) {
      if (changed.has("model") || changed.has("b")) await draw(current);
      else if (changed.has("layout")) {
        const others = context.models.filter((m) => m.id !== current.model);
        const b = current.b ?? others[0]?.id;
        if (b) drawLayouts(await api.json(api.path("/api/compare", { a: current.model, b }), { cached: true }), current);
      }
    },
    unmount() {
      newComparison();
      newLayouts();
      page.remove();
    },
  };
}

/** A layout [N, 2] as dots colored by each sample's label (column 1 of the points table). */
function paintLayout(canvas, layout, points, colors) {
  const [count] = layout.shape;
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (let i = 0; i < count; i += 1) {
    x0 = Math.min(x0, layout.data[2 * i]);
    x1 = Math.max(x1, layout.data[2 * i]);
    y0 = Math.min(y0, layout.data[2 * i + 1]);
    y1 = Math.max(y1, layout.data[2 * i + 1]);
  }
  const span = Math.max(x1 - x0, y1 - y0) || 1;
  const context = canvas.getContext("2d");
  context.fillStyle = "#0b0e12";
  context.fillRect(0, 0, canvas.width, canvas.height);
  const size = canvas.width - 12;
  for (let i = 0; i < count; i += 1) {
    const label = points.data[i * points.shape[1] + 1];
    context.fillStyle = label >= 0 ? colors[label % colors.length] : "#8b95a3";
    const x = 6 + ((layout.data[2 * i] - x0 + (span - (x1 - x0)) / 2) / span) * size;
    const y = 6 + ((y1 - layout.data[2 * i + 1] + (span - (y1 - y0)) / 2) / span) * size;
    context.fillRect(x - 1, y - 1, 2, 2);
  }
  canvas.dataset.points = String(count);
}
