// Building the page: elements and text nodes only. Nothing here parses HTML, so no text from a
// model, a model name or an audit line can become markup or script.
const SVG = "http://www.w3.org/2000/svg";

function fill(el, props, children) {
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.setAttribute("class", v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value" || k === "checked" || k === "disabled" || k === "selected") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  return append(el, children);
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export const h = (tag, props, ...children) => fill(document.createElement(tag), props, children);
export const s = (tag, props, ...children) => fill(document.createElementNS(SVG, tag), props, children);

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function setStatus(el, text, kind = "") {
  el.className = `status ${kind}`;
  el.textContent = text;
}

// A modal question with buttons; resolves to the chosen button's value (null: cancelled).
export function ask(title, body, buttons) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "modal" });
    const done = (value) => {
      dialog.close();
      dialog.remove();
      resolve(value);
    };
    const row = h("div", { class: "buttons" },
      buttons.map((b) => h("button", { type: "button", class: b.class || "", onclick: () => done(b.value(dialog)) }, b.label)));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      done(null);
    });
    // Enter in a field chooses the last button; the form itself never submits anywhere
    const form = h("form", {}, h("h3", {}, title), body, row);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      done(buttons[buttons.length - 1].value(dialog));
    });
    dialog.append(form);
    document.body.append(dialog);
    dialog.showModal();
    const input = dialog.querySelector("input");
    if (input) input.focus();
  });
}

// Numbers as the CLI prints them.
export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

export function num(v, digits = 1) {
  return v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(digits);
}

export function params(n) {
  if (!n) return "–";
  return n >= 1e9 ? `${(n / 1e9).toFixed(1)}B` : `${(n / 1e6).toFixed(1)}M`;
}

export function seconds(v) {
  if (v === null || v === undefined) return "–";
  if (v < 1) return `${Math.round(v * 1000)} ms`;
  if (v < 120) return `${v.toFixed(1)} s`;
  return `${Math.floor(v / 60)} min ${Math.round(v % 60)} s`;
}

export function typeMix(mix, n = 3) {
  return mix.slice(0, n).map((t) => `${t.type} ${Math.round(100 * t.share)}%`).join(", ");
}
