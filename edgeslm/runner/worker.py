"""A model runner process: ``python -m edgeslm.runner.worker``, one per loaded model.

It loads the model, then serves requests from JSON lines on stdin and answers with JSON lines
on stdout (``runner.messages`` lists them), decoding every request it holds in one batch
(``engines.llamacpp.batch``); requests beyond the free slots wait in order. Only this process
loads native code, so a crash here fails only its own requests. Chat templates are rendered
here, by ``edgeslm.chat``'s sandbox, never by the server.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..config import DEFAULT_ENGINE, resolve_settings
from ..engines.base import SamplingParams, Tuning, open_batch
from ..errors import ContextOverflowError, EdgeslmError, InvalidParameterError
from ..formats.kv_cache import KVCache
from ..framing import LineReader, error_message, send
from ..generation import TextStream, load, resolve_model
from ..speculation import LookupConfig
from ..store.resolve import ResolvedModel
from ..tools.grammar import format_grammar, job_grammar
from ..tools.native import marker_tokens

log = logging.getLogger(__name__)


@dataclass
class _Request:
    id: str
    tokens: list[int]
    sampling: SamplingParams
    limit: int
    stop: list[str]
    logprobs: int | None = None
    want_ids: bool = False
    received: float = field(default_factory=time.perf_counter)
    first: float | None = None
    count: int = 0
    text: TextStream | None = None
    kept: frozenset[int] = frozenset()  # special tokens whose text is kept (a tool format's markers)


def serve(name: str | ResolvedModel, slots: int, ctx_per_slot: int, threads: int | None, home: str | None, reuse: bool,
          draft: LookupConfig | None = None, kv: KVCache | None = None, tuning: Tuning | None = None) -> None:
    settings = resolve_settings(home=home, offline=True)
    found = name if isinstance(name, ResolvedModel) else resolve_model(name, settings)
    # llama.cpp's batch opens a context of its own (the model's is unused: kept small); the other runtimes'
    # slots generate through the engine, whose context is each slot's limit
    ctx = min(ctx_per_slot, 512) if found.engine(settings.engine) == DEFAULT_ENGINE else ctx_per_slot
    model = load(found, ctx=ctx, threads=threads, settings=settings, kv=kv, check_memory=False, tuning=tuning)
    batch = open_batch(model.engine, slots, ctx_per_slot, reuse=reuse, draft=draft,
                       n_batch=tuning.n_ubatch if tuning else None)
    ready = {"op": "ready", "name": model.name, "slots": slots, "ctx_per_slot": ctx_per_slot, "pid": os.getpid(),
             "n_batch": getattr(batch, "n_batch", None)}
    send({**ready, "n_vocab": model.engine.n_vocab, "chat": model.has_chat_template})
    lines, waiting, running = LineReader(sys.stdin.fileno()), deque[_Request](), dict[str, _Request]()
    while not lines.closed:
        idle = not running and not waiting
        while lines.ready(None if idle else 0):
            for raw in lines.read():
                _handle(raw, model, batch, waiting, running)
            idle = False
            if lines.closed:
                return
        while waiting and batch.free_slots():
            r = waiting.popleft()
            try:
                batch.add(r.id, r.tokens, r.sampling, r.limit, r.logprobs)
            except EdgeslmError as exc:  # what this runtime cannot do (a grammar on onnxruntime)
                send(error_message(exc, id=r.id))
                continue
            running[r.id] = r
        for ev in batch.step():
            _emit(model, batch, running, ev)


def _handle(raw: bytes, model: Any, batch: Any, waiting: deque[_Request], running: dict[str, _Request]) -> None:
    msg = json.loads(raw)
    rid = str(msg.get("id"))
    if msg["op"] == "cancel":
        batch.cancel(rid)
        getattr(batch, "finished_stats", {}).pop(rid, None)
        running.pop(rid, None)
        for r in [r for r in waiting if r.id == rid]:
            waiting.remove(r)
        return
    try:
        if msg["op"] == "embed":
            _embed(model, rid, msg["texts"], bool(msg.get("truncate")))
            return
        if msg["op"] in ("tokenize", "detokenize"):
            send({"id": rid, **_vocab_op(model.engine, msg)})
            return
        if msg["op"] == "infill":  # a fill-in-the-middle prompt's ids, built as llama.cpp builds them
            send({"op": "tokens", "id": rid, "tokens": _infill(model, msg, batch.ctx_per_slot), "pieces": None})
            return
        if msg["op"] == "count":  # a generate message's prompt, rendered and tokenized, not decoded
            send({"op": "tokens", "id": rid, "tokens": _prompt_tokens(model, msg), "pieces": None})
            return
        slot = batch.ctx_per_slot
        ctx = min(slot, int(msg.get("num_ctx") or slot))  # the request's own context (Ollama's num_ctx), if smaller
        if ctx < slot:
            larger = f"or ask for a larger num_ctx (this server holds up to {slot:,} per request)"
        else:
            larger = "or restart the server with a larger context per slot ('edgeslm serve --ctx {n}')"
        if not msg.get("truncate"):
            _refuse_surely_too_long(model, msg["prompt"], msg.get("system"), ctx, larger)
        tokens = _prompt_tokens(model, msg)
        if len(tokens) >= ctx and msg.get("truncate"):
            tokens = truncated(model, msg, tokens, ctx)
        if len(tokens) >= ctx:
            ways = ("its last turn alone does not fit even truncated: shorten it" if msg.get("truncate") else
                    "nothing was cut: shorten it, ask for truncation (Ollama: \"truncate\": true; OpenAI: "
                    "\"truncation\": \"auto\")")
            raise ContextOverflowError(
                f"the prompt has {len(tokens):,} tokens but the context holds {ctx:,} per request; {ways}, "
                + larger.format(n=_room_for(len(tokens))), params="num_ctx")
        room = ctx - len(tokens)
        limit = room if msg["max_tokens"] == -1 else min(int(msg["max_tokens"]), room)
        stop = list(msg.get("stop", []))
        tooling = msg.get("tooling")
        # a lazy grammar (tool_choice "auto") only helps: a runtime without grammars answers unconstrained and
        # the parser reads the calls; a forced call without one is refused by the batch, by name
        lazy_only = tooling and tooling["choice"] == "auto" and not batch.grammars
        grammar, triggers = job_grammar(tooling) if tooling and not lazy_only else (None, ())
        grammar = grammar or format_grammar(msg.get("format"))  # tool_choice "none": a response_format still holds
        sampling = SamplingParams(**{**msg["sampling"], "grammar": grammar, "grammar_triggers": triggers})
        logprobs, want_ids = msg.get("logprobs"), bool(msg.get("return_prompt_ids"))
        kept = marker_tokens(model.engine.tokenize, tooling["format"]) if tooling else frozenset()
        waiting.append(_Request(rid, tokens, sampling, limit, stop, logprobs, want_ids, text=TextStream(stop),
                                kept=kept))
    except EdgeslmError as exc:
        send(error_message(exc, id=rid))
    except Exception as exc:  # a bug must fail this request, not every request of this runner
        log.exception("request %s failed", rid)
        send({"op": "error", "id": rid, "kind": "EngineError", "message": f"the runner failed: {type(exc).__name__}"})


_LONGEST: dict[str, int] = {}  # model name -> its vocabulary's longest piece, in bytes


def _refuse_surely_too_long(model: Any, prompt: Any, system: str | None, ctx: int, larger: str) -> None:
    """A text prompt that cannot fit is refused before it is tokenized (a 500,000-token paste costs
    nothing): no token spells more bytes than the vocabulary's longest piece, so a text of more than
    ``ctx`` such pieces holds more than ``ctx`` tokens."""
    texts = [prompt] if isinstance(prompt, str) else [str(m.get("content") or "") for m in prompt
                                                     if isinstance(m, dict)] if isinstance(prompt, list) else []
    size = sum(len(t.encode("utf-8", errors="replace")) for t in [*texts, system or ""])
    if size <= ctx:
        return
    if model.name not in _LONGEST:
        engine = model.engine
        _LONGEST[model.name] = max(1, max(len(engine.token_bytes(t)) for t in range(engine.n_vocab)))
    least = size // _LONGEST[model.name]
    if least > ctx:
        raise ContextOverflowError(
            f"the prompt's {size:,} bytes are at least {least:,} tokens, more than the context holds ({ctx:,} per "
            "request); nothing was cut or tokenized: shorten it, ask for truncation (Ollama: \"truncate\": true; "
            f"OpenAI: \"truncation\": \"auto\"), {larger.format(n='N')}", params="num_ctx")


def reply_room(max_tokens: int, ctx: int) -> int:
    """What a truncated prompt leaves for the reply: its max_tokens up to half the context, else a quarter."""
    return min(max_tokens, ctx // 2) if max_tokens > 0 else ctx // 4


def truncated(model: Any, msg: dict[str, Any], tokens: list[int], ctx: int) -> list[int]:
    """The prompt cut to leave a reply room, as the request asked: a chat loses its oldest turns
    after its system message(s), one at a time (a tool result never opens what is kept), the last
    turn always kept; a plain text or token prompt loses its start. What was cut is logged."""
    budget, before = ctx - reply_room(int(msg["max_tokens"]), ctx), len(tokens)
    prompt = msg["prompt"]
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
        head = [m for m in prompt if m.get("role") == "system"]
        turns = [m for m in prompt if m.get("role") != "system"]
        while len(tokens) > budget and len(turns) > 1:
            turns.pop(0)
            while len(turns) > 1 and turns[0].get("role") == "tool":
                turns.pop(0)
            tokens = _prompt_tokens(model, {**msg, "prompt": head + turns})
        cut = f"{len(prompt) - len(head) - len(turns)} oldest turn(s)"
    elif isinstance(prompt, str) and msg.get("template") and model.has_chat_template:
        return tokens  # one turn: nothing to drop (the caller refuses it, naming both lengths)
    else:
        bos = model.engine.bos_text()
        first = model.engine.token_bytes(tokens[0], special=True).decode("utf-8", errors="replace")
        keep = tokens[:1] if bos and first == bos else []  # a text model's BOS stays first
        tokens = keep + tokens[len(tokens) - budget + len(keep):]
        cut = f"the first {before - len(tokens):,} token(s)"
    log.info("request %s: the prompt had %d tokens for a context of %d; truncation asked: cut %s", msg["id"],
             before, ctx, cut)
    return tokens


def _room_for(tokens: int) -> int:
    """A context per slot that holds ``tokens`` and a reply: the next multiple of 1,024 above twice as many."""
    return -(-2 * tokens // 1024) * 1024


def _prompt_tokens(model: Any, msg: dict[str, Any]) -> list[int]:
    """The request's tokens: ready ids, a chat, or a plain prompt (through the template if asked)."""
    prompt, system, context = msg["prompt"], msg.get("system"), list(msg.get("context") or ())
    tokens: list[int]
    if isinstance(prompt, str):
        if msg.get("template") and model.has_chat_template:
            prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        elif system and not context:
            prompt = f"{system}\n\n{prompt}"
    elif system and prompt and isinstance(prompt[0], dict) and prompt[0].get("role") != "system":
        prompt = [{"role": "system", "content": system}, *prompt]
    if context and isinstance(prompt, str):  # Ollama's context: the previous exchange, then this turn
        tokens = context + model.engine.tokenize(prompt, add_special=False, parse_special=False)
    elif context and isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
        tokens = context + model.prompt_tokens(prompt)
    elif isinstance(prompt, str) and not msg.get("template"):  # raw (Ollama's raw, a completion): the client
        tokens = model.engine.tokenize(prompt, add_special=True, parse_special=True)  # formatted it: specials parse
    else:
        tools = msg["tooling"]["render"] if msg.get("tooling") else None
        tokens = model.prompt_tokens(prompt, tools=tools)
    bad = [t for t in tokens if not (isinstance(t, int) and 0 <= t < model.engine.n_vocab)]
    if bad:
        raise InvalidParameterError(
            f"token id {bad[0]} is outside the vocabulary of {model.name} (0 to {model.engine.n_vocab - 1})"
        )
    if not tokens:
        raise InvalidParameterError("the prompt is empty")
    return tokens


