// The Layer view's panels of what a layer learned over the dataset: class selectivity of its units (Sun et al.
// 2015's per-class histograms, Morcos et al.'s index; ws.selectivity), its visual concepts (Wang et al. 2015;
// ds.units.concepts, a job kept in the workspace) and decoder inversion (Dosovitskiy & Brox 2016; a decoder
// trained as a job, then one forward per image, next to the optimization of ds.units.invert). Each panel is
// drawn by one function from the URL state; none computes anything the server's answers do not hold.

import * as api from "../lib/api.js";
import { categorical } from "../lib/colormaps.js";
import { failure, fill, h, progressBar } from "../lib/dom.js";
import * as state from "../lib/state.js";

const CONCEPT_COUNTS = [4, 6, 8, 12, 16, 24, 32];
const DEFAULT_CONCEPTS = 8;

/** Say a 404/409 (not recorded, no scan, no data) plainly; anything else is a failure. */
function unavailable(error) {
  return error.status === 404 || error.status === 409 ? h("div.empty", error.message) : failure(error);
}

const percent = (value) => (value === null || value === undefined ? "–" : `${(value * 100).toFixed(0)}%`);

// ------------------------------------------------------------------------------------------------------------
// class selectivity

/** The layer's selectivity summary, its units' index as a strip, and the chosen unit's histogram per class. */
export async function drawSelectivity(panel, current, isStale) {
  const title = h("h2", "Class selectivity");
  fill(panel, title, h("div.loading", "Loading…"));
  const base = `/api/models/${current.model}/layers/${encodeURIComponent(current.layer)}/selectivity`;
  let layer;
  try {
    layer = await api.json(base, { cached: true });
  } catch (error) {
    if (!isStale()) fill(panel, title, unavailable(error));
    return;
  }
  if (isStale()) return;
  const { summary } = layer;
  const unit = current.unit !== undefined ? Number(current.unit) : (layer.most_selective[0] ?? 0);
  const strip = h("canvas.grid-canvas", { "aria-label": "selectivity index per unit" });
  const histogram = h("div.class-histograms", { "aria-label": "histograms per class" }, h("div.loading", "Loading…"));
  fill(
    panel,
    h("div.panel-head", title, h("span.hint", "index 0: every class alike · 1: one class only")),
    h(
      "div.stats",
      h("div.stat", { dataset: { oneClass: summary.one_class } }, h("b", String(summary.one_class)), h("span", "one class only")),
      h("div.stat", { dataset: { allClasses: summary.all_classes } }, h("b", String(summary.all_classes)), h("span", "every class")),
      h("div.stat", h("b", summary.mean_index === null ? "–" : summary.mean_index.toFixed(2)), h("span", "mean index")),
      h("div.stat", h("b", `${summary.defined} / ${summary.units}`), h("span", "units with an index")),
    ),
    summary.defined < summary.units
      ? h("div.hint", { style: { margin: "6px 0" } }, `${summary.units - summary.defined} units have no index: a negative class mean (a layer before its ReLU) or no response at all. Their histograms still show how they respond.`)
      : null,
    h("div.hint", { style: { margin: "8px 0 2px" } }, "Index per unit (click one): orange responds to one class only"),
    strip,
    histogram,
  );
  requestAnimationFrame(() => {
    const layout = drawIndexStrip(strip, layer, unit, Math.max(panel.clientWidth - 34, 280));
    strip.addEventListener("click", (event) => {
      const box = strip.getBoundingClientRect();
      const chosen = Math.floor(((event.clientX - box.left) / box.width) * layout.count);
      if (chosen >= 0 && chosen < layout.count) state.set({ unit: String(chosen) });
    });
  });
  let counts;
  try {
    counts = await api.array(`${base}/${unit}`, { cached: true });
  } catch (error) {
    if (!isStale()) fill(histogram, unavailable(error));
    return;
  }
  if (!isStale()) drawClassHistograms(histogram, counts, unit);
}

function drawIndexStrip(canvas, layer, chosen, width) {
  const count = layer.index.length;
  const barWidth = Math.max(1, Math.min(10, Math.floor(width / count)));
  canvas.width = count * barWidth;
  canvas.height = 60;
  canvas.style.width = `${count * barWidth}px`;
  const context = canvas.getContext("2d");
  const oneClass = new Set(layer.one_class);
  layer.index.forEach((index, unit) => {
    const height = index === null ? 60 : Math.max(1, index * 58);
    context.fillStyle = index === null ? "#2a313b" : oneClass.has(unit) ? "#f5a623" : "#4f9cf9";
    context.fillRect(unit * barWidth, 60 - height, Math.max(barWidth - (barWidth > 2 ? 1 : 0), 1), height);
  });
  if (chosen >= 0 && chosen < count) {
    context.strokeStyle = "#ffffff";
    context.lineWidth = 1;
    context.strokeRect(chosen * barWidth + 0.5, 0.5, Math.max(barWidth - 1, 1), 59);
  }
  return { count };
}

