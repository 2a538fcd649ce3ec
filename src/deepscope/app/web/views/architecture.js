// Architecture view: the node-link diagram of ds.graph, laid out by ELK (layered, in a web worker). Blocks
// collapse and expand (the page groups the full graph's nodes by module path; the URL's `depth` and `open` say
// which blocks are open); skip connections are drawn in orange; each node shows its op, output shape and
// parameters and is colored by its mean |activation| for the current image (Harley 2015). Clicking a node opens
// its layer. The "clusters" mode (URL `mode=clusters`, `k` clusters per layer) draws the recorded layers as
// clusters of units instead (lib/clusters.js).

import * as api from "../lib/api.js";
import { clusterDiagram } from "../lib/clusters.js";
import { COLORMAPS, gradient } from "../lib/colormaps.js";
import { compact, failure, fill, h, latest, shapeText, svg } from "../lib/dom.js";
import * as state from "../lib/state.js";

const NODE_WIDTH = 210;
const NODE_HEIGHT = 46;
// The depth chosen when the URL names none: the deepest that keeps the diagram readable at first sight.
const FIRST_SIGHT_NODES = 90;

let elk = null;
function layoutEngine() {
  elk ??= new globalThis.ELK({ workerUrl: new URL("../vendor/elkjs/elk-worker.min.js", import.meta.url).href });
  return elk;
}


/** The dotted module paths that hold a node, outermost first: a module call lies inside its module's parents
 * (never inside the module itself: the calls of a module used twice are two nodes), a function inside its
 * scope and the scope's parents. */
function containersOf(node) {
  if (node.module) return node.module.split(".").slice(0, -1);
  return node.scope ? node.scope.split(".") : [];
}

function inside(node, prefix) {
  const path = containersOf(node).join(".");
  return path === prefix || path.startsWith(`${prefix}.`) || node.module === prefix;
}

/** Group the full graph's nodes into what is drawn: a block whose path is closed becomes one node. */
export function collapse(graph, isOpen) {
  const groupOf = new Map();
  for (const node of graph.nodes) {
    const segments = containersOf(node);
    let key = node.id;
    for (let k = 1; k <= segments.length; k += 1) {
      const prefix = segments.slice(0, k).join(".");
      if (!isOpen(prefix, k)) {
        key = `block:${prefix}`;
        break;
      }
    }
    groupOf.set(node.id, key);
  }
  const members = new Map();
  for (const node of graph.nodes) {
    const key = groupOf.get(node.id);
    if (!members.has(key)) members.set(key, []);
    members.get(key).push(node);
  }
  const leaving = new Set(graph.edges.filter(([a, b]) => groupOf.get(a) !== groupOf.get(b)).map(([a]) => a));
  const nodes = [...members.entries()].map(([key, inside]) => {
    const exits = inside.filter((node) => leaving.has(node.id));
    const output = exits.length ? exits[exits.length - 1] : inside[inside.length - 1];
    const block = key.startsWith("block:") ? key.slice(6) : null;
    const single = inside.length === 1 && (!block || inside[0].module === block || inside[0].layer === block);
    return {
      id: key,
      block: single ? null : block,
      layer: single ? inside[0].layer : block,
      op: single ? inside[0].op : null,
      output,
      members: inside,
      params: inside.reduce((sum, node) => sum + (node.params ?? 0), 0),
    };
  });
  const seen = new Set();
  const edges = [];
  for (const [a, b] of graph.edges) {
    const from = groupOf.get(a);
    const to = groupOf.get(b);
    const key = `${from}->${to}`;
    if (from === to || seen.has(key)) continue;
    seen.add(key);
    edges.push([from, to]);
  }
  return { nodes, edges };
}

/** Longest-path rank of each node (Kahn's order: grouping can put a block before a node that feeds it). Nodes
 * on a cycle that grouping made keep the rank they had reached. */
