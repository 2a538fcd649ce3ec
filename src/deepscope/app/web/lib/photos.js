// Images by id, loaded once per page, and the part of one that the model saw at the model's input size.

import * as api from "./api.js";

const loaded = new Map();

/** The HTMLImageElement of an image id (bundled, upload or dataset sample), decoded. */
export function photo(id) {
  if (!loaded.has(id)) {
    const image = new Image();
    image.decoding = "async";
    image.src = api.url(`/api/images/${encodeURIComponent(id)}`);
    const ready = image.decode().then(() => image);
    ready.catch(() => loaded.delete(id));
    loaded.set(id, ready);
  }
  return loaded.get(id);
}

/** The pixels (ImageData, width x height) of the box [left, top, right, bottom] of image `id`, resized: the
 * model's view of the photo, on which its maps lie. */
export async function photoPixels(id, box, width, height) {
  const image = await photo(id);
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const [left, top, right, bottom] = box;
  context.drawImage(image, left, top, right - left, bottom - top, 0, 0, width, height);
  return context.getImageData(0, 0, width, height);
}
