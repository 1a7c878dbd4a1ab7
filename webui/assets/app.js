// Hearth chat page: pick a model, send a message, watch the answer stream in, stop it.
// Plain JavaScript, no dependencies; text is only ever inserted with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  model: $("model"), log: $("log"), form: $("composer"), prompt: $("prompt"),
  send: $("send"), stop: $("stop"), notice: $("notice"), newChat: $("new-chat"),
};
let history = [];        // the conversation sent with each request
let running = null;      // AbortController of the answer being streamed

function notice(text) {
  els.notice.textContent = text || "";
  els.notice.hidden = !text;
}

function addMessage(role, text) {
  const li = document.createElement("li");
  li.className = "msg " + role;
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  li.appendChild(body);
  els.log.appendChild(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function setMeta(li, text) {
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = text;
  li.appendChild(meta);
}

async function loadModels() {
  try {
    const res = await fetch("/v1/models");
    const body = await res.json();
    if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
    els.model.textContent = "";
    for (const m of body.data) {
      const opt = document.createElement("option");
      opt.value = m.id;
      const state = m.hearth ? m.hearth.state : "ready";
      opt.textContent = state === "ready" ? m.id : m.id + " (" + state + ")";
      opt.disabled = state === "failed";
      els.model.appendChild(opt);
    }
    const loading = body.data.some((m) => m.hearth && m.hearth.state === "loading");
    if (body.data.length === 0) notice("No models are installed yet.");
    else if (loading) { notice("Loading models…"); setTimeout(loadModels, 1000); }
    else notice("");
  } catch (e) {
    notice("The box is starting up… (" + e.message + ")");
    setTimeout(loadModels, 2000);
  }
}

function setRunning(controller) {
  running = controller;
  els.send.hidden = !!controller;
  els.stop.hidden = !controller;
  els.prompt.disabled = !!controller;
  if (!controller) els.prompt.focus();
}

// Reads an SSE body and calls onData with each `data:` payload.
async function readSse(body, onData) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) onData(data);
    }
  }
}

async function ask(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const li = addMessage("assistant", "");
  li.setAttribute("aria-busy", "true");
  const body = li.querySelector(".body");
  const controller = new AbortController();
  setRunning(controller);
  let answer = "";
  let finished = null;
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: els.model.value, messages: history, stream: true }),
      signal: controller.signal,
    });
    if (!res.ok) {
      const err = await res.json().catch(() => ({}));
      throw new Error(err.error ? err.error.message : res.statusText);
    }
    await readSse(res.body, (data) => {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        answer += choice.delta.content;
        body.textContent = answer;
        li.scrollIntoView({ block: "end" });
      }
      if (choice && choice.finish_reason) finished = chunk;
    });
    if (finished && finished.timings) {
      const t = finished.timings;
      setMeta(li, finished.usage.completion_tokens + " tokens · " +
        t.predicted_per_second.toFixed(1) + " tokens/s");
    }
  } catch (e) {
    if (e.name === "AbortError") {
      setMeta(li, "stopped");
    } else {
      li.classList.add("error");
      setMeta(li, "Error: " + e.message);
    }
  } finally {
    li.removeAttribute("aria-busy");
    li.dataset.done = finished ? "finished" : "stopped";
    if (answer) history.push({ role: "assistant", content: answer });
    else history.pop();
    setRunning(null);
  }
}

els.form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = els.prompt.value.trim();
  if (!text || running || !els.model.value) return;
  els.prompt.value = "";
  ask(text);
});
els.prompt.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); els.form.requestSubmit(); }
});
els.stop.addEventListener("click", () => { if (running) running.abort(); });
els.newChat.addEventListener("click", () => {
  if (running) running.abort();
  history = [];
  els.log.textContent = "";
  els.prompt.focus();
});
loadModels();