/** One small histogram per class of the unit's activation (each class's share of its samples per bin). */
function drawClassHistograms(element, counts, unit) {
  const [classes, bins] = counts.shape;
  const { edges, index, preferred, class_means: means } = counts.header;
  const names = counts.header.classes;
  const colors = categorical(classes);
  const rows = [];
  for (let c = 0; c < classes; c += 1) {
    const row = counts.data.subarray(c * bins, (c + 1) * bins);
    const total = row.reduce((a, b) => a + b, 0) || 1;
    const canvas = h("canvas", { width: bins * 6, height: 22, style: { width: `${bins * 6}px`, height: "22px" } });
    const context = canvas.getContext("2d");
    context.fillStyle = colors[c];
    row.forEach((value, bin) => {
      // a square-root scale keeps the tails visible next to a ReLU unit's peak of zeros
      const height = Math.sqrt(value / total) * 21;
      context.fillRect(bin * 6, 22 - height, 5, height);
    });
    rows.push(
      h(
        "div.class-row",
        { dataset: { class: c }, "aria-current": c === preferred ? "true" : null },
        h("span.mono", names[c]),
        canvas,
        h("span.mono.hint", means[c] === null ? "–" : means[c].toPrecision(3)),
      ),
    );
  }
  fill(
    element,
    h(
      "div.hint",
      { style: { margin: "10px 0 4px" } },
      h("b", { style: { color: "var(--text)" } }, `unit ${unit}`),
      ` · index ${index === null ? "undefined" : index.toFixed(2)} · prefers ${names[preferred]} · activation ${edges[0].toPrecision(2)} … ${edges[edges.length - 1].toPrecision(2)} (class · histogram · mean)`,
    ),
    h("div.class-rows", { dataset: { unit, classes } }, rows),
  );
}

// ------------------------------------------------------------------------------------------------------------
// visual concepts

/** The layer's visual concepts for the URL's `concepts` count: kept ones at once, else a button starting the job. */
export async function drawConcepts(panel, current, isStale) {
  const k = Number(current.concepts ?? DEFAULT_CONCEPTS);
  const title = h("h2", "Visual concepts");
  const picker = h(
    "label.hint",
    "k",
    h(
      "select",
      { "aria-label": "number of concepts", onchange: (event) => state.set({ concepts: event.target.value }) },
      [...new Set([...CONCEPT_COUNTS, k])].sort((a, b) => a - b).map((n) => h("option", { value: n, selected: n === k }, n)),
    ),
  );
  const head = h("div.panel-head", title, picker);
  const route = `/api/models/${current.model}/layers/${encodeURIComponent(current.layer)}/concepts`;
  fill(panel, head, h("div.loading", "Loading…"));
  let found;
  try {
    found = await api.json(api.path(route, { k }));
  } catch (error) {
    if (isStale()) return;
    if (error.status !== 404 || error.kind !== "NotComputedError") {
      fill(panel, head, unavailable(error));
      return;
    }
    const start = h("button.primary", { onclick: () => run() }, "Find concepts");
    fill(
      panel,
      head,
      h("div.hint", { style: { marginBottom: "8px" } }, `k-means over the layer's feature vectors (one per position, unit length) across the dataset; each concept is shown by its nearest patches. Kept in the workspace.`),
      start,
    );
    const run = async () => {
      const bar = progressBar("clustering");
      fill(panel, head, bar.element);
      try {
        found = await api.job(route, { k }, bar.update);
      } catch (failed) {
        if (!isStale()) fill(panel, head, failure(failed));
        return;
      }
      if (!isStale()) showConcepts(panel, head, found, current);
    };
    return;
  }
  if (!isStale()) showConcepts(panel, head, found, current);
}

function showConcepts(panel, head, found, current) {
  const rows = found.concepts
    .slice()
    .sort((a, b) => b.size - a.size)
    .map((concept) =>
      h(
        "div.concept",
        { dataset: { index: concept.index } },
        h(
          "div.concept-caption",
          h("b", `#${concept.index}`),
          h("span", `${percent(concept.share)} of vectors`),
          concept.majority_label !== null ? h("span", `${percent(concept.purity)} class ${concept.majority_label}`) : null,
        ),
        h(
          "div.concept-patches",
          concept.patches.map((patch) =>
            h(
              "button.concept-patch",
              {
                title: `sample ${patch.sample}: open it in the Image view`,
                onclick: () => state.set({ view: "image", image: `sample:${current.model}:${patch.sample}`, target: null }),
              },
              h("img", { src: api.url(patch.url), alt: `sample ${patch.sample}` }),
            ),
          ),
        ),
      ),
    );
  fill(
    panel,
    head,
    h(
      "div.stats",
      { style: { marginBottom: "8px" } },
      h("div.stat", h("b", String(found.k)), h("span", "concepts")),
      h("div.stat", h("b", found.vectors.toLocaleString()), h("span", "feature vectors")),
      h("div.stat", h("b", percent(found.purity)), h("span", "purity vs labels")),
    ),
    h("div.concepts", { dataset: { count: found.concepts.length } }, rows),
  );
}

