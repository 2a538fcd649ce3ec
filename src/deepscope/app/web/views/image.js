// Image view: pick a photo (bundled, uploaded, or a dataset sample), see the model's top-5 classes and the heat
// maps of the chosen methods side by side for the chosen class, with an opacity slider and, on request, each
// map's deletion / insertion scores.

import * as api from "../lib/api.js";
import { gradient, normalize, paintGray, paintOverlay } from "../lib/colormaps.js";
import { failure, fill, h, latest } from "../lib/dom.js";
import { photoPixels } from "../lib/photos.js";
import * as state from "../lib/state.js";

export const DEFAULT_METHODS = ["grad_cam", "integrated_gradients", "guided_backprop"];

// What the colors of a signed map say (deepscope.render.heatmap.MEANINGS).
const MEANINGS = {
  sensitivity: "red: raising the pixel raises the class score; blue: lowers it",
  perturbation: "red: the class score drops without this region; blue: it rises",
  attribution: "red: evidence for the class; blue: against it",
};
const SEQUENTIAL_MEANING = "bright: strongest evidence for the class";

export function methodsOf(current) {
  return current.methods !== undefined ? state.list(current.methods) : DEFAULT_METHODS;
}

export function mount(root, context) {
  const picker = h("aside.picker");
  const subject = h("section.panel");
  const controls = h("section.panel");
  const maps = h("div.maps", { "aria-label": "heat maps" });
  const layout = h("div.image-layout", picker, h("div.page", { style: { padding: 0 } }, h("div.image-top", subject, controls), maps));
  root.append(layout);
  const registry = api.json("/api/methods", { cached: true });
  const newSubject = latest();
  const newMaps = latest();
  const cards = new Map();

  /** Outline on the photo the part of it the model saw (its preprocessing's crop), once a map says which. */
  function outlineCrop(meta) {
    const frame = subject.querySelector(".photo-frame");
    if (!frame || frame.querySelector(".crop") || !meta.crop || !meta.width) return;
    const [left, top, right, bottom] = meta.crop;
    if (left <= 0 && top <= 0 && right >= meta.width && bottom >= meta.height) return;
    const percent = (value, side) => `${(100 * value) / side}%`;
    frame.append(
      h("div.crop", {
        title: "the part of the image the model sees (its preprocessing's center crop); the maps cover it",
        style: {
          left: percent(left, meta.width),
          top: percent(top, meta.height),
          width: percent(right - left, meta.width),
          height: percent(bottom - top, meta.height),
        },
      }),
    );
  }

  async function drawPicker(current) {
    let images;
    try {
      images = await context.imagesOf(current.model);
    } catch (error) {
      fill(picker, failure(error));
      return;
    }
    const group = (title, source) => {
      const members = images.filter((image) => image.source === source);
      if (members.length === 0) return null;
      return h(
        "div.panel",
        h("h2", title),
        h(
          "div.thumbs",
          members.map((image) =>
            h(
              "button.thumb",
              {
                title: image.name,
                "aria-pressed": String(image.id === current.image),
                dataset: { image: image.id },
                onclick: () => state.set({ image: image.id, target: null }),
              },
              h("img", { src: api.url(image.url), alt: image.name, loading: "lazy" }),
            ),
          ),
        ),
      );
    };
    const input = h("input", { type: "file", accept: "image/*", hidden: true, onchange: () => send(input.files[0]) });
    const drop = h(
      "div.drop",
      {
        role: "button",
        tabindex: 0,
        onclick: () => input.click(),
        ondragover: (event) => {
          event.preventDefault();
          drop.classList.add("over");
        },
        ondragleave: () => drop.classList.remove("over"),
        ondrop: (event) => {
          event.preventDefault();
          drop.classList.remove("over");
          send(event.dataTransfer.files[0]);
        },
      },
      h("b", "Drop an image"),
      h("div.hint", "or click to choose a file (PNG, JPEG, WebP; up to 20 MB)"),
      input,
    );
    const status = h("div");
    async function send(file) {
      if (!file) return;
      fill(status, h("div.hint", `Uploading ${file.name}…`));
      try {
        const answer = await api.upload(file);
        await context.imagesOf(current.model, { refresh: true });
        fill(status);
        state.set({ image: answer.id, target: null });
      } catch (error) {
        fill(status, failure(error));
      }
    }
    fill(
      picker,
      h("div.panel", h("h2", "Your image"), drop, status),
      group("Photos", "bundled"),
      group("Uploads", "upload"),
      group("Dataset samples", "dataset"),
    );
  }

  async function drawSubject(current) {
    const isStale = newSubject();
    const model = context.model(current.model);
    if (!current.image) {
      fill(subject, h("div.empty", "Pick an image on the left."));
      return;
    }
    fill(subject, h("div.loading", "Predicting…"));
    let predictions;
    try {
      predictions = await api.json(
        api.path(`/api/models/${model.id}/predict`, { image: current.image, k: 5 }),
        { cached: true },
      );
    } catch (error) {
      if (!isStale()) fill(subject, failure(error));
      return;
    }
    if (isStale()) return;
    const target = current.target ?? "top1";
    const top = h(
      "div.predictions",
      { "aria-label": "top-5 predictions" },
      predictions.map((p, rank) =>
        h(
          "button.prediction",
          {
            "aria-pressed": String(target === String(p.class) || (target === "top1" && rank === 0)),
            title: `explain class ${p.class}`,
            dataset: { class: p.class },
            onclick: () => state.set({ target: rank === 0 ? null : String(p.class) }),
          },
          h("i.fill", { style: { width: `${(p.probability * 100).toFixed(1)}%` } }),
          h("span", `${p.label}`, h("span.hint", `  #${p.class}`)),
          h("span.p", `${(p.probability * 100).toFixed(1)}%`),
        ),
      ),
    );
    fill(
      subject,
      h(
        "div.subject",
        h(
          "div.photo-frame",
          h("img.photo", {
            src: api.url(`/api/images/${encodeURIComponent(current.image)}`),
            alt: "the image",
            // a digit of 28x28 pixels is shown large, its pixels square
            onload: (event) => event.target.naturalWidth < 128 && event.target.classList.add("small"),
          }),
        ),
        h(
          "div",
          h("h2", { style: { margin: "0 0 8px" } }, `${model.name ?? model.id} sees`),
          top,
          h("div.hint", { style: { marginTop: "6px" } }, "Click a class to explain it instead of the top one."),
        ),
      ),
    );
  }

  async function drawControls(current) {
    let methods;
    try {
      methods = await registry;
    } catch (error) {
      fill(controls, failure(error));
      return;
    }
    const chosen = methodsOf(current);
    const families = [...new Set(methods.map((m) => m.family))];
    const opacity = Number(current.opacity ?? 85);
    const slider = h("input", {
      type: "range",
      min: 0,
      max: 100,
      value: opacity,
      "aria-label": "overlay opacity",
      oninput: () => {
        for (const card of cards.values()) card.setOpacity(Number(slider.value) / 100);
        state.set({ opacity: slider.value === "85" ? null : slider.value }, { replace: true });
      },
    });
    fill(
      controls,
      h(
        "div.panel-head",
        h("h2", "Heat maps"),
        h("label.hint", { style: { display: "flex", gap: "8px", alignItems: "center" } }, "overlay", slider),
      ),
      h(
        "div.method-families",
        families.map((family) => [
          h("span.hint", family),
          h(
            "div.methods",
            methods
              .filter((m) => m.family === family)
              .map((m) =>
                h(
                  "button.chip",
                  {
                    "aria-pressed": String(chosen.includes(m.name)),
                    title: `${m.reference}\n${m.passes}`,
                    dataset: { method: m.name },
                    onclick: () => {
                      const next = chosen.includes(m.name)
                        ? chosen.filter((name) => name !== m.name)
                        : methods.map((x) => x.name).filter((name) => chosen.includes(name) || name === m.name);
                      state.set({ methods: next.join(",") });
                    },
                  },
                  m.name.replaceAll("_", " "),
                ),
              ),
          ),
        ]),
      ),
    );
  }

  async function drawMaps(current) {
    const isStale = newMaps();
    const model = context.model(current.model);
    const chosen = methodsOf(current);
    let methods;
    try {
      methods = await registry;
    } catch {
      return; // drawControls shows the error
    }
    if (isStale()) return;
    cards.clear();
    if (!current.image || chosen.length === 0) {
      fill(maps, h("div.empty", chosen.length ? "" : "Choose one or more methods above."));
      return;
    }
    const byName = new Map(methods.map((m) => [m.name, m]));
    const opacity = Number(current.opacity ?? 85) / 100;
    const target = current.target ?? "top1";
    maps.dataset.pending = String(chosen.length);
    const settled = () => {
      if (!isStale()) maps.dataset.pending = String(Number(maps.dataset.pending) - 1);
    };
    fill(
      maps,
      chosen.map((name) => {
        const card = mapCard(model, current.image, byName.get(name) ?? { name, family: "" }, target, opacity, settled, outlineCrop);
        cards.set(name, card);
        return card.element;
      }),
    );
  }

  return {
    async update(current, changed) {
      const all = changed.has("model");
      if (all || changed.has("image")) drawPicker(current);
      if (all || changed.has("image") || changed.has("target")) drawSubject(current);
      if (all || changed.has("methods")) drawControls(current);
      if (all || ["image", "methods", "target"].some((key) => changed.has(key))) drawMaps(current);
      else if (changed.has("opacity")) {
        for (const card of cards.values()) card.setOpacity(Number(current.opacity ?? 85) / 100);
      }
    },
    unmount() {
      layout.remove();
    },
  };
}

