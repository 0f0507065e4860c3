"""Speculative decoding on llama.cpp: a draft (prompt lookup, or a draft model) verified in one batch.

Each step decodes the sampled token and the draft (k tokens) together, judges every row in turn,
accepts the draft up to its first rejection and keeps the model's own token there; the cache
beyond what was accepted is removed. Greedy: a drafted token is accepted if it is the row's
argmax, so the text equals plain greedy decoding wherever llama.cpp's batched kernels give the
same argmax as single-token steps (tests check it on the builtins). Sampling: the acceptance rule
of ``spec_sampling``, so the output distribution is unchanged. Grammars and penalties decode
plainly (their tokens depend on sampler state that a batch does not replay).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ...errors import InvalidParameterError
from ...speculation import LookupConfig, LookupDrafter, Policy, SpecStats
from ..base import LoadParams, SamplingParams
from ..spec_sampling import distribution, judge, sample
from .backend import argmax_token, common_prefix

if TYPE_CHECKING:
    import llama_cpp as lc
else:
    from .bindings import lc


class LlamaCppEngine(Protocol):
    """What speculative decoding uses of a llama.cpp engine (``engine.LlamaCppEngine``): its
    generation context, batch decoding and measured costs; the engine hands itself in."""

    params: LoadParams
    ctx: Any
    n_ctx: int
    n_vocab: int
    batch_costs: dict[int, float] | None
    step_seconds: float

    def decode_batch(self, ctx: Any, batch: Any) -> None: ...

    def fill_batch(self, batch: Any, chunk: Sequence[int], start: int, first: int) -> int: ...

    def prefill(self, tokens: Sequence[int]) -> None: ...

    def generate_tokens(self, prompt: Sequence[int], sampling: SamplingParams) -> Generator[int, None, None]: ...

    def token_bytes(self, token: int, *, special: bool = False) -> bytes: ...

log = logging.getLogger(__name__)
COST_SIZES = (1, 4, 16, 49)  # batch sizes timed (a 48-token draft and its token: 49); linear between
DRAFT_MAX = 16  # the most tokens a draft model drafts at once; the policy picks the depth (llama.cpp: fixed 3)
# Declined steps before a draft model is tried again on a short draft: a try first decodes the
# text the draft model missed (measured: 64 keeps a pair that never pays within 2 % of plain).
PROBE_EVERY = 64


def verify_costs(engine: LlamaCppEngine, n_past: int, token: int) -> dict[int, float]:
    """Each batch size's decode time relative to one token's, measured at ``n_past`` (best of 2,
    about 0.3 s for SmolLM2 on 2 cores) on a cache left as it was; once per loaded model."""
    if engine.batch_costs is not None:
        return engine.batch_costs
    sizes = [s for s in COST_SIZES if n_past + s < engine.n_ctx]
    mem, seconds = lc.llama_get_memory(engine.ctx), {}
    batch = lc.llama_batch_init(max(sizes), 0, 1)
    try:
        for size in sizes:
            best = float("inf")
            for _ in range(2):
                engine.fill_batch(batch, [token] * size, n_past, n_past)
                start = time.perf_counter()
                engine.decode_batch(engine.ctx, batch)
                best = min(best, time.perf_counter() - start)
                lc.llama_memory_seq_rm(mem, 0, n_past, -1)
            seconds[size] = best
    finally:
        lc.llama_batch_free(batch)
    costs = {size: t / seconds[1] for size, t in seconds.items()}
    log.info("verify costs (batch size: plain steps): %s", {s: round(c, 2) for s, c in costs.items()})
    engine.batch_costs, engine.step_seconds = costs, seconds[1]
    return costs


def check_vocabulary(target: LlamaCppEngine, draft: LlamaCppEngine, names: tuple[str, str]) -> None:
    """A draft model must spell every token as the target does (checked token by token)."""
    if draft.n_vocab != target.n_vocab:
        raise InvalidParameterError(
            f"the draft model {names[1]} has {draft.n_vocab:,} tokens, {names[0]} {target.n_vocab:,}: a draft "
            "model needs the target's vocabulary (a variant of the same model, e.g. a smaller quantization)",
            params="draft",
        )
    for token in range(target.n_vocab):
        if draft.token_bytes(token, special=True) != target.token_bytes(token, special=True):
            raise InvalidParameterError(
                f"the draft model {names[1]} spells token {token} differently from {names[0]}: a draft model "
                "needs the target's vocabulary (a variant of the same model, e.g. a smaller quantization)",
                params="draft",
            )


class ModelDrafter:
    """Drafts from a smaller model with the same vocabulary: its own cache follows the history
    (only what changed is decoded again), then k greedy tokens from the sampled one."""

    def __init__(self, engine: LlamaCppEngine, prompt: Sequence[int]) -> None:
        self.engine, self.history, self.cached = engine, list(prompt), []  # type: ignore[var-annotated]
        self._batch = lc.llama_batch_init(engine.params.n_batch, 0, 1)

    def add(self, tokens: Sequence[int]) -> None:
        self.history.extend(tokens)

    def prefill(self) -> None:
        """The prompt into the draft model's cache, with the target's (as llama.cpp's speculative
        examples do): a later draft decodes only what was generated since."""
        self._decode_from(0, self.history)
        self.cached = list(self.history)

    def _decode_from(self, start: int, tokens: Sequence[int]) -> None:
        engine = self.engine
        lc.llama_memory_seq_rm(lc.llama_get_memory(engine.ctx), 0, start, -1)
        for at in range(start, len(tokens), engine.params.n_batch):
            piece = tokens[at : at + engine.params.n_batch]
            engine.fill_batch(self._batch, piece, at, at + len(piece) - 1)
            engine.decode_batch(engine.ctx, self._batch)

    def draft(self, sampled: int, k: int) -> list[int]:
        engine, want = self.engine, [*self.history, sampled]
        if k <= 0 or len(want) + k > engine.n_ctx:
            return []
        self._decode_from(min(common_prefix(self.cached, want), len(want) - 1), want)
        self.cached, out = want, [argmax_token(engine.ctx, -1, engine.n_vocab)]  # want: a fresh list
        while len(out) < k:
            engine.fill_batch(self._batch, [out[-1]], len(self.cached), len(self.cached))
            engine.decode_batch(engine.ctx, self._batch)
            self.cached.append(out[-1])
            out.append(argmax_token(engine.ctx, -1, engine.n_vocab))
        return out

    def close(self) -> None:
        lc.llama_batch_free(self._batch)


def speculative_tokens(
    engine: LlamaCppEngine,
    prompt: Sequence[int],
    sampling: SamplingParams,
    draft: LookupConfig | LlamaCppEngine,
    stats: SpecStats,
) -> Generator[int, None, None]:
    """``generate_tokens`` with drafts (prompt lookup, or a draft model's engine) verified in
    batches: greedy (each draft token against the argmax), or sampling with top-k/top-p/min-p/
    temperature (the acceptance rule, ``spec_sampling``); grammars and penalties decode plainly."""
    if not speculates(sampling):
        yield from engine.generate_tokens(prompt, sampling)
        return
    pick, check = _rules(sampling)
    engine.prefill(prompt)
    ctx, n_vocab, n_ctx = engine.ctx, engine.n_vocab, engine.n_ctx
    mem, n_past = lc.llama_get_memory(ctx), len(prompt)
    last = pick(_row(ctx, -1, n_vocab))
    drafter: LookupDrafter | ModelDrafter | None
    drafter, depth_max, policy = _drafting(engine, draft, prompt, last, stats)
    batch = lc.llama_batch_init(depth_max + 1, 0, 1)
    try:
        while True:
            yield last
            if n_past >= n_ctx:
                return
            room, started = n_ctx - n_past - 1, time.perf_counter()
            try:
                found, k = _propose(drafter, policy, last, room, depth_max) if drafter is not None else ([], 0)
            except Exception as exc:  # a failing draft ends speculation, not the reply
                log.warning("the draft failed (%r): decoding on without drafts", exc)
                _close(drafter)
                drafter, found, k = None, [], 0
            if k <= 0:
                if found and isinstance(drafter, LookupDrafter):  # scored for free against plain tokens
                    policy.declined(found)
                engine.fill_batch(batch, [last], n_past, n_past)
                engine.decode_batch(ctx, batch)
                if drafter is not None:
                    drafter.add([last])
                n_past += 1
                last = pick(_row(ctx, -1, n_vocab))
                policy.decoded(last)
                policy.timed(time.perf_counter() - started, 0)
                continue
            tokens = [last, *found[:k]]
            engine.fill_batch(batch, tokens, n_past, n_past)
            engine.decode_batch(ctx, batch)
            rows = np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(k + 1, n_vocab))
            accepted, token = _verify(rows, found[:k], check, pick)
            policy.verified(k, accepted)
            if isinstance(drafter, LookupDrafter):
                drafter.accepted(accepted)
            policy.timed(time.perf_counter() - started, k)
            assert drafter is not None  # k > 0: a draft was made
            drafter.add(tokens[: 1 + accepted])
            n_past += 1 + accepted
            lc.llama_memory_seq_rm(mem, 0, n_past, -1)
            yield from found[:accepted]
            last = token
    finally:
        lc.llama_batch_free(batch)
        _close(drafter)


def _drafting(
    engine: LlamaCppEngine, draft: LookupConfig | LlamaCppEngine, prompt: Sequence[int], last: int, stats: SpecStats
) -> tuple[LookupDrafter | ModelDrafter, int, Policy]:
    """The drafter, its deepest draft, and the policy that decides what is worth verifying, from
    the target's measured batch costs (and a draft model's own step time)."""
    costs = verify_costs(engine, len(prompt), last)
    if isinstance(draft, LookupConfig):
        return LookupDrafter(draft, list(prompt)), draft.m, Policy(costs, stats=stats)
    verify_costs(draft, 0, last)
    drafter = ModelDrafter(draft, prompt)
    drafter.prefill()
    ratio = draft.step_seconds / engine.step_seconds
    return drafter, DRAFT_MAX, Policy(costs, stats=stats, draft_cost=ratio, probe_every=PROBE_EVERY)


def _verify(rows: np.ndarray, found: Sequence[int], check: Callable[[np.ndarray, int], tuple[bool, int]],
            pick: Callable[[np.ndarray], int]) -> tuple[int, int]:
    """How many of the draft ``found`` the target's rows accept, and the token that follows them
    (the target's own where it disagreed, else its pick after the last accepted)."""
    accepted, token = 0, -1
    while accepted < len(found):
        ok, token = check(rows[accepted], found[accepted])
        if not ok:
            return accepted, token
        accepted += 1
    return accepted, pick(rows[accepted])


def _propose(drafter: LookupDrafter | ModelDrafter, policy: Policy, last: int, room: int,
             depth_max: int) -> tuple[list[int], int]:
    """A draft after ``last`` and how much of it the policy verifies (0: decode plainly)."""
    if isinstance(drafter, LookupDrafter):
        found = drafter.draft(last)
        policy.select(drafter.key)
        return found, min(policy.depth(len(found)), room)
    k = min(policy.depth(depth_max), room)
    found = drafter.draft(last, k)
    return found, min(k, len(found))


def _close(drafter: LookupDrafter | ModelDrafter | None) -> None:
    if isinstance(drafter, ModelDrafter):
        drafter.close()


def speculates(sampling: SamplingParams) -> bool:
    """Greedy, or sampling whose distribution a row gives alone (no grammar state, no penalties)."""
    return sampling.plain_greedy or (sampling.grammar is None and not sampling.penalized)


def _row(ctx: object, index: int, n_vocab: int) -> np.ndarray:
    return np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, index), shape=(n_vocab,))


def _argmax(row: np.ndarray) -> int:
    return int(row.argmax())


def _greedy_check(row: np.ndarray, drafted: int) -> tuple[bool, int]:
    best = int(row.argmax())  # once per row: 262k logits for Gemma
    return best == drafted, best


def _rules(
    sampling: SamplingParams,
) -> tuple[Callable[[np.ndarray], int], Callable[[np.ndarray, int], tuple[bool, int]]]:
    """How a row gives the next token, and how it judges a drafted one."""
    if sampling.plain_greedy:
        return _argmax, _greedy_check
    rng = np.random.default_rng(sampling.seed)
    return (lambda row: sample(rng, *distribution(row, sampling))), (
        lambda row, d: judge(rng, *distribution(row, sampling), d)
    )
