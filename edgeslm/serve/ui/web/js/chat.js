// Chat playground: one conversation per tab (session storage), streamed from Ollama's /api/chat,
// with a stop button, time to first token and tokens/s. Replies are rendered by markdown.js.
import { call, getJSON, ndjson } from "./api.js";
import { clear, h, num, seconds, setStatus } from "./dom.js";
import { render } from "./markdown.js";

const STORE = "edgeslm.chat";
const DEFAULTS = { model: "", system: "", temperature: 0.7, top_p: 0.9, top_k: 40, num_predict: 256, seed: "", messages: [] };

function saved() {
  try {
    return { ...DEFAULTS, ...JSON.parse(sessionStorage.getItem(STORE) || "{}") };
  } catch {
    return { ...DEFAULTS };
  }
}

export function mount(root, ctx) {
  const state = saved();
  if (ctx.query.model) state.model = ctx.query.model;
  const save = () => sessionStorage.setItem(STORE, JSON.stringify(state));
  let controller = null;

  const model = h("select", { id: "chat-model", "aria-label": "model" });
  const system = h("textarea", { id: "chat-system", rows: 2, placeholder: "System prompt (optional)", value: state.system });
  const field = (name, label, attrs) => {
    const input = h("input", { type: "number", id: `chat-${name}`, value: String(state[name]), ...attrs });
    input.addEventListener("change", () => {
      state[name] = input.value === "" ? "" : Number(input.value);
      save();
    });
    return h("label", {}, label, input);
  };
  const log = h("div", { class: "log", id: "chat-log" });
  const prompt = h("textarea", { id: "chat-input", rows: 3, placeholder: "Message (Enter sends, Shift+Enter: new line)" });
  const send = h("button", { type: "submit", id: "chat-send", class: "primary" }, "Send");
  const stop = h("button", { type: "button", id: "chat-stop", disabled: true }, "Stop");
  const reset = h("button", { type: "button", id: "chat-clear" }, "New chat");
  const status = h("p", { class: "status", role: "status" });
  const form = h("form", { class: "composer" }, prompt, h("div", { class: "buttons" }, send, stop, reset));

  root.append(h("h1", {}, "Chat"),
    h("div", { class: "chat" },
      h("aside", { class: "settings" },
        h("label", {}, "Model", model), h("label", {}, "System", system),
        field("temperature", "Temperature", { min: 0, max: 2, step: 0.05 }),
        field("top_p", "Top p", { min: 0, max: 1, step: 0.05 }),
        field("top_k", "Top k", { min: 0, max: 1000, step: 1 }),
        field("num_predict", "Max tokens", { min: 1, max: 8192, step: 1 }),
        field("seed", "Seed", { min: 0, step: 1, placeholder: "random" })),
      h("div", { class: "conversation" }, log, form, status)));

  system.addEventListener("change", () => { state.system = system.value; save(); });
  model.addEventListener("change", () => { state.model = model.value; save(); });
  for (const m of state.messages) log.append(bubble(m));

  getJSON("/api/tags").then((tags) => {
    const names = tags.models.map((m) => m.name);
    if (!state.model || !names.includes(state.model)) state.model = names.find((n) => n.startsWith("smollm2")) || names[0] || "";
    for (const n of names) model.append(h("option", { value: n, selected: n === state.model }, n));
    save();
  }).catch((err) => setStatus(status, `Could not list the models: ${err.message}`, "error"));

  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stop.addEventListener("click", () => controller && controller.abort());
  reset.addEventListener("click", () => {
    if (controller) controller.abort();
    state.messages = [];
    save();
    clear(log);
    setStatus(status, "");
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || controller || !state.model) return;
    prompt.value = "";
    const user = { role: "user", content: text };
    state.messages.push(user);
    log.append(bubble(user));
    const reply = { role: "assistant", content: "", stats: "" };
    const view = bubble(reply);
    log.append(view);
    save();
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    setStatus(status, `${state.model} is answering…`);
    try {
      await stream(state, reply, view, controller.signal);
      setStatus(status, "");
    } catch (err) {
      if (err.name === "AbortError") {
        reply.stats = `${reply.stats ? `${reply.stats} · ` : ""}stopped`;
        setStatus(status, "stopped");
      } else {
        setStatus(status, `The reply failed: ${err.message}`, "error");
        reply.stats = "failed";
      }
    } finally {
      if (reply.content || reply.stats) state.messages.push(reply);
      paint(view, reply);
      save();
      controller = null;
      send.disabled = false;
      stop.disabled = true;
      prompt.focus();
    }
  });
  return () => controller && controller.abort();
}

async function stream(state, reply, view, signal) {
  const messages = state.system ? [{ role: "system", content: state.system }] : [];
  messages.push(...state.messages.map((m) => ({ role: m.role, content: m.content })));
  const options = { temperature: state.temperature, top_p: state.top_p, top_k: state.top_k, num_predict: state.num_predict };
  if (state.seed !== "" && state.seed !== null) options.seed = state.seed;
  const started = performance.now();
  let first = null;
  let pending = false;
  const res = await call("POST", "/api/chat", { model: state.model, messages, stream: true, options }, signal);
  for await (const chunk of ndjson(res)) {
    const piece = chunk.message && chunk.message.content;
    if (piece) {
      if (first === null) first = performance.now();
      reply.content += piece;
      reply.stats = `time to first token ${seconds((first - started) / 1000)}`;
      if (!pending) {
        pending = true;
        requestAnimationFrame(() => { pending = false; paint(view, reply); });
      }
    }
    if (chunk.done) {
      const tps = chunk.eval_duration ? chunk.eval_count / (chunk.eval_duration / 1e9) : null;
      reply.stats = [first === null ? null : `time to first token ${seconds((first - started) / 1000)}`,
        tps ? `${num(tps)} tok/s` : null, `${chunk.eval_count || 0} tokens`, chunk.done_reason || null]
        .filter(Boolean).join(" · ");
    }
  }
}

function bubble(m) {
  const el = h("div", { class: `msg ${m.role}` });
  paint(el, m);
  return el;
}

function paint(el, m) {
  const body = m.role === "assistant" ? h("div", { class: "md" }, render(m.content)) : h("div", { class: "text" }, m.content);
  el.replaceChildren(h("div", { class: "who" }, m.role === "assistant" ? "assistant" : "you"), body);
  if (m.stats) el.append(h("div", { class: "stats" }, m.stats));
}
