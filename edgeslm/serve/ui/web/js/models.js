// Models: every stored model by family, its variants measured on one scale, the size × KLD view,
// lineage, and (for admins) pull, copy and delete.
import { call, getJSON, ndjson } from "./api.js";
import { ask, bytes, clear, h, num, params, setStatus, typeMix } from "./dom.js";
import { paretoPlot } from "./plot.js";

export function mount(root, ctx) {
  const status = h("p", { class: "status", role: "status" });
  const body = h("div");
  root.append(h("h1", {}, "Models"), ctx.may("pull") ? pullForm(ctx, status, () => load()) : null, status, body);

  async function load() {
    try {
      const data = await getJSON("/edgeslm/v1/models");
      clear(body);
      if (!data.families.length) {
        body.append(h("p", { class: "muted" }, "No models are stored yet. Pull one: edgeslm pull smollm2-135m-instruct"));
      }
      for (const f of data.families) body.append(family(f, ctx, status, load));
    } catch (err) {
      setStatus(status, `Could not list the models: ${err.message}`, "error");
    }
  }
  load();
}

function pullForm(ctx, status, reload) {
  const input = h("input", { type: "text", name: "model", placeholder: "model to pull, e.g. gemma3-270m", size: 36,
    "aria-label": "model to pull", autocomplete: "off" });
  const button = h("button", { type: "submit" }, "Pull");
  const form = h("form", { class: "inline admin", id: "pull-form" }, input, button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const model = input.value.trim();
    if (!model) return;
    button.disabled = true;
    setStatus(status, `pulling ${model}…`);
    try {
      const res = await call("POST", "/api/pull", { model, stream: true });
      for await (const line of ndjson(res)) {
        const pct = line.total ? ` ${Math.round((100 * (line.completed || 0)) / line.total)}%` : "";
        setStatus(status, `${model}: ${line.status}${pct}`);
      }
      setStatus(status, `pulled ${model}`, "ok");
      input.value = "";
      reload();
    } catch (err) {
      setStatus(status, `pull ${model} failed: ${err.message}`, "error");
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function family(f, ctx, status, reload) {
  const first = f.variants[0];
  const measured = f.variants.filter((v) => v.result && v.result.kld_mean !== null);
  const refs = [...new Set(measured.map((v) => v.result.reference))];
  const reference = f.variants.find((v) => v.result && refs.includes(v.name));
  const section = h("section", { class: "family", dataset: { family: f.name } },
    h("h2", {}, f.name),
    h("p", { class: "facts" }, `${first.size_class_label} · ${first.architecture} · ${params(first.n_params)} parameters · `
      + `${f.variants.length} variant${f.variants.length === 1 ? "" : "s"}`),
  );
  if (f.optimize) {
    const o = f.optimize;
    section.append(h("p", { class: "facts" }, `Last optimize: ${o.described.join("; ") || "no constraints"}`
      + (o.winner ? ` → ${o.winner}` : " → no candidate met them")));
  }
  if (measured.length) {
    section.append(paretoPlot(samePoints(measured).map(point), {
      maxSize: f.optimize && f.optimize.max_size, sizeBudget: f.optimize && f.optimize.size_budget,
      maxKld: f.optimize && f.optimize.max_kld_mean,
    }));
    section.append(h("p", { class: "muted" }, `KLD against ${refs.join(", ")}`
      + (reference ? ` (perplexity ${num(reference.result.ppl, 3)})` : "")
      + `; text ${measured[0].result.text}, ${measured[0].result.chunks} chunk(s) of ${measured[0].result.ctx} tokens.`));
  } else {
    section.append(h("p", { class: "muted" }, `No variant has quality results yet: edgeslm eval ${first.name} --all-variants`));
  }
  section.append(table(f, ctx, status, reload), lineage(f));
  return section;
}

// Tags naming the same file are one point, labelled with every tag.
function samePoints(variants) {
  const byDigest = new Map();
  for (const v of variants) {
    if (byDigest.has(v.digest)) byDigest.get(v.digest).tags.push(v.tag);
    else byDigest.set(v.digest, { ...v, tags: [v.tag] });
  }
  return [...byDigest.values()];
}

function point(v) {
  const r = v.result;
  const base = v.name.slice(0, v.name.length - v.tag.length);
  return {
    name: v.tags.map((t) => base + t).join(" = "), label: v.tags.join(", "), size: v.size, kld: Math.max(r.kld_mean, 1e-6), tps: r.tg_tps, runtime: v.runtime,
    details: [
      ["runtime", `${v.runtime} (${v.format})`], ["size", bytes(v.size)], ["mean KLD", `${num(r.kld_mean, 4)} ± ${num(r.kld_err, 4)}`],
      ["same top-1", r.same_top === null ? "–" : `${num(100 * r.same_top, 2)} %`], ["perplexity", num(r.ppl, 3)],
      ["generation", `${num(r.tg_tps)} tok/s`], ["prompt", `${num(r.pp_tps)} tok/s`], ["type mix", typeMix(v.type_mix)],
      ["measured on", `${r.text}, ${r.chunks} × ${r.ctx} tokens`],
      ...Object.entries(v.tasks || {}).map(([task, t]) => [taskLabel(task), taskCell(t)]),
    ],
  };
}

const COLUMNS = ["Variant", "Size", "Type mix", "Bits/weight", "PPL", "Mean KLD", "Same top-1", "HumanEval pass@1",
  "Tool calls", "Gen tok/s", "Prompt tok/s", "Peak RSS"];
const NUMERIC = new Set(["Size", "Bits/weight", "PPL", "Mean KLD", "Same top-1", "HumanEval pass@1", "Tool calls",
  "Gen tok/s", "Prompt tok/s", "Peak RSS"]);

function taskLabel(task) {
  return task === "humaneval" ? "HumanEval pass@1" : task === "tools" ? "tool calls" : task;
}

// "61.6 % of 164": the share passed and over how many problems (a --limit run says so)
function taskCell(t) {
  return t ? `${num(100 * t.score, 1)} % of ${t.problems}` : "–";
}

function table(f, ctx, status, reload) {
  const admin = ctx.may("copy") || ctx.may("delete");
  const head = h("tr", {}, COLUMNS.map((c) => h("th", { class: NUMERIC.has(c) ? "n" : "" }, c)), ctx.may("generate") ? h("th", {}, "") : null,
    admin ? h("th", {}, "Admin") : null);
  const rows = f.variants.map((v) => {
    const r = v.result || {};
    return h("tr", { dataset: { model: v.name } },
      h("td", {}, h("span", { class: "tag" }, v.tag), h("span", { class: "badge" }, v.runtime)),
      h("td", { class: "n" }, bytes(v.size)),
      h("td", {}, typeMix(v.type_mix)),
      h("td", { class: "n" }, num(v.bits_per_weight, 2)),
      h("td", { class: "n" }, num(r.ppl, 3)),
      h("td", { class: "n" }, r.kld_mean === null && r.ppl ? "reference" : num(r.kld_mean, 4)),
      h("td", { class: "n" }, r.same_top === null || r.same_top === undefined ? "–" : `${num(100 * r.same_top, 2)} %`),
      h("td", { class: "n" }, taskCell((v.tasks || {}).humaneval)),
      h("td", { class: "n" }, taskCell((v.tasks || {}).tools)),
      h("td", { class: "n" }, num(r.tg_tps)),
      h("td", { class: "n" }, num(r.pp_tps)),
      h("td", { class: "n" }, bytes(r.peak_rss)),
      ctx.may("generate") ? h("td", {}, h("a", { href: `#chat?model=${encodeURIComponent(v.name)}` }, "chat")) : null,
      admin ? h("td", { class: "actions" },
        ctx.may("copy") ? h("button", { type: "button", class: "small", onclick: () => copy(v, status, reload) }, "Copy") : null,
        ctx.may("delete") ? h("button", { type: "button", class: "small danger", onclick: () => remove(v, status, reload) }, "Delete") : null,
      ) : null,
    );
  });
  return h("div", { class: "scroll" }, h("table", { class: "variants" }, h("thead", {}, head), h("tbody", {}, rows)));
}

function lineage(f) {
  const names = new Set(f.variants.map((v) => v.name));
  const children = new Map();
  const roots = [];
  for (const v of f.variants) {
    if (v.parent && names.has(v.parent) && v.parent !== v.name) {
      if (!children.has(v.parent)) children.set(v.parent, []);
      children.get(v.parent).push(v);
    } else roots.push(v);
  }
  const seen = new Set();
  const item = (v) => {
    seen.add(v.name);
    const how = v.source.kind === "quantize" || v.source.kind === "convert"
      ? ` (${v.source.kind} to ${v.source.requested || "?"})` : v.source.kind ? ` (${v.source.kind})` : "";
    const kids = (children.get(v.name) || []).filter((c) => !seen.has(c.name));
    return h("li", {}, h("span", { class: "tag" }, v.tag), how,
      v.parent && !names.has(v.parent) ? ` from ${v.parent}` : null,
      kids.length ? h("ul", {}, kids.map(item)) : null);
  };
  return h("details", { class: "lineage" }, h("summary", {}, "Lineage"), h("ul", {}, roots.map(item)));
}

async function copy(v, status, reload) {
  const input = h("input", { type: "text", value: `${v.name.split(":")[0]}:copy`, size: 40, "aria-label": "new name" });
  const dest = await ask(`Copy ${v.name}`, h("p", {}, "New name: ", input), [
    { label: "Cancel", value: () => null },
    { label: "Copy", class: "primary", value: () => input.value.trim() },
  ]);
  if (!dest) return;
  try {
    await call("POST", "/api/copy", { source: v.name, destination: dest });
    setStatus(status, `copied ${v.name} to ${dest}`, "ok");
    reload();
  } catch (err) {
    setStatus(status, `copy failed: ${err.message}`, "error");
  }
}

async function remove(v, status, reload) {
  // the confirmation 'edgeslm rm' gives
  const plan = `will remove ${v.name}, freeing ${bytes(v.remove.freed_bytes)} (${v.remove.blobs} blob(s))`;
  const ok = await ask(`Delete ${v.name}`, h("p", {}, plan, h("br"), "Remove?"), [
    { label: "Cancel", value: () => null },
    { label: "Remove", class: "danger", value: () => true },
  ]);
  if (!ok) return;
  try {
    await call("DELETE", "/api/delete", { model: v.name });
    setStatus(status, `deleted ${v.name}; freed ${bytes(v.remove.freed_bytes)}`, "ok");
    reload();
  } catch (err) {
    setStatus(status, `delete failed: ${err.message}`, "error");
  }
}
