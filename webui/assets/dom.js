// Small DOM helpers shared by every page. Text always goes in through textContent; the only
// HTML ever inserted is a message's `html`, which the box renders and sanitizes (see chat.js).

/** Creates an element: h("button", {class: "x", onclick: f}, "Label", child...). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "value" || key === "checked" || key === "disabled" || key === "hidden") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces every child of `el`. */
export function fill(el, ...children) {
  el.textContent = "";
  append(el, children);
  return el;
}

let uid = 0;
/** A labelled form field: returns {row, input}. */
export function field(label, attrs, tag = "input") {
  const id = "f" + (++uid);
  const input = h(tag, { id, ...attrs });
  const row = h("div", { class: "field" }, h("label", { for: id, text: label }), input);
  return { row, input };
}

/** A status line for a form or a page: set(text, isError). */
export function statusLine() {
  const el = h("p", { class: "status", role: "status", hidden: true });
  el.set = (text, isError = false) => {
    el.textContent = text || "";
    el.hidden = !text;
    el.classList.toggle("error", !!isError);
  };
  return el;
}

const UNITS = ["B", "KB", "MB", "GB", "TB"];
/** 1536 -> "1.5 KB" (powers of 1024, as file managers show them). */
export function bytes(n) {
  if (typeof n !== "number" || !isFinite(n) || n < 0) return "–";
  let i = 0;
  while (n >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + " " + UNITS[i];
}

/** Seconds -> "3 d 4 h", "5 h 2 min", "42 s". */
export function duration(s) {
  if (typeof s !== "number" || !isFinite(s)) return "–";
  s = Math.floor(s);
  const d = Math.floor(s / 86400), hr = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  if (d) return d + " d " + hr + " h";
  if (hr) return hr + " h " + m + " min";
  if (m) return m + " min " + (s % 60) + " s";
  return s + " s";
}

/** Unix seconds -> a local date and time. */
export function when(unix) {
  if (typeof unix !== "number") return "–";
  return new Date(unix * 1000).toLocaleString();
}

/** Copies text; falls back to a hidden textarea where the Clipboard API is missing (plain HTTP). */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try { await navigator.clipboard.writeText(text); return true; } catch { /* fall back */ }
  }
  const ta = h("textarea", { class: "offscreen", readonly: true, "aria-hidden": "true" });
  ta.value = text;
  document.body.append(ta);
  ta.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch { ok = false; }
  ta.remove();
  return ok;
}

/** A definition list from [label, value] pairs. */
export function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.map(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
}

/** A model's state as a word, whether the box sends "ready" or {"state": "ready", ...}. */
export function stateWord(state) {
  if (state && typeof state === "object") return String(state.state || "");
  return state ? String(state) : "";
}
