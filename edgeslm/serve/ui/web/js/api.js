// Calls to this server, each carrying the key the person gave (kept in this tab's session storage).
const KEY = "edgeslm.key";

export const getKey = () => sessionStorage.getItem(KEY);
export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(json) {
  const out = {};
  const key = getKey();
  if (key) out.Authorization = `Bearer ${key}`;
  if (json) out["Content-Type"] = "application/json";
  return out;
}

async function errorOf(res) {
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (typeof body.error === "string") message = body.error;
    else if (body.error && typeof body.error.message === "string") message = body.error.message;
  } catch {
    // not JSON: the status line says enough
  }
  return new ApiError(res.status, message);
}

export async function call(method, path, body, signal) {
  const res = await fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
    credentials: "omit",
  });
  if (!res.ok) throw await errorOf(res);
  return res;
}

export const getJSON = async (path) => (await call("GET", path)).json();
export const postJSON = async (path, body) => (await call("POST", path, body)).json();

// The objects of a streamed NDJSON answer (Ollama's /api/chat, /api/pull), as they arrive.
export async function* ndjson(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 1);
      if (line) yield parseLine(line);
    }
  }
  if (buffer.trim()) yield parseLine(buffer.trim());
}

function parseLine(line) {
  const obj = JSON.parse(line);
  if (obj && typeof obj.error === "string") throw new ApiError(500, obj.error);
  return obj;
}

// A file from the server (its Authorization header cannot ride on a plain link), saved by the browser.
export async function download(path, filename) {
  const blob = await (await call("GET", path)).blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
