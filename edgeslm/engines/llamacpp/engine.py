"""The llama.cpp engine, on llama-cpp-python's low-level C API.

The high-level ``llama_cpp.Llama`` copies every token's full-vocabulary logits into numpy and
samples in Python; here the decode loop touches only a token id per step: ``llama_decode``
then ``llama_sampler_sample`` on llama.cpp's own sampler chain (``common/sampling.cpp``'s
order: penalties, top-k, top-p, min-p, temperature, dist), so Python's cost per token is a
few C calls.
"""

from __future__ import annotations

import ctypes
import json
import logging
import re
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ContextOverflowError, EngineError, InvalidParameterError
from ..base import DEFAULT_ENGINE, Embedded, LoadParams, SamplingParams, register_engine
from .backend import (
    apply_kv,
    argmax_token,
    attach_greedy,
    clear_log,
    detach_greedy,
    init_backend,
    last_errors,
    set_tensor_progress,
)
from .bindings import VERSION
from .embed import Embedder

# numpy is imported where logits are read (evaluation, log-probabilities, a large vocabulary's
# greedy argmax), not here: a process that generates greedily from a small vocabulary never loads it.
if TYPE_CHECKING:
    import llama_cpp as lc
    import numpy as np
    import numpy.typing as npt

    from ...formats.quant_types import QuantizeOptions, QuantType
    from ...speculation import LookupConfig, SpecStats
else:
    from .bindings import lc

log = logging.getLogger(__name__)

# Greedy decoding takes the argmax in llama.cpp's graph (no numpy in the process: 15 MiB less)
# where that is as fast as reading the host row: measured on 2 cores, SmolLM2's 49k vocabulary
# 117.0 vs 116.5 tok/s; Gemma 3's 262k 50.7 vs 54.0 tok/s, so larger vocabularies use numpy.
BACKEND_GREEDY_MAX_VOCAB = 65_536