// ------------------------------------------------------------------------------------------------------------
// decoder inversion

/** The decoder of this layer: train it (a job), then the current image reconstructed in one forward, and on
 * request the optimization-based inversion next to it. */
export async function drawInversion(panel, current, isStale) {
  const title = h("h2", "Inversion · what the layer keeps of the image");
  const base = `/api/models/${current.model}/layers/${encodeURIComponent(current.layer)}`;
  fill(panel, title, h("div.loading", "Loading…"));
  let decoder;
  try {
    decoder = await api.json(`${base}/inverter`);
  } catch (error) {
    if (!isStale()) fill(panel, title, unavailable(error));
    return;
  }
  if (isStale()) return;
  const train = async (epochs) => {
    const bar = progressBar("training the decoder");
    fill(panel, title, bar.element);
    try {
      await (decoder.job ? api.follow(decoder.job, bar.update) : api.job(`${base}/inverter`, { epochs }, bar.update));
    } catch (error) {
      if (!isStale()) fill(panel, title, failure(error));
      return;
    }
    if (!isStale()) drawInversion(panel, current, isStale);
  };
  if (decoder.job) {
    train();
    return;
  }
  const epochs = h("select", { "aria-label": "decoder epochs" }, [2, 5, 10, 20].map((n) => h("option", { value: n, selected: n === 5 }, `${n} epochs`)));
  const trainButton = h("button", { onclick: () => train(Number(epochs.value)) }, decoder.trained ? "Train again" : "Train a decoder");
  const controls = h("div.toolbar", { style: { marginBottom: "10px" } }, trainButton, epochs);
  if (!decoder.trained) {
    fill(
      panel,
      title,
      h("div.hint", { style: { marginBottom: "8px" } }, "An up-convolutional decoder learns to map this layer's features back to the images of the dataset; it then inverts any image in one forward pass, where the optimization takes hundreds of steps."),
      controls,
    );
    return;
  }
  const seconds = decoder.settings.seconds;
  const trained = h("span.hint", `trained on ${decoder.settings.samples} samples, ${decoder.losses.length} epochs${seconds ? ` in ${seconds.toFixed(1)} s` : ""}, last loss ${decoder.losses.at(-1)?.toPrecision(3)}`);
  controls.append(trained);
  if (!current.image) {
    fill(panel, title, controls, h("div.empty", "Pick an image in the Image view to invert it."));
    return;
  }
  const figures = h("div.inversions", h("div.loading", "Decoding…"));
  const compare = h("button.primary", { onclick: () => optimize() }, "Compare with optimization");
  const steps = h("select", { "aria-label": "optimization steps" }, [50, 200, 500].map((n) => h("option", { value: n, selected: n === 200 }, `${n} steps`)));
  fill(panel, title, controls, figures, h("div.toolbar", { style: { marginTop: "10px" } }, compare, steps));
  let decoded;
  try {
    decoded = await api.json(api.path(`${base}/inversion`, { image: current.image }));
  } catch (error) {
    if (!isStale()) fill(figures, failure(error));
    return;
  }
  if (isStale()) return;
  const figure = (url, caption, kind) => h("figure.inversion", { dataset: { kind } }, h("img", { src: api.url(url), alt: caption }), h("figcaption.hint", caption));
  const decoderFigure = figure(decoded.decoded_url, `decoder · error ${decoded.decoder_error.toFixed(3)} · ${(decoded.decoder_seconds * 1000).toFixed(1)} ms`, "decoded");
  fill(figures, figure(decoded.original_url, "the model's input", "original"), decoderFigure);
  const optimize = async () => {
    const bar = progressBar("optimizing");
    compare.disabled = true;
    figures.append(bar.element);
    let result;
    try {
      result = await api.job(`${base}/inversion`, { image: current.image, steps: Number(steps.value) }, bar.update);
    } catch (error) {
      bar.element.replaceWith(failure(error));
      compare.disabled = false;
      return;
    }
    if (isStale()) return;
    bar.element.remove();
    compare.disabled = false;
    figures.querySelector("[data-kind='optimized']")?.remove();
    figures.append(
      figure(
        result.optimized_url,
        `optimization, ${result.steps} steps · error ${result.optimization_error.toFixed(3)} · ${(result.optimization_seconds * 1000).toFixed(0)} ms`,
        "optimized",
      ),
    );
  };
}
