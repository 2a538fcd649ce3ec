// The view state lives in the URL's query string, one key per piece of state, so that every view is a link:
// the back button walks through it and a copied URL opened in a fresh page shows the same view. Views never
// call each other; they read this state, write it with set(), and redraw when subscribe() says it changed.
//
// Keys: model, view (architecture | layer | unit | image | dataset | compare), layer, unit, image, methods
// (comma-separated), target (a class index or "top1"), sel (the dataset selection: "cell:TRUE,PRED" or
// "lasso:x,y;x,y;..." in layout coordinates), layout (tsne | umap | pca), color (label | prediction | correct |
// confidence), opacity (0..100), sort (strength | index), open (expanded graph blocks), b (the second model of
// a comparison), mode (the architecture's "clusters" mode) and k (its clusters per layer), concepts (how many
// visual concepts the layer view shows). Unknown keys (a server token) are kept as they are.

const listeners = new Set();
let current = read();

function read() {
  return Object.fromEntries(new URLSearchParams(window.location.search));
}

function clean(state) {
  return Object.fromEntries(
    Object.entries(state).filter(([, value]) => value !== undefined && value !== null && value !== ""),
  );
}

/** The query string ("?a=1&b=2", or "" when empty) of a state. */
export function query(state) {
  const text = new URLSearchParams(clean(state)).toString();
  return text ? `?${text}` : "";
}

/** A copy of the current state. */
export function get() {
  return { ...current };
}

/** A link to the current state changed by `patch` (for <a href>, so that middle-click opens a tab). */
export function href(patch) {
  return window.location.pathname + query({ ...current, ...patch });
}

/** Change the state: a new history entry, or the current one replaced (`replace`) for changes that the back
 * button should not step through one at a time (a slider being dragged). Keys set to null or "" are removed. */
export function set(patch, { replace = false } = {}) {
  const next = clean({ ...current, ...patch });
  const changed = changedKeys(current, next);
  if (changed.size === 0) return;
  const previous = current;
  current = next;
  const url = window.location.pathname + query(next);
  if (replace) window.history.replaceState(null, "", url);
  else window.history.pushState(null, "", url);
  notify(changed, previous);
}

/** Call `listener(state, changedKeys, previousState)` on every change, back and forward buttons included;
 * returns the function that stops it. */
export function subscribe(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function changedKeys(before, after) {
  const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
  return new Set([...keys].filter((key) => before[key] !== after[key]));
}

function notify(changed, previous) {
  for (const listener of [...listeners]) listener(get(), changed, previous);
}

window.addEventListener("popstate", () => {
  const previous = current;
  current = read();
  const changed = changedKeys(previous, current);
  if (changed.size) notify(changed, previous);
});

/** The list stored under a comma-separated key. */
export function list(value) {
  return value ? value.split(",").filter(Boolean) : [];
}
