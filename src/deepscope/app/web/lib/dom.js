// A few DOM helpers: the views build their markup with h() rather than a framework.

/** h("div.card#main", {onclick, title, style: {...}, dataset: {...}}, child, [children], "text") -> Element. */
export function h(selector, attributes = {}, ...children) {
  if (attributes === null || attributes === undefined) {
    attributes = {};
  } else if (attributes instanceof Node || typeof attributes !== "object" || Array.isArray(attributes)) {
    children.unshift(attributes);
    attributes = {};
  }
  const [tag, ...rest] = selector.split(/(?=[.#])/);
  const element = document.createElement(tag || "div");
  for (const part of rest) {
    if (part[0] === ".") element.classList.add(part.slice(1));
    else element.id = part.slice(1);
  }
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "style" && typeof value === "object") Object.assign(element.style, value);
    else if (key === "dataset") Object.assign(element.dataset, value);
    else if (key === "class") element.className = value;
    else if (key in element && typeof value !== "string") element[key] = value;
    else element.setAttribute(key, value === true ? "" : value);
  }
  append(element, children);
  return element;
}

const SVG_NAMESPACE = "http://www.w3.org/2000/svg";

/** svg("rect", {x, y, onclick}, ...children) -> an SVG element; null or undefined attributes are left out. */
export function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG_NAMESPACE, tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else element.setAttribute(key, value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) element.append(child);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** An error where a result would have been: the server's sentence, nothing else. */
export function failure(error) {
  return h("div.failure", { role: "alert" }, error?.message ?? String(error));
}

/** A progress bar with a message, for jobs. update(progress 0..1, message). */
export function progressBar(label) {
  const bar = h("div.progress-fill");
  const text = h("span.progress-text", label);
  const element = h("div.progress", { role: "progressbar" }, bar, text);
  return {
    element,
    update(progress, message) {
      bar.style.width = `${Math.round(Math.max(0, Math.min(1, progress)) * 100)}%`;
      element.setAttribute("aria-valuenow", String(Math.round(progress * 100)));
      text.textContent = message ? `${label}: ${message}` : `${label} ${Math.round(progress * 100)}%`;
    },
  };
}

/** 1234567 -> "1.23M", 12345 -> "12.3k". */
export function compact(count) {
  if (count >= 1e6) return `${(count / 1e6).toFixed(count >= 1e7 ? 1 : 2)}M`;
  if (count >= 1e3) return `${(count / 1e3).toFixed(count >= 1e4 ? 0 : 1)}k`;
  return String(count);
}

/** [1, 32, 112, 112] -> "32×112×112" (the batch dimension dropped). */
export function shapeText(shape) {
  return shape && shape.length ? shape.slice(1).join("×") : "";
}

/** Run `work` for the latest call only: an earlier call still running sees `isStale()` turn true. */
export function latest() {
  let generation = 0;
  return () => {
    generation += 1;
    const mine = generation;
    return () => mine !== generation;
  };
}
