"""Load a model and generate from it: ``load`` -> ``stream_generate`` -> ``generate``.

One generation core (``stream_generate``) turns the engine's token ids into text chunks: it
decodes UTF-8 incrementally, applies stop strings and the token limit, and stamps every
chunk with running timings, as ``mlx_lm.generate`` does.
"""

from __future__ import annotations

import codecs
import logging
import resource
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chat import render_chat
from .config import DEFAULT_CONTEXT, DEFAULT_ENGINE, DEFAULT_MODEL, Settings, resolve_settings
from .engines.base import MAX_CONTEXT, Engine, LoadParams, SamplingParams, Tuning, open_engine
from .errors import ChatTemplateError, ContextOverflowError, InvalidParameterError, ModelNotFoundError
from .formats.kv_cache import KVCache, kv_cache_for
from .formats.model_info import ModelInfo
from .speculation import LookupConfig, SpecStats
from .store import Store, parse_name
from .store.resolve import ResolvedModel, from_manifest, from_path
from .tools.generic import system_into_user, tool_results_as_user

log = logging.getLogger(__name__)
Message = Mapping[str, Any]


@dataclass(frozen=True)
class GenerationChunk:
    """One piece of a streamed reply: its text and token, and on the closing chunk why it ended and
    the timings (prompt and generation tokens/s, peak memory)."""

    text: str
    token: int | None  # None on the closing chunk
    finish_reason: str | None  # None while generating; "stop" (end token or stop string) or "length"
    prompt_tokens: int
    generation_tokens: int
    prompt_seconds: float
    generation_seconds: float
    peak_memory: int  # bytes: this process's peak resident set

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tps(self) -> float:
        return self.generation_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0


@dataclass
class Model:
    """A loaded model: its engine, what the store knows of it, and its load time."""

    name: str
    path: Path
    info: ModelInfo
    engine: Engine
    load_seconds: float
    _template: str | None = field(default=None, repr=False)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # what ``create`` stored: system, parameters...
    _roles: dict[str, bool] = field(default_factory=dict, repr=False)  # takes_role's probes

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
               tools: Sequence[Message] | None = None) -> str:
        if self._template is None:
            raise ChatTemplateError(f"{self.name} has no chat template; give it a plain prompt instead")
        if any(m.get("role") == "tool" for m in messages) and not self.takes_role("tool"):
            messages = tool_results_as_user(messages)
        if messages and messages[0].get("role") == "system" and not self.takes_role("system"):
            messages = system_into_user(messages)
        return render_chat(
            self._template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.engine.bos_text(),
            eos_token=self.engine.eos_text(),
            tools=tools,
        )

    def takes_role(self, role: str) -> bool:
        """The template renders a ``role`` message ("tool", "system"): a probe, as minja checked
        its capabilities, once per role."""
        if role not in self._roles:
            probe = "edgeslm-probe-3f9c"
            opening = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
            tool = {
                "role": "tool",
                "content": probe,
                "name": "f",
                "tool_call_id": "call00001",
            }  # nine characters: Mistral's rule
            system = [{"role": "system", "content": probe}, {"role": "user", "content": "u"}]
            turns = [*opening, tool] if role == "tool" else system
            try:
                self._roles[role] = probe in render_chat(str(self._template), turns)
            except ChatTemplateError:
                self._roles[role] = False
        return self._roles[role]

    def prompt_tokens(self, prompt: str | Sequence[Message] | Sequence[int],
                      tools: Sequence[Message] | None = None) -> list[int]:
        """Token ids for a plain prompt, a chat (rendered through the template, with ``tools``) or ready ids.
        A chat that ends with an assistant turn is that turn's continuation."""
        if isinstance(prompt, str):
            return self.engine.tokenize(prompt, add_special=True, parse_special=False)
        items: list[Any] = list(prompt)
        if all(isinstance(t, int) for t in items):
            return items
        prefill = ""
        last = items[-1] if items and isinstance(items[-1], Mapping) else {}
        if len(items) > 1 and last.get("role") == "assistant" and isinstance(last.get("content"), str) \
                and not last.get("tool_calls"):
            # the reply begun: continued, not answered (llama-server's and Ollama's assistant prefill)
            prefill, items = last["content"], items[:-1]
        text = self.render(items, tools=tools) + prefill
        bos = self.engine.bos_text()
        # The template may write BOS itself; then the tokenizer must not add a second one.
        return self.engine.tokenize(text, add_special=not (bos and text.startswith(bos)), parse_special=True)

    def close(self) -> None:
        self.engine.close()


