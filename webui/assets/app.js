// Hearth's web UI: a single page. Asks the box who is signed in, then shows setup, login, or
// the app with its pages (chat, models, system, settings) chosen by the URL's #fragment.
// Plain JavaScript modules from this box; nothing is loaded from anywhere else.

import { api, setCsrf, whenUnauthenticated } from "./api.js";
import { h, fill } from "./dom.js";
import { setupPage, loginPage } from "./auth.js";
import { chatPage } from "./chat.js";

const view = document.getElementById("view");
const bar = document.getElementById("bar");
const session = { user: null, boxName: "Hearth" };
let current = null; // { name, unmount }
let generation = 0; // bumped by every navigation, logout and sign-in; a page that loads late is dropped

// Pages other than chat load on first visit, which keeps the chat page's first load small.
const pages = {
  chat: async () => chatPage,
  models: async () => (await import("./models.js")).modelsPage,
  system: async () => (await import("./system.js")).systemPage,
  settings: async () => (await import("./settings.js")).settingsPage,
};

function unmount() {
  generation++;
  if (current && current.unmount) current.unmount();
  current = null;
  delete view.dataset.page;
}

function parseHash() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  const name = parts[0] in pages ? parts[0] : "chat";
  return { name, rest: parts.slice(1) };
}

async function route() {
  if (!session.user) return;
  const { name, rest } = parseHash();
  for (const a of bar.querySelectorAll("nav a")) {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  // The chat page handles moves between its own conversations without a re-render.
  if (current && current.name === name && current.navigate) return current.navigate(rest);
  unmount();
  const mine = ++generation;
  const ctx = { session, rest, refreshSession };
  let page;
  try { page = await (await pages[name]())(ctx); } catch (e) {
    if (mine === generation) fill(view, h("p", { class: "status error", text: "This page could not load: " + e.message }));
    return;
  }
  if (mine !== generation || !session.user) { if (page.unmount) page.unmount(); return; }
  fill(view, page.el);
  view.dataset.page = name;
  current = { name, ...page };
  document.title = (page.title || name[0].toUpperCase() + name.slice(1)) + " · " + session.boxName;
}

function showApp() {
  bar.hidden = false;
  document.getElementById("who").textContent =
    session.user.name + (session.user.role === "owner" ? " (owner)" : "");
  document.getElementById("box-name").textContent = session.boxName;
  if (location.pathname !== "/") history.replaceState(null, "", "/" + location.hash);
  route();
}

function showGate(page) {
  unmount();
  bar.hidden = true;
  fill(view, page.el);
  view.dataset.page = page.name;
  document.title = page.title + " · Hearth";
  const first = view.querySelector("input");
  if (first) first.focus();
}

/** Signed in (setup or login finished): remember the person and their CSRF token. */
function signedIn(user, csrf) {
  session.user = user;
  setCsrf(csrf);
  loadBoxName();
  showApp();
}

async function loadBoxName() {
  try {
    const s = await api("GET", "/ui/settings");
    if (s && s.box_name) {
      session.boxName = s.box_name;
      document.getElementById("box-name").textContent = s.box_name;
    }
  } catch { /* the name is decoration */ }
}

async function refreshSession() {
  let s;
  try { s = await api("GET", "/ui/session"); } catch (e) {
    fill(view, h("p", { class: "status error", text: "The box is not answering (" + e.message + "). Retrying…" }));
    setTimeout(refreshSession, 2000);
    return;
  }
  setCsrf(s.csrf);
  if (s.setup_needed) {
    session.user = null;
    showGate(setupPage({ done: signedIn }));
  } else if (!s.user) {
    session.user = null;
    showGate(loginPage({ done: signedIn }));
  } else {
    signedIn(s.user, s.csrf);
  }
}

whenUnauthenticated(() => { if (session.user) { session.user = null; refreshSession(); } });

document.getElementById("logout").addEventListener("click", async () => {
  unmount();
  try { await api("POST", "/ui/logout"); } catch { /* the session is gone either way */ }
  session.user = null;
  location.hash = "";
  refreshSession();
});

window.addEventListener("hashchange", route);
refreshSession();
