// Talking to the server: JSON, DSA1 arrays, uploads and jobs. Every failure becomes an ApiError carrying the
// server's one-sentence message, which the views show where the result would have been.

import { decode } from "./arrays.js";

const token = new URLSearchParams(window.location.search).get("token");

export class ApiError extends Error {
  constructor(status, message, kind) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

function headers(extra = {}) {
  return token ? { Authorization: `Bearer ${token}`, ...extra } : extra;
}

/** A URL for an <img src> or a link: the token travels in the query when the page has one. */
export function url(path) {
  if (!token || !path.startsWith("/api/")) return path;
  return `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

/** "/api/x" with the query parameters that have a value. */
export function path(base, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, value);
  }
  const text = query.toString();
  return text ? `${base}?${text}` : base;
}

async function request(target, options = {}) {
  let response;
  try {
    response = await fetch(target, { ...options, headers: headers(options.headers) });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "The deepscope server does not answer: is `deepscope serve` still running?", "Network");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText} from ${target}`;
    let kind = "HTTPError";
    try {
      const body = await response.json();
      message = body.error ?? body.detail ?? message;
      if (typeof message !== "string") message = JSON.stringify(message);
      kind = body.kind ?? kind;
    } catch {
      // a body that is not JSON (a proxy's page): the status line says enough
    }
    throw new ApiError(response.status, message, kind);
  }
  return response;
}

const cache = new Map();

/** GET a JSON document. `cached`: keep the answer for the page's lifetime (graphs, labels, layer lists). */
export async function json(target, { cached = false, signal } = {}) {
  if (cached && cache.has(target)) return cache.get(target);
  const pending = request(target, { signal }).then((response) => response.json());
  if (cached) {
    cache.set(target, pending);
    pending.catch(() => cache.delete(target));
  }
  return pending;
}

/** GET a DSA1 binary array -> {dtype, shape, data}. */
export async function array(target, { cached = false, signal } = {}) {
  if (cached && cache.has(target)) return cache.get(target);
  const pending = request(target, { signal })
    .then((response) => response.arrayBuffer())
    .then(decode);
  if (cached) {
    cache.set(target, pending);
    pending.catch(() => cache.delete(target));
  }
  return pending;
}

/** POST or PUT a JSON body; the JSON answer. */
export async function send(target, body, method = "POST") {
  const response = await request(target, {
    method,
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body ?? {}),
  });
  return response.json();
}

/** Upload one file (multipart, field "file"); the server's answer {id, url, width, height}. */
export async function upload(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const response = await request("/api/images", { method: "POST", body: form });
  return response.json();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Start a job (POST `target` with `body`), follow it, call `onProgress(progress 0..1, message)` on the way;
 * resolves to the job's result, rejects with its message when it failed. */
export async function job(target, body, onProgress = () => {}) {
  const started = await send(target, body);
  return follow(started.job, onProgress);
}

/** Follow a running job until it ends. */
export async function follow(id, onProgress = () => {}) {
  let wait = 150;
  for (;;) {
    const state = await json(`/api/jobs/${encodeURIComponent(id)}`);
    onProgress(state.progress ?? 0, state.message ?? "");
    if (state.state === "done") return state.result;
    if (state.state === "failed") throw new ApiError(500, state.message || "the job failed", "JobFailed");
    await sleep(wait);
    wait = Math.min(wait * 1.5, 1000);
  }
}
