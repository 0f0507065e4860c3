// Charts drawn as SVG elements (no library, no markup parsing): the size × KLD view of a model's
// variants and the small line charts of the Server page.
import { append, bytes, h, num, s } from "./dom.js";

// viridis at five stops: slow (dark blue) to fast (yellow), as the CLI's plots colour tok/s
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

export function colour(t) {
  if (t === null || t === undefined || Number.isNaN(t)) return "#9aa0a6";
  const x = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x));
  const f = x - i;
  const c = RAMP[i].map((v, k) => Math.round(v + f * (RAMP[i + 1][k] - v)));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

function niceTicks(lo, hi, count = 5) {
  const span = hi - lo || 1;
  const step0 = span / count;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((v) => v >= step0);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function marker(runtime, x, y, fill) {
  const common = { fill, stroke: "#1f2328", "stroke-width": 1, class: "point" };
  if (runtime === "onnxruntime") return s("rect", { ...common, x: x - 6, y: y - 6, width: 12, height: 12 });
  if (runtime === "mlx") return s("path", { ...common, d: `M${x} ${y - 8}L${x + 7} ${y + 5}L${x - 7} ${y + 5}Z` });
  return s("circle", { ...common, cx: x, cy: y, r: 7 });
}

// The variants not beaten on both size and KLD by another: the trade-off curve.
export function frontier(points) {
  const sorted = [...points].sort((a, b) => a.size - b.size || a.kld - b.kld);
  const out = [];
  let best = Infinity;
  for (const p of sorted) {
    if (p.kld < best) {
      out.push(p);
      best = p.kld;
    }
  }
  return out;
}

// points: {name, size (bytes), kld (mean), kldErr, tps, runtime, details: [[label, text]]}
// limits: {maxSize, sizeBudget, maxKld} from the last optimize run (drawn as dashed lines)
export function paretoPlot(points, limits = {}) {
  const W = 680;
  const H = 360;
  const M = { l: 64, r: 20, t: 16, b: 46 };
  const mb = (b) => b / 1e6;
  const xsRaw = points.map((p) => mb(p.size)).concat([limits.maxSize, limits.sizeBudget].filter(Boolean).map(mb));
  const ys = points.map((p) => p.kld).concat(limits.maxKld ? [limits.maxKld] : []);
  const xLo = Math.max(0, Math.min(...xsRaw) * 0.9);
  const xHi = Math.max(...xsRaw) * 1.06 || 1;
  const yLo = Math.log10(Math.max(1e-6, Math.min(...ys) / 1.6));
  const yHi = Math.log10(Math.max(...ys) * 1.6);
  const X = (v) => M.l + ((v - xLo) / (xHi - xLo || 1)) * (W - M.l - M.r);
  const Y = (v) => M.t + (1 - (Math.log10(v) - yLo) / (yHi - yLo || 1)) * (H - M.t - M.b);
  const tps = points.map((p) => p.tps).filter((t) => t);
  const tLo = Math.min(...tps);
  const tHi = Math.max(...tps);
  const norm = (t) => (t ? (tHi > tLo ? (t - tLo) / (tHi - tLo) : 1) : null);

  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart pareto", role: "img",
    "aria-label": "file size against mean KL-divergence, colour: generation tokens per second" });
  const grid = s("g", { class: "grid" });
  for (const v of niceTicks(xLo, xHi, 6)) {
    append(grid, [s("line", { x1: X(v), x2: X(v), y1: M.t, y2: H - M.b }),
      s("text", { x: X(v), y: H - M.b + 16, "text-anchor": "middle" }, `${v}`)]);
  }
  for (let d = Math.floor(yLo); d <= Math.ceil(yHi); d += 1) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** d;
      if (Math.log10(v) < yLo || Math.log10(v) > yHi) continue;
      append(grid, [s("line", { x1: M.l, x2: W - M.r, y1: Y(v), y2: Y(v), class: m === 1 ? "major" : "minor" }),
        s("text", { x: M.l - 6, y: Y(v) + 4, "text-anchor": "end" }, Number(v.toPrecision(3)).toString())]);
    }
  }
  append(svg, [grid,
    s("text", { x: (M.l + W - M.r) / 2, y: H - 8, "text-anchor": "middle", class: "axis" }, "file size (MB)"),
    s("text", { x: 14, y: (M.t + H - M.b) / 2, "text-anchor": "middle", class: "axis",
      transform: `rotate(-90 14 ${(M.t + H - M.b) / 2})` }, "mean KLD vs reference (log)")]);

  const lines = s("g", { class: "limits" });
  const vline = (v, label) => append(lines, [s("line", { x1: X(mb(v)), x2: X(mb(v)), y1: M.t, y2: H - M.b }),
    s("text", { x: X(mb(v)) + 4, y: M.t + 12 }, label)]);
  if (limits.maxSize) vline(limits.maxSize, `max size ${bytes(limits.maxSize)}`);
  if (limits.sizeBudget && limits.sizeBudget !== limits.maxSize) vline(limits.sizeBudget, `size budget ${bytes(limits.sizeBudget)}`);
  if (limits.maxKld) {
    append(lines, [s("line", { x1: M.l, x2: W - M.r, y1: Y(limits.maxKld), y2: Y(limits.maxKld) }),
      s("text", { x: W - M.r - 4, y: Y(limits.maxKld) - 5, "text-anchor": "end" }, `max mean KLD ${limits.maxKld}`)]);
  }
  svg.append(lines);

  const front = frontier(points);
  if (front.length > 1) {
    svg.append(s("polyline", { class: "frontier", points: front.map((p) => `${X(mb(p.size))},${Y(p.kld)}`).join(" ") }));
  }
  const wrap = h("div", { class: "plot" });
  const tip = h("div", { class: "tip", hidden: true });
  const dots = s("g", { class: "points" });
  for (const p of points) {
    const x = X(mb(p.size));
    const y = Y(p.kld);
    const dot = marker(p.runtime, x, y, colour(norm(p.tps)));
    dot.append(s("title", {}, p.name));
    dot.dataset.name = p.name;
    const show = () => {
      tip.replaceChildren(h("strong", {}, p.name), ...p.details.map(([k, v]) => h("div", {}, `${k}: ${v}`)));
      tip.hidden = false;
      const box = svg.getBoundingClientRect();
      const scale = box.width / W;
      tip.style.left = `${Math.min(x * scale + 12, box.width - 220)}px`;
      tip.style.top = `${y * scale + 12}px`;
    };
    dot.addEventListener("mouseenter", show);
    dot.addEventListener("focus", show);
    dot.addEventListener("mouseleave", () => { tip.hidden = true; });
    dot.setAttribute("tabindex", "0");
    dots.append(dot);
    dots.append(s("text", { x: x + 9, y: y - 8, class: "label" }, p.label));
  }
  svg.append(dots);
  append(wrap, [svg, tip, legend(tLo, tHi, points)]);
  return wrap;
}