def _infill(model: Any, msg: dict[str, Any], n_ctx: int) -> list[int]:
    engine = model.engine
    if not hasattr(engine, "infill_tokens"):
        raise InvalidParameterError(f"{model.name} runs on {engine.name}: fill-in-the-middle is served from GGUF "
                                    "models (llama.cpp) only; use the model's GGUF variant", params="suffix")
    extra = [(str(f), str(t)) for f, t in msg.get("extra") or ()]
    ctx = min(n_ctx, int(msg.get("num_ctx") or n_ctx))
    fit = ctx - reply_room(int(msg.get("max_tokens") or -1), ctx) if msg.get("truncate") else None
    ids: list[int] = engine.infill_tokens(model.name, str(msg["prefix"]), str(msg["suffix"]), extra=extra,
                                          prompt=str(msg.get("prompt") or ""), repo=bool(msg.get("repo")),
                                          n_ctx=n_ctx, fit=fit)
    return ids


def _vocab_op(engine: Any, msg: dict[str, Any]) -> dict[str, Any]:
    """llama-server's ``/tokenize`` and ``/detokenize`` on this runner's vocabulary."""
    if msg["op"] == "tokenize":
        ids = engine.tokenize(str(msg["content"]), add_special=bool(msg.get("add_special")),
                              parse_special=bool(msg.get("parse_special", True)))
        pieces = [engine.token_bytes(t, special=True).hex() for t in ids] if msg.get("with_pieces") else None
        return {"op": "tokens", "tokens": ids, "pieces": pieces}
    ids = msg["tokens"]
    n_vocab = engine.n_vocab
    bad = next((t for t in ids if not (isinstance(t, int) and 0 <= t < n_vocab)), None)
    if bad is not None:
        raise InvalidParameterError(f"token id {bad!r} is outside this model's vocabulary (0 to {n_vocab - 1:,})",
                                    params="tokens")
    text = b"".join(engine.token_bytes(t, special=True) for t in ids).decode("utf-8", "replace")
    return {"op": "text", "content": text}


