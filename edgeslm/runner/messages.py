"""What a runner is asked (``Job``) and what it answers (``Chunk``, ``Done``, ``Embeddings``, ``Tokens``).

Messages in: ``{"op": "generate", "id", **Job fields}``, ``{"op": "embed", "id", "texts"}``,
``{"op": "tokenize", "id", "content", "add_special", "parse_special", "with_pieces"}``, ``{"op":
"detokenize", "id", "tokens"}``, ``{"op": "count", "id", **Job fields}`` (answered as tokens),
``{"op": "cancel", "id"}``. Out: ``{"op": "ready", "name",
"slots", "ctx_per_slot", "pid", "n_vocab", "chat"}`` or ``{"op": "failed", "kind", "message"}``
once, then ``{"op": "chunk", "id", "text", "token"[, "piece", "logprob", "top"]}``, ``{"op":
"done", "id", "finish", "prompt_tokens", "completion_tokens", "prompt_seconds",
"generation_seconds"[, "prompt_ids"]}``, ``{"op": "embedding", "id", "vectors", "tokens"}``,
``{"op": "tokens", "id", "tokens", "pieces"}`` (pieces as hex, or null), ``{"op": "text", "id",
"content"}`` and ``{"op": "error", "id", "kind", "message"}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..engines.base import SamplingParams
from ..framing import Message, error_from

Prompt = str | Sequence[dict[str, Any]] | Sequence[int]


@dataclass(frozen=True)
class Job:
    """One generation request as the runner receives it."""

    prompt: Prompt  # plain text, chat messages, or token ids
    sampling: SamplingParams = SamplingParams()
    max_tokens: int = -1
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: off; k: the sampled token's and the k most likely
    template: bool = False  # a plain prompt goes through the chat template as a user turn
    system: str | None = None
    context: tuple[int, ...] = ()  # token ids before the prompt (Ollama's ``context``)
    format: str | dict[str, Any] | None = None  # "json" or a JSON schema: constrained output
    return_prompt_ids: bool = False
    tooling: dict[str, Any] | None = None  # tools in the template's own format (``tools.native_job``)
    truncate: bool = False  # asked: an over-long prompt loses its oldest turns (or its start); else an error
    num_ctx: int | None = None  # the request's own context, smaller than the slot's (Ollama's num_ctx)

    def message(self, rid: str) -> Message:
        fields = asdict(self)
        fields["sampling"] = {k: v for k, v in fields["sampling"].items() if k not in ("grammar", "grammar_triggers")}
        return {"op": "generate", "id": rid, **fields}


@dataclass(frozen=True)
class Chunk:
    text: str
    token: int | None
    logprob: float | None = None  # with logprobs: the token's own text, log-probability and the likeliest
    top: tuple[tuple[str, float], ...] = ()
    piece: str = ""


@dataclass(frozen=True)
class Done:
    finish: str  # 'stop' or 'length'
    prompt_tokens: int
    completion_tokens: int
    prompt_seconds: float
    generation_seconds: float
    prompt_ids: tuple[int, ...] = field(default=(), repr=False)
    drafted: int = 0  # speculative decoding: draft tokens verified, and accepted
    accepted: int = 0
    stop_sequence: str | None = None  # the stop string that ended the reply


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    tokens: int


@dataclass(frozen=True)
class Tokens:
    """A text as the model's token ids, and each token's bytes (llama-server's ``with_pieces``)."""

    ids: list[int]
    pieces: list[bytes] | None = None


def event_from(msg: Message) -> Chunk | Done:
    """A worker's ``chunk`` or ``done`` line as its record; an ``error`` line is raised."""
    if msg["op"] == "chunk":
        top = tuple((str(t), float(lp)) for t, lp in msg.get("top", ()))
        return Chunk(msg["text"], msg["token"], msg.get("logprob"), top, msg.get("piece", ""))
    if msg["op"] == "done":
        fields = ("prompt_tokens", "completion_tokens", "prompt_seconds", "generation_seconds")
        return Done(msg["finish"], **{k: msg[k] for k in fields}, prompt_ids=tuple(msg.get("prompt_ids", ())),
                    drafted=int(msg.get("drafted", 0)), accepted=int(msg.get("accepted", 0)),
                    stop_sequence=msg.get("stop_sequence"))
    raise error_from(msg)


@dataclass(frozen=True)
class Infill:
    """A fill-in-the-middle request: the code before and after the cursor, other files' chunks
    (filename, text), text to start the middle with, and ``repo``: llama-server's ``/infill`` pattern
    (else the plain one of Ollama's ``suffix``)."""

    prefix: str
    suffix: str
    extra: tuple[tuple[str, str], ...] = ()
    prompt: str = ""
    repo: bool = False
    # Ollama's "truncate": a prompt longer than the request's context (``num_ctx``, else the slot's)
    # less the reply's room loses the start of its prefix, its FIM tokens kept; else it is refused
    truncate: bool = False
    max_tokens: int = -1
    num_ctx: int | None = None


def tokens_from(msg: Message) -> Tokens:
    if msg["op"] != "tokens":
        raise error_from(msg)
    pieces = msg.get("pieces")
    return Tokens([int(t) for t in msg["tokens"]], None if pieces is None else [bytes.fromhex(p) for p in pieces])


def text_from(msg: Message) -> str:
    if msg["op"] != "text":
        raise error_from(msg)
    return str(msg["content"])


def embeddings_from(msg: Message) -> Embeddings:
    if msg["op"] != "embedding":
        raise error_from(msg)
    return Embeddings(msg["vectors"], int(msg["tokens"]))