function legend(lo, hi, points) {
  const runtimes = [...new Set(points.map((p) => p.runtime))];
  const bar = h("span", { class: "ramp" });
  const text = Number.isFinite(lo) ? `generation tok/s: ${num(lo)} ` : "generation tok/s: not measured";
  const shapes = runtimes.map((r) => h("span", { class: "shape" },
    (() => { const g = s("svg", { viewBox: "-9 -9 18 18", class: "glyph" }); g.append(marker(r, 0, 0, "#bbb")); return g; })(), ` ${r}`));
  return h("div", { class: "legend" }, text, Number.isFinite(lo) ? [bar, ` ${num(hi)}`] : [], " · dashed: trade-off curve", shapes);
}

// A small line chart of one series: values (null: no data) at equal steps, newest last.
export function lineChart(values, { title, unit, digits = 1 }) {
  const W = 320;
  const H = 120;
  const M = { l: 40, r: 8, t: 20, b: 18 };
  const present = values.filter((v) => v !== null && v !== undefined);
  const top = Math.max(...present, 0) || 1;
  const hi = top * 1.15;
  const X = (i) => M.l + (i / Math.max(1, values.length - 1)) * (W - M.l - M.r);
  const Y = (v) => M.t + (1 - v / hi) * (H - M.t - M.b);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart line", role: "img", "aria-label": title });
  const last = present.length ? present[present.length - 1] : null;
  append(svg, [
    s("text", { x: M.l, y: 13, class: "title" }, `${title}: ${last === null ? "–" : `${num(last, digits)} ${unit}`}`),
    s("line", { x1: M.l, x2: W - M.r, y1: Y(0), y2: Y(0), class: "base" }),
    s("text", { x: M.l - 4, y: Y(top) + 4, "text-anchor": "end", class: "tick" }, num(top, digits)),
    s("text", { x: M.l - 4, y: Y(0) + 4, "text-anchor": "end", class: "tick" }, "0"),
    s("text", { x: W - M.r, y: H - 4, "text-anchor": "end", class: "tick" }, "now"),
  ]);
  let run = [];
  const flush = () => {
    if (run.length > 1) svg.append(s("polyline", { points: run.join(" "), class: "series" }));
    if (run.length === 1) {
      const [x, y] = run[0].split(",");
      svg.append(s("circle", { cx: x, cy: y, r: 2.5, class: "dot" }));
    }
    run = [];
  };
  values.forEach((v, i) => {
    if (v === null || v === undefined) flush();
    else run.push(`${X(i)},${Y(v)}`);
  });
  flush();
  return svg;
}
