// The REST API as the page uses it: the stored key in every request's Authorization header, errors
// as ApiError (status + the API's detail), and a search's Server-Sent Events read with fetch (an
// EventSource cannot send the header, and the key must never sit in a URL that servers log).

const KEY_STORAGE = "darts-service.key";

export class ApiError extends Error {
  constructor(status, detail) {
    super(ApiError.message(status, detail));
    this.status = status;
    this.detail = detail;
  }

  static message(status, detail) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((item) => `${fieldPath(item.loc || []) || "body"}: ${item.msg}`).join("; ");
    }
    return detail ? JSON.stringify(detail) : `HTTP ${status}`;
  }
}

/** ["body", "training", "epochs"] -> "training.epochs" (the name of the form field). */
export function fieldPath(loc) {
  return loc.filter((part, index) => !(index === 0 && ["body", "query", "path"].includes(part))).join(".");
}

export const auth = {
  get key() {
    return localStorage.getItem(KEY_STORAGE);
  },
  set key(value) {
    if (value) localStorage.setItem(KEY_STORAGE, value);
    else localStorage.removeItem(KEY_STORAGE);
  },
  /** Move `?token=` of the login URL `darts-service up` prints into storage, and out of the address bar. */
  takeTokenFromUrl() {
    const url = new URL(location.href);
    const token = url.searchParams.get("token");
    if (token === null) return false;
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
    if (token) this.key = token;
    return Boolean(token);
  },
  headers(extra = {}) {
    const key = this.key;
    return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
  },
};

/** Called with the ApiError of every 401, so the page can ask for a key again. */
export let onUnauthorized = () => {};
export function setOnUnauthorized(handler) {
  onUnauthorized = handler;
}

async function failure(response) {
  let detail = null;
  try {
    detail = (await response.json()).detail;
  } catch {
    detail = null;
  }
  const error = new ApiError(response.status, detail);
  if (response.status === 401) onUnauthorized(error);
  return error;
}

/** fetch(path) with the key; JSON in and out; throws ApiError on a status >= 400. */
export async function api(path, { method = "GET", json, signal, accept = "application/json" } = {}) {
  const headers = auth.headers({ Accept: accept });
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body, signal });
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  return accept === "application/json" ? response.json() : response.text();
}

/** GET a binary resource (the trained weights) with the key, as a Blob; throws ApiError on >= 400. */
export async function apiBlob(path) {
  const response = await fetch(path, { headers: auth.headers({ Accept: "application/octet-stream" }) });
  if (!response.ok) throw await failure(response);
  return response.blob();
}

/** POST a file as the raw body (streamed by the server); `onProgress(loaded, total)` as it goes. */
export function upload(file, { name, onProgress } = {}) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    const query = new URLSearchParams({ filename: file.name });
    if (name) query.set("name", name);
    request.open("POST", `/datasets?${query}`);
    for (const [header, value] of Object.entries(auth.headers({ "Content-Type": "application/octet-stream" }))) {
      request.setRequestHeader(header, value);
    }
    request.upload.addEventListener("progress", (event) => {
      if (onProgress && event.lengthComputable) onProgress(event.loaded, event.total);
    });
    request.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch {
        body = null;
      }
      if (request.status >= 200 && request.status < 300) resolve(body);
      else {
        const error = new ApiError(request.status, body && body.detail);
        if (request.status === 401) onUnauthorized(error);
        reject(error);
      }
    });
    request.addEventListener("error", () => reject(new ApiError(0, "the upload could not reach the server")));
    request.send(file);
  });
}

/** A text/event-stream parser: feed it lines, get {event, data, id} objects at blank lines. */
export class SSEParser {
  constructor(lastEventId = null) {
    this.lastEventId = lastEventId;
    this.event = "";
    this.data = [];
  }

  feed(line) {
    if (line === "") {
      const event = { event: this.event || "message", data: this.data.join("\n"), id: this.lastEventId };
      const dispatch = this.data.length > 0;
      this.event = "";
      this.data = [];
      return dispatch ? event : null;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    return null;
  }
}

/**
 * Read /searches/{id}/events until the server ends it; `onEvent({event, data, id})` per event.
 * Resolves when the stream ends; rejects when it cannot be read (the caller falls back to polling).
 */
export function readEvents(searchId, options) {
  return readEventStream(`/searches/${encodeURIComponent(searchId)}/events`, options);
}

/** Read the event stream at `path` (a search's or a training's) as `readEvents` does. */
export async function readEventStream(path, { lastEventId, signal, onEvent }) {
  const headers = auth.headers({ Accept: "text/event-stream" });
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  const response = await fetch(path, { headers, signal });
  if (!response.ok) throw await failure(response);
  if (!response.body) throw new ApiError(0, "this browser cannot stream a response body");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SSEParser(lastEventId);
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return parser.lastEventId;
    buffer += value;
    // A "\r" at the end may be the first half of a "\r\n" split across two reads: keep it.
    const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
    const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
    buffer = lines.pop() + buffer.slice(cut);
    for (const line of lines) {
      const event = parser.feed(line);
      if (event) onEvent(event);
    }
  }
}