def _embed(model: Any, rid: str, texts: list[str | list[int]], truncate: bool) -> None:
    """Embed texts, or token ids of this model's vocabulary (OpenAI's token-array input), many per
    decode where the engine can; a text longer than the model embeds is cut only if ``truncate``."""
    n_vocab = model.engine.n_vocab
    for i, given in enumerate(texts):
        if not isinstance(given, str) and not all(isinstance(t, int) and 0 <= t < n_vocab for t in given):
            raise InvalidParameterError(f"input[{i}] holds a token id outside this model's vocabulary "
                                        f"(0 to {n_vocab - 1:,}); send text, or ids from its own tokenizer",
                                        params="input")
    done = model.engine.embed_many(texts, truncate=truncate)
    send({"op": "embedding", "id": rid, "vectors": done.vectors, "tokens": done.tokens})


def _emit(model: Any, batch: Any, running: dict[str, _Request], ev: Any) -> None:
    r = running.get(ev.request)
    if r is None:
        return
    rid, token, finish = ev.request, ev.token, ev.finish
    now = time.perf_counter()
    r.first = r.first or now
    if finish != "stop":  # an end-of-generation token is not text
        r.count += 1
        assert r.text is not None
        raw = model.engine.token_bytes(token, special=token in r.kept)
        text, stopped = r.text.feed(raw)
        chunk: dict[str, Any] = {"op": "chunk", "id": rid, "text": text, "token": token}
        if ev.logprob is not None:
            piece = model.engine.token_bytes
            chunk["piece"] = raw.decode("utf-8", "replace")
            chunk["logprob"] = ev.logprob
            chunk["top"] = [[piece(t).decode("utf-8", "replace"), lp] for t, lp in ev.top]
        send(chunk)
        if stopped and finish is None:  # a stop string: the slot is freed now
            batch.cancel(rid)
            finish = "stop"
    if finish is None:
        return
    running.pop(rid)
    tail = r.text.finish() if r.text is not None else ""
    if tail:
        send({"op": "chunk", "id": rid, "text": tail, "token": None})
    done = {
        "op": "done", "id": rid, "finish": finish, "prompt_tokens": len(r.tokens), "completion_tokens": r.count,
        "prompt_seconds": r.first - r.received, "generation_seconds": now - r.first,
    }
    spec = getattr(batch, "finished_stats", {}).pop(rid, None)  # speculative decoding's (drafted, accepted)
    if spec is not None:
        done["drafted"], done["accepted"] = spec
    if r.want_ids:
        done["prompt_ids"] = r.tokens
    if r.text is not None and r.text.matched is not None:
        done["stop_sequence"] = r.text.matched
    send(done)


def main() -> None:
    args = json.loads(sys.argv[1])
    try:
        name, slots, ctx, threads, home = (args.get(k) for k in ("name", "slots", "ctx_per_slot", "threads", "home"))
        model = ResolvedModel.from_dict(args["model"]) if args.get("model") else name  # resolved: no store lookup
        draft = LookupConfig(**args["draft"]) if args.get("draft") else None
        kv = KVCache.parse(args["kv"]) if args.get("kv") else None
        tuning = Tuning(**args["tuning"]) if args.get("tuning") else None
        serve(model, slots, ctx, threads, home, args.get("prompt_cache", True), draft, kv, tuning)
    except EdgeslmError as exc:
        send(error_message(exc, "failed"))
        sys.exit(1)


if __name__ == "__main__":
    main()
