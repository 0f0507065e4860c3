// Server: what is loaded, how busy it is, and the last minutes of generation (the server's own
// counters), refreshed every two seconds while the page is open. Admins may unload a model.
import { call, getJSON } from "./api.js";
import { bytes, clear, h, seconds, setStatus } from "./dom.js";
import { lineChart } from "./plot.js";

const REFRESH_MS = 2000;

export function mount(root, ctx) {
  const cards = h("div", { class: "cards" });
  const models = h("div");
  const charts = h("div", { class: "charts" });
  const status = h("p", { class: "status", role: "status" });
  root.append(h("h1", {}, "Server"), status, cards, h("h2", {}, "Loaded models"), models,
    h("h2", {}, "Last 10 minutes"), charts);
  let timer = null;
  let stopped = false;

  async function refresh() {
    try {
      const d = await getJSON("/edgeslm/v1/server?minutes=10");
      if (stopped) return;
      setStatus(status, "");
      clear(cards).append(
        card("Loaded", `${d.models.length}`), card("Slots busy", `${d.slots_busy} / ${d.slots}`),
        card("Queued", `${d.queued}`), card("Up", seconds(d.uptime)),
        card("Replies (10 min)", `${d.activity.totals.replies}`),
      );
      clear(models).append(d.models.length ? loadedTable(d.models, ctx, status, refresh)
        : h("p", { class: "muted" }, "No model is loaded; the first request to one loads it."));
      const pts = d.activity.points;
      clear(charts).append(
        lineChart(pts.map((p) => (p.replies ? p.throughput : 0)), { title: "generated", unit: "tok/s" }),
        lineChart(pts.map((p) => p.decode_tps), { title: "per reply", unit: "tok/s" }),
        lineChart(pts.map((p) => p.ttft_mean && p.ttft_mean * 1000), { title: "time to first token", unit: "ms", digits: 0 }),
        lineChart(pts.map((p) => p.replies), { title: "replies", unit: `per ${d.activity.bucket_seconds} s`, digits: 0 }),
      );
    } catch (err) {
      setStatus(status, `Could not read the server's state: ${err.message}`, "error");
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }
  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function card(label, value) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));
}

function loadedTable(models, ctx, status, refresh) {
  const admin = ctx.admin;
  return h("div", { class: "scroll" }, h("table", { id: "loaded" },
    h("thead", {}, h("tr", {}, ["Model", "Memory", "Slots busy", "Queued", "Unloads in", ""].map((c) => h("th", {}, c)))),
    h("tbody", {}, models.map((m) => h("tr", { dataset: { model: m.name } },
      h("td", {}, m.name), h("td", { class: "n" }, bytes(m.memory)), h("td", { class: "n" }, `${m.busy} / ${m.slots}`),
      h("td", { class: "n" }, `${m.queued}`),
      h("td", { class: "n" }, m.pinned ? "pinned" : m.expires_in === null ? "never" : seconds(m.expires_in)),
      h("td", {}, admin ? h("button", { type: "button", class: "small", onclick: async () => {
        try {
          await call("POST", "/api/generate", { model: m.name, keep_alive: 0 }); // Ollama's way to unload
          setStatus(status, `unloaded ${m.name}`, "ok");
        } catch (err) {
          setStatus(status, `unload failed: ${err.message}`, "error");
        }
      } }, "Unload") : null))))));
}

