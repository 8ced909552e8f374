// The server's public API, as the page calls it: relative URLs (so the page works behind a
// reverse proxy's prefix too), the person's key as `Authorization: Bearer`, and every error
// turned into the API's own message, whichever API family's shape it came in.

const KEY_NAME = "embedserve.playground.key";

export function apiKey() {
  return sessionStorage.getItem(KEY_NAME) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_NAME, key);
  else sessionStorage.removeItem(KEY_NAME);
}

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code || null;
  }
  toString() {
    return `${this.status}: ${this.message}`;
  }
}

// OpenAI's {"error": {"message"}}, TEI's and KServe's {"error": "..."}, FastAPI's {"detail"}.
function messageOf(body, fallback) {
  if (body && typeof body === "object") {
    if (body.error && typeof body.error === "object" && body.error.message) return [body.error.message, body.error.code];
    if (typeof body.error === "string") return [body.error, body.error_type];
    if (typeof body.detail === "string") return [body.detail, null];
  }
  return [fallback, null];
}

function headers(extra) {
  const out = { Accept: "application/json", ...extra };
  const key = apiKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

// `path` is relative to the server's root ("v1/models"); the page lives at <root>/playground.
export async function request(method, path, body, { text = false, signal } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `the server did not answer (${err.message})`);
  }
  const raw = await response.text();
  if (!response.ok) {
    let parsed = null;
    try { parsed = JSON.parse(raw); } catch { /* not JSON: the status line says it */ }
    const [message, code] = messageOf(parsed, raw || response.statusText || "request failed");
    throw new ApiError(response.status, message, code);
  }
  return text ? raw : JSON.parse(raw);
}

export const get = (path, options) => request("GET", path, undefined, options);
export const post = (path, body, options) => request("POST", path, body, options);

// Every loaded model with what it can do, from GET /model/info (its `tasks`, read from the
// model's folder at load: embed, sparse, multivector, score). No model loaded is a 503 there:
// an empty list here.
export async function loadedModels() {
  try {
    const info = await get("model/info");
    return { models: info.loaded_models, default: info.model_name };
  } catch (err) {
    if (err.status === 503) return { models: [], default: null };
    throw err;
  }
}

export function hasTask(model, task) {
  return (model.tasks || []).includes(task);
}
