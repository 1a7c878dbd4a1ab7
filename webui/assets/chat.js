// The chat page: the person's conversations (search, rename, delete), one conversation's
// messages, and the composer. Answers stream in as plain text (textContent); when an answer
// is done its server-rendered `html` replaces the text. That HTML is Markdown rendered and
// sanitized on the box (raw HTML from the model is escaped there), so it is safe to insert.

import { api, stream } from "./api.js";
import { h, fill, copyText, statusLine, stateWord } from "./dom.js";

export async function chatPage(ctx) {
  let conv = null;          // the open conversation, or null for a new one
  let running = null;       // AbortController of the answer being streamed
  let searchTimer = 0;
  let models = [];

  // ---- layout
  const search = h("input", { type: "search", placeholder: "Search titles", "aria-label": "Search conversations by title" });
  const list = h("ul", { class: "conv-list", "aria-label": "Conversations" });
  const newBtn = h("a", { class: "button", href: "#/chat", text: "New chat" });
  const side = h("aside", { class: "convs", id: "convs" }, newBtn, search, list);
  const toggle = h("button", { type: "button", class: "quiet convs-toggle", "aria-controls": "convs",
    "aria-expanded": "false", text: "Chats" });
  const title = h("h2", { class: "conv-title", id: "conv-title", text: "New chat" });
  const renameBtn = h("button", { type: "button", class: "quiet", text: "Rename", hidden: true });
  const deleteBtn = h("button", { type: "button", class: "quiet danger-text", text: "Delete", hidden: true });
  const head = h("div", { class: "thread-head" }, toggle, title, renameBtn, deleteBtn);

  const modelSel = h("select", { id: "model", name: "model" });
  const sysPrompt = h("textarea", { id: "system-prompt", rows: 2, maxlength: 8000,
    placeholder: "For example: Answer briefly, in French." });
  const optStatus = statusLine();
  const saveOpts = h("button", { type: "button", class: "quiet", text: "Save for this chat", hidden: true });
  const summary = h("summary", { text: "Model and system prompt" });
  const options = h("details", { class: "options" }, summary,
    h("div", { class: "field" }, h("label", { for: "model", text: "Model" }), modelSel),
    h("div", { class: "field" }, h("label", { for: "system-prompt", text: "System prompt (optional)" }), sysPrompt),
    saveOpts, optStatus);

  const notice = statusLine();
  const log = h("ol", { class: "log", id: "log", "aria-live": "polite", "aria-label": "Messages" });
  const prompt = h("textarea", { id: "prompt", rows: 2, placeholder: "Ask something…", maxlength: 100000 });
  const send = h("button", { type: "submit", id: "send", text: "Send" });
  const stop = h("button", { type: "button", id: "stop", class: "danger", text: "Stop", hidden: true });
  const composer = h("form", { class: "composer", id: "composer" },
    h("label", { for: "prompt", class: "sr-only", text: "Message" }), prompt, send, stop);
  const thread = h("section", { class: "thread", "aria-labelledby": "conv-title" }, head, options, notice, log, composer);
  const el = h("div", { class: "chat" }, side, thread);

  // ---- conversation list
  async function loadList() {
    const q = search.value.trim();
    try {
      const r = await api("GET", "/ui/conversations" + (q ? "?q=" + encodeURIComponent(q) : ""));
      fill(list, r.conversations.map((c) => h("li", {},
        h("a", { href: "#/chat/" + c.id, "data-id": c.id, "aria-current": conv && conv.id === c.id ? "page" : null,
          text: c.title || "Untitled" }))));
      if (r.conversations.length === 0) list.append(h("li", { class: "hint", text: q ? "No titles match." : "No conversations yet." }));
    } catch (e) {
      fill(list, h("li", { class: "status error", text: e.message }));
    }
  }
  function markCurrent() {
    for (const a of list.querySelectorAll("a")) {
      if (conv && a.dataset.id === String(conv.id)) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
  }
  search.addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(loadList, 200); });
  toggle.addEventListener("click", () => {
    const open = side.classList.toggle("open");
    toggle.setAttribute("aria-expanded", String(open));
  });
  list.addEventListener("click", () => { side.classList.remove("open"); toggle.setAttribute("aria-expanded", "false"); });

  // ---- models
  async function loadModels() {
    try {
      models = await installedModels();
    } catch (e) { models = []; notice.set("Could not list models: " + e.message, true); }
    fill(modelSel, models.map((m) => h("option", { value: m.id, disabled: !m.usable,
      text: m.usable ? m.id : m.id + " (" + m.state + ")" })));
    if (models.length === 0) notice.set("No models are installed yet. The owner can add one on the Models page.", true);
    syncModel();
  }
  function syncModel() {
    const want = conv && conv.model;
    if (want && models.some((m) => m.id === want)) modelSel.value = want;
    else {
      const first = models.find((m) => m.usable);
      if (first && (!modelSel.value || !models.some((m) => m.id === modelSel.value && m.usable))) modelSel.value = first.id;
    }
    showOptions();
  }

  function showOptions() {
    summary.textContent = "Model: " + (modelSel.value || "none") +
      (sysPrompt.value.trim() ? " · with a system prompt" : " · no system prompt");
  }
  modelSel.addEventListener("change", showOptions);
  sysPrompt.addEventListener("input", showOptions);

  // ---- messages
  function messageEl(m) {
    const body = h("div", { class: "body" });
    const li = h("li", { class: "msg " + m.role, "data-id": m.id }, body, h("div", { class: "meta" }));
    setMessage(li, m);
    return li;
  }
  function setMessage(li, m) {
    const body = li.querySelector(".body");
    li.dataset.id = m.id;
    li.classList.remove("streaming");
    if (m.role === "assistant" && typeof m.html === "string") {
      body.innerHTML = m.html;
      addCopyButtons(body);
    } else {
      body.textContent = m.content;
    }
    li.dataset.state = m.stopped ? "stopped" : "done";
    li.querySelector(".meta").textContent = meta(m);
  }
  function meta(m) {
    if (m.role !== "assistant") return "";
    const parts = [];
    const t = m.timings;
    if (t && typeof t.predicted_per_second === "number") {
      parts.push(t.completion_tokens + " tokens", t.predicted_per_second.toFixed(1) + " tokens/s");
    }
    if (m.stopped) parts.push("stopped");
    return parts.join(" · ");
  }
  function updateRegenerate() {
    for (const b of log.querySelectorAll(".regen")) b.remove();
    const last = log.lastElementChild;
    if (!running && last && last.classList.contains("assistant") && last.dataset.id) {
      last.append(h("button", { type: "button", class: "quiet regen", text: "Regenerate", onclick: regenerate }));
    }
  }
  function scrollDown() { log.scrollTop = log.scrollHeight; }

  // ---- opening a conversation
  async function open(id) {
    abort();
    notice.set("");
    if (!id) {
      conv = null;
      title.textContent = "New chat";
      renameBtn.hidden = deleteBtn.hidden = saveOpts.hidden = true;
      sysPrompt.value = "";
      fill(log);
      syncModel();
      markCurrent();
      return;
    }
    try {
      const r = await api("GET", "/ui/conversations/" + encodeURIComponent(id));
      conv = r.conversation;
      title.textContent = conv.title || "Untitled";
      renameBtn.hidden = deleteBtn.hidden = saveOpts.hidden = false;
      sysPrompt.value = conv.system_prompt || "";
      fill(log, r.messages.map(messageEl));
      syncModel();
      updateRegenerate();
      markCurrent();
      scrollDown();
    } catch (e) {
      conv = null;
      fill(log);
      title.textContent = "Not found";
      renameBtn.hidden = deleteBtn.hidden = saveOpts.hidden = true;
      notice.set(e.status === 404 ? "There is no such conversation." : e.message, true);
    }
  }

  // ---- sending and streaming
  function setRunning(controller) {
    running = controller;
    send.hidden = !!controller;
    stop.hidden = !controller;
    prompt.disabled = !!controller;
    updateRegenerate();
    if (!controller) prompt.focus();
  }
  function abort() { if (running) running.abort(); }

  async function ensureConversation() {
    if (conv) return conv;
    const r = await api("POST", "/ui/conversations", {
      model: modelSel.value || undefined,
      system_prompt: sysPrompt.value.trim() || undefined,
    });
    conv = r.conversation;
    renameBtn.hidden = deleteBtn.hidden = saveOpts.hidden = false;
    history.replaceState(null, "", "#/chat/" + conv.id);
    return conv;
  }

  async function run(body, userLi, answerLi) {
    const controller = new AbortController();
    setRunning(controller);
    const text = answerLi.querySelector(".body");
    answerLi.classList.add("streaming");
    answerLi.setAttribute("aria-busy", "true");
    answerLi.dataset.state = "streaming";
    let answer = "";
    let finished = false;
    try {
      const c = await ensureConversation();
      await stream("/ui/conversations/" + encodeURIComponent(c.id) + "/messages", body, controller.signal, (ev) => {
        if (ev.type === "user" && userLi) setMessage(userLi, ev.message);
        else if (ev.type === "delta") {
          answer += ev.text;
          text.textContent = answer;
          scrollDown();
        } else if (ev.type === "done") {
          finished = true;
          setMessage(answerLi, ev.message);
        } else if (ev.type === "error") {
          throw Object.assign(new Error(ev.error.message), { code: ev.error.code });
        }
      });
      if (!finished) throw new Error("the answer ended early");
    } catch (e) {
      answerLi.classList.remove("streaming");
      if (e.name === "AbortError") {
        answerLi.dataset.state = "stopped";
        answerLi.querySelector(".meta").textContent = "stopped";
      } else {
        answerLi.dataset.state = "error";
        answerLi.classList.add("error");
        answerLi.querySelector(".meta").textContent = "Error: " + e.message;
      }
    } finally {
      answerLi.removeAttribute("aria-busy");
      if (controller === running) setRunning(null);
      loadList();
    }
    // A stopped answer is stored on the box; fetch its id so Regenerate can follow.
    if (!finished && conv && answerLi.isConnected && !answerLi.dataset.id) refreshIds(answerLi);
  }

  async function refreshIds(answerLi) {
    try {
      await new Promise((r) => setTimeout(r, 300));
      const r = await api("GET", "/ui/conversations/" + encodeURIComponent(conv.id));
      const last = r.messages[r.messages.length - 1];
      if (last && last.role === "assistant" && answerLi.isConnected && !running) {
        setMessage(answerLi, last);
        updateRegenerate();
      }
    } catch { /* keep what is shown */ }
  }

  function ask(content) {
    const userLi = messageEl({ id: "", role: "user", content });
    const answerLi = messageEl({ id: "", role: "assistant", content: "" });
    answerLi.querySelector(".meta").textContent = "";
    log.append(userLi, answerLi);
    scrollDown();
    const body = { content };
    if (modelSel.value) body.model = modelSel.value;
    return run(body, userLi, answerLi);
  }

  function regenerate() {
    const last = log.lastElementChild;
    if (running || !conv || !last || !last.classList.contains("assistant")) return;
    const answerLi = messageEl({ id: "", role: "assistant", content: "" });
    last.replaceWith(answerLi);
    const body = { regenerate: true };
    if (modelSel.value) body.model = modelSel.value;
    return run(body, null, answerLi);
  }

  composer.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const content = prompt.value.trim();
    if (!content || running) return;
    if (!modelSel.value) { notice.set("Pick a model first.", true); return; }
    prompt.value = "";
    ask(content);
  });
  prompt.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); composer.requestSubmit(); }
  });
  stop.addEventListener("click", abort);

  // ---- conversation settings, rename, delete
  async function patch(fields, status) {
    try {
      const r = await api("PATCH", "/ui/conversations/" + encodeURIComponent(conv.id), fields);
      conv = r.conversation;
      return true;
    } catch (e) { status.set(e.message, true); return false; }
  }
  saveOpts.addEventListener("click", async () => {
    if (!conv) return;
    if (await patch({ model: modelSel.value, system_prompt: sysPrompt.value.trim() }, optStatus)) optStatus.set("Saved.");
  });
  modelSel.addEventListener("change", () => { if (conv) patch({ model: modelSel.value }, optStatus); });

  renameBtn.addEventListener("click", () => {
    if (!conv) return;
    const input = h("input", { value: conv.title || "", "aria-label": "New title", maxlength: 200 });
    const status = statusLine();
    const form = h("form", { class: "rename" }, input,
      h("button", { type: "submit", text: "Save" }),
      h("button", { type: "button", class: "quiet", text: "Cancel", onclick: done }), status);
    function done() { form.replaceWith(head); renameBtn.focus(); }
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      if (await patch({ title: t }, status)) { title.textContent = conv.title; done(); loadList(); }
    });
    input.addEventListener("keydown", (ev) => { if (ev.key === "Escape") done(); });
    head.replaceWith(form);
    input.focus();
    input.select();
  });
  deleteBtn.addEventListener("click", async () => {
    if (!conv || !confirm("Delete “" + (conv.title || "Untitled") + "”? This cannot be undone.")) return;
    try {
      await api("DELETE", "/ui/conversations/" + encodeURIComponent(conv.id));
      conv = null;
      location.hash = "#/chat";
      loadList();
    } catch (e) { notice.set(e.message, true); }
  });

  await Promise.all([loadModels(), loadList(), open(ctx.rest[0])]);
  setTimeout(() => prompt.focus(), 0);

  return {
    el,
    title: "Chat",
    navigate(rest) {
      const id = rest[0] || null;
      if (conv && String(conv.id) === id) return;
      side.classList.remove("open");
      open(id).then(() => prompt.focus());
    },
    unmount() { abort(); clearTimeout(searchTimer); },
  };
}

