// Compare view: two models scanned on the same data: the layer-by-layer CKA similarity matrix and both
// confusion matrices side by side (ds.atlas.compare).

import * as api from "../lib/api.js";
import { COLORMAPS, confusionColor, gradient } from "../lib/colormaps.js";
import { failure, fill, h, latest } from "../lib/dom.js";
import * as state from "../lib/state.js";

export function mount(root, context) {
  const header = h("div.panel");
  const cka = h("section.panel", { "aria-label": "CKA" });
  const left = h("section.panel", { "aria-label": "confusion A" });
  const right = h("section.panel", { "aria-label": "confusion B" });
  const page = h("div.page", header, cka, h("div.split", { style: { gridTemplateColumns: "1fr 1fr" } }, left, right));
  root.append(page);
  const newComparison = latest();

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
    for (const panel of [cka, left, right]) fill(panel, h("div.loading", "Comparing…"));
    let comparison;
    try {
      comparison = await api.json(api.path("/api/compare", { a: current.model, b }), { cached: true });
    } catch (error) {
      if (!isStale()) {
        fill(cka, failure(error));
        fill(left);
        fill(right);
      }
      return;
    }
    if (isStale()) return;
    drawCka(comparison);
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
    },
    unmount() {
      newComparison();
      page.remove();
    },
  };
}