def resolve_model(name_or_path: str, settings: Settings, store: Store | None = None) -> ResolvedModel:
    """A stored model's name, a .gguf path or an ONNX model folder -> what to load, looked up once
    (in ``store`` when the caller has it open). Nothing is pulled here: the CLI and the server pull
    a missing builtin first (``pull.ensure_pulled``, which returns this too)."""
    found = from_path(Path(name_or_path))
    if found is not None:
        return found
    store = store or Store.open(settings.models_dir)
    name = parse_name(name_or_path)
    manifest = store.find(name)
    if manifest is None:
        raise ModelNotFoundError(not_found(store, str(name)))
    return from_manifest(store, manifest)


def not_found(store: Store, wanted: str) -> str:
    import difflib

    from .sources.builtin import BUILTINS

    if wanted.removesuffix(":latest") in BUILTINS:
        base = wanted.removesuffix(":latest")
        return f"model {wanted} is a builtin not pulled yet; pull it first ('edgeslm pull {base}', offline)"
    known = [str(m.name) for m in store.manifests()] + [f"{b}:latest" for b in BUILTINS]
    close = difflib.get_close_matches(wanted, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(set(known)))}"
    return f"model {wanted} not found{hint}"


def load(
    name_or_path: str | ResolvedModel = DEFAULT_MODEL,
    *,
    ctx: int | None = None,
    threads: int | None = None,
    engine: str | None = None,
    settings: Settings | None = None,
    kv: KVCache | None = None,
    check_memory: bool = True,
    tuning: Tuning | None = None,
) -> Model:
    """Load a stored model (or a .gguf file), by name or as resolved already, into an engine
    (default: the configured one). The KV cache: ``kv``, else the model's ``PARAMETER kv_type``,
    else ``EDGESLM_KV_CACHE_TYPE`` (llama.cpp models only), else F16. A llama.cpp model whose
    memory plan is larger than what the machine has available is refused before it loads
    (``check_memory``; the server's runners skip it: the server checked its own budget). ``tuning``
    (``edgeslm tune``'s, where it measured; flags): llama.cpp only; a KV type that needs flash
    attention on or off keeps it so."""
    settings = settings or resolve_settings()
    found = name_or_path if isinstance(name_or_path, ResolvedModel) else resolve_model(name_or_path, settings)
    stored = found.defaults.get("parameters") or {}  # a created model's PARAMETER lines
    n_ctx = ctx or stored.get("num_ctx") or min(found.info.context_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    runtime = engine or found.engine(settings.engine)
    kv = kv or kv_cache_for(runtime, stored.get("kv_type"), settings.kv_type)
    if check_memory and runtime == DEFAULT_ENGINE:
        from .device import available_ram
        from .plan.memory import check_available
        from .plan.profile import memory_constants

        check_available(found, ctx=n_ctx, kv=kv, constants=memory_constants(settings.home), available=available_ram(),
                        tuning=tuning)
    start = time.perf_counter()
    given: dict[str, Any] = {"n_ctx": n_ctx, "n_threads": threads, "adapters": found.adapters, "kv": kv}
    params = (tuning or Tuning()).load_params(**given) if runtime == DEFAULT_ENGINE else LoadParams(**given)
    loaded = open_engine(runtime, found.path, params)
    seconds = time.perf_counter() - start
    log.info("loaded %s in %.2f s", found.name, seconds)
    template = found.defaults.get("template") or loaded.chat_template()  # a created model's TEMPLATE first
    return Model(found.name, found.path, found.info, loaded, seconds, template, defaults=found.defaults)


def load_draft(
    name: str | ResolvedModel, target: Model, *, threads: int | None = None, settings: Settings | None = None
) -> Model:
    """A draft model for ``target``: loaded with the target's context, refused unless it runs on
    llama.cpp, was trained for that context, and spells every token as the target does."""
    draft = load(name, ctx=target.engine.n_ctx, threads=threads, settings=settings)
    try:
        if draft.engine.name != "llama.cpp" or target.engine.name != "llama.cpp":
            raise InvalidParameterError("a draft model drafts for a GGUF model (llama.cpp) and is one", params="draft")
        trained = draft.info.context_length
        if trained and trained < target.engine.n_ctx:
            raise InvalidParameterError(
                f"the draft model {draft.name} was trained for {trained:,} tokens of context and this run holds "
                f"{target.engine.n_ctx:,}: set ctx to {trained} or less, or draft with a longer-context model",
                params="draft",
            )
        from .engines.llamacpp.speculative import check_vocabulary

        check_vocabulary(target.engine, draft.engine, (target.name, draft.name))  # type: ignore[arg-type]
    except BaseException:
        draft.close()
        raise
    return draft


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def check_max_tokens(max_tokens: int) -> None:
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not (max_tokens == -1 or 1 <= max_tokens <= MAX_CONTEXT)
    ):
        raise InvalidParameterError(
            f"max_tokens={max_tokens!r} is out of range; valid: -1 (until the context is full) or 1 to {MAX_CONTEXT:,}"
        )


