"""Speculative decoding on llama.cpp: a draft verified in one batch, greedily.

Each step decodes the sampled token and the draft (k tokens) together, takes the argmax of every
row, accepts the draft up to its first disagreement and keeps the model's own token there; the
cache beyond what was accepted is removed. The text equals plain greedy decoding wherever
llama.cpp's batched kernels give the same argmax as single-token steps (tests check it on the
builtins). Sampling, grammars and penalties decode plainly (their tokens depend on a sampler
chain that a batch does not replay yet).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..speculation import LookupConfig, LookupDrafter, Policy, SpecStats
from .base import SamplingParams
from .llamacpp import argmax_token

if TYPE_CHECKING:
    import llama_cpp as lc

    from .llamacpp import LlamaCppEngine
else:
    from .llamacpp_bindings import lc

log = logging.getLogger(__name__)
COST_SIZES = (1, 4, 16, 49)  # batch sizes timed (a 48-token draft and its token: 49); linear between


def verify_costs(engine: LlamaCppEngine, n_past: int, token: int) -> dict[int, float]:
    """Each batch size's decode time relative to one token's, measured at ``n_past`` (best of 2,
    about 0.3 s for SmolLM2 on 2 cores) on a cache left as it was; once per loaded model."""
    cached: dict[int, float] | None = getattr(engine, "_verify_costs", None)
    if cached is not None:
        return cached
    sizes = [s for s in COST_SIZES if n_past + s < engine.n_ctx]
    mem, seconds = lc.llama_get_memory(engine._ctx), {}
    batch = lc.llama_batch_init(max(sizes), 0, 1)
    try:
        for size in sizes:
            best = float("inf")
            for _ in range(2):
                engine._fill_batch(batch, [token] * size, n_past, n_past)
                start = time.perf_counter()
                engine._decode(engine._ctx, batch)
                best = min(best, time.perf_counter() - start)
                lc.llama_memory_seq_rm(mem, 0, n_past, -1)
            seconds[size] = best
    finally:
        lc.llama_batch_free(batch)
    costs = {size: t / seconds[1] for size, t in seconds.items()}
    log.info("verify costs (batch size: plain steps): %s", {s: round(c, 2) for s, c in costs.items()})
    engine._verify_costs = costs  # type: ignore[attr-defined]
    return costs


def speculative_tokens(engine: LlamaCppEngine, prompt: Sequence[int], sampling: SamplingParams,
                       config: LookupConfig, stats: SpecStats) -> Generator[int, None, None]:  # fmt: skip
    """``generate_tokens`` with prompt-lookup drafts: greedy only, else plain decoding."""
    if not sampling.plain_greedy:
        yield from engine.generate_tokens(prompt, sampling)
        return
    engine.prefill(prompt)
    ctx, n_vocab, n_ctx = engine._ctx, engine.n_vocab, engine.n_ctx
    mem, n_past = lc.llama_get_memory(ctx), len(prompt)
    last = argmax_token(ctx, -1, n_vocab)
    policy = Policy(verify_costs(engine, n_past, last), stats=stats)
    drafter = LookupDrafter(config, list(prompt))
    batch = lc.llama_batch_init(config.m + 1, 0, 1)
    try:
        while True:
            yield last
            if n_past >= n_ctx:
                return
            draft = drafter.draft(last)
            k = min(policy.depth(len(draft)), n_ctx - n_past - 1)
            if k <= 0:
                if draft:
                    policy.declined(draft)
                engine._fill_batch(batch, [last], n_past, n_past)
                engine._decode(ctx, batch)
                drafter.add([last])
                n_past += 1
                last = argmax_token(ctx, -1, n_vocab)
                policy.decoded(last)
                continue
            tokens = [last, *draft[:k]]
            engine._fill_batch(batch, tokens, n_past, n_past)
            engine._decode(ctx, batch)
            predicted = np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(k + 1, n_vocab)).argmax(axis=1)
            accepted = 0
            while accepted < k and predicted[accepted] == draft[accepted]:
                accepted += 1
            policy.verified(k, accepted)
            drafter.add(tokens[: 1 + accepted])
            n_past += 1 + accepted
            lc.llama_memory_seq_rm(mem, 0, n_past, -1)
            yield from draft[:accepted]
            last = int(predicted[accepted])
    finally:
        lc.llama_batch_free(batch)
