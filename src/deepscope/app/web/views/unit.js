// Unit page: what one unit (a channel of a layer) responds to: its map for the current image, its top-9 dataset
// patches with their deconvnet projections, its feature visualization (on demand, with progress, kept in the
// workspace), and the name and notes a person gave it.

import * as api from "../lib/api.js";
import { gradient, normalize, paintGray, paintOverlay } from "../lib/colormaps.js";
import { failure, fill, h, latest, progressBar } from "../lib/dom.js";
import { photoPixels } from "../lib/photos.js";
import { drawMap, scaleOf } from "../lib/tiles.js";
import * as state from "../lib/state.js";

export function mount(root, context) {
  const header = h("div.panel");
  const map = h("section.panel", { "aria-label": "unit map" });
  const top = h("section.panel", { "aria-label": "top patches" });
  const visualization = h("section.panel", { "aria-label": "feature visualization" });
  const notes = h("section.panel", { "aria-label": "name and notes" });
  const page = h(
    "div.page",
    header,
    h("div.split", { style: { gridTemplateColumns: "300px minmax(0, 1fr) 300px" } }, h("div.page", { style: { padding: 0 } }, map, visualization), top, notes),
  );
  root.append(page);
  const newUnit = latest();
  const onKey = (event) => stepUnit(event, state.get());
  window.addEventListener("keydown", onKey);

  async function draw(current) {
    const isStale = newUnit();
    const unit = Number(current.unit ?? 0);
    const model = context.model(current.model);
    const units = await api
      .json(`/api/models/${model.id}/layers`, { cached: true })
      .then((layers) => layers.find((l) => l.name === current.layer)?.units ?? null)
      .catch(() => null);
    fill(
      header,
      h(
        "div.title-row",
        h("a", { href: state.href({ view: "layer" }) }, "← layer"),
        h("button", { disabled: unit <= 0, onclick: () => state.set({ unit: String(unit - 1) }), "aria-label": "previous unit" }, "◀"),
        h("h1", `${current.layer} : ${unit}`),
        h("button", { disabled: units !== null && unit >= units - 1, onclick: () => state.set({ unit: String(unit + 1) }), "aria-label": "next unit" }, "▶"),
        units ? h("span.badge", `unit ${unit + 1} of ${units}`) : null,
      ),
    );
    for (const panel of [map, top, visualization, notes]) fill(panel, h("div.loading", "Loading…"));
    let payload;
    try {
      payload = await api.json(
        api.path(`/api/models/${model.id}/units/${encodeURIComponent(current.layer)}/${unit}`, { image: current.image }),
      );
    } catch (error) {
      if (!isStale()) for (const panel of [map, top, visualization, notes]) fill(panel, failure(error));
      return;
    }
    if (isStale()) return;
    if (payload.name) header.querySelector("h1").append(h("span.badge", { style: { marginLeft: "10px" } }, payload.name));
    drawUnitMap(payload, current);
    drawTop(payload, model);
    drawVisualization(payload, model, current, unit, isStale);
    drawNotes(payload, model, current, unit);
  }

  async function drawUnitMap(payload, current) {
    if (!payload.map_url) {
      fill(map, h("h2", "For this image"), h("div.empty", "Pick an image in the Image view to see this unit's map."));
      return;
    }
    try {
      const array = await api.array(payload.map_url);
      const [height, width] = array.shape.length === 2 ? array.shape : [1, 1];
      const canvas = h("canvas", { "aria-label": "unit map" });
      const scale = scaleOf(array.data);
      drawMap(canvas, array.data, height, width, scale);
      const figure = h("div.unit-zoom", canvas);
      if (payload.crop && width > 1) {
        // the map over the part of the image the model saw, as the heat maps are drawn
        // (the map's colors weighted by its magnitude over a gray copy of the image, as the heat maps)
        const photo = h("canvas");
        paintGray(photo, await photoPixels(current.image, payload.crop, 224, 224));
        const overlay = h("canvas", { style: { imageRendering: "auto" } });
        paintOverlay(overlay, width, height, normalize(array.data, scale.signed), scale.colormap);
        fill(figure, h("div.map-stack", { style: { width: "224px" } }, photo, overlay), canvas);
        canvas.style.width = "120px";
        canvas.style.height = "120px";
      }
      fill(
        map,
        h("h2", "For this image"),
        figure,
        h("div.legend-bar", { style: { background: gradient(scale.colormap), width: "224px" } }),
        h("div.legend-ends", { style: { width: "224px" } }, h("span", scale.low.toPrecision(2)), h("span", scale.high.toPrecision(2))),
        h("div.hint", `${height}×${width}, peak ${Math.max(...array.data).toPrecision(3)}`),
      );
    } catch (error) {
      fill(map, h("h2", "For this image"), failure(error));
    }
  }

  function drawTop(payload, model) {
    if (payload.top_state !== "ready") {
      fill(top, h("h2", "Top dataset patches"), h("div.empty", payload.top_message || "No dataset scan for this model."));
      return;
    }
    fill(
      top,
      h("h2", `Top ${payload.top.length} dataset patches · crop and deconvnet projection`),
      h(
        "div.tiles",
        { style: { gridTemplateColumns: "repeat(3, minmax(0, 1fr))" } },
        payload.top.map((patch, rank) =>
          h(
            "button.tile",
            {
              style: { background: "none", border: 0, padding: 0, cursor: "pointer" },
              title: "open this sample in the Image view",
              dataset: { sample: patch.sample },
              onclick: () => state.set({ view: "image", image: `sample:${model.id}:${patch.sample}`, target: null }),
            },
            h("div.pair", h("img", { src: api.url(patch.crop_url), alt: `patch ${rank + 1}` }), h("img", { src: api.url(patch.projection_url), alt: `projection ${rank + 1}` })),
            h("span", `#${rank + 1} · sample ${patch.sample} · ${patch.value.toPrecision(3)}`),
          ),
        ),
      ),
    );
  }

  async function drawVisualization(payload, model, current, unit, isStale) {
    const title = h("h2", "Feature visualization");
    const route = `/api/models/${model.id}/units/${encodeURIComponent(current.layer)}/${unit}/visualization`;
    const show = (result) =>
      fill(
        visualization,
        title,
        h("div.featurevis", h("img", { src: api.url(result.url), alt: "feature visualization" })),
        result.value !== undefined ? h("div.hint", `objective ${Number(result.value).toPrecision(3)}`) : null,
      );
    const run = async (start) => {
      const bar = progressBar("optimizing");
      fill(visualization, title, bar.element);
      try {
        const result = start ? await api.job(route, {}, bar.update) : await api.follow(payload.visualization.job, bar.update);
        if (!isStale()) show(result);
      } catch (error) {
        if (!isStale()) fill(visualization, title, failure(error), h("button", { onclick: () => run(true) }, "Try again"));
      }
    };
    const visual = payload.visualization ?? { state: "none" };
    if (visual.state === "done" && visual.url) show(visual);
    else if ((visual.state === "running" || visual.state === "queued") && visual.job) run(false);
    else
      fill(
        visualization,
        title,
        h("div.hint", { style: { marginBottom: "8px" } }, "The image that excites this unit most (activation maximization with a Fourier parameterization and transforms); takes a few seconds, then it is kept."),
        h("button.primary", { onclick: () => run(true) }, "Visualize"),
      );
  }

  function drawNotes(payload, model, current, unit) {
    const name = h("input", { value: payload.name ?? "", placeholder: "a name: “dog snouts”", "aria-label": "unit name" });
    const text = h("textarea", { placeholder: "what this unit seems to detect, and where it fails", "aria-label": "unit notes" }, payload.notes ?? "");
    const saved = h("span.hint");
    const save = async (event) => {
      event.preventDefault();
      saved.textContent = "saving…";
      try {
        await api.send(
          `/api/models/${model.id}/units/${encodeURIComponent(current.layer)}/${unit}/note`,
          { name: name.value, notes: text.value },
          "PUT",
        );
        saved.textContent = "saved in the workspace";
      } catch (error) {
        saved.replaceWith(failure(error));
      }
    };
    fill(notes, h("h2", "Name and notes"), h("form.note-form", { onsubmit: save }, name, text, h("div.toolbar", h("button.primary", { type: "submit" }, "Save"), saved)));
  }

  return {
    async update(current, changed) {
      if (["model", "layer", "unit", "image"].some((key) => changed.has(key))) await draw(current);
    },
    unmount() {
      newUnit();
      window.removeEventListener("keydown", onKey);
      page.remove();
    },
  };
}

/** ← and → step through the units (outside text fields). */
export function stepUnit(event, current) {
  if (event.target.closest?.("input, textarea, select") || event.altKey || event.ctrlKey || event.metaKey) return;
  const delta = { ArrowLeft: -1, ArrowRight: 1 }[event.key];
  if (!delta || current.unit === undefined) return;
  const next = Number(current.unit) + delta;
  if (next < 0) return;
  event.preventDefault();
  state.set({ unit: String(next) });
}
