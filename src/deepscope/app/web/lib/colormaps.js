// Colormaps and the drawing of float maps, matching deepscope.render.heatmap: signed maps diverging (RdBu_r)
// around zero and scaled by a percentile of |v|; CAMs and non-negative maps sequential (inferno) from the minimum
// to a percentile. Overlays blend each pixel's color, in proportion to its magnitude, into a gray copy of the
// photo, so that zero leaves the photo visible. The colormaps come from d3-scale-chromatic (vendored).

const d3 = globalThis.d3;

function table(interpolate) {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i += 1) {
    const color = d3.rgb(interpolate(i / 255));
    lut.set([color.r, color.g, color.b], i * 3);
  }
  return lut;
}

export const COLORMAPS = {
  inferno: table(d3.interpolateInferno),
  RdBu_r: table((t) => d3.interpolateRdBu(1 - t)),
  viridis: table(d3.interpolateViridis),
};

/** A CSS linear-gradient of a colormap (for color bars). */
export function gradient(name, direction = "to right") {
  const lut = COLORMAPS[name];
  const stops = [];
  for (let i = 0; i <= 8; i += 1) {
    const at = Math.round((i / 8) * 255) * 3;
    stops.push(`rgb(${lut[at]},${lut[at + 1]},${lut[at + 2]}) ${i * 12.5}%`);
  }
  return `linear-gradient(${direction}, ${stops.join(", ")})`;
}

/** The `q`-th percentile (0..100) of values, interpolated between ranks as NumPy does by default. */
export function percentile(values, q) {
  const sorted = Float64Array.from(values).sort();
  if (sorted.length === 0) return 0;
  const rank = (q / 100) * (sorted.length - 1);
  const low = Math.floor(rank);
  const high = Math.min(low + 1, sorted.length - 1);
  return sorted[low] + (sorted[high] - sorted[low]) * (rank - low);
}

/** Values -> {position (colormap position 0..1), magnitude (0..1), ends [low, high]}, as render.heatmap.normalize. */
export function normalize(values, signed, clip = 99.5) {
  const count = values.length;
  const position = new Float32Array(count);
  const magnitude = new Float32Array(count);
  if (signed) {
    let extent = percentile(values.map(Math.abs), clip);
    if (!extent) extent = values.reduce((a, b) => Math.max(a, Math.abs(b)), 0) || 1;
    for (let i = 0; i < count; i += 1) {
      const scaled = Math.max(-1, Math.min(1, values[i] / extent));
      position[i] = (scaled + 1) / 2;
      magnitude[i] = Math.abs(scaled);
    }
    return { position, magnitude, ends: [-extent, extent] };
  }
  let low = Infinity;
  for (let i = 0; i < count; i += 1) low = Math.min(low, values[i]);
  let high = percentile(values, clip);
  if (high <= low) high = values.reduce((a, b) => Math.max(a, b), -Infinity);
  for (let i = 0; i < count; i += 1) {
    const scaled = high > low ? Math.max(0, Math.min(1, (values[i] - low) / (high - low))) : 0;
    position[i] = scaled;
    magnitude[i] = scaled;
  }
  return { position, magnitude, ends: [low, high] };
}

/** Distinct colors for `count` classes, as "#rrggbb" (what regl-scatterplot reads): Tableau 10 up to ten,
 * evenly spaced hues beyond. */
export function categorical(count) {
  if (count <= 10) return d3.schemeTableau10.slice(0, Math.max(count, 1));
  return Array.from({ length: count }, (_, i) => d3.color(d3.interpolateSinebow(i / count)).formatHex());
}

/** `steps` colors of a colormap as "#rrggbb", low to high. */
export function ramp(name, steps) {
  const lut = COLORMAPS[name];
  return Array.from({ length: steps }, (_, i) => {
    const at = Math.round((i / (steps - 1)) * 255) * 3;
    return d3.rgb(lut[at], lut[at + 1], lut[at + 2]).formatHex();
  });
}

/** A confusion-matrix cell on the dark page: agreement (the diagonal) in green, confusion in red, each as
 * strong as the cell's share of its row; an empty cell is the panel color. */
export function confusionColor(count, rowTotal, diagonal) {
  if (!count) return "#1d222a";
  const t = 0.3 + 0.7 * (rowTotal ? count / rowTotal : 0);
  const [r, g, b] = diagonal ? [62, 207, 142] : [255, 107, 107];
  const mix = (from, to) => Math.round(from + (to - from) * t);
  return `rgb(${mix(29, r)},${mix(34, g)},${mix(42, b)})`;
}

/** The map's colors, with the magnitude as alpha: over the gray photo this is render.heatmap's blend, and the
 * slider scales it through the canvas's CSS opacity without repainting. */
export function paintOverlay(canvas, width, height, { position, magnitude }, colormap) {
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  const lut = COLORMAPS[colormap];
  for (let i = 0; i < width * height; i += 1) {
    const at = Math.round(position[i] * 255) * 3;
    image.data[i * 4] = lut[at];
    image.data[i * 4 + 1] = lut[at + 1];
    image.data[i * 4 + 2] = lut[at + 2];
    image.data[i * 4 + 3] = Math.round(magnitude[i] * 255);
  }
  context.putImageData(image, 0, 0);
}

/** A gray copy of the photo (0.25 + 0.6 luminance, as render.heatmap), so that the colors read over any picture. */
export function paintGray(canvas, pixels) {
  canvas.width = pixels.width;
  canvas.height = pixels.height;
  const out = new ImageData(pixels.width, pixels.height);
  const p = pixels.data;
  for (let i = 0; i < p.length; i += 4) {
    const gray = 255 * 0.25 + 0.6 * (0.299 * p[i] + 0.587 * p[i + 1] + 0.114 * p[i + 2]);
    out.data[i] = gray;
    out.data[i + 1] = gray;
    out.data[i + 2] = gray;
    out.data[i + 3] = 255;
  }
  canvas.getContext("2d").putImageData(out, 0, 0);
}
