// Talks to the box's /ui routes with the session cookie and the session's CSRF token.
// Errors come back as ApiError with the server's stable `code`.

let csrf = null;
let onUnauthenticated = () => {};

export function setCsrf(token) { csrf = token || null; }
export function whenUnauthenticated(f) { onUnauthenticated = f; }

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(method, hasBody) {
  const out = {};
  if (hasBody) out["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD" && csrf) out["X-CSRF-Token"] = csrf;
  return out;
}

async function failure(res) {
  let body = null;
  try { body = await res.json(); } catch { body = null; }
  const e = body && body.error;
  const err = new ApiError(res.status, (e && e.code) || "http_" + res.status,
    (e && e.message) || res.statusText || "request failed");
  if (res.status === 401 && err.code !== "invalid_credentials") onUnauthenticated(err);
  return err;
}

/** One JSON request; resolves to the parsed body (null for 204). */
export async function api(method, path, body, signal) {
  const res = await fetch(path, {
    method,
    headers: headers(method, body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    signal,
  });
  if (!res.ok) throw await failure(res);
  if (res.status === 204) return null;
  return res.json();
}

/** POSTs `body` and calls onEvent with each parsed `data:` event of the text/event-stream answer. */
export async function stream(path, body, signal, onEvent) {
  const res = await fetch(path, {
    method: "POST",
    headers: headers("POST", true),
    body: JSON.stringify(body),
    credentials: "same-origin",
    signal,
  });
  if (!res.ok) throw await failure(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data && data !== "[DONE]") onEvent(JSON.parse(data));
    }
  }
}

/**
 * PUTs one chunk of raw bytes with progress (fetch cannot report upload progress). Resolves to
 * the parsed JSON answer; rejects with ApiError, or with an AbortError when `signal` fires.
 */
export function putBytes(path, blob, onProgress, signal) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", path);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    if (csrf) xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.upload.onprogress = (ev) => onProgress(ev.loaded);
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { body = null; }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const e = body && body.error;
      reject(new ApiError(xhr.status, (e && e.code) || "http_" + xhr.status, (e && e.message) || "upload failed"));
    };
    xhr.onerror = () => reject(new ApiError(0, "network", "the connection to the box was lost"));
    xhr.onabort = () => reject(new DOMException("upload cancelled", "AbortError"));
    if (signal) {
      if (signal.aborted) { reject(new DOMException("upload cancelled", "AbortError")); return; }
      signal.addEventListener("abort", () => xhr.abort(), { once: true });
    }
    xhr.send(blob);
  });
}
