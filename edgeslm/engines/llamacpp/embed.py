"""Pooled embeddings from a llama.cpp model, many texts in one decode (as llama-server batches them).

The embedding context is llama.cpp's own (``embeddings = true``) with the model's pooling where its
GGUF names one (a sentence-embedding model's mean, CLS or last token) and mean pooling otherwise
(a chat model's hidden states). Texts are packed into one ``llama_batch`` as separate sequences,
up to the context's tokens and ``MAX_SEQS`` texts at a time; each sequence's pooled vector is read
back and L2-normalised. An encoder (BERT) has learned positions: no text may be longer than the
model was trained on (``n_ctx_train``), and a longer one is refused or, when asked, cut to it
keeping its final separator token, as Hugging Face tokenizers truncate.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from ...errors import ContextOverflowError, EngineError
from ...formats.model_info import EMBEDDING_ONLY
from .backend import apply_kv, last_errors

if TYPE_CHECKING:
    import llama_cpp as lc

    from ..base import LoadParams
else:
    from .bindings import lc

MAX_SEQS = 64  # texts in one decode (llama.cpp allows up to 256 sequences in a context)


def architecture(model: lc.llama_model_p) -> str:
    buf = ctypes.create_string_buffer(64)
    n = lc.llama_model_meta_val_str(model, b"general.architecture", buf, len(buf))
    return buf.value.decode("utf-8", "replace") if n > 0 else ""


class Host(Protocol):
    """What the embedder takes from its engine (``LlamaCppEngine``)."""

    params: LoadParams
    n_embd: int

    @property
    def model_handle(self) -> lc.llama_model_p: ...

    def attach_adapters(self, ctx: lc.llama_context_p) -> None: ...

    def token_bytes(self, token: int, *, special: bool = False) -> bytes: ...

    def decode_batch(self, ctx: lc.llama_context_p, batch: lc.llama_batch) -> None: ...


class Embedder:
    """The embedding context of one loaded model, made on first use."""

    def __init__(self, engine: Host) -> None:
        self.engine = engine
        self.encoder = architecture(engine.model_handle) in EMBEDDING_ONLY
        train = lc.llama_model_n_ctx_train(engine.model_handle)
        # an encoder's positions end where its training did; a decoder's reach its context
        self.limit = min(engine.params.n_ctx, train) if self.encoder and train > 0 else engine.params.n_ctx
        self.ctx: lc.llama_context_p | None = None

    def _context(self) -> lc.llama_context_p:
        if self.ctx is not None:
            return self.ctx
        ctx = self._new(lc.LLAMA_POOLING_TYPE_UNSPECIFIED)
        if lc.llama_pooling_type(ctx) == lc.LLAMA_POOLING_TYPE_NONE:  # the GGUF names no pooling
            lc.llama_free(ctx)
            ctx = self._new(lc.LLAMA_POOLING_TYPE_MEAN)
        self.ctx = ctx
        return ctx

    def _new(self, pooling: int) -> lc.llama_context_p:
        params = self.engine.params
        p = lc.llama_context_default_params()
        p.n_ctx = p.n_batch = p.n_ubatch = self.limit
        p.n_seq_max = MAX_SEQS
        p.kv_unified = True  # the texts of a decode share the cells, whatever their lengths
        p.n_threads = p.n_threads_batch = params.threads
        p.no_perf = True
        p.embeddings = True
        p.pooling_type = pooling
        apply_kv(p, params.kv, params.flash_attn)
        ctx: lc.llama_context_p = lc.llama_init_from_model(self.engine.model_handle, p)
        if not ctx:
            raise EngineError(f"llama.cpp could not create an embedding context of {self.limit:,} tokens: "
                              f"{last_errors()}")
        self.engine.attach_adapters(ctx)
        return ctx

    def fit(self, tokens: list[int], *, truncate: bool) -> list[int]:
        """``tokens`` if they fit the model; cut to fit when ``truncate``; else ``ContextOverflowError``."""
        if len(tokens) <= self.limit:
            return tokens
        if not truncate:
            raise ContextOverflowError(
                f"an input has {len(tokens):,} tokens; this model embeds at most {self.limit:,} at a time "
                "(ask for truncation, or split the text)", params="input")
        last = tokens[-1]
        ends_special = self.engine.token_bytes(last, special=True) != self.engine.token_bytes(last)
        return [*tokens[: self.limit - 1], last] if ends_special else tokens[: self.limit]

    def embed(self, items: Sequence[list[int]]) -> list[list[float]]:
        """The pooled, L2-normalised embedding of each token list (each already fitted)."""
        ctx = self._context()
        out: list[list[float]] = []
        for group in _groups(items, self.limit):
            out.extend(self._decode(ctx, group))
        return out

    def _decode(self, ctx: lc.llama_context_p, group: list[list[int]]) -> list[list[float]]:
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        n = sum(len(t) for t in group)
        batch = lc.llama_batch_init(n, 0, 1)
        try:
            i = 0
            for seq, tokens in enumerate(group):
                for pos, token in enumerate(tokens):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                    batch.seq_id[i][0] = seq
                    batch.logits[i] = pos == len(tokens) - 1  # llama.cpp pools whole sequences regardless
                    i += 1
            batch.n_tokens = n
            self.engine.decode_batch(ctx, batch)
        finally:
            lc.llama_batch_free(batch)
        return [_pooled(ctx, seq, self.engine.n_embd) for seq in range(len(group))]

    def close(self) -> None:
        if self.ctx is not None:
            lc.llama_free(self.ctx)
            self.ctx = None


def _groups(items: Sequence[list[int]], limit: int) -> Iterator[list[list[int]]]:
    """The token lists in order, as many per decode as fit ``limit`` tokens and ``MAX_SEQS`` texts."""
    group: list[list[int]] = []
    used = 0
    for tokens in items:
        if group and (used + len(tokens) > limit or len(group) == MAX_SEQS):
            yield group
            group, used = [], 0
        group.append(tokens)
        used += len(tokens)
    if group:
        yield group


def _pooled(ctx: lc.llama_context_p, seq: int, n_embd: int) -> list[float]:
    ptr = lc.llama_get_embeddings_seq(ctx, seq)
    if not ptr:
        raise EngineError("llama.cpp returned no pooled embedding for this model")
    vec = [float(x) for x in ptr[:n_embd]]
    norm = math.sqrt(math.fsum(x * x for x in vec))
    return [x / norm for x in vec] if norm > 0 else vec
