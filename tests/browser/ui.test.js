// Hearth's web UI in real headless Chromium against the real hearthd and the real SmolLM2 model:
// setup with the code, a streamed answer arriving token by token, stop, reload, regenerate,
// rename/search/delete, the Models page (SmolLM2 uploaded with a progress bar; a USB stick
// noticed without a reload, Qwen and Gemma imported from it, Qwen answering), the people and
// token settings, logout, keyboard-only login, a member who cannot see the owner's conversation,
// every page at 360 px without horizontal overflow, light and dark, and the chat page's weight
// on first load.
//
// Run with tests/browser/run (it installs chromium and playwright-core first).

import { after, before, describe, test as nodeTest } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { gemmaModel, model, qwenModel, repo, setupCode, startBrowser, startHearth } from "./hearth.js";

const OWNER = { name: "Ada", password: "correct horse battery" };
const MEMBER = { name: "Ben", password: "member password 1" };
const shots = path.join(repo, "target/browser-screenshots");
const PAGES = ["#/chat", "#/models", "#/system", "#/settings"];

let box, browser, page;
let failed = false; // some test failed: show hearthd's log at the end
const problems = []; // page errors and CSP violations seen during the run
const requests = []; // "status METHOD path" of every /ui request, shown when a test fails
let ownerConversation = null;

/** Every element must fit the viewport, except inside something that scrolls or clips it. */
async function overflow(p) {
  return p.evaluate(() => {
    const width = window.innerWidth;
    const out = [];
    const doc = document.scrollingElement.scrollWidth;
    if (doc > width) out.push("document scrollWidth " + doc + " > " + width);
    const clips = (el) => {
      for (let a = el.parentElement; a; a = a.parentElement) {
        const o = getComputedStyle(a).overflowX;
        if (o === "auto" || o === "scroll" || o === "hidden" || o === "clip") {
          if (a.tagName !== "MAIN") return true;
        }
      }
      return false;
    };
    for (const el of document.body.querySelectorAll("*")) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 || r.height === 0) continue;
      if (getComputedStyle(el).position === "absolute" && el.closest(".sr-only,.offscreen,.skip")) continue;
      if ((r.right > width + 1 || r.left < -1) && !clips(el)) {
        out.push(el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + (el.className ? "." + String(el.className).replace(/ /g, ".") : "") +
          " spans " + Math.round(r.left) + ".." + Math.round(r.right));
      }
    }
    const main = document.querySelector("main");
    if (main.scrollWidth > main.clientWidth) out.push("main scrollWidth " + main.scrollWidth + " > " + main.clientWidth);
    return out;
  });
}

async function narrowCheck(name) {
  const old = page.viewportSize();
  await page.setViewportSize({ width: 360, height: 740 });
  await page.waitForTimeout(150);
  fs.mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, name + "-360.png"), fullPage: true });
  const bad = await overflow(page);
  await page.setViewportSize(old);
  assert.deepEqual(bad, [], name + " overflows at 360 px");
}

async function go(hash) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  await page.locator("main[data-page=" + hash.split("/")[1] + "]").waitFor();
  await page.waitForLoadState("networkidle").catch(() => {});
}