function ranks(nodes, edges) {
  const rank = new Map(nodes.map((node) => [node.id, 0]));
  const waiting = new Map(nodes.map((node) => [node.id, 0]));
  const outgoing = new Map(nodes.map((node) => [node.id, []]));
  for (const [a, b] of edges) {
    outgoing.get(a).push(b);
    waiting.set(b, waiting.get(b) + 1);
  }
  const ready = nodes.filter((node) => waiting.get(node.id) === 0).map((node) => node.id);
  while (ready.length) {
    const id = ready.pop();
    for (const next of outgoing.get(id)) {
      rank.set(next, Math.max(rank.get(next), rank.get(id) + 1));
      waiting.set(next, waiting.get(next) - 1);
      if (waiting.get(next) === 0) ready.push(next);
    }
  }
  return rank;
}

// Widths of a character of the node labels (11px bold sans, 10px mono), to fit them beside the right-hand text.
const OP_CHAR = 6.9;
const MONO_CHAR = 6.1;

/** How many characters fit left of `right` (a right-aligned text) on a node's line. */
function room(right, isBlock, characterWidth) {
  const free = NODE_WIDTH - 10 - (isBlock ? 30 : 10) - right.length * MONO_CHAR - (right ? 8 : 0);
  return Math.floor(free / characterWidth);
}

/** A label cut to `room` characters with an ellipsis (at its start with `keepEnd`: a path's last names say most). */
function clip(text, room, keepEnd = false) {
  if (text.length <= room) return text;
  const kept = Math.max(room - 1, 3);
  return keepEnd ? `…${text.slice(-kept)}` : `${text.slice(0, kept)}…`;
}

function depthOf(graph) {
  return Math.max(1, ...graph.nodes.map((node) => containersOf(node).length));
}

function firstSightDepth(graph) {
  let chosen = 1;
  for (let depth = 1; depth <= depthOf(graph); depth += 1) {
    const drawn = collapse(graph, (_, k) => k < depth).nodes.length;
    if (drawn > FIRST_SIGHT_NODES) break;
    chosen = depth;
  }
  return chosen;
}

