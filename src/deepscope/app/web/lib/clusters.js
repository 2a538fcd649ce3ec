// The Architecture view's "clusters" mode (CNNVis, Liu et al. 2017): each recorded layer as a row of clusters of
// units that behave alike over the dataset, each with its representative samples, and one edge between two
// clusters of consecutive layers, as wide and as opaque as the summed absolute weights between them (relative to
// the strongest edge between the two layers). The numbers are the server's (ds.atlas.neuron_clusters).

import * as api from "./api.js";
import { svg } from "./dom.js";

const BOX_WIDTH = 176;
const THUMB = 26;
const PER_ROW = 6;
const GAP_X = 22;
const GAP_Y = 86;
const LABEL_WIDTH = 150;


/** The clusters of `payload` (GET /api/models/{id}/clusters) as an SVG element. `openLayer(name)` and
 * `openSample(index)` are called on clicks. */
export function clusterDiagram(payload, { openLayer, openSample }) {
  const samples = Math.max(1, ...payload.layers.flatMap((layer) => layer.representatives.map((row) => row.length)));
  const boxHeight = 30 + Math.ceil(samples / PER_ROW) * (THUMB + 2) + 4;
  const widest = Math.max(...payload.layers.map((layer) => layer.sizes.length));
  const width = LABEL_WIDTH + widest * (BOX_WIDTH + GAP_X);
  const height = payload.layers.length * (boxHeight + GAP_Y) - GAP_Y + 20;
  const edges = svg("g", { class: "cluster-edges" });
  const nodes = svg("g");
  const boxes = payload.layers.map((layer, row) => {
    const y = 10 + row * (boxHeight + GAP_Y);
    const offset = LABEL_WIDTH + ((widest - layer.sizes.length) * (BOX_WIDTH + GAP_X)) / 2;
    nodes.append(
      svg("text", { x: 4, y: y + boxHeight / 2, class: "cluster-layer" }, layer.layer),
      svg("text", { x: 4, y: y + boxHeight / 2 + 15, class: "cluster-units" }, `${layer.units} units`),
    );
    return layer.sizes.map((size, cluster) => {
      const x = offset + cluster * (BOX_WIDTH + GAP_X);
      const group = svg(
        "g",
        { class: "cluster-node", "data-layer": layer.layer, "data-cluster": cluster, "data-units": size, transform: `translate(${x},${y})` },
        svg("rect", { width: BOX_WIDTH, height: boxHeight, rx: 6, class: "box", onclick: () => openLayer(layer.layer) }),
        svg("text", { x: 8, y: 18, class: "cluster-title" }, `cluster ${cluster} · ${size} unit${size === 1 ? "" : "s"}`),
        svg("title", {}, `${layer.layer}, cluster ${cluster}: units ${layer.labels.flatMap((c, unit) => (c === cluster ? [unit] : [])).join(", ")}`),
      );
      layer.representatives[cluster].forEach((sample, rank) => {
        group.append(
          svg("image", {
            href: api.url(`/api/images/sample:${payload.model}:${sample}`),
            x: 8 + (rank % PER_ROW) * (THUMB + 2),
            y: 28 + Math.floor(rank / PER_ROW) * (THUMB + 2),
            width: THUMB,
            height: THUMB,
            preserveAspectRatio: "xMidYMid slice",
            class: "cluster-sample",
            "data-sample": sample,
            onclick: () => openSample(sample),
          }),
        );
      });
      nodes.append(group);
      return { x, y };
    });
  });
  payload.edges.forEach((matrix, row) => {
    const strongest = Math.max(...matrix.flat().filter((v) => v !== null), 1e-12);
    matrix.forEach((sources, target) =>
      sources.forEach((weight, source) => {
        if (!weight) return;
        const share = weight / strongest;
        const from = boxes[row][source];
        const to = boxes[row + 1][target];
        const x1 = from.x + BOX_WIDTH / 2;
        const y1 = from.y + boxHeight;
        const x2 = to.x + BOX_WIDTH / 2;
        const y2 = to.y;
        const middle = (y1 + y2) / 2;
        edges.append(
          svg(
            "path",
            {
              d: `M${x1},${y1} C${x1},${middle} ${x2},${middle} ${x2},${y2}`,
              class: "cluster-edge",
              "data-weight": weight,
              "stroke-width": (1 + 10 * share).toFixed(2),
              "stroke-opacity": (0.12 + 0.75 * share).toFixed(3),
            },
            svg("title", {}, `${payload.layers[row].layer} #${source} → ${payload.layers[row + 1].layer} #${target}: Σ|w| = ${weight.toPrecision(4)}`),
          ),
        );
      }),
    );
  });
  return svg(
    "svg",
    { class: "cluster-diagram", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "neuron clusters" },
    edges,
    nodes,
  );
}