async function login(who) {
  await page.getByLabel("Name", { exact: true }).fill(who.name);
  await page.getByLabel("Password", { exact: true }).fill(who.password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.locator("#who").filter({ hasText: who.name }).waitFor();
}

async function logout() {
  await page.getByRole("button", { name: "Log out" }).click();
  await page.locator("main[data-page=login]").waitFor();
}

/** Sends `text` and records every text the answer shows while it streams (a MutationObserver). */
// With `stopAt`, the page's own Stop button is clicked from the observer the moment the
// answer has shown that many states: the engine streams a short answer (the model samples, so
// some are a few tokens) faster than a click from the test could land.
async function sendAndWatch(text, { stopAt = 0 } = {}) {
  await page.evaluate((stopAt) => {
    window.__states = [];
    const log = document.getElementById("log");
    window.__observer = new MutationObserver(() => {
      const li = log.querySelector(".msg.assistant.streaming:last-child");
      if (!li) return;
      const t = li.querySelector(".body").textContent;
      if (t && window.__states[window.__states.length - 1] !== t) {
        window.__states.push(t);
        if (window.__states.length === stopAt) document.getElementById("stop").click();
      }
    });
    window.__observer.observe(log, { subtree: true, childList: true, characterData: true });
  }, stopAt);
  await page.locator("#prompt").fill(text);
  await page.locator("#prompt").press("Enter");
}

/**
 * Waits for the last answer to finish. A sampled answer still going after `patience` ms is
 * stopped instead: SmolLM2 at temperature 0.8 now and then runs on to the end of its 8k
 * context, which took 219 and 262 s of a 300 s wait on 2-core machines. Returns the
 * answer's final state, "done" or "stopped".
 */
async function finishOrStop(patience = 60_000) {
  const answer = page.locator("#log .msg.assistant").last();
  const settled = page.locator("[data-state=done], [data-state=stopped]");
  try {
    await answer.and(page.locator("[data-state=done]")).waitFor({ timeout: patience });
  } catch {
    // Stop once some text has arrived (an answer stopped before its first token is not
    // kept); it may finish just as Stop is pressed, and either way it settles.
    await answer.locator(".body").filter({ hasText: /\S/ }).waitFor({ timeout: 30_000 });
    await page.locator("#stop").click({ timeout: 5_000 }).catch(() => {});
    await answer.and(settled).waitFor({ timeout: 30_000 });
  }
  return answer.getAttribute("data-state");
}

/** A test that leaves a screenshot of the page behind when it fails. */
function test(name, fn) {
  nodeTest(name, async (t) => {
    try { await fn(t); } catch (e) {
      fs.mkdirSync(shots, { recursive: true });
      const file = path.join(shots, "failed-" + name.replace(/\W+/g, "-").slice(0, 60) + ".png");
      if (page) await page.screenshot({ path: file }).catch(() => {});
      console.error("last requests:\n" + requests.slice(-25).join("\n"));
      failed = true;
      throw e;
    }
  });
}

describe("the web UI in Chromium", { timeout: 600_000 }, () => {
  before(async () => {
    box = await startHearth();
    browser = await startBrowser();
    page = await browser.context.newPage();
    page.on("response", (r) => {
      const u = new URL(r.url());
      if (u.pathname.startsWith("/ui/")) requests.push(r.status() + " " + r.request().method() + " " + u.pathname + u.search);
    });
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    page.on("console", (m) => {
      // Failed requests (401 before login, 404 probes) are logged by Chromium too; those are fine.
      if (m.type() === "error" && !/Failed to load resource/.test(m.text())) problems.push("console: " + m.text());
    });
  });

  after(async () => {
    if (browser) await browser.close();
    if (box) {
      if (failed) console.error("hearthd's log (last 80 lines):\n" + box.log().split("\n").slice(-80).join("\n"));
      await box.stop();
    }
  });

  test("first boot shows only setup; a wrong code is refused, the right one makes the owner", async () => {
    const res = await page.goto(box.base + "/");
    assert.equal(res.status(), 200);
    await page.getByRole("heading", { name: "Set up Hearth" }).waitFor();
    await narrowCheck("setup");
    await page.getByLabel("Setup code").fill("not-the-code");
    await page.getByLabel("Your name").fill(OWNER.name);
    await page.getByLabel("Password (at least 8 characters)").fill(OWNER.password);
    await page.getByLabel("Password again").fill(OWNER.password);
    await page.getByRole("button", { name: "Create owner account" }).click();
    await page.getByText("That setup code is not right.").waitFor();
    await page.getByLabel("Setup code").fill(await setupCode(box));
    await page.getByRole("button", { name: "Create owner account" }).click();
    await page.locator("#who").filter({ hasText: OWNER.name + " (owner)" }).waitFor();
    await page.locator("#prompt").waitFor();
  });

  test("an answer streams in token by token, then shows tokens/s", async () => {
    await page.locator("#model option").first().waitFor({ state: "attached" });
    await sendAndWatch("Write two sentences about a lighthouse keeper.");
    const answer = page.locator("#log .msg.assistant").last();
    // While streaming, the Stop button replaces Send.
    await page.locator("#stop").waitFor({ state: "visible" });
    await answer.and(page.locator("[data-state=done]")).waitFor({ timeout: 300_000 });
    const states = await page.evaluate(() => { window.__observer.disconnect(); return window.__states; });
    assert.ok(states.length >= 3, "saw " + states.length + " intermediate states: " + JSON.stringify(states));
    for (let i = 1; i < states.length; i++) {
      assert.ok(states[i].startsWith(states[i - 1]) && states[i].length > states[i - 1].length,
        "each state extends the one before: " + JSON.stringify(states.slice(i - 1, i + 1)));
    }
    assert.match(await answer.locator(".meta").textContent(), /\d+ tokens · \d+\.\d tokens\/s/);
    assert.ok((await answer.locator(".body").textContent()).trim().length > 0);
    await page.locator("#send").waitFor({ state: "visible" });
    // The first message titled the conversation; the URL names it.
    ownerConversation = await page.evaluate(() => location.hash.split("/")[2]);
    assert.match(ownerConversation, /^\w+$/);
    await page.locator(".conv-list a[aria-current=page]").waitFor();
  });

  test("stop ends the answer and keeps what arrived", async () => {
    await sendAndWatch("Count from 1 to 1000, one number per line.", { stopAt: 2 });
    const answer = page.locator("#log .msg.assistant").last();
    await answer.and(page.locator("[data-state=stopped]")).waitFor({ timeout: 120_000 });
    // The page then shows the stored (stopped) answer, rendered, with its id for Regenerate.
    await page.locator("#log .msg.assistant:last-child[data-state=stopped]:not([data-id=''])").waitFor();
    const text = await answer.locator(".body").textContent();
    assert.ok(text.length > 0);
    await page.waitForTimeout(800);
    assert.equal(await answer.locator(".body").textContent(), text, "nothing arrives after stop");
    assert.match(await answer.locator(".meta").textContent(), /stopped/);
    await page.locator("#send").waitFor({ state: "visible" });
    assert.equal(await page.locator("#stop").isVisible(), false);
  });

  test("reload shows the conversation, the stopped answer marked as such", async () => {
    await page.waitForTimeout(500); // the box stores the stopped answer when it sees the close
    await page.reload();
    await page.locator("#log .msg").nth(3).waitFor();
    assert.equal(await page.locator("#log .msg.user").count(), 2);
    assert.equal(await page.locator("#log .msg.assistant").count(), 2);
    assert.match(await page.locator("#log .msg.assistant").last().locator(".meta").textContent(), /stopped/);
    assert.match(await page.locator("#log .msg.assistant").first().locator(".meta").textContent(), /tokens\/s/);
    assert.ok(await page.locator(".conv-list a[aria-current=page]").count() === 1);
  });

  test("regenerate; rename, search by title, and delete conversations", async () => {
    await page.getByRole("button", { name: "Rename" }).click();
    await page.getByLabel("New title").fill("Lighthouse notes");
    await page.getByLabel("New title").press("Enter");
    await page.locator("#conv-title").filter({ hasText: "Lighthouse notes" }).waitFor();
    await page.locator(".conv-list a").filter({ hasText: "Lighthouse notes" }).waitFor();
    // A second conversation to delete.
    await page.getByRole("link", { name: "New chat" }).click();
    await sendAndWatch("Say hello.");
    await finishOrStop();
    // Regenerate replaces the last answer: a new one streams in and finishes (or, when a
    // sampled answer runs long, is stopped and kept as stopped).
    await page.locator("#log .msg.assistant:last-child:not([data-id=''])").waitFor();
    await page.evaluate(() => { window.__old = document.querySelector("#log .msg.assistant:last-child"); });
    await page.getByRole("button", { name: "Regenerate" }).click();
    const answer = page.locator("#log .msg.assistant").last();
    const state = await finishOrStop();
    assert.equal(await page.evaluate(() => window.__old.isConnected), false, "the old answer is gone");
    assert.match(await answer.locator(".meta").textContent(), state === "done" ? /tokens\/s/ : /stopped/);
    await page.reload();
    await page.locator("#log .msg.assistant:is([data-state=done], [data-state=stopped])").waitFor();
    assert.equal(await page.locator("#log .msg.assistant").count(), 1, "the box kept one answer");
    assert.equal(await page.locator("#log .msg.user").count(), 1);
    assert.equal(await page.locator(".conv-list a").count(), 2);
    await page.getByLabel("Search conversations by title").fill("lighthouse");
    await page.waitForFunction(() => document.querySelectorAll(".conv-list a").length === 1);
    await page.getByLabel("Search conversations by title").fill("");
    await page.waitForFunction(() => document.querySelectorAll(".conv-list a").length === 2);
    page.once("dialog", (d) => d.accept());
    await page.getByRole("button", { name: "Delete" }).click();
    await page.waitForFunction(() => document.querySelectorAll(".conv-list a").length === 1);
    await page.locator("#conv-title").filter({ hasText: "New chat" }).waitFor();
  });

  test("code blocks get a copy button; model HTML is shown as text", async () => {
    // The box renders Markdown; a message's `html` went through its sanitizer.
    const html = await page.evaluate(async (id) => {
      const r = await fetch("/ui/conversations/" + id);
      return (await r.json()).messages.map((m) => m.html || "").join("");
    }, ownerConversation);
    assert.ok(!/<script/i.test(html));
    await page.locator(".conv-list a").first().click();
    const codeBlocks = await page.locator("#log .msg.assistant pre").count();
    assert.equal(await page.locator("#log .code .copy").count(), codeBlocks);
  });

  test("settings: add a person, create a token shown once, box name", async () => {
    await go("#/settings");
    const add = page.locator("#add-person");
    await add.getByLabel("Name").fill(MEMBER.name);
    await add.getByLabel("Password (at least 8 characters)").fill(MEMBER.password);
    await add.getByRole("button", { name: "Add person" }).click();
    await page.locator("#people li").filter({ hasText: MEMBER.name }).waitFor();
    await page.getByLabel("Token name").fill("laptop");
    await page.getByRole("button", { name: "Create token" }).click();
    const token = await page.locator(".once code.token").textContent();
    assert.match(token, /^hearth_/);
    await page.locator("#tokens li").filter({ hasText: "laptop" }).waitFor();
    // The token works on /v1 as a Bearer token.
    const r = await fetch(box.base + "/v1/models", { headers: { Authorization: "Bearer " + token } });
    assert.equal(r.status, 200);
  });

  test("every page fits a 360 px phone, in light and in dark", async () => {
    for (const scheme of ["light", "dark"]) {
      await page.emulateMedia({ colorScheme: scheme });
      for (const hash of [...PAGES, "#/chat/" + ownerConversation]) {
        await go(hash);
        await narrowCheck(scheme + "-" + hash.replace(/[#/]+/g, "-").replace(/^-/, ""));
      }
    }
    const bg = async (scheme) => {
      await page.emulateMedia({ colorScheme: scheme });
      return page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    };
    assert.notEqual(await bg("light"), await bg("dark"));
    await page.emulateMedia({ colorScheme: "light" });
  });

  test("models: upload a GGUF with a progress bar, then delete it", async () => {
    await go("#/models");
    await page.locator(".model h3").filter({ hasText: "SmolLM2" }).first().waitFor();
    await page.locator("#model-file").setInputFiles(model);
    await page.getByLabel("Name (optional)").fill("smol-upload");
    // Record the progress bar's values as the chunks go up.
    await page.evaluate(() => {
      window.__progress = [];
      const bar = document.querySelector("#upload progress");
      new MutationObserver(() => window.__progress.push(bar.value)).observe(bar, { attributes: true });
      const text = document.querySelector("#upload .progress-row .hint");
      new MutationObserver(() => window.__progress.push(text.textContent)).observe(text, { childList: true, characterData: true, subtree: true });
    });
    await page.getByRole("button", { name: "Upload", exact: true }).click();
    await page.locator("#upload .status").filter({ hasText: "Added smol-upload." }).waitFor({ timeout: 300_000 });
    const seen = await page.evaluate(() => window.__progress);
    assert.ok(seen.some((v) => typeof v === "string" && / of .*\(\d+ %\)/.test(v)), "progress shown: " + JSON.stringify(seen.slice(0, 5)));
    const card = page.locator(".model[data-name=smol-upload]");
    await card.waitFor();
    assert.match(await card.locator("summary").textContent(), /MB · Q4_1 · llama/);
    page.once("dialog", (d) => d.accept());
    await card.getByRole("button", { name: "Delete" }).click();
    await card.waitFor({ state: "detached" });
  });

  test("models: a stick plugged in is noticed without a reload; Qwen and Gemma import from it; Qwen answers", async () => {
    await go("#/models");
    const notice = page.locator("#usb-notice");
    assert.equal(await notice.isVisible(), false, "no stick yet, no notice");
    // The stick is built aside and renamed into media_dir, so it appears at once, as a mount does.
    const staging = fs.mkdtempSync(path.join(path.dirname(box.mediaDir), "hearth-stick-"));
    fs.mkdirSync(path.join(staging, "models"));
    for (const m of [qwenModel, gemmaModel]) {
      const to = path.join(staging, "models", path.basename(m));
      try { fs.linkSync(m, to); } catch { fs.copyFileSync(m, to); }
    }
    fs.writeFileSync(path.join(staging, "README.txt"), "not a model");
    fs.renameSync(staging, path.join(box.mediaDir, "STICK"));
    await notice.filter({ hasText: "USB stick found: 2 models" }).waitFor({ timeout: 10_000 });
    await narrowCheck("models-usb");

    const media = page.getByRole("list", { name: "Model files on removable media" });
    const imports = page.getByRole("list", { name: "Imports" });
    const qwen = "STICK/models/" + path.basename(qwenModel);
    const gemma = "STICK/models/" + path.basename(gemmaModel);
    for (const f of [qwen, gemma]) {
      await media.locator("li").filter({ hasText: f }).getByRole("button", { name: "Import" }).click();
    }
    // Progress bars while copying, then an outcome per file.
    const outcome = async (f) => {
      const li = imports.locator("li").filter({ hasText: new RegExp("^" + f.replace(/\./g, "\\.") + ": (done|failed)") });
      await li.waitFor({ timeout: 300_000 });
      return li.textContent();
    };
    assert.match(await outcome(qwen), /: done/);
    const qwenName = path.basename(qwenModel, ".gguf");
    await page.locator(".model[data-name='" + qwenName + "']").waitFor({ timeout: 30_000 });
    // The engine runs gemma3: the library takes it too.
    assert.match(await outcome(gemma), /: done/);
    const gemmaName = path.basename(gemmaModel, ".gguf");
    await page.locator(".model[data-name='" + gemmaName + "']").waitFor({ timeout: 30_000 });
    assert.match(await page.locator(".model[data-name='" + gemmaName + "'] summary").textContent(), / · gemma3$/);

    // The imported Qwen loads and answers in a new chat.
    const deadline = Date.now() + 120_000;
    for (;;) {
      const r = await page.evaluate(() => fetch("/ui/models").then((r) => r.json()));
      const m = r.models.find((m) => m.name === qwenName);
      if (m && m.loaded === "ready") break;
      assert.ok(Date.now() < deadline, "qwen never loaded: " + JSON.stringify(m));
      await page.waitForTimeout(500);
    }
    await go("#/chat");
    await page.locator("#model option[value='" + qwenName + "']").waitFor({ state: "attached" });
    await page.locator("details.options summary").click();
    await page.getByLabel("Model", { exact: true }).selectOption(qwenName);
    await sendAndWatch("What is the capital of France? One word.");
    const answer = page.locator("#log .msg.assistant").last();
    await answer.and(page.locator("[data-state=done]")).waitFor({ timeout: 300_000 });
    await page.evaluate(() => window.__observer.disconnect());
    assert.ok((await answer.locator(".body").textContent()).trim().length > 0);

    // Pulled out: the notice says so; the imported models stay. Then they are deleted again.
    await go("#/models");
    await notice.filter({ hasText: "USB stick found" }).waitFor();
    fs.rmSync(path.join(box.mediaDir, "STICK"), { recursive: true, force: true });
    await notice.filter({ hasText: "The USB stick was removed." }).waitFor({ timeout: 10_000 });
    for (const name of [qwenName, gemmaName]) {
      const card = page.locator(".model[data-name='" + name + "']");
      if (await card.count() === 0) continue;
      page.once("dialog", (d) => d.accept());
      await card.getByRole("button", { name: "Delete" }).click();
      await card.waitFor({ state: "detached" });
    }
  });

  test("the pages show the box's state", async () => {
    await go("#/models");
    await page.locator(".model h3").filter({ hasText: "SmolLM2" }).first().waitFor();
    await go("#/system");
    await page.locator("#system-facts dt").filter({ hasText: "Memory" }).waitFor();
    await page.locator("#logs li").first().waitFor();
  });

  test("logout, then a keyboard-only login", async () => {
    await go("#/chat");
    await logout();
    await narrowCheck("login");
    // Signed out, the box answers 401 to the API.
    const status = await page.evaluate(async () => (await fetch("/ui/conversations")).status);
    assert.equal(status, 401);
    // The login form takes the focus; Tab leads from name to password, Enter submits.
    assert.equal(await page.evaluate(() => document.activeElement.getAttribute("autocomplete")), "username");
    await page.keyboard.type(OWNER.name);
    await page.keyboard.press("Tab");
    await page.keyboard.type(OWNER.password);
    await page.keyboard.press("Enter");
    await page.locator("#who").filter({ hasText: OWNER.name }).waitFor();
    // Focus is visible. The page the login lands on renders again as its requests answer, which
    // can take the focus back to the body: Tab once that has settled.
    await page.locator("main[data-page=chat]").waitFor();
    await page.waitForLoadState("networkidle").catch(() => {});
    await page.keyboard.press("Tab");
    const focus = await page.evaluate(() => ({
      tag: document.activeElement.tagName,
      outline: getComputedStyle(document.activeElement).outlineStyle,
    }));
    assert.notEqual(focus.tag, "BODY", "Tab focuses an element");
    assert.notEqual(focus.outline, "none", "the focused " + focus.tag + " shows an outline");
    await logout();
  });

  test("a member sees only their own conversations", async () => {
    await login(MEMBER);
    await go("#/chat");
    await page.locator(".conv-list li").first().waitFor();
    assert.equal(await page.locator(".conv-list a").count(), 0);
    await go("#/chat/" + ownerConversation);
    await page.getByText("There is no such conversation.").waitFor();
    const status = await page.evaluate(async (id) => (await fetch("/ui/conversations/" + id)).status, ownerConversation);
    assert.equal(status, 404);
    // Members do not get the owner's parts of the pages.
    await go("#/settings");
    assert.equal(await page.locator("#people").count(), 0);
    await logout();
  });

  test("the chat page is light: KB transferred on first load", async () => {
    await login(OWNER);
    const p = await browser.context.newPage();
    const cdp = await browser.context.newCDPSession(p);
    await cdp.send("Network.enable");
    await cdp.send("Network.setCacheDisabled", { cacheDisabled: true });
    const urls = new Map();
    const sizes = new Map();
    cdp.on("Network.requestWillBeSent", (e) => urls.set(e.requestId, e.request.url));
    cdp.on("Network.loadingFinished", (e) => sizes.set(e.requestId, e.encodedDataLength));
    await p.goto(box.base + "/#/chat");
    await p.locator("#prompt").waitFor();
    await p.waitForLoadState("networkidle");
    await p.close();
    let assets = 0, api = 0;
    const lines = [];
    for (const [id, n] of sizes) {
      const url = new URL(urls.get(id) || "http://x/?");
      if (url.pathname.startsWith("/ui/")) api += n; else assets += n;
      lines.push(url.pathname + url.search + " " + n);
    }
    const kb = (n) => (n / 1024).toFixed(1) + " KB";
    const report = "chat page first load: " + kb(assets + api) + " transferred (" + kb(assets) +
      " page and assets, " + kb(api) + " API), " + sizes.size + " requests\n" + lines.sort().join("\n") + "\n";
    fs.mkdirSync(shots, { recursive: true });
    fs.writeFileSync(path.join(shots, "page-weight.txt"), report);
    console.log(report);
    assert.ok(assets > 1000, "the page loaded: " + report);
    assert.ok(assets + api < 100 * 1024, "the chat page stays under 100 KB: " + report);
    assert.ok(![...urls.values()].some((u) => !u.startsWith(box.base)), "nothing is loaded from elsewhere");
    await logout();
  });

  test("no script errors or CSP violations", () => {
    assert.deepEqual(problems, []);
  });
});