class LlamaCppEngine:
    name = DEFAULT_ENGINE

    def __init__(self, path: Path, params: LoadParams) -> None:
        init_backend()
        clear_log()
        self.params = params
        model_params = lc.llama_model_default_params()
        if not params.use_mmap:  # this llama.cpp's load_mode (AUTO, its default, maps the file on the CPU)
            model_params.load_mode = lc.LLAMA_LOAD_MODE_NONE
        self._model = lc.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise EngineError(f"llama.cpp could not load {path.name}: {last_errors()}")
        self._adapters = self._load_adapters(path)
        self.ctx = self._new_context(embeddings=False)  # the generation context: speculative decoding works on it
        self._embedder: Embedder | None = None
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self.n_ctx = lc.llama_n_ctx(self.ctx)
        self.n_embd = lc.llama_model_n_embd(self._model)
        self._piece = ctypes.create_string_buffer(256)
        self._one = (lc.llama_token * 1)()
        self.backend_greedy = self.n_vocab <= BACKEND_GREEDY_MAX_VOCAB
        # Speculative decoding's measurements (``speculative.verify_costs``), once per loaded model:
        self.batch_costs: dict[int, float] | None = None  # batch size -> decode time in single steps
        self.step_seconds = 0.0  # one single-token decode

    def _load_adapters(self, path: Path) -> list[lc.llama_adapter_lora_p]:
        """The LoRA adapters of ``params``, loaded once for the model (llama.cpp frees them with it)."""
        loaded = []
        for adapter, _ in self.params.adapters:
            handle = lc.llama_adapter_lora_init(self._model, str(adapter).encode())
            if not handle:
                why = last_errors()
                self.close()
                raise EngineError(f"llama.cpp could not apply the adapter {Path(adapter).name} to {path.name}: {why}")
            loaded.append(handle)
        return loaded

    def attach_adapters(self, ctx: lc.llama_context_p) -> None:
        """Put this model's adapters, at their scales, on ``ctx`` (each context has its own set)."""
        if not self._adapters:
            return
        n = len(self._adapters)
        handles = (lc.llama_adapter_lora_p_ctypes * n)(*self._adapters)  # type: ignore[misc]
        scales = (ctypes.c_float * n)(*(scale for _, scale in self.params.adapters))
        if lc.llama_set_adapters_lora(ctx, handles, n, scales) != 0:
            raise EngineError(f"llama.cpp could not set {n} adapter(s) on a context: {last_errors()}")

    def _new_context(self, *, embeddings: bool) -> lc.llama_context_p:
        p = lc.llama_context_default_params()
        p.n_ctx = self.params.n_ctx
        p.n_batch = self.params.n_batch if not embeddings else self.params.n_ctx
        p.n_ubatch = self.params.n_ubatch if not embeddings else self.params.n_ctx
        p.n_threads = p.n_threads_batch = self.params.threads
        p.no_perf = True
        apply_kv(p, self.params.kv, self.params.flash_attn)
        if embeddings:
            p.embeddings = True
            p.pooling_type = lc.LLAMA_POOLING_TYPE_MEAN
        ctx = lc.llama_init_from_model(self._model, p)
        if not ctx:
            self.close()
            raise EngineError(f"llama.cpp could not create a context of {self.params.n_ctx} tokens: {last_errors()}")
        try:
            self.attach_adapters(ctx)
        except EngineError:
            lc.llama_free(ctx)
            self.close()
            raise
        return ctx

    @property
    def model_handle(self) -> lc.llama_model_p:
        """llama.cpp's model, for more contexts on the same weights (``batch``)."""
        return self._model

    # -- vocabulary ---------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 8
        buf = (lc.llama_token * size)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, size, add_special, parse_special)
        if n < 0:  # buffer too small: -n is the size needed
            size = -n
            buf = (lc.llama_token * size)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, size, add_special, parse_special)
        if n < 0:
            raise EngineError(f"llama.cpp could not tokenize a text of {len(data):,} bytes")
        return list(buf[:n])

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        n = lc.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, special)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self._vocab, token, big, -n, 0, special)
            return big.raw[:n]
        return self._piece.raw[:n]

    def is_end_of_generation(self, token: int) -> bool:
        return bool(lc.llama_vocab_is_eog(self._vocab, token))

    def chat_template(self) -> str | None:
        raw = lc.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def bos_text(self) -> str:
        return self._special_text(lc.llama_vocab_bos(self._vocab))

    def eos_text(self) -> str:
        return self._special_text(lc.llama_vocab_eos(self._vocab))

    def _special_text(self, token: int) -> str:
        return "" if token < 0 else self.token_bytes(token, special=True).decode("utf-8", errors="replace")

    # -- evaluation ---------------------------------------------------------------------------

    def _clear(self, ctx: lc.llama_context_p) -> None:
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)

    def decode_batch(self, ctx: lc.llama_context_p, batch: lc.llama_batch) -> None:
        """Decode ``batch`` on ``ctx`` (this engine's), raising ``EngineError`` with llama.cpp's reason."""
        rc = lc.llama_decode(ctx, batch)
        if rc != 0:
            raise EngineError(f"llama.cpp decode failed (code {rc}): {last_errors()}")

    def prefill(self, tokens: Sequence[int]) -> None:
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(tokens):,} tokens but the context holds {self.n_ctx:,}; "
                "shorten it or load with a larger context (n_ctx)",
                params="n_ctx",
            )
        self._clear(self.ctx)
        step = self.params.n_batch
        for start in range(0, len(tokens), step):
            chunk = tokens[start : start + step]
            arr = (lc.llama_token * len(chunk))(*chunk)
            self.decode_batch(self.ctx, lc.llama_batch_get_one(arr, len(chunk)))

    def eval_logits(self, tokens: Sequence[int], first: int = 0, *, copy: bool = True) -> npt.NDArray[np.float32]:
        """Logits of positions ``first..len(tokens)-1`` (rows x n_vocab), from an empty cache; only
        those rows are computed, as llama-perplexity asks for the second half of a chunk.

        With ``copy=False`` and all tokens in one batch, the result is a view of llama.cpp's own
        output buffer (no copy of rows x n_vocab floats), valid until this engine's next call."""
        if not tokens or len(tokens) > self.n_ctx or not 0 <= first < len(tokens):
            raise ContextOverflowError(f"cannot evaluate {len(tokens):,} tokens in a context of {self.n_ctx:,}")
        self._clear(self.ctx)
        step = self.params.n_batch
        import numpy as np

        single = len(tokens) <= step
        out = None if single and not copy else np.empty((len(tokens) - first, self.n_vocab), dtype=np.float32)
        batch = lc.llama_batch_init(min(step, len(tokens)), 0, 1)
        try:
            for start in range(0, len(tokens), step):
                wanted = self.fill_batch(batch, tokens[start : start + step], start, first)
                self.decode_batch(self.ctx, batch)
                if not wanted:
                    continue
                rows = np.ctypeslib.as_array(lc.llama_get_logits(self.ctx), shape=(wanted, self.n_vocab))
                if out is None:
                    return rows
                row0 = max(start, first) - first
                out[row0 : row0 + wanted] = rows
        finally:
            lc.llama_batch_free(batch)
        assert out is not None
        return out

    @staticmethod
    def fill_batch(batch: Any, chunk: Sequence[int], start: int, first: int) -> int:
        """One sequence's tokens at positions start.., asking logits from ``first`` on; returns how many."""
        batch.n_tokens = len(chunk)
        wanted = 0
        for i, tok in enumerate(chunk):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, start + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = start + i >= first
            wanted += start + i >= first
        return wanted

    # -- generation ---------------------------------------------------------------------------

    def make_sampler(self, s: SamplingParams, prompt: Sequence[int] = ()) -> lc.llama_sampler_p:
        """llama.cpp's sampler chain for ``s``; the penalties count the prompt's last tokens too, as
        llama-server's slots do (``init_sampler`` accepts the prompt, the grammar aside)."""
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        add = lambda sampler: lc.llama_sampler_chain_add(chain, sampler)  # noqa: E731
        if s.grammar is not None:
            grammar = self._grammar_sampler(s.grammar, s.grammar_triggers)
            if not grammar:
                lc.llama_sampler_free(chain)
                raise InvalidParameterError(f"the grammar was refused by llama.cpp: {last_errors() or 'invalid GBNF'}")
            add(grammar)
        if s.penalized:
            penalties = lc.llama_sampler_init_penalties(self.n_vocab, s.repeat_last_n, s.repeat_penalty,
                                                        s.frequency_penalty, s.presence_penalty)
            for token in prompt[-s.repeat_last_n :]:
                lc.llama_sampler_accept(penalties, token)
            add(penalties)
        if s.greedy:
            add(lc.llama_sampler_init_greedy())
            return chain
        add(lc.llama_sampler_init_top_k(s.top_k))
        add(lc.llama_sampler_init_top_p(s.top_p, 1))
        add(lc.llama_sampler_init_min_p(s.min_p, 1))
        add(lc.llama_sampler_init_temp(s.temperature))
        add(lc.llama_sampler_init_dist(lc.LLAMA_DEFAULT_SEED if s.seed is None else s.seed))
        return chain

    def _grammar_sampler(self, grammar: str, triggers: tuple[str, ...]) -> Any:
        if not triggers:
            return lc.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        patterns = (ctypes.c_char_p * len(triggers))(*(t.encode() for t in triggers))
        return lc.llama_sampler_init_grammar_lazy_patterns(self._vocab, grammar.encode(), b"root", patterns,
                                                           len(triggers), None, 0)

    def generate_tokens(self, prompt: Sequence[int], sampling: SamplingParams) -> Generator[int, None, None]:
        # Plain greedy takes the argmax inside llama.cpp's own graph (backend sampling) or reads
        # it off the logits buffer (BACKEND_GREEDY_MAX_VOCAB): llama_sampler_sample would first
        # build an n_vocab candidate array per token, ~3 MB for Gemma's 262k vocabulary, which
        # costs more than a small model's decode.
        sampler = None if sampling.plain_greedy else self.make_sampler(sampling, prompt)
        greedy = attach_greedy(self.ctx, 0) if sampler is None and self.backend_greedy else None
        try:
            self.prefill(prompt)
            n_past, one, n_vocab = len(prompt), self._one, self.n_vocab
            ctx, decode, get_one = self.ctx, lc.llama_decode, lc.llama_batch_get_one
            sample, sampled = lc.llama_sampler_sample, lc.llama_get_sampled_token_ith
            while True:
                if greedy is not None:
                    token = sampled(ctx, -1)
                elif sampler is None:
                    token = argmax_token(ctx, -1, n_vocab)
                else:
                    token = sample(sampler, ctx, -1)  # also feeds the token to the penalties' history
                yield token
                if n_past >= self.n_ctx:
                    return
                one[0] = token
                rc = decode(ctx, get_one(one, 1))
                if rc != 0:
                    raise EngineError(f"llama.cpp decode failed (code {rc}): {last_errors()}")
                n_past += 1
        finally:
            if greedy is not None:  # detached: evaluation reads every row's logits
                detach_greedy(self.ctx, 0, greedy)
            if sampler is not None:
                lc.llama_sampler_free(sampler)

    def generate_speculative(
        self, prompt: Sequence[int], sampling: SamplingParams, draft: LookupConfig | LlamaCppEngine, stats: SpecStats
    ) -> Generator[int, None, None]:
        """``generate_tokens`` with drafts (prompt lookup, or a draft model's engine) verified in
        batches (``speculative``)."""
        from .speculative import speculative_tokens

        return speculative_tokens(self, prompt, sampling, draft, stats)

    def infill_tokens(self, name: str, prefix: str, suffix: str, *, extra: Sequence[tuple[str, str]] = (),
                      prompt: str = "", repo: bool = True, n_ctx: int | None = None,
                      fit: int | None = None) -> list[int]:
        """A fill-in-the-middle prompt (``infill.infill_prompt``): llama-server's ``/infill`` prompt with
        ``repo``, else the plain pattern of Ollama's ``suffix`` (``fit``: cut to so many tokens)."""
        from .infill import FimTokens, infill_prompt

        return infill_prompt(self, FimTokens.of(self._vocab, name), prefix, suffix, extra=extra, prompt=prompt,
                             repo=repo, n_ctx=n_ctx or self.n_ctx, fit=fit)

    def embed(self, text: str | Sequence[int]) -> list[float]:
        return self.embed_many([text]).vectors[0]

    def embed_many(self, texts: Sequence[str | Sequence[int]], *, truncate: bool = False) -> Embedded:
        """Each text's (or token list's) pooled, L2-normalised embedding, many per decode (``embed``)."""
        if self._embedder is None:
            self._embedder = Embedder(self)
        items = []
        for i, text in enumerate(texts):
            tokens = self.tokenize(text) if isinstance(text, str) else list(text)
            if not tokens:
                raise InvalidParameterError(f"input[{i}] has no tokens to embed; send some text", params="input")
            items.append(self._embedder.fit(tokens, truncate=truncate))
        return Embedded(self._embedder.embed(items), sum(len(t) for t in items))

    def close(self) -> None:
        if getattr(self, "_embedder", None) is not None:
            self._embedder.close()  # type: ignore[union-attr]
            self._embedder = None
        for attr, free in (("ctx", lc.llama_free), ("_model", lc.llama_model_free)):
            handle = getattr(self, attr, None)
            if handle:
                free(handle)
                setattr(self, attr, None)

    def __del__(self) -> None:
        self.close()