class _StopFilter:
    """Holds back text that could be the start of a stop string; cuts at the first one found."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, text: str) -> tuple[str, bool]:
        self.pending += text
        hits = [(i, s) for s in self.stops if (i := self.pending.find(s)) >= 0]
        if hits:
            at, self.matched = min(hits)
            out, self.pending = self.pending[:at], ""
            return out, True
        if len(self.pending) <= self.hold:
            return "", False
        cut = len(self.pending) - self.hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class TextStream:
    """A reply's token bytes -> text as it streams: UTF-8 split across tokens is joined, and text
    that could begin a stop string is held back until it cannot (``feed`` says when one ended it)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = _StopFilter(stops)

    def feed(self, piece: bytes) -> tuple[str, bool]:
        return self._stops.feed(self._decoder.decode(piece))

    @property
    def matched(self) -> str | None:
        """The stop string that ended the reply (None: none did)."""
        return self._stops.matched

    def finish(self) -> str:
        return self._stops.flush() + self._decoder.decode(b"", final=True)


def stream_generate(
    model: Model,
    prompt: str | Sequence[Message] | Sequence[int],
    *,
    max_tokens: int = -1,
    sampling: SamplingParams | None = None,
    stop: Sequence[str] = (),
    draft: LookupConfig | Model | None = None,
    spec_stats: SpecStats | None = None,
) -> Iterator[GenerationChunk]:
    """Yield a chunk per generated token, then a closing chunk whose ``finish_reason`` is set.
    ``draft``: speculative decoding with prompt-lookup drafts or a draft model (``load_draft``),
    counted in ``spec_stats``."""
    check_max_tokens(max_tokens)
    model.info.check_generates(model.name)
    sampling = sampling or SamplingParams()
    tokens = model.prompt_tokens(prompt)
    n_ctx = model.engine.n_ctx
    if len(tokens) >= n_ctx:
        raise ContextOverflowError(
            f"the prompt has {len(tokens):,} tokens but the context holds {n_ctx:,}; "
            "shorten it or load with a larger context (ctx)",
            params="ctx",
        )
    limit = n_ctx - len(tokens) if max_tokens == -1 else min(max_tokens, n_ctx - len(tokens))
    stream = TextStream(stop)
    start = time.perf_counter()
    first = None
    count, reason = 0, "length"

    def chunk(text: str, token: int | None, finish: str | None) -> GenerationChunk:
        now = time.perf_counter()
        prompt_s = (first or now) - start
        return GenerationChunk(text, token, finish, len(tokens), count, prompt_s, now - (first or now), _peak_rss())

    if draft is None:
        generated = model.engine.generate_tokens(tokens, sampling)
    else:
        speculate = getattr(model.engine, "generate_speculative", None)
        if speculate is None:
            raise InvalidParameterError(
                f"speculative decoding (--draft) is available for GGUF models (llama.cpp); {model.name} is not one",
                params="draft",
            )
        drafts = draft.engine if isinstance(draft, Model) else draft
        generated = speculate(tokens, sampling, drafts, spec_stats if spec_stats is not None else SpecStats())
    for token in generated:
        if first is None:
            first = time.perf_counter()
        if model.engine.is_end_of_generation(token):
            reason = "stop"
            break
        count += 1
        text, stopped = stream.feed(model.engine.token_bytes(token))
        if stopped:
            reason = "stop"
            yield chunk(text, token, None)
            break
        yield chunk(text, token, None)
        if count >= limit:
            break
    yield chunk(stream.finish(), None, reason)


@dataclass(frozen=True)
class GenerationResult:
    """A whole reply (``generate``): its text, tokens, why it ended and the timings."""

    text: str
    tokens: tuple[int, ...]
    finish_reason: str
    last: GenerationChunk


def generate(model: Model, prompt: str | Sequence[Message] | Sequence[int], **kwargs: Any) -> GenerationResult:
    """Run ``stream_generate`` to the end and return the whole text."""
    parts, ids = [], []
    last = None
    for last in stream_generate(model, prompt, **kwargs):
        parts.append(last.text)
        if last.token is not None:
            ids.append(last.token)
    assert last is not None and last.finish_reason is not None
    return GenerationResult("".join(parts), tuple(ids), last.finish_reason, last)


def embed(model: Model, texts: Sequence[str], *, truncate: bool = False) -> list[list[float]]:
    """One pooled, L2-normalized vector per text (``edgeslm embed``, ``/api/embed``): the model's own
    pooling where its file names one (a sentence-embedding model), else the mean of its hidden states;
    a text longer than the model embeds is cut to fit only with ``truncate``."""
    return model.engine.embed_many(texts, truncate=truncate).vectors
