// The workbench shell: the bar (model, views, scan progress, current image) and the view the URL names.
// Each view is one module under views/ with mount(root, context) -> {update(state, changed), unmount()}; the
// views never call each other, they only read and write the URL state (lib/state.js).

import * as api from "./lib/api.js";
import { compact, failure, fill, h } from "./lib/dom.js";
import * as state from "./lib/state.js";

const VIEWS = {
  architecture: { title: "Architecture", load: () => import("./views/architecture.js") },
  layer: { title: "Layer", load: () => import("./views/layer.js") },
  unit: { title: "Unit", load: () => import("./views/unit.js") },
  image: { title: "Image", load: () => import("./views/image.js") },
  dataset: { title: "Dataset", load: () => import("./views/dataset.js") },
  compare: { title: "Compare", load: () => import("./views/compare.js") },
};
const DEFAULT_VIEW = "image";

const root = document.getElementById("view");
const context = { models: [], status: null, images: new Map() };
let mounted = null;
let mountedName = null;

/** The model entry of the current state (the first model when the URL names none or an unknown one). */
context.model = (id = state.get().model) => context.models.find((m) => m.id === id) ?? context.models[0];

/** The images of a model (bundled, uploads, dataset samples it lists), fetched once per model and refreshed
 * after an upload. */
context.imagesOf = async (model, { refresh = false } = {}) => {
  if (refresh || !context.images.has(model)) {
    context.images.set(model, api.json(api.path("/api/images", { model })));
  }
  return context.images.get(model);
};

/** The image a model starts on: a sample of its own data when it has some (a digit for a digit model), else the
 * first bundled photo. */
async function firstImage(model) {
  const images = await context.imagesOf(model).catch(() => []);
  return (images.find((image) => image.source === "dataset") ?? images[0])?.id ?? null;
}

async function boot() {
  try {
    [context.status, context.models] = await Promise.all([api.json("/api/status"), api.json("/api/models")]);
  } catch (error) {
    fill(root, failure(error));
    return;
  }
  if (context.models.length === 0) {
    fill(root, failure(new Error("The server has no model loaded: start it with `deepscope serve MODEL`.")));
    return;
  }
  const current = state.get();
  const model = context.model(current.model);
  state.set(
    {
      model: model.id,
      view: VIEWS[current.view] ? current.view : DEFAULT_VIEW,
      image: current.image ?? (await firstImage(model.id)),
    },
    { replace: true },
  );
  drawBar();
  state.subscribe(onChange);
  await show(state.get(), new Set(Object.keys(state.get())));
  watchScans();
}

function onChange(current, changed) {
  if (changed.has("model") || changed.has("view") || changed.has("image")) drawBar();
  show(current, changed);
}

async function show(current, changed) {
  const name = current.view;
  if (name !== mountedName || changed.has("model")) {
    mounted?.unmount();
    mounted = null;
    mountedName = name;
    root.replaceChildren(h("div.loading", "Loading…"));
    const module = await VIEWS[name].load();
    if (mountedName !== name) return; // the user moved on while the module loaded
    root.replaceChildren();
    root.dataset.view = name;
    mounted = module.mount(root, context);
    await mounted.update(state.get(), new Set(Object.keys(state.get())));
    return;
  }
  await mounted?.update(current, changed);
}

function drawBar() {
  const current = state.get();
  const select = document.getElementById("model");
  fill(
    select,
    context.models.map((m) => h("option", { value: m.id, selected: m.id === current.model }, m.name ?? m.id)),
  );
  select.onchange = async () => {
    // a model switched in the bar starts on its own first image
    const image = await firstImage(select.value);
    state.set({
      model: select.value,
      image,
      layer: null,
      unit: null,
      sel: null,
      target: null,
      open: null,
      depth: null,
      b: null,
    });
  };
  const tabs = document.getElementById("tabs");
  fill(
    tabs,
    Object.entries(VIEWS)
      .filter(([name]) => name !== "unit" || current.view === "unit")
      .filter(([name]) => name !== "compare" || context.models.length > 1)
      .map(([name, view]) =>
        h(
          "a.tab",
          {
            href: state.href({ view: name }),
            "aria-current": current.view === name ? "page" : null,
            dataset: { view: name },
            onclick: (event) => {
              if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
              event.preventDefault();
              state.set({ view: name });
            },
          },
          view.title,
        ),
      ),
  );
  drawImageChip(current);
}

async function drawImageChip(current) {
  const chip = document.getElementById("current-image");
  chip.onclick = () => state.set({ view: "image" });
  if (!current.image) {
    fill(chip, "no image");
    return;
  }
  const images = await context.imagesOf(current.model).catch(() => []);
  const entry = images.find((image) => image.id === current.image);
  const name = entry?.name ?? (current.image.startsWith("sample:") ? `sample ${current.image.split(":").pop()}` : "upload");
  fill(chip, h("img", { src: api.url(`/api/images/${encodeURIComponent(current.image)}`), alt: "" }), h("span", name));
}

/** Show each model's workspace scan in the bar while one runs; views that need a workspace wait for it. */
async function watchScans() {
  const element = document.getElementById("scan");
  for (;;) {
    const models = context.status?.models ?? [];
    const running = models.filter((m) => ["queued", "scanning"].includes(m.workspace?.state));
    const failed = models.filter((m) => m.workspace?.state === "failed");
    fill(
      element,
      running.map((m) =>
        h(
          "span.scan-pill",
          { title: m.workspace.message ?? "" },
          h("span.spinner"),
          `scanning ${m.id} ${Math.round((m.workspace.progress ?? 0) * 100)}%`,
          m.workspace.samples ? ` of ${compact(m.workspace.samples)}` : "",
        ),
      ),
      failed.map((m) => h("span.scan-pill.bad", { title: m.workspace.message }, `scan of ${m.id} failed: ${m.workspace.message}`)),
    );
    if (running.length === 0) return;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    try {
      const previous = new Map(models.map((m) => [m.id, m.workspace?.state]));
      context.status = await api.json("/api/status");
      const finished = (context.status.models ?? []).some(
        (m) => previous.get(m.id) !== m.workspace?.state && m.workspace?.state === "ready",
      );
      if (finished) {
        context.models = await api.json("/api/models");
        window.dispatchEvent(new CustomEvent("workspace-ready"));
      }
    } catch (error) {
      fill(element, h("span.scan-pill.bad", error.message));
      return;
    }
  }
}

boot();
