// The two pages shown before anyone is signed in: first-boot setup and login.

import { api } from "./api.js";
import { h, field, statusLine } from "./dom.js";

function gate(name, title, intro, fields, submitLabel, onSubmit) {
  const status = statusLine();
  const button = h("button", { type: "submit", text: submitLabel });
  const form = h("form", { class: "card gate", novalidate: true },
    h("h1", {}, h("img", { src: "/assets/icon.svg", alt: "", width: 32, height: 32 }), " ", title),
    intro && h("p", { class: "hint", text: intro }),
    fields.map((f) => f.row), status, button);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    for (const f of fields) {
      if (!f.input.checkValidity()) { f.input.reportValidity(); return; }
    }
    button.disabled = true;
    status.set("");
    try { await onSubmit(status); } catch (e) {
      status.set(e.message, true);
    } finally { button.disabled = false; }
  });
  return { el: h("div", { class: "gate-wrap" }, form), title, name };
}

export function setupPage({ done }) {
  const code = field("Setup code", { name: "code", autocomplete: "off", required: true, spellcheck: "false",
    "aria-describedby": "code-hint" });
  const hint = h("p", { id: "code-hint", class: "hint",
    text: "Printed on the box's label (on a dev machine: in hearthd's log, and in the file setup-code in its data folder)." });
  code.row.append(hint);
  const name = field("Your name", { name: "name", autocomplete: "username", required: true, maxlength: 64 });
  const pw = field("Password (at least 8 characters)", { name: "password", type: "password",
    autocomplete: "new-password", required: true, minlength: 8 });
  const pw2 = field("Password again", { name: "password2", type: "password", autocomplete: "new-password", required: true });
  return gate("setup", "Set up Hearth", "Welcome. You become this box's owner: you add the other people and manage models.",
    [code, name, pw, pw2], "Create owner account", async (status) => {
      if (pw.input.value !== pw2.input.value) { status.set("The two passwords differ.", true); return; }
      try {
        const r = await api("POST", "/ui/setup", {
          code: code.input.value.trim(), name: name.input.value.trim(), password: pw.input.value });
        done(r.user, r.csrf);
      } catch (e) {
        if (e.code === "bad_setup_code") status.set("That setup code is not right.", true);
        else if (e.code === "already_set_up") status.set("This box already has an owner. Reload the page to log in.", true);
        else throw e;
      }
    });
}

export function loginPage({ done }) {
  const name = field("Name", { name: "name", autocomplete: "username", required: true });
  const pw = field("Password", { name: "password", type: "password", autocomplete: "current-password", required: true });
  return gate("login", "Log in", null, [name, pw], "Log in", async (status) => {
    try {
      const r = await api("POST", "/ui/login", { name: name.input.value.trim(), password: pw.input.value });
      done(r.user, r.csrf);
    } catch (e) {
      if (e.code === "invalid_credentials") status.set("Wrong name or password.", true);
      else if (e.code === "rate_limited") status.set("Too many tries. Wait a little and try again.", true);
      else throw e;
    }
  });
}