export function mount(root, context) {
  layoutEngine(); // the worker parses ELK while the graph is fetched
  const viewport = svg("g");
  const canvas = svg("svg", { role: "img", "aria-label": "architecture graph" }, viewport);
  const legend = h("div.graph-card");
  const info = h("div.graph-card.graph-info", { hidden: true });
  const overlay = h("div.graph-overlay", legend, info);
  const clusterBox = h("div.cluster-box", { hidden: true });
  const wrap = h("div.graph-wrap", canvas, clusterBox, overlay);
  root.append(wrap);
  const newLayout = latest();
  const newColors = latest();
  const newClusters = latest();
  let graph = null;
  let drawn = null;
  let strength = null;
  let nodeElements = new Map();
  let transform = { x: 0, y: 0, k: 1 };
  let bounds = { width: 1, height: 1 };
  let positions = new Map();
  const opsByBlock = new Map();
  const knownOps = new Map();

  // --- pan and zoom ---
  const apply = () => viewport.setAttribute("transform", `translate(${transform.x},${transform.y}) scale(${transform.k})`);
  canvas.addEventListener(
    "wheel",
    (event) => {
      event.preventDefault();
      const box = canvas.getBoundingClientRect();
      const factor = Math.exp(-event.deltaY * (event.deltaMode ? 0.05 : 0.0015));
      const k = Math.min(3, Math.max(0.05, transform.k * factor));
      const px = event.clientX - box.left;
      const py = event.clientY - box.top;
      transform = { k, x: px - ((px - transform.x) * k) / transform.k, y: py - ((py - transform.y) * k) / transform.k };
      apply();
    },
    { passive: false },
  );
  let drag = null;
  canvas.addEventListener("pointerdown", (event) => {
    if (event.target.closest(".graph-node, .toggle, .collapse")) return;
    drag = { x: event.clientX - transform.x, y: event.clientY - transform.y };
    canvas.classList.add("dragging");
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drag) return;
    transform = { ...transform, x: event.clientX - drag.x, y: event.clientY - drag.y };
    apply();
  });
  canvas.addEventListener("pointerup", () => {
    drag = null;
    canvas.classList.remove("dragging");
  });

  function fit({ top = false } = {}) {
    const width = wrap.clientWidth || 1200;
    const height = wrap.clientHeight || 800;
    // The whole graph when it fits at a readable size; else its top at a size where the labels still read.
    const whole = Math.min(1, (width - 40) / bounds.width, (height - 40) / bounds.height);
    const scale = top ? Math.max(whole, Math.min(0.8, (width - 40) / bounds.width)) : Math.max(whole, 0.05);
    transform = { k: scale, x: (width - bounds.width * scale) / 2, y: 20 };
    apply();
  }

  // --- data ---
  async function blockOps(model, depth) {
    const key = `${model}:${depth}`;
    if (!opsByBlock.has(key)) {
      opsByBlock.set(
        key,
        api
          .json(api.path(`/api/models/${model}/graph`, { depth }), { cached: true })
          .then((collapsed) => new Map(collapsed.nodes.filter((n) => n.module).map((n) => [n.module, n.op])))
          .catch(() => new Map()),
      );
    }
    return opsByBlock.get(key);
  }

  function openTest(current) {
    const depth = Number(current.depth ?? firstSightDepth(graph));
    const toggled = new Set(state.list(current.open));
    return { depth, toggled, isOpen: (prefix, k) => (k < depth) !== toggled.has(prefix) };
  }

  async function relayout(current) {
    const isStale = newLayout();
    const model = context.model(current.model);
    const { depth, toggled, isOpen } = openTest(current);
    drawn = collapse(graph, isOpen);
    for (const node of drawn.nodes) if (node.block) node.op = knownOps.get(node.block) ?? "block";
    drawLegend(current, depth);
    if (drawn.nodes.length > 150) fill(info, h("div.hint", `Laying out ${drawn.nodes.length} nodes…`)), (info.hidden = false);
    let layout;
    try {
      layout = await layoutEngine().layout({
        id: "root",
        layoutOptions: {
          "elk.algorithm": "layered",
          "elk.direction": "DOWN",
          "elk.edgeRouting": "ORTHOGONAL",
          "elk.layered.spacing.nodeNodeBetweenLayers": "26",
          "elk.layered.spacing.edgeNodeBetweenLayers": "14",
          "elk.spacing.nodeNode": "28",
          "elk.spacing.edgeEdge": "8",
          "elk.layered.nodePlacement.strategy": "BRANDES_KOEPF",
          "elk.layered.considerModelOrder.strategy": "NODES_AND_EDGES",
        },
        children: drawn.nodes.map((node) => ({ id: node.id, width: NODE_WIDTH, height: NODE_HEIGHT })),
        edges: drawn.edges.map(([a, b], i) => ({ id: `e${i}`, sources: [a], targets: [b] })),
      });
    } catch (error) {
      if (!isStale()) fill(info, failure(error));
      return;
    }
    if (isStale()) return;
    info.hidden = true;
    draw(layout, current, toggled, depth);
    nameBlocks(model.id, isStale);
  }

  /** A collapsed block's op is its module's class, which only the graph at the block's depth names: fetched
   * after the diagram is drawn (a deep model's graphs take the server seconds the first time). */
  async function nameBlocks(model, isStale) {
    const blocks = drawn.nodes.filter((node) => node.block && !knownOps.has(node.block));
    for (const depth of new Set(blocks.map((node) => node.block.split(".").length))) {
      for (const [module, op] of await blockOps(model, depth)) knownOps.set(module, op);
    }
    if (isStale()) return;
    for (const node of blocks) {
      node.op = knownOps.get(node.block) ?? "block";
      const text = nodeElements.get(node.id)?.querySelector("text.op");
      if (text) text.textContent = clip(node.op, room(shapeText(node.output.output_shape), true, OP_CHAR));
    }
  }

  function draw(layout, current, toggled, depth) {
    const position = new Map(layout.children.map((child) => [child.id, child]));
    positions = position;
    const rank = ranks(drawn.nodes, drawn.edges);
    bounds = { width: layout.width, height: layout.height };
    const frames = [...toggled]
      .filter((prefix) => prefix.split(".").length >= depth)
      .map((prefix) => {
        const members = drawn.nodes.filter((node) => node.members.some((m) => inside(m, prefix)));
        if (members.length === 0) return null;
        const boxes = members.map((node) => position.get(node.id));
        const x0 = Math.min(...boxes.map((b) => b.x)) - 12;
        const y0 = Math.min(...boxes.map((b) => b.y)) - 22;
        const x1 = Math.max(...boxes.map((b) => b.x + b.width)) + 12;
        const y1 = Math.max(...boxes.map((b) => b.y + b.height)) + 10;
        return svg(
          "g",
          { class: "graph-block" },
          svg("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0 }),
          svg("text", { x: x0 + 22, y: y0 + 14 }, prefix),
          svg(
            "g",
            { class: "collapse", onclick: () => toggle(prefix), "data-collapse": prefix },
            svg("rect", { x: x0 + 4, y: y0 + 4, width: 14, height: 14, rx: 3, fill: "#2c3440", stroke: "#4a5566" }),
            svg("text", { x: x0 + 7.5, y: y0 + 15, fill: "#e4e7eb", "font-size": 12 }, "−"),
          ),
        );
      });
    const edges = layout.edges.map((edge, i) => {
      const [a, b] = drawn.edges[i];
      const section = edge.sections?.[0];
      if (!section) return null;
      const points = [section.startPoint, ...(section.bendPoints ?? []), section.endPoint];
      const skip = rank.get(b) - rank.get(a) > 1;
      return svg("path", {
        class: skip ? "graph-edge skip" : "graph-edge",
        d: `M${points.map((p) => `${p.x},${p.y}`).join("L")}`,
        "marker-end": skip ? "url(#arrow-skip)" : "url(#arrow)",
      });
    });
    nodeElements = new Map();
    const nodes = drawn.nodes.map((node) => {
      const box = position.get(node.id);
      const shape = shapeText(node.output.output_shape);
      const params = node.params ? compact(node.params) : "";
      const label = clip(node.block ?? node.layer ?? node.id, room(params, node.block, MONO_CHAR), true);
      const group = svg(
        "g",
        {
          class: "graph-node",
          transform: `translate(${box.x},${box.y})`,
          "data-node": node.id,
          "data-layer": node.layer ?? "",
          onclick: () => node.layer && state.set({ view: "layer", layer: node.layer, unit: null }),
          onmouseenter: () => showInfo(node),
          onmouseleave: () => (info.hidden = true),
        },
        svg("rect", { class: "box", width: NODE_WIDTH, height: NODE_HEIGHT, rx: 6 }),
        node.block ? svg("rect", { class: "inner", x: 3, y: 3, width: NODE_WIDTH - 6, height: NODE_HEIGHT - 6, rx: 4 }) : null,
        svg("text", { class: "op", x: 10, y: 18 }, clip(node.op ?? "", room(shape, node.block, OP_CHAR))),
        svg("text", { class: "sub", x: NODE_WIDTH - (node.block ? 30 : 10), y: 18, "text-anchor": "end" }, shape),
        svg("text", { class: "sub", x: 10, y: 35 }, label),
        svg("text", { class: "sub", x: NODE_WIDTH - (node.block ? 30 : 10), y: 35, "text-anchor": "end" }, params),
        node.block
          ? svg(
              "g",
              {
                class: "toggle",
                "data-expand": node.block,
                onclick: (event) => {
                  event.stopPropagation();
                  toggle(node.block);
                },
              },
              svg("rect", { x: NODE_WIDTH - 24, y: NODE_HEIGHT / 2 - 9, width: 18, height: 18 }),
              svg("text", { x: NODE_WIDTH - 19, y: NODE_HEIGHT / 2 + 4.5 }, "+"),
            )
          : null,
        svg("title", {}, node.layer ? `${node.layer}: open the layer` : node.id),
      );
      nodeElements.set(node.id, group);
      return group;
    });
    const defs = svg(
      "defs",
      {},
      svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M0,0L10,5L0,10z", fill: "#5a6574" })),
      svg("marker", { id: "arrow-skip", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M0,0L10,5L0,10z", fill: "#f5a623" })),
    );
    viewport.replaceChildren(defs, ...frames.filter(Boolean), ...edges.filter(Boolean), ...nodes);
    wrap.dataset.nodes = String(drawn.nodes.length);
    fit({ top: true });
    if (current.layer) focusLayer(current.layer);
    recolor();
    highlight(current);
  }

  function toggle(prefix) {
    const current = state.get();
    const toggled = new Set(state.list(current.open));
    if (toggled.has(prefix)) toggled.delete(prefix);
    else toggled.add(prefix);
    state.set({ open: [...toggled].join(",") || null });
  }

  function showInfo(node) {
    const value = strength?.[node.output.id];
    info.hidden = false;
    fill(
      info,
      h("b", node.block ?? node.layer ?? node.id),
      h(
        "dl",
        h("dt", "op"),
        h("dd", node.op ?? ""),
        h("dt", "output"),
        h("dd", shapeText(node.output.output_shape) || "—"),
        h("dt", "params"),
        h("dd", (node.params ?? 0).toLocaleString()),
        node.block ? [h("dt", "inside"), h("dd", `${node.members.length} ops`)] : null,
        value !== undefined ? [h("dt", "mean |a|"), h("dd", value.toPrecision(4))] : null,
      ),
      h("div.hint", node.layer ? "click to open the layer" : "no layer name: nothing hands this output on", node.block ? "; + expands the block" : ""),
    );
  }

  async function loadStrength(current) {
    const isStale = newColors();
    strength = null;
    recolor();
    if (!current.image) return;
    try {
      const values = await api.json(api.path(`/api/models/${current.model}/strength`, { image: current.image }), {
        cached: true,
      });
      if (isStale()) return;
      strength = values;
      recolor();
    } catch (error) {
      if (!isStale()) legend.append(failure(error));
    }
  }

  function recolor() {
    if (!drawn) return;
    const values = drawn.nodes.map((node) => strength?.[node.output.id]).filter((v) => v > 0);
    const low = Math.log(Math.min(...values));
    const high = Math.log(Math.max(...values));
    const lut = COLORMAPS.inferno;
    for (const node of drawn.nodes) {
      const element = nodeElements.get(node.id);
      const value = strength?.[node.output.id];
      const box = element?.querySelector("rect.box");
      if (!box) continue;
      if (!(value > 0) || !(high > low)) {
        box.style.fill = "";
        element.style.setProperty("--ink", "");
        for (const text of element.querySelectorAll("text")) text.style.fill = "";
        continue;
      }
      const t = 0.12 + 0.78 * ((Math.log(value) - low) / (high - low));
      const at = Math.round(t * 255) * 3;
      box.style.fill = `rgb(${lut[at]},${lut[at + 1]},${lut[at + 2]})`;
      const light = 0.299 * lut[at] + 0.587 * lut[at + 1] + 0.114 * lut[at + 2] > 140;
      for (const text of element.querySelectorAll(":scope > text")) text.style.fill = light ? "#101317" : "#f2f4f6";
    }
    drawStrengthScale(values.length ? [Math.exp(low), Math.exp(high)] : null);
    wrap.dataset.colored = String(values.length > 0);
  }

  let scale = h("div");
  function drawStrengthScale(ends) {
    fill(
      scale,
      ends
        ? [
            h("div.hint", "mean |activation| for this image (log scale)"),
            h("div.legend-bar", { style: { background: gradient("inferno") } }),
            h("div.legend-ends", h("span", ends[0].toPrecision(2)), h("span", ends[1].toPrecision(2))),
          ]
        : h("div.hint", "Pick an image to color the nodes by their activation."),
    );
  }

  function modeSwitch(current) {
    const mode = current.mode === "clusters" ? "clusters" : "graph";
    return h(
      "div.seg",
      { style: { marginBottom: "8px" }, "aria-label": "mode" },
      [
        ["graph", "Graph"],
        ["clusters", "Neuron clusters"],
      ].map(([name, label]) =>
        h("button", { "aria-pressed": String(mode === name), dataset: { mode: name }, onclick: () => state.set({ mode: name === "graph" ? null : name }) }, label),
      ),
    );
  }

  async function drawClusters(current) {
    const isStale = newClusters();
    const model = context.model(current.model);
    const k = Number(current.k ?? 4);
    canvas.style.display = "none";
    info.hidden = true;
    clusterBox.hidden = false;
    delete wrap.dataset.clusters;
    fill(
      legend,
      modeSwitch(current),
      h("div", h("b", model.name ?? model.id), h("span.hint", "  units clustered by their activations over the dataset")),
      h(
        "div.toolbar",
        { style: { margin: "8px 0" } },
        h(
          "label",
          "clusters per layer",
          h(
            "select",
            { "aria-label": "clusters per layer", onchange: (event) => state.set({ k: event.target.value }) },
            [2, 3, 4, 5, 6, 8].map((n) => h("option", { value: n, selected: n === k }, n)),
          ),
        ),
      ),
      h("div.hint", "edges: summed |weights| between two clusters (wider, darker: stronger) · click a cluster to open its layer, a sample to open it"),
    );
    fill(clusterBox, h("div.loading", "Clustering the units…"));
    let payload;
    try {
      payload = await api.json(api.path(`/api/models/${model.id}/clusters`, { k }), { cached: true });
    } catch (error) {
      if (!isStale()) fill(clusterBox, h("div.cluster-message", error.status === 409 ? h("div.empty", error.message) : failure(error)));
      return;
    }
    if (isStale()) return;
    fill(
      clusterBox,
      clusterDiagram(payload, {
        openLayer: (layer) => state.set({ view: "layer", layer, unit: null }),
        openSample: (sample) => state.set({ view: "image", image: `sample:${model.id}:${sample}`, target: null }),
      }),
    );
    wrap.dataset.clusters = String(payload.layers.reduce((sum, layer) => sum + layer.sizes.length, 0));
  }

  function drawLegend(current, depth) {
    const model = context.model(current.model);
    scale = h("div");
    fill(
      legend,
      modeSwitch(current),
      h("div", h("b", model.name ?? model.id), h("span.hint", `  ${drawn.nodes.length} of ${graph.nodes.length} nodes · ${graph.tracer}`)),
      h(
        "div.toolbar",
        { style: { margin: "8px 0" } },
        h("button", { onclick: () => state.set({ depth: String(depthOf(graph) + 1), open: null }), title: "every op" }, "Expand all"),
        h("button", { onclick: () => state.set({ depth: null, open: null }) }, "Collapse"),
        h("button", { onclick: () => fit() }, "Fit"),
      ),
      h(
        "form.toolbar",
        {
          style: { marginBottom: "8px" },
          onsubmit: (event) => {
            event.preventDefault();
            const input = event.target.elements.layer;
            input.setCustomValidity(find(input.value.trim()) ? "" : "no layer of that name in the graph");
            input.reportValidity();
          },
        },
        h("input", { name: "layer", list: "graph-layers", oninput: (event) => event.target.setCustomValidity(""), placeholder: "find a layer…", "aria-label": "find a layer", style: { width: "230px", padding: "3px 8px" } }),
        h("datalist#graph-layers", graph.nodes.filter((n) => n.layer).map((n) => h("option", { value: n.layer }))),
        h(
          "label",
          "depth",
          h(
            "select",
            {
              "aria-label": "depth",
              onchange: (event) => state.set({ depth: event.target.value, open: null }),
            },
            Array.from({ length: depthOf(graph) + 1 }, (_, i) => i + 1).map((d) =>
              h("option", { value: d, selected: d === Math.min(depth, depthOf(graph) + 1) }, d > depthOf(graph) ? "all" : d),
            ),
          ),
        ),
      ),
      scale,
      h("div.hint", { style: { marginTop: "6px" } }, h("span", { style: { color: "#f5a623" } }, "━"), " skip connection · click a node to open its layer"),
      graph.notes?.length ? h("div.hint", graph.notes.join(" ")) : null,
    );
    drawStrengthScale(null);
  }

  /** Center the view on the node of `layer` (the block holding it when it is collapsed). */
  function focusLayer(layer) {
    const node =
      drawn.nodes.find((n) => n.layer === layer) ?? drawn.nodes.find((n) => n.members.some((m) => m.layer === layer));
    const box = node && positions.get(node.id);
    if (!box) return;
    const k = Math.max(transform.k, 0.8);
    const width = wrap.clientWidth || 1200;
    const height = wrap.clientHeight || 800;
    transform = { k, x: width / 2 - (box.x + box.width / 2) * k, y: height / 2 - (box.y + box.height / 2) * k };
    apply();
  }

  /** Find a layer: open the blocks that hold it, select it and center on it. */
  function find(layer) {
    const target = graph.nodes.find((n) => n.layer === layer);
    if (!target) return false;
    const current = state.get();
    const { toggled, isOpen } = openTest(current);
    const segments = containersOf(target);
    for (let k = 1; k <= segments.length; k += 1) {
      const prefix = segments.slice(0, k).join(".");
      // a block holding nothing but the layer is drawn as the layer itself: no need to open it
      const alone = graph.nodes.filter((n) => inside(n, prefix)).length === 1;
      if (!isOpen(prefix, k) && !alone) toggled.add(prefix);
    }
    state.set({ layer, open: [...toggled].join(",") || null });
    return true;
  }

  function highlight(current) {
    for (const [id, element] of nodeElements) {
      const node = drawn.nodes.find((n) => n.id === id);
      element.classList.toggle("selected", Boolean(current.layer) && node?.layer === current.layer);
    }
  }

  return {
    async update(current, changed) {
      if (current.mode === "clusters") {
        if (changed.has("model") || changed.has("mode") || changed.has("k")) await drawClusters(current);
        return;
      }
      if (changed.has("mode")) {
        newClusters();
        clusterBox.hidden = true;
        canvas.style.display = "";
        if (graph) {
          loadStrength(current);
          await relayout(current);
          return;
        }
      }
      if (changed.has("model") || !graph) {
        knownOps.clear();
        try {
          graph = await api.json(`/api/models/${current.model}/graph`, { cached: true });
        } catch (error) {
          fill(legend, failure(error));
          return;
        }
        loadStrength(current); // (fetched while ELK lays the graph out; drawn when both are there)
        await relayout(current);
        return;
      }
      if (changed.has("depth") || changed.has("open")) await relayout(current);
      if (changed.has("image")) loadStrength(current);
      if (changed.has("layer")) {
        highlight(current);
        if (current.layer) focusLayer(current.layer);
      }
    },
    unmount() {
      newLayout();
      newColors();
      newClusters();
      wrap.remove();
    },
  };
}