def llama_cpp_version() -> str:
    return f"llama-cpp-python {VERSION}"


def system_features() -> tuple[str, ...]:
    """The features llama.cpp reports as used ('AVX2 = 1'), from llama_print_system_info."""
    info = lc.llama_print_system_info().decode(errors="replace")
    return tuple(dict.fromkeys(m.group(1) for m in re.finditer(r"(\w+) = 1", info)))


def json_grammar(spec: str | dict[str, Any]) -> str:
    """GBNF for Ollama's ``format`` / OpenAI's ``response_format``: "json" or a JSON schema."""
    from llama_cpp import llama_grammar  # pure Python: GBNF text only

    if spec == "json":
        return str(llama_grammar.JSON_GBNF)
    try:
        from .json_schema import schema_gbnf

        return schema_gbnf(json.loads(json.dumps(spec)))
    except Exception as exc:  # the converter raises plain exceptions on schemas it cannot express
        raise InvalidParameterError(f"the JSON schema in format cannot be used: {str(exc)[:200]}") from None


def quantize_file(
    src: Path,
    dst: Path,
    qtype: QuantType,
    options: QuantizeOptions,
    label: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> None:
    """``llama_model_quantize`` with llama-quantize's options (tools/quantize/quantize.cpp);
    ``progress(done, total, tensor_name)`` is called per tensor."""
    init_backend()
    clear_log()
    p = lc.llama_model_quantize_default_params()
    p.ftype = int(qtype.ftype)
    p.nthread = options.threads or 0  # 0: all hardware threads, as llama-quantize
    p.allow_requantize = options.allow_requantize
    p.quantize_output_tensor = not options.leave_output_tensor
    p.pure = options.pure
    if options.output_tensor_type is not None:
        p.output_tensor_type = int(options.output_tensor_type)
    if options.token_embedding_type is not None:
        p.token_embedding_type = int(options.token_embedding_type)
    keep = None
    if options.tensor_types:
        # A NULL-pattern entry ends the list, as llama-quantize builds it.
        keep = (lc.llama_model_tensor_override * (len(options.tensor_types) + 1))()
        for i, (pattern, ggml_type) in enumerate(options.tensor_types):
            keep[i].pattern, keep[i].type = pattern.encode(), int(ggml_type)
        p.tt_overrides = ctypes.cast(keep, ctypes.POINTER(lc.llama_model_tensor_override))
    held = _imatrix_params(p, options.imatrix) if options.imatrix else ()  # alive until llama.cpp is done
    set_tensor_progress(progress)
    try:
        rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    finally:
        set_tensor_progress(None)
    del keep, held
    if rc != 0:
        why = last_errors()
        if "imatrix" in why:
            raise InvalidParameterError(
                f"{qtype.name} needs an importance matrix for {label or src.name}'s tensors: calibrate first "
                "(edgeslm calibrate NAME, then --imatrix NAME) or choose another type; nothing was stored"
            )
        hint = " (a write failed: is the disk full, or a file-size limit set?)" if "iostream" in why else ""
        raise EngineError(
            f"llama.cpp could not quantize {label or src.name} to {qtype.name}: {why}{hint}; nothing was stored"
        )


def _imatrix_params(p: Any, path: str) -> tuple[Any, ...]:
    """llama-quantize's imatrix arguments (tools/quantize/quantize.cpp): per weight, sums divided by
    the count, in a NULL-terminated array; and the four ``quantize.imatrix.*`` keys it writes."""
    import numpy as np

    from ...formats.imatrix import read_imatrix

    imatrix = read_imatrix(Path(path))
    arrays = {name: np.ascontiguousarray(e.importance().reshape(-1)) for name, e in imatrix.entries.items()}
    data = (lc.llama_model_imatrix_data * (len(arrays) + 1))()
    names = [name.encode() for name in arrays]
    for i, (name, values) in enumerate(zip(names, arrays.values(), strict=True)):
        data[i].name, data[i].size = name, values.size
        data[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    p.imatrix = ctypes.cast(data, ctypes.POINTER(lc.llama_model_imatrix_data))
    keys: list[tuple[str, str | int]] = [("quantize.imatrix.file", path)]
    if imatrix.datasets:
        keys.append(("quantize.imatrix.dataset", imatrix.datasets[0]))
    keys.append(("quantize.imatrix.entries_count", len(arrays)))
    if imatrix.chunk_count > 0:
        keys.append(("quantize.imatrix.chunks_count", imatrix.chunk_count))
    kv = (lc.llama_model_kv_override * (len(keys) + 1))()  # an empty key ends the list
    for i, (key, value) in enumerate(keys):
        kv[i].key = key.encode()
        slot: Any = kv[i].value
        if isinstance(value, str):
            kv[i].tag, slot.val_str = lc.LLAMA_KV_OVERRIDE_TYPE_STR, value.encode()[:127]
        else:
            kv[i].tag, slot.val_i64 = lc.LLAMA_KV_OVERRIDE_TYPE_INT, value
    p.kv_overrides = ctypes.cast(kv, ctypes.POINTER(lc.llama_model_kv_override))
    return data, names, arrays, kv


@register_engine(DEFAULT_ENGINE)
def open_llamacpp(path: Path, params: LoadParams) -> LlamaCppEngine:
    return LlamaCppEngine(path, params)
