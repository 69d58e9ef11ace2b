// Shared by the playground and the evaluation page: the API key, authenticated fetches, errors
// in the API's own words, and Server-Sent Events read over fetch (EventSource cannot send an
// Authorization header, and a key in the URL would end up in logs and history).
"use strict";

const KEY_STORAGE = "gensvc.apiKey";

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(value) {
  if (value) localStorage.setItem(KEY_STORAGE, value);
  else localStorage.removeItem(KEY_STORAGE);
}

export function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's page): fall back to the status line
  }
  const error = body && body.error;
  if (error && error.message) return new ApiError(response.status, error.code, error.message, error.details);
  return new ApiError(response.status, "http_error", `${response.status} ${response.statusText}`);
}

/** fetch() with the API key; resolves to the Response, or throws ApiError with the API's message. */
export async function api(path, options = {}) {
  const headers = authHeaders(options.headers || {});
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.json) };
  }
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function apiJson(path, options = {}) {
  const response = await api(path, options);
  return response.status === 204 ? null : response.json();
}

/** An image the API serves (it may need the key) as a blob: URL for <img>. */
export async function imageUrl(path) {
  const response = await api(path);
  return URL.createObjectURL(await response.blob());
}

/**
 * Follow an SSE stream: calls onEvent(type, data) for each event until the stream ends or
 * `signal` aborts. Reconnects with Last-Event-ID after a dropped connection, as EventSource would.
 */
export async function followEvents(path, onEvent, signal) {
  let lastId = null;
  for (let attempt = 0; attempt < 20 && !signal.aborted; attempt++) {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (lastId) headers["Last-Event-ID"] = lastId;
    let ended = false;
    try {
      const response = await fetch(path, { headers, signal });
      if (!response.ok) throw await errorOf(response);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = parseFrame(frame);
          if (!event) continue;
          if (event.id) lastId = event.id;
          if (onEvent(event.type, event.data) === false) ended = true;
        }
        if (ended) break;
      }
    } catch (error) {
      if (signal.aborted || error instanceof ApiError) throw error;
    }
    if (ended) return;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function parseFrame(frame) {
  const event = { id: null, type: "message", data: "" };
  let hasData = false;
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") event.id = value;
    else if (field === "event") event.type = value;
    else if (field === "data") {
      event.data += (hasData ? "\n" : "") + value;
      hasData = true;
    }
  }
  if (!hasData) return null;
  try {
    event.data = JSON.parse(event.data);
  } catch {
    // leave it as text
  }
  return event;
}

/** Wire the shared API-key field (#api-key, #save-key) of a page. */
export function setupKeyField(onChange) {
  const input = document.getElementById("api-key");
  const button = document.getElementById("save-key");
  input.value = apiKey();
  button.addEventListener("click", () => {
    setApiKey(input.value.trim());
    button.textContent = "Saved";
    setTimeout(() => (button.textContent = "Save key"), 1200);
    if (onChange) onChange();
  });
}

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

export function showError(target, error) {
  target.textContent = error instanceof ApiError ? error.message : String(error);
  target.hidden = false;
}
