// The Settings page: box name, password change, the person's API tokens (shown once), and for
// the owner the people on the box (add, reset password, remove).

import { api, setCsrf } from "./api.js";
import { h, fill, field, when, copyText, statusLine } from "./dom.js";

function section(title, ...children) {
  return h("section", { class: "card" }, h("h3", { text: title }), ...children);
}

function form(fields, label, onSubmit) {
  const status = statusLine();
  const button = h("button", { type: "submit", text: label });
  const f = h("form", { novalidate: true }, fields.map((x) => x.row), button, status);
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    for (const x of fields) if (!x.input.checkValidity()) { x.input.reportValidity(); return; }
    button.disabled = true;
    status.set("");
    try { const msg = await onSubmit(); if (msg) status.set(msg); } catch (e) { status.set(e.message, true); }
    finally { button.disabled = false; }
  });
  return f;
}

export async function settingsPage({ session }) {
  const owner = session.user.role === "owner";

  // ---- box name
  const boxName = field("Box name", { name: "box_name", required: true, maxlength: 64, readonly: !owner });
  try { boxName.input.value = (await api("GET", "/ui/settings")).box_name || ""; } catch { /* left empty */ }
  const boxSection = section("This box", owner
    ? form([boxName], "Save name", async () => {
      await api("PUT", "/ui/settings", { box_name: boxName.input.value.trim() });
      session.boxName = boxName.input.value.trim();
      document.getElementById("box-name").textContent = session.boxName;
      return "Saved.";
    })
    : boxName.row);

  // ---- password
  const cur = field("Current password", { type: "password", autocomplete: "current-password", required: true });
  const pw = field("New password (at least 8 characters)", { type: "password", autocomplete: "new-password", required: true, minlength: 8 });
  const pw2 = field("New password again", { type: "password", autocomplete: "new-password", required: true });
  const pwForm = form([cur, pw, pw2], "Change password", async () => {
    if (pw.input.value !== pw2.input.value) throw new Error("The two new passwords differ.");
    const r = await api("POST", "/ui/password", { current: cur.input.value, new: pw.input.value });
    setCsrf(r.csrf);
    cur.input.value = pw.input.value = pw2.input.value = "";
    return "Password changed. Your other sessions were signed out.";
  });

  // ---- tokens
  const tokenList = h("ul", { class: "plain", id: "tokens", "aria-label": "API tokens" });
  const shown = h("div", { class: "once", hidden: true, role: "status" });
  async function loadTokens() {
    try {
      const r = await api("GET", "/ui/tokens");
      fill(tokenList, r.tokens.map((t) => h("li", {},
        h("strong", { text: t.name }), " · created " + when(t.created_at) +
        " · last used " + (t.last_used_at ? when(t.last_used_at) : "never") + " ",
        h("button", { type: "button", class: "quiet danger-text", text: "Revoke", "aria-label": "Revoke token " + t.name,
          onclick: async () => {
            if (!confirm("Revoke the token " + t.name + "? Scripts using it stop working.")) return;
            try { await api("DELETE", "/ui/tokens/" + t.id); loadTokens(); } catch (e) { alert(e.message); }
          } }))));
      if (r.tokens.length === 0) tokenList.append(h("li", { class: "hint", text: "No tokens yet." }));
    } catch (e) { fill(tokenList, h("li", { class: "status error", text: e.message })); }
  }
  const tokName = field("Token name", { required: true, maxlength: 64, placeholder: "e.g. laptop script" });
  const tokForm = form([tokName], "Create token", async () => {
    const r = await api("POST", "/ui/tokens", { name: tokName.input.value.trim() });
    tokName.input.value = "";
    const code = h("code", { class: "token", text: r.token });
    fill(shown, h("p", { text: "Copy this token now; the box will not show it again:" }), code, " ",
      h("button", { type: "button", class: "quiet", text: "Copy", onclick: async (ev) => {
        ev.target.textContent = (await copyText(r.token)) ? "Copied" : "Copy failed";
      } }));
    shown.hidden = false;
    loadTokens();
    return null;
  });

  // ---- people
  let people = null;
  if (owner) {
    const userList = h("ul", { class: "plain", id: "people", "aria-label": "People" });
    const peopleStatus = statusLine();
    async function loadUsers() {
      try {
        const r = await api("GET", "/ui/users");
        fill(userList, r.users.map((u) => h("li", {},
          h("strong", { text: u.name }), " · " + u.role + " ",
          u.id === session.user.id ? null : [
            h("button", { type: "button", class: "quiet", text: "Reset password", "aria-label": "Reset password of " + u.name,
              onclick: async () => {
                const p = prompt("New password for " + u.name + " (at least 8 characters):");
                if (!p) return;
                try { await api("POST", "/ui/users/" + u.id + "/password", { password: p }); peopleStatus.set("Password of " + u.name + " reset."); }
                catch (e) { peopleStatus.set(e.message, true); }
              } }), " ",
            h("button", { type: "button", class: "quiet danger-text", text: "Remove", "aria-label": "Remove " + u.name,
              onclick: async () => {
                if (!confirm("Remove " + u.name + "? Their conversations and tokens are deleted too.")) return;
                try { await api("DELETE", "/ui/users/" + u.id); loadUsers(); } catch (e) { peopleStatus.set(e.message, true); }
              } }),
          ])));
      } catch (e) { fill(userList, h("li", { class: "status error", text: e.message })); }
    }
    const uName = field("Name", { required: true, maxlength: 64, autocomplete: "off" });
    const uPw = field("Password (at least 8 characters)", { type: "password", required: true, minlength: 8, autocomplete: "new-password" });
    const addForm = form([uName, uPw], "Add person", async () => {
      const name = uName.input.value.trim();
      await api("POST", "/ui/users", { name, password: uPw.input.value, role: "member" });
      uName.input.value = uPw.input.value = "";
      loadUsers();
      return "Added " + name + ". They can log in now.";
    });
    addForm.id = "add-person";
    people = section("People", userList, peopleStatus, h("h4", { text: "Add a person" }), addForm);
    loadUsers();
  }

  loadTokens();
  const el = h("div", { class: "page" }, h("h2", { text: "Settings" }), boxSection, people,
    section("API tokens", h("p", { class: "hint", text: "For scripts and apps using the OpenAI-compatible API at /v1 (Authorization: Bearer …)." }),
      tokenList, shown, tokForm),
    section("Your password", pwForm));
  return { el, title: "Settings" };
}