/** Adds a Copy button to each code block of a rendered message. */
function addCopyButtons(body) {
  for (const pre of body.querySelectorAll("pre")) {
    const btn = h("button", { type: "button", class: "copy", text: "Copy", "aria-label": "Copy code" });
    btn.addEventListener("click", async () => {
      const ok = await copyText(pre.querySelector("code") ? pre.querySelector("code").textContent : pre.textContent);
      btn.textContent = ok ? "Copied" : "Copy failed";
      setTimeout(() => { btn.textContent = "Copy"; }, 1500);
    });
    const wrap = h("div", { class: "code" });
    pre.replaceWith(wrap);
    wrap.append(btn, pre);
  }
}

/**
 * The models a chat can use, from the model library (GET /ui/models): each {id, state, usable},
 * the box's default first.
 */
export async function installedModels() {
  let r;
  try { r = await api("GET", "/ui/models"); } catch (e) {
    // A box without the model library: the inference service's own list.
    if (e.status !== 404) throw e;
    const s = await api("GET", "/ui/system");
    r = { models: ((s.inference && s.inference.models) || []).map((m) => typeof m === "string" ? { name: m } :
      { name: m.name || m.id, loaded: stateWord(m.state) === "failed" ? "failed" : "ready" }) };
  }
  const list = (r.models || []).map((m) => {
    const state = m.state === "damaged" ? "damaged" : m.loaded === "failed" ? "failed to load" : "ok";
    return { id: m.name, state, usable: state === "ok", isDefault: !!m.default || m.name === r.default };
  });
  list.sort((a, b) => (b.isDefault ? 1 : 0) - (a.isDefault ? 1 : 0));
  return list;
}