/** One method's card: the map over the photo, its color bar and meaning, and its faithfulness on request. */
function mapCard(model, image, method, target, opacity, settled, onMeta) {
  const base = h("canvas");
  const overlay = h("canvas", { style: { opacity } });
  const stack = h("div.map-stack", base, overlay);
  const title = h("h3", method.name.replaceAll("_", " "), h("small", method.family));
  const caption = h("div.hint", "computing…");
  const scale = h("div");
  const faithfulness = h("div.auc");
  const element = h(
    "article.map-card",
    { dataset: { method: method.name, state: "loading" } },
    title,
    stack,
    scale,
    caption,
    faithfulness,
  );
  const query = { image, method: method.name, target };
  (async () => {
    try {
      const map = await api.array(api.path(`/api/models/${model.id}/heatmap`, query), { cached: true });
      const meta = map.header.meta ?? {};
      onMeta(meta);
      const [height, width] = map.shape;
      let values = map.data;
      if (method.family === "cam") values = values.map((v) => Math.max(v, 0));
      const signed = method.family !== "cam" && values.some((v) => v < 0);
      const colormap = signed ? "RdBu_r" : "inferno";
      const normalized = normalize(values, signed);
      paintOverlay(overlay, width, height, normalized, colormap);
      stack.style.aspectRatio = `${width} / ${height}`;
      if (width < 96) stack.classList.add("pixelated");
      if (meta.crop) {
        const pixels = await photoPixels(image, meta.crop, width, height);
        paintGray(base, pixels);
      } else {
        base.width = width;
        base.height = height;
      }
      const [low, high] = normalized.ends;
      fill(
        scale,
        h("div.colorbar", { style: { background: gradient(colormap) } }),
        h(
          "div.colorbar-ends",
          h("span", low.toPrecision(3)),
          signed ? h("span", "0") : null,
          h("span", (signed ? "+" : "") + high.toPrecision(3)),
        ),
        h("div.meaning", signed ? MEANINGS[meaningOf(method)] : SEQUENTIAL_MEANING),
      );
      fill(
        caption,
        meta.target_label ? `class: ${meta.target_label}` : "",
        meta.layer_used ? [" · layer ", h("a", { href: state.href({ view: "layer", layer: meta.layer_used, unit: null }) }, meta.layer_used)] : "",
        meta.passes ? ` · ${meta.passes}` : "",
      );
      element.dataset.state = "done";
      fill(
        faithfulness,
        h(
          "button",
          {
            title: "Deletion: the class probability as the most relevant pixels are removed first (lower area is better). Insertion: as they are added to a blurred image (higher is better).",
            onclick: (event) => scoreFaithfulness(model, query, faithfulness, event.currentTarget),
          },
          "Deletion / insertion",
        ),
      );
    } catch (error) {
      element.dataset.state = "failed";
      stack.replaceWith(failure(error));
      fill(caption);
    }
    settled();
  })();
  return { element, setOpacity: (value) => (overlay.style.opacity = value) };
}

