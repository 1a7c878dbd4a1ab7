// The Models page: the model library (sizes, details, damaged state, free disk), and for the
// owner: upload from this computer (resumable, in 8 MiB chunks, with a progress bar), import
// from a USB stick (a notice appears when one is plugged in), rename, make default, delete,
// check all models (scrub).

import { api, putBytes } from "./api.js";
import { h, fill, bytes, when, statusLine } from "./dom.js";

const CHUNK = 8 * 1024 * 1024;

export async function modelsPage({ session }) {
  const owner = session.user.role === "owner";
  const status = statusLine();
  const summary = h("p", { class: "hint" });
  const list = h("ul", { class: "cards", "aria-label": "Installed models" });
  const timers = new Set();
  let uploading = null; // AbortController of a running upload
  let cancelled = false; // the person pressed Cancel (leaving the page keeps the partial file)
  let alive = true;

  async function load() {
    try {
      const r = await api("GET", "/ui/models");
      summary.textContent = "Free disk: " + bytes(r.disk && r.disk.free) + " of " + bytes(r.disk && r.disk.total) +
        " · Free memory: " + bytes(r.memory && r.memory.available);
      fill(list, r.models.map((m) => modelCard(m)));
      if (r.models.length === 0) list.append(h("li", { class: "hint", text: "No models are installed yet." }));
    } catch (e) { status.set("Could not list models: " + e.message, true); }
  }

  function modelCard(m) {
    const damaged = m.state === "damaged";
    const details = [
      ["Size", bytes(m.size)],
      ["Architecture", m.architecture || "–"],
      ["Parameters", m.parameters ? (m.parameters / 1e6).toFixed(0) + " M" : "–"],
      ["Quantization", m.quantization || "–"],
      ["Context", m.context_length ? m.context_length + " tokens" : "–"],
      ["Needs", bytes(m.needs_bytes)],
      ["Chat template", m.has_chat_template ? "yes" : "no (ChatML fallback)"],
      ["License", m.license || "–"],
      ["Source", m.source || "–"],
      ["Added", when(m.added_at)],
      ["Loaded", m.loaded + (m.load_error ? ": " + m.load_error : "")],
    ];
    const card = h("li", { class: "card model" + (damaged ? " damaged" : ""), "data-name": m.name },
      h("h3", {}, m.name, m.default ? h("span", { class: "badge", text: "default" }) : null,
        damaged ? h("span", { class: "badge bad", text: "damaged" }) : null),
      damaged ? h("p", { class: "status error", text: "This model's file failed its check and will not be loaded. Delete it and add it again." }) : null,
      h("details", {}, h("summary", { text: bytes(m.size) + " · " + (m.quantization || "") + " · " + (m.architecture || "") }),
        h("dl", { class: "facts" }, details.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]))));
    if (owner) {
      const cardStatus = statusLine();
      const actions = h("div", { class: "actions" });
      if (!m.default && !damaged) actions.append(h("button", { type: "button", class: "quiet", text: "Make default",
        onclick: () => change(m, { default: true }, cardStatus) }));
      if (m.source !== "path") {
        actions.append(h("button", { type: "button", class: "quiet", text: "Rename", onclick: () => {
          const name = prompt("New name for " + m.name + " (letters, digits, . _ -)", m.name);
          if (name && name !== m.name) change(m, { name }, cardStatus);
        } }));
        actions.append(h("button", { type: "button", class: "quiet danger-text", text: "Delete", onclick: async () => {
          if (!confirm("Delete the model " + m.name + "? Its file is removed from the box.")) return;
          try { await api("DELETE", "/ui/models/" + encodeURIComponent(m.name)); load(); } catch (e) { cardStatus.set(e.message, true); }
        } }));
      }
      card.append(actions, cardStatus);
    }
    return card;
  }

  async function change(m, fields, st) {
    try { await api("PATCH", "/ui/models/" + encodeURIComponent(m.name), fields); load(); } catch (e) { st.set(e.message, true); }
  }

  // ---- upload
  const file = h("input", { type: "file", id: "model-file", accept: ".gguf" });
  const nameIn = h("input", { id: "model-name", placeholder: "from the file name", maxlength: 64, pattern: "[A-Za-z0-9_\\-][A-Za-z0-9._\\-]*" });
  const progress = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const progressText = h("span", { class: "hint", "aria-live": "polite" });
  const upStatus = statusLine();
  const upBtn = h("button", { type: "submit", text: "Upload" });
  const cancelBtn = h("button", { type: "button", class: "quiet", text: "Cancel", hidden: true });
  const resumeList = h("ul", { class: "plain" });
  const uploadForm = h("form", { class: "card", id: "upload" },
    h("h3", { text: "Add a model from this computer" }),
    h("div", { class: "field" }, h("label", { for: "model-file", text: "GGUF file" }), file),
    h("div", { class: "field" }, h("label", { for: "model-name", text: "Name (optional)" }), nameIn),
    h("div", { class: "row" }, upBtn, cancelBtn), h("div", { class: "progress-row" }, progress, progressText), upStatus, resumeList);

  async function loadUploads() {
    try {
      const r = await api("GET", "/ui/models/uploads");
      fill(resumeList, r.uploads.map((u) => h("li", {},
        "Unfinished: " + u.filename + " (" + bytes(u.received) + " of " + bytes(u.size) + ") — pick the same file and press Upload to resume. ",
        h("button", { type: "button", class: "quiet", text: "Discard", onclick: async () => {
          try { await api("DELETE", "/ui/models/uploads/" + u.id); loadUploads(); } catch (e) { upStatus.set(e.message, true); }
        } }))));
      return r.uploads;
    } catch { return []; }
  }

  uploadForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = file.files && file.files[0];
    if (!f) { upStatus.set("Pick a .gguf file first.", true); return; }
    if (!nameIn.checkValidity()) { nameIn.reportValidity(); return; }
    uploading = new AbortController();
    cancelled = false;
    const signal = uploading.signal;
    upBtn.disabled = true; cancelBtn.hidden = false; progress.hidden = false;
    upStatus.set("");
    let up = null;
    try {
      const open = (await loadUploads()).find((u) => u.filename === f.name && u.size === f.size);
      up = open || (await api("POST", "/ui/models/uploads", { filename: f.name, size: f.size })).upload;
      let offset = up.received;
      const show = (n) => {
        progress.value = n / (f.size || 1);
        progressText.textContent = bytes(n) + " of " + bytes(f.size) + " (" + Math.floor(100 * n / (f.size || 1)) + " %)";
      };
      show(offset);
      while (offset < f.size) {
        if (!alive) return;
        const end = Math.min(offset + CHUNK, f.size);
        try {
          const r = await putBytes("/ui/models/uploads/" + up.id + "?offset=" + offset, f.slice(offset, end),
            (n) => show(offset + n), signal);
          offset = r.upload.received;
        } catch (e) {
          if (e.name === "AbortError" || (e.code !== "network" && e.code !== "offset_mismatch")) throw e;
          // Dropped connection or a different offset: ask the box where it stopped and go on.
          await new Promise((r) => setTimeout(r, 1000));
          offset = (await api("GET", "/ui/models/uploads/" + up.id)).upload.received;
        }
        show(offset);
      }
      progressText.textContent = "Checking the file…";
      const body = nameIn.value.trim() ? { name: nameIn.value.trim() } : {};
      const r = await api("POST", "/ui/models/uploads/" + up.id + "/finish", body, signal);
      upStatus.set("Added " + r.model.name + ".");
      file.value = ""; nameIn.value = "";
      progressText.textContent = "";
      load();
    } catch (e) {
      if (e.name === "AbortError") {
        if (up && cancelled) await api("DELETE", "/ui/models/uploads/" + up.id).catch(() => {});
        upStatus.set("Upload cancelled.");
      } else upStatus.set(e.message, true);
      progressText.textContent = "";
    } finally {
      uploading = null;
      upBtn.disabled = false; cancelBtn.hidden = true; progress.hidden = true;
      if (alive) loadUploads();
    }
  });
  cancelBtn.addEventListener("click", () => { if (uploading) { cancelled = true; uploading.abort(); } });

  // ---- USB import
  const mediaList = h("ul", { class: "plain", "aria-label": "Model files on removable media" });
  const importList = h("ul", { class: "plain", "aria-label": "Imports" });
  const usbStatus = statusLine();
  const usbNotice = statusLine();
  usbNotice.id = "usb-notice";
  usbNotice.classList.add("notice");
  const usb = h("section", { class: "card", id: "usb" },
    h("h3", { text: "Import from a USB stick" }), mediaList, importList, usbStatus);

  // The box watches media_dir (a stick plugged in shows up within seconds); this page asks
  // every 2 s and redraws only when the watcher's generation moves.
  let mediaGeneration = null;
  async function loadMedia() {
    try {
      const r = await api("GET", "/ui/models/media");
      if (r.generation !== undefined && r.generation === mediaGeneration) return;
      const seenBefore = mediaGeneration !== null;
      mediaGeneration = r.generation;
      const n = r.files.length;
      if (n > 0) usbNotice.set("USB stick found: " + n + (n === 1 ? " model" : " models") + " to import (below).");
      else usbNotice.set(seenBefore && !usbNotice.hidden ? "The USB stick was removed." : "");
      fill(mediaList, r.files.map((f) => h("li", {}, h("span", { class: "path", text: f.path + " (" + bytes(f.size) + ") " }),
        h("button", { type: "button", class: "quiet", text: "Import", onclick: async () => {
          try { await api("POST", "/ui/models/media/import", { path: f.path }); loadImports(); } catch (e) { usbStatus.set(e.message, true); }
        } }))));
      if (r.files.length === 0) mediaList.append(h("li", { class: "hint", text: "No .gguf files found on plugged-in media (" + r.media_dir + ")." }));
    } catch (e) { fill(mediaList, h("li", { class: "hint", text: "Removable media: " + e.message })); }
  }
  async function loadImports() {
    let running = false;
    try {
      const r = await api("GET", "/ui/models/imports");
      fill(importList, r.imports.map((i) => {
        const active = i.state === "copying" || i.state === "verifying";
        running = running || active;
        return h("li", {}, i.path + ": " + i.state + (i.error ? " — " + i.error.message : ""),
          active ? h("progress", { max: 1, value: i.size ? i.copied / i.size : 0, "aria-label": "Import progress of " + i.path }) : null,
          active ? h("button", { type: "button", class: "quiet", text: "Cancel", onclick: () =>
            api("DELETE", "/ui/models/imports/" + i.id).then(loadImports, (e) => usbStatus.set(e.message, true)) }) : null);
      }));
    } catch { /* shown by loadMedia */ }
    if (running && alive) { const t = setTimeout(() => { timers.delete(t); loadImports(); load(); }, 1000); timers.add(t); }
  }

  // ---- scrub
  const scrubText = h("span", { class: "hint" });
  const scrubBtn = h("button", { type: "button", class: "quiet", text: "Check all models now" });
  async function loadScrub() {
    try {
      const s = (await api("GET", "/ui/models/scrub")).scrub;
      scrubText.textContent = s.running ? "Checking… (" + s.checked + " done) " :
        s.finished_at ? "Last check " + when(s.finished_at) + ": " + (s.damaged.length ? "damaged: " + s.damaged.join(", ") : "all fine") + ". " : "";
      if (s.running && alive) { const t = setTimeout(() => { timers.delete(t); loadScrub(); }, 2000); timers.add(t); }
    } catch { scrubText.textContent = ""; }
  }
  scrubBtn.addEventListener("click", async () => {
    try { await api("POST", "/ui/models/scrub"); loadScrub(); } catch (e) { status.set(e.message, true); }
  });

  const el = h("div", { class: "page" }, h("h2", { text: "Models" }), summary, owner ? usbNotice : null, status, list,
    owner ? [uploadForm, usb, h("p", {}, scrubText, scrubBtn)] : h("p", { class: "hint", text: "The owner adds and removes models." }));
  await load();
  if (owner) { loadUploads(); loadMedia(); loadImports(); loadScrub(); }
  const poll = setInterval(() => { if (owner) loadMedia(); }, 2000);

  return {
    el, title: "Models",
    unmount() {
      alive = false;
      clearInterval(poll);
      for (const t of timers) clearTimeout(t);
      // A running upload goes on in the background of this page only; leaving stops it, the
      // box keeps the partial file for a resume.
      if (uploading) uploading.abort();
    },
  };
}
