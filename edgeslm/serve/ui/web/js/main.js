// The page's start: ask for a key when the server wants one (kept in this tab only), learn what
// the key may do, show those pages and controls, and route between pages by the URL's #hash.
import { ApiError, getJSON, setKey } from "./api.js";
import { ask, clear, h } from "./dom.js";
import * as audit from "./audit.js";
import * as chat from "./chat.js";
import * as models from "./models.js";
import * as server from "./server.js";

const PAGES = { models, chat, server, audit };
const NEEDS = { models: "show", chat: "generate", server: "ps", audit: "audit" };
let unmount = null;
let ctx = null;

async function askKey(message) {
  const input = h("input", { type: "password", id: "api-key", size: 48, autocomplete: "off", "aria-label": "API key" });
  const key = await ask("API key", h("div", {}, h("p", {}, message), input), [{ label: "Use this key", class: "primary", value: () => input.value.trim() }]);
  setKey(key || "");
}

async function session() {
  const { auth } = await getJSON("/ui/auth");
  let message = "This server needs an API key (edgeslm keys add). It is kept in this tab only.";
  for (;;) {
    if (auth && !sessionStorage.getItem("edgeslm.key")) await askKey(message);
    try {
      return await getJSON("/edgeslm/v1/session");
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) throw err;
      setKey("");
      message = `${err.message}. Try again.`;
    }
  }
}

function route() {
  const [name, query] = (location.hash.slice(1) || "models").split("?");
  const page = PAGES[name] && ctx.may(NEEDS[name]) ? name : "models";
  if (unmount) unmount();
  unmount = null;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  const root = clear(document.getElementById("page"));
  const q = Object.fromEntries(new URLSearchParams(query || ""));
  unmount = PAGES[page].mount(root, { ...ctx, query: q }) || null;
}

async function start() {
  const root = document.getElementById("page");
  let s;
  try {
    s = await session();
  } catch (err) {
    clear(root).append(h("p", { class: "status error" }, `Cannot reach the server: ${err.message}`));
    return;
  }
  const actions = new Set(s.actions);
  ctx = { session: s, may: (a) => actions.has(a), admin: !s.auth || s.role === "admin" };
  for (const a of document.querySelectorAll("#nav a[data-needs]")) a.hidden = !ctx.may(a.dataset.needs);
  const who = clear(document.getElementById("who"));
  if (s.auth) {
    who.append(`${s.key_id} (${s.role}) `, h("button", { type: "button", class: "small", id: "forget-key", onclick: () => {
      setKey("");
      location.reload();
    } }, "Forget key"));
  } else who.append(`edgeslm ${s.version} · no keys (loopback)`);
  window.addEventListener("hashchange", route);
  route();
}

start();
