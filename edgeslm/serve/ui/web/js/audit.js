// Audit (admins): the chain's state as 'edgeslm audit verify' finds it, the report per key, model
// and day (also as CSV), and the latest entries. Every field is shown as text.
import { download, getJSON } from "./api.js";
import { h, setStatus } from "./dom.js";

const DIMENSIONS = ["key", "model", "day", "role"];
const RECENT = ["time", "key_id", "role", "method", "route", "model", "status", "tokens_in", "tokens_out", "duration_ms"];

export function mount(root) {
  const status = h("p", { class: "status", role: "status" });
  const body = h("div");
  root.append(h("h1", {}, "Audit"), status, body);
  getJSON("/edgeslm/v1/audit?limit=100").then((d) => {
    if (!d.enabled) {
      body.append(h("p", { class: "muted" }, "This server keeps no audit log; start it with --audit-log FILE."));
      return;
    }
    const v = d.verify;
    body.append(h("p", { class: `chain ${v.ok ? "ok" : "error"}`, id: "chain" }, v.ok
      ? `Chain intact: ${v.lines} line(s); last hash ${v.last_hash}`
      : `Chain broken: ${v.problems.length + v.more_problems} problem(s) in ${v.lines} line(s)`));
    if (!v.ok) body.append(h("ul", { class: "problems" }, v.problems.map((p) => h("li", {}, p))));
    const csv = h("button", { type: "button", id: "audit-csv" }, "Download report (CSV)");
    csv.addEventListener("click", () => download("/edgeslm/v1/audit.csv", "edgeslm-audit-report.csv")
      .catch((err) => setStatus(status, `Download failed: ${err.message}`, "error")));
    body.append(h("h2", {}, "Report"), csv);
    for (const dim of DIMENSIONS) {
      const rows = d.report.filter((r) => r.dimension === dim);
      if (!rows.length) continue;
      body.append(h("h3", {}, `per ${dim}`), h("div", { class: "scroll" }, h("table", { class: "report" },
        h("thead", {}, h("tr", {}, [dim, "requests", "refused", "errors", "tokens in", "tokens out"]
          .map((c, i) => h("th", { class: i ? "n" : "" }, c)))),
        h("tbody", {}, rows.map((r) => h("tr", {}, h("td", {}, r.value),
          [r.requests, r.refused, r.errors, r.tokens_in, r.tokens_out].map((x) => h("td", { class: "n" }, `${x}`))))))));
    }
    body.append(h("h2", {}, "Latest entries"), h("div", { class: "scroll" }, h("table", { class: "recent", id: "audit-recent" },
      h("thead", {}, h("tr", {}, RECENT.map((c) => h("th", {}, c)))),
      h("tbody", {}, d.recent.map((e) => h("tr", {}, e === null
        ? h("td", { colspan: RECENT.length }, "(a line that is not JSON)")
        : RECENT.map((c) => h("td", {}, e[c] === null || e[c] === undefined ? "–" : String(e[c])))))))));
  }).catch((err) => setStatus(status, `Could not read the audit log: ${err.message}`, "error"));
}