function meaningOf(method) {
  if (method.sensitivity) return "sensitivity";
  return method.family === "perturbation" ? "perturbation" : "attribution";
}

async function scoreFaithfulness(model, query, element, button) {
  button.disabled = true;
  const progress = h("div.hint", "scoring…");
  element.append(progress);
  try {
    const result = await api.job(`/api/models/${model.id}/faithfulness`, query, (value, message) => {
      progress.textContent = `scoring ${Math.round(value * 100)}% ${message}`;
    });
    fill(
      element,
      h("span", { title: "area under the deletion curve: lower is better" }, "deletion ", h("b", result.deletion_auc.toFixed(3)), " ↓"),
      h("span", { title: "area under the insertion curve: higher is better" }, "insertion ", h("b", result.insertion_auc.toFixed(3)), " ↑"),
    );
    if (result.fractions) element.after(curves(result));
  } catch (error) {
    fill(element, failure(error));
  }
}

/** The deletion and insertion curves (class probability against the fraction of pixels changed). */
function curves(result) {
  const box = h("div.chart");
  requestAnimationFrame(() => {
    const width = Math.max(box.clientWidth, 200);
    new globalThis.uPlot(
      {
        width,
        height: 110,
        legend: { show: false },
        cursor: { show: false },
        scales: { x: { time: false }, y: { range: [0, 1] } },
        axes: [
          { stroke: "#8b95a3", grid: { stroke: "#2a313b" }, size: 24, font: "10px sans-serif" },
          { stroke: "#8b95a3", grid: { stroke: "#2a313b" }, size: 30, font: "10px sans-serif" },
        ],
        series: [
          {},
          { label: "deletion", stroke: "#ff6b6b", width: 1.5 },
          { label: "insertion", stroke: "#3ecf8e", width: 1.5 },
        ],
      },
      [result.fractions, result.deletion, result.insertion],
      box,
    );
  });
  return box;
}
