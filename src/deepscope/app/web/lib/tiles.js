// Grids of small maps on one canvas: the activation grid of a layer (every channel), filters, kernels. One
// canvas rather than one element per channel, so that a layer of 1,280 channels draws at once.

import { COLORMAPS, percentile } from "./colormaps.js";

/** Scale of a set of values for display: signed ones (a tenth of their mass below zero or more) diverge around
 * 0 out to the 99.5th percentile of |v|; others run from 0 (or their minimum) to their 99.5th percentile. */
export function scaleOf(values) {
  let negative = 0;
  let min = Infinity;
  for (const v of values) {
    if (v < 0) negative += 1;
    if (v < min) min = v;
  }
  const step = Math.max(1, Math.floor(values.length / 200000)); // a sample is enough for a percentile
  const sample = step > 1 ? values.filter((_, i) => i % step === 0) : values;
  if (negative > values.length * 0.1) {
    const extent = percentile(sample.map(Math.abs), 99.5) || 1;
    return { signed: true, low: -extent, high: extent, colormap: "RdBu_r" };
  }
  const low = Math.min(0, min);
  const high = percentile(sample, 99.5);
  return { signed: false, low, high: high > low ? high : low + 1, colormap: "inferno" };
}

/** Paint `values` (height x width, starting at `offset`) into `image` (ImageData) at its origin, per `scale`. */
function paintTile(image, values, offset, height, width, scale) {
  const lut = COLORMAPS[scale.colormap];
  const span = scale.high - scale.low;
  for (let i = 0; i < height * width; i += 1) {
    const t = Math.max(0, Math.min(1, (values[offset + i] - scale.low) / span));
    const at = Math.round(t * 255) * 3;
    image.data[i * 4] = lut[at];
    image.data[i * 4 + 1] = lut[at + 1];
    image.data[i * 4 + 2] = lut[at + 2];
    image.data[i * 4 + 3] = 255;
  }
}

/** Draw maps [count, height, width] in `order` as a grid of `tile`-pixel squares, `columns` wide; the layout
 * (for hit tests). `scaleFor(index)` gives each map's scale (one for the layer, or one per map). */
export function drawGrid(canvas, { data, count, height, width }, { order, tile, columns, gap = 2, scaleFor }) {
  const rows = Math.ceil(order.length / columns);
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round((columns * (tile + gap) - gap) * ratio);
  canvas.height = Math.round((rows * (tile + gap) - gap) * ratio);
  canvas.style.width = `${columns * (tile + gap) - gap}px`;
  canvas.style.height = `${rows * (tile + gap) - gap}px`;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.scale(ratio, ratio);
  const scratch = document.createElement("canvas");
  scratch.width = width;
  scratch.height = height;
  const scratchContext = scratch.getContext("2d");
  const image = scratchContext.createImageData(width, height);
  order.forEach((index, position) => {
    paintTile(image, data, index * height * width, height, width, scaleFor(index));
    scratchContext.putImageData(image, 0, 0);
    const x = (position % columns) * (tile + gap);
    const y = Math.floor(position / columns) * (tile + gap);
    context.drawImage(scratch, x, y, tile, tile);
  });
  return { tile, gap, columns, order, count };
}

/** The map index under a mouse event on a grid drawn by drawGrid (or -1). */
export function hit(layout, canvas, event) {
  const box = canvas.getBoundingClientRect();
  const step = layout.tile + layout.gap;
  const column = Math.floor((event.clientX - box.left) / step);
  const row = layout.rows === 1 ? 0 : Math.floor((event.clientY - box.top) / step);
  const position = row * layout.columns + column;
  if (column < 0 || column >= layout.columns || position < 0 || position >= layout.order.length) return -1;
  return layout.order[position];
}

/** Outline one map of the grid (the selected unit). */
export function outline(canvas, layout, index, color = "#f5a623") {
  const position = layout.order.indexOf(index);
  if (position < 0) return;
  const context = canvas.getContext("2d");
  const step = layout.tile + layout.gap;
  context.strokeStyle = color;
  context.lineWidth = 2;
  context.strokeRect((position % layout.columns) * step + 1, Math.floor(position / layout.columns) * step + 1, layout.tile - 2, layout.tile - 2);
}

/** One map [height, width] drawn into a canvas at its own resolution (CSS scales it up, pixelated). */
export function drawMap(canvas, values, height, width, scale = scaleOf(values)) {
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  paintTile(image, values, 0, height, width, scale);
  context.putImageData(image, 0, 0);
  return scale;
}

/** RGB filters [count, 3, kh, kw] as color tiles, each scaled symmetrically to its own largest |weight| (gray
 * is zero), as the first-layer filter pictures of the literature. */
export function drawColorFilters(canvas, data, count, kh, kw, { tile, columns, gap = 3 }) {
  const rows = Math.ceil(count / columns);
  canvas.width = columns * (tile + gap) - gap;
  canvas.height = rows * (tile + gap) - gap;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  const scratch = document.createElement("canvas");
  scratch.width = kw;
  scratch.height = kh;
  const scratchContext = scratch.getContext("2d");
  const image = scratchContext.createImageData(kw, kh);
  const size = 3 * kh * kw;
  for (let f = 0; f < count; f += 1) {
    let extent = 0;
    for (let i = 0; i < size; i += 1) extent = Math.max(extent, Math.abs(data[f * size + i]));
    extent ||= 1;
    for (let p = 0; p < kh * kw; p += 1) {
      for (let c = 0; c < 3; c += 1) image.data[p * 4 + c] = 127.5 + (127.5 * data[f * size + c * kh * kw + p]) / extent;
      image.data[p * 4 + 3] = 255;
    }
    scratchContext.putImageData(image, 0, 0);
    context.drawImage(scratch, (f % columns) * (tile + gap), Math.floor(f / columns) * (tile + gap), tile, tile);
  }
  return { tile, gap, columns, order: Array.from({ length: count }, (_, i) => i), count };
}
