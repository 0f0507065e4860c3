// Markdown from a model (untrusted) as DOM nodes: text is only ever set as text, links only to
// http(s) and never with the page's context (noopener, noreferrer). Raw HTML in the reply stays
// visible as the characters it is. Covers what small models write: paragraphs, headings, lists,
// quotes, fenced code, inline code, bold, italic, links, rules.
import { h } from "./dom.js";

const FENCE = /^\s*(```|~~~)\s*([\w+-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const ORDERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;
const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|(?<![\w])__(?=\S)([\s\S]*?\S)__(?![\w])|\*(?=[^\s*])([^*]*?[^\s*])\*|(?<![\w])_(?=[^\s_])([^_]*?[^\s_])_(?![\w])|\[([^\]\n]{1,500})\]\(([^()\s]{1,2000})\)/g;

const MAX_INLINE = 20000; // characters of one paragraph parsed for emphasis; longer: plain text

export function inline(text) {
  if (text.length > MAX_INLINE) return [text];
  const out = [];
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    if (m[1]) out.push(h("code", {}, m[2]));
    else if (m[3] || m[4]) out.push(h("strong", {}, inline(m[3] || m[4])));
    else if (m[5] || m[6]) out.push(h("em", {}, inline(m[5] || m[6])));
    else out.push(link(m[7], m[8]));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function link(label, href) {
  let url = null;
  try {
    url = new URL(href);
  } catch {
    url = null;
  }
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) return `[${label}](${href})`;
  return h("a", { href: url.href, rel: "noopener noreferrer nofollow", target: "_blank" }, inline(label));
}

function lines(parts) {
  const out = [];
  parts.forEach((p, i) => {
    if (i) out.push(h("br"));
    out.push(inline(p));
  });
  return out;
}

export function render(source) {
  const blocks = [];
  const rows = source.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < rows.length) {
    const row = rows[i];
    let m;
    if ((m = FENCE.exec(row))) {
      const body = [];
      i += 1;
      while (i < rows.length && !(rows[i].trim().startsWith(m[1]) && FENCE.test(rows[i]))) body.push(rows[i++]);
      i += 1; // the closing fence (a reply still streaming may not have it yet)
      const code = h("code", {}, body.join("\n"));
      if (m[2]) code.dataset.lang = m[2];
      blocks.push(h("pre", {}, code));
    } else if ((m = HEADING.exec(row))) {
      blocks.push(h(`h${Math.min(6, m[1].length + 2)}`, {}, inline(m[2])));
      i += 1;
    } else if (RULE.test(row)) {
      blocks.push(h("hr"));
      i += 1;
    } else if (BULLET.test(row) || ORDERED.test(row)) {
      const ordered = !BULLET.test(row);
      const pattern = ordered ? ORDERED : BULLET;
      const items = [];
      while (i < rows.length && pattern.test(rows[i])) {
        const mm = pattern.exec(rows[i]);
        items.push(h("li", {}, inline(ordered ? mm[2] : mm[1])));
        i += 1;
      }
      const start = ordered ? Number(ORDERED.exec(row)[1]) : 1;
      blocks.push(h(ordered ? "ol" : "ul", ordered && start !== 1 ? { start } : {}, items));
    } else if (QUOTE.test(row)) {
      const body = [];
      while (i < rows.length && QUOTE.test(rows[i])) body.push(QUOTE.exec(rows[i++])[1]);
      blocks.push(h("blockquote", {}, render(body.join("\n"))));
    } else if (!row.trim()) {
      i += 1;
    } else {
      const para = [];
      while (i < rows.length && rows[i].trim() && !FENCE.test(rows[i]) && !HEADING.test(rows[i])
             && !BULLET.test(rows[i]) && !ORDERED.test(rows[i]) && !QUOTE.test(rows[i]) && !RULE.test(rows[i])) {
        para.push(rows[i++]);
      }
      blocks.push(h("p", {}, lines(para)));
    }
  }
  return blocks;
}
