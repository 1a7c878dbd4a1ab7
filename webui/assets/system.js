// The System page: CPU, memory, disk, temperature, uptime, version, the inference service's
// state, refreshed every 5 s; for the owner, the most recent log lines.

import { api } from "./api.js";
import { h, fill, bytes, duration, facts, statusLine, stateWord } from "./dom.js";

export async function systemPage({ session }) {
  const owner = session.user.role === "owner";
  const status = statusLine();
  const box = h("div", { class: "card", id: "system-facts" });
  const logs = h("ol", { class: "logs", id: "logs", "aria-label": "Recent log lines" });
  let timer = 0;
  let alive = true;

  async function load() {
    try {
      const s = await api("GET", "/ui/system");
      const cpu = s.cpu || {}, mem = s.memory || {}, disk = s.disk || {}, inf = s.inference || {};
      const used = (total, free) => typeof total === "number" && typeof free === "number"
        ? bytes(total - free) + " used of " + bytes(total) + " (" + bytes(free) + " free)" : "–";
      fill(box, facts([
        ["Version", s.version || "–"],
        ["Uptime", duration(s.uptime_s)],
        ["CPU", (cpu.model || "–") + (cpu.cores ? " · " + cpu.cores + " cores" : "")],
        ["Load (1, 5, 15 min)", Array.isArray(cpu.load) ? cpu.load.map((x) => Number(x).toFixed(2)).join(", ") : "–"],
        ["Memory", used(mem.total, mem.available)],
        ["Disk", used(disk.total, disk.free)],
        ["Temperature", typeof s.temperature_c === "number" ? s.temperature_c.toFixed(1) + " °C" : "not reported by this board"],
        ["Inference", (inf.state || "–") + (typeof inf.restarts === "number" ? " · worker restarts: " + inf.restarts : "")],
        ["Models", Array.isArray(inf.models) && inf.models.length
          ? inf.models.map((m) => typeof m === "string" ? m : (m.name || m.id) + (stateWord(m.state) ? " (" + stateWord(m.state) + ")" : "")).join(", ")
          : "none loaded"],
      ]));
      status.set("");
    } catch (e) { status.set("Could not read the system state: " + e.message, true); }
    if (owner) {
      try {
        const r = await api("GET", "/ui/system/logs");
        fill(logs, r.lines.map((l) => h("li", { class: "lvl-" + String(l.level).toLowerCase() },
          h("span", { class: "time", text: typeof l.time === "number" ? new Date(l.time * 1000).toLocaleTimeString() : String(l.time) }), " ",
          h("span", { class: "level", text: l.level }), " ", l.message)));
        if (r.lines.length === 0) logs.append(h("li", { class: "hint", text: "No log lines yet." }));
      } catch (e) { fill(logs, h("li", { class: "status error", text: e.message })); }
    }
    if (alive) timer = setTimeout(load, 5000);
  }

  const el = h("div", { class: "page" }, h("h2", { text: "System" }), status, box,
    owner ? [h("h3", { text: "Recent log lines" }), logs] : null);
  await load();
  return { el, title: "System", unmount() { alive = false; clearTimeout(timer); } };
}
