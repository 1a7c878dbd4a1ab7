// Starts the real hearthd (target/release) with a temporary data directory on a free port, and
// Debian's chromium through playwright-core. Used by ui.test.js.

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, "../..");
export const model = process.env.HEARTH_TEST_MODEL ||
  path.join(os.homedir(), ".cache/hearth/models/SmolLM2-135M-Instruct.Q4_1.gguf");
/** The other two test models (tests/browser/run fetches them next to SmolLM2). */
export const qwenModel = path.join(path.dirname(model), "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
export const gemmaModel = path.join(path.dirname(model), "gemma-3-270m-q4_k_m.gguf");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}

/** A running hearthd; `stop()` ends it and removes its data dir (kept when KEEP_DATA is set). */
export async function startHearth() {
  // For work on the UI alone: a box that is already running (its setup code in the environment).
  if (process.env.HEARTH_TEST_URL) {
    return { base: process.env.HEARTH_TEST_URL, setupCode: process.env.HEARTH_TEST_SETUP_CODE, log: () => "", stop: async () => {} };
  }
  const bin = path.join(repo, "target/release/hearthd");
  if (!fs.existsSync(bin)) throw new Error(bin + " is missing: cargo build --release -p hearthd -p hearth-inference");
  if (!fs.existsSync(model)) throw new Error(model + " is missing: ../shared/scripts/fetch-models smollm2-135m");
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-browser-"));
  // An empty directory stands in for /media; tests "plug in a stick" by renaming one into it.
  const mediaDir = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-media-"));
  const config = path.join(dataDir, "hearth.toml");
  fs.writeFileSync(config, "media_dir = " + JSON.stringify(mediaDir) + "\n");
  const port = await freePort();
  const logPath = path.join(dataDir, "hearthd.log");
  const log = fs.openSync(logPath, "w");
  const child = spawn(bin, ["--config", config, "--data-dir", dataDir, "--listen", "127.0.0.1:" + port, "--model", model], {
    stdio: ["ignore", log, log], env: { ...process.env, HEARTH_LOG: "info" },
  });
  let exited = null;
  child.on("exit", (code, signal) => { exited = signal || code; });
  const base = "http://127.0.0.1:" + port;
  const box = {
    base, dataDir, mediaDir, child, logPath,
    log: () => fs.readFileSync(logPath, "utf8"),
    async stop() {
      if (exited === null) {
        child.kill("SIGTERM");
        for (let i = 0; i < 100 && exited === null; i++) await sleep(100);
        if (exited === null) child.kill("SIGKILL");
      }
      fs.closeSync(log);
      if (!process.env.KEEP_DATA) {
        fs.rmSync(dataDir, { recursive: true, force: true });
        fs.rmSync(mediaDir, { recursive: true, force: true });
      }
    },
  };
  // Ready when the page is served and every model has loaded.
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (exited !== null) throw new Error("hearthd exited early (" + exited + "):\n" + box.log());
    try {
      const r = await fetch(base + "/readyz");
      const body = await r.json().catch(() => ({}));
      const models = (body.inference && body.inference.models) || [];
      const loading = models.some((m) => JSON.stringify(m).includes("loading"));
      if (r.status === 200 && !loading) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) { await box.stop(); throw new Error("hearthd not ready after 120 s:\n" + box.log()); }
    await sleep(200);
  }
  return box;
}

/** The setup code hearthd wrote to its data dir at first start. */
export async function setupCode(box) {
  if (box.setupCode) return box.setupCode;
  const file = path.join(box.dataDir, "setup-code");
  for (let i = 0; i < 100; i++) {
    if (fs.existsSync(file)) {
      const code = fs.readFileSync(file, "utf8").trim();
      if (code) return code;
    }
    await sleep(100);
  }
  throw new Error("no setup code in " + file + ":\n" + box.log());
}

/** Debian's chromium, headless, with a fresh profile; closing it removes the profile. */
export async function startBrowser() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 800 },
  });
  return {
    context,
    async close() {
      await context.close();
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}
