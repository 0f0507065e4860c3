"""Continuous batching on llama.cpp: the sequences of several requests decode in one batch.

A context holds ``slots`` sequences (``n_seq_max``; each its own ``ctx_per_slot`` cells). Every
``step`` builds one ``llama_batch``: first the last sampled token of each generating slot (so
running replies are never starved), then pieces of new prompts with what is left of
``n_batch`` (chunked prefill); logits are asked only for each slot's last token. After one
``llama_decode`` each slot samples from its own row. A request joins between steps into any
free slot; one that finishes or is cancelled frees its slot at once. A freed slot keeps its
cache cells: a new request goes to the free slot whose cached tokens share the longest prefix
with its prompt and decodes only the rest (a conversation's next turn, a shared system prompt),
as llama-server's prompt cache does (and with its caveat: logits of a cached prefix were
computed in another batch, so a greedy reply can differ from a fresh one at a near-tie;
``reuse=False`` gives up the cache for reproducible replies). A request asking to be deterministic
is decoded in a batch of its own each step (its prompt in the same pieces, its tokens one at a time,
no cached prefix, no drafts): llama.cpp's kernels sum a row in another order when the batch holds
more rows (a matrix-vector product for one token, tiles of several), so a greedy reply beside other
requests can flip a near-tie; alone, it is the same whatever runs beside it, at the cost of a
decode call per such slot per step. This is the loop of llama-server's ``update_slots``, without
the HTTP.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...errors import EngineError, InvalidParameterError
from ...speculation import LookupConfig, LookupDrafter, Policy, SpecStats
from ..base import SamplingParams, StepEvent, check_slot_prompt, logprobs_of
from .backend import apply_kv, argmax_token, attach_greedy, common_prefix, detach_greedy, last_errors
from .engine import LlamaCppEngine

if TYPE_CHECKING:
    import llama_cpp as lc
else:
    from .bindings import lc

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    seq: int
    request: str | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not decoded yet
    n_past: int = 0
    sampler: Any = None  # None: greedy (the argmax in llama.cpp's graph, or read off the logits row)
    greedy: Any = None  # a greedy chain attached to this sequence: the argmax in llama.cpp's graph
    max_tokens: int = 0
    generated: int = 0
    last: int | None = None  # sampled, not yet decoded
    index: int = -1  # this step's batch row holding its logits
    logprobs: int | None = None  # None: none; k: the sampled token's and the k most likely
    cached: list[int] = field(default_factory=list)  # the tokens whose cells this sequence holds
    drafter: LookupDrafter | None = None  # speculative decoding (greedy slots, with --draft)
    policy: Policy | None = None
    draft: list[int] = field(default_factory=list)  # this step's drafted tokens, after the sampled one
    decoded: int | None = None  # this step's sampled token (for the drafter's history)
    alone: bool = False  # deterministic: decoded in a batch of its own


class BatchDecoder:
    """``slots`` concurrent generations on ``engine``'s model, in one llama.cpp context."""

    grammars = True

    def __init__(
        self,
        engine: LlamaCppEngine,
        slots: int,
        ctx_per_slot: int,
        n_batch: int = 512,
        *,
        reuse: bool = True,
        draft: LookupConfig | None = None,
    ) -> None:
        if not 1 <= slots <= 256:
            raise InvalidParameterError(f"parallel slots {slots} is out of range; valid: 1 to 256")
        self.engine, self.ctx_per_slot, self.n_batch, self.reuse = engine, ctx_per_slot, n_batch, reuse
        p = lc.llama_context_default_params()
        p.n_ctx = ctx_per_slot * slots
        p.n_batch = p.n_ubatch = n_batch
        p.n_seq_max = slots
        p.n_threads = p.n_threads_batch = engine.params.threads
        p.kv_unified = False  # each slot its own cells: one long reply cannot crowd the others out
        apply_kv(p, engine.params.kv, engine.params.flash_attn)
        p.no_perf = True
        self._ctx = lc.llama_init_from_model(engine.model_handle, p)
        if not self._ctx:
            why = last_errors()
            raise EngineError(f"llama.cpp could not create a context of {slots} x {ctx_per_slot} tokens: {why}")
        try:
            engine.attach_adapters(self._ctx)  # the model's adapter set, on this context too
        except EngineError:
            lc.llama_free(self._ctx)
            raise
        self._mem = lc.llama_get_memory(self._ctx)
        self._batch = lc.llama_batch_init(n_batch, 0, 1)
        self.slots = [_Slot(seq=i) for i in range(slots)]
        self.reused_tokens = 0  # prompt tokens not decoded again thanks to a slot's cache
        self.draft = draft  # prompt-lookup drafts for greedy requests, verified with the other slots' tokens
        self.spec_stats = SpecStats()
        self.finished_stats: dict[str, tuple[int, int]] = {}  # request -> (drafted, accepted), until read
        self._clock = StepClock()  # corrects the drafts' modelled cost by the measured step times
        self._runs: list[tuple[int, int]] = []  # this step's batch: (sequence, tokens) in order

    # -- requests -----------------------------------------------------------------------------

    def free_slots(self) -> int:
        return sum(s.request is None for s in self.slots)

    def active(self) -> list[str]:
        return [s.request for s in self.slots if s.request is not None]

    def add(
        self, request: str, prompt: list[int], sampling: SamplingParams, max_tokens: int, logprobs: int | None = None
    ) -> None:
        check_slot_prompt(prompt, self.ctx_per_slot)
        free = [s for s in self.slots if s.request is None]
        if not free:
            raise EngineError("no free slot")  # callers check free_slots() and queue
        slot = max(free, key=lambda s: common_prefix(s.cached, prompt))
        alone = sampling.deterministic
        keep = min(common_prefix(slot.cached, prompt), len(prompt) - 1) if self.reuse and not alone else 0  # one left
        if keep == 0 or not lc.llama_memory_seq_rm(self._mem, slot.seq, keep, -1):
            lc.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            keep = 0
        self.reused_tokens += keep
        slot.cached = slot.cached[:keep]
        slot.request, slot.pending, slot.n_past = request, list(prompt[keep:]), keep
        slot.sampler = None if sampling.plain_greedy else self.engine.make_sampler(sampling, prompt)
        slot.max_tokens, slot.generated, slot.last, slot.index = max_tokens, 0, None, -1
        slot.logprobs, slot.alone = logprobs, alone
        slot.drafter = slot.policy = None
        if self.draft is not None and sampling.plain_greedy and logprobs is None and not alone:
            from .speculative import verify_costs

            slot.drafter = LookupDrafter(self.draft, prompt)
            slot.policy = Policy(verify_costs(self.engine, 0, prompt[0]), stats=SpecStats())
        elif slot.sampler is None and logprobs is None and self.engine.backend_greedy:  # logprobs: the host row
            slot.greedy = attach_greedy(self._ctx, slot.seq)

    def cancel(self, request: str) -> None:
        for slot in self.slots:
            if slot.request == request:
                self._free(slot)

    def _free(self, slot: _Slot) -> None:
        if slot.policy is not None and slot.request is not None:
            self.finished_stats[slot.request] = (slot.policy.stats.drafted, slot.policy.stats.accepted)
            slot.policy = slot.drafter = None
        if slot.sampler is not None:
            lc.llama_sampler_free(slot.sampler)
        if slot.greedy is not None:
            detach_greedy(self._ctx, slot.seq, slot.greedy)
            slot.greedy = None
        slot.request, slot.sampler, slot.pending, slot.last = None, None, [], None  # the cells stay, for reuse

    # -- one step -----------------------------------------------------------------------------

    def step(self) -> list[StepEvent]:
        """Decode one batch (and one per deterministic slot); return the tokens each slot with logits
        sampled (and whether it ended): one, or with a verified draft the accepted ones and the model's next."""
        events = self._step([s for s in self.slots if not s.alone])
        for slot in self.slots:
            if slot.alone and slot.request is not None:
                events += self._step([slot])
        return events

    def _step(self, slots: list[_Slot]) -> list[StepEvent]:
        started = time.perf_counter()
        prefill = any(s.request is not None and s.pending for s in slots)  # a prompt in the batch
        n = self._fill(slots)
        if not n:
            return []
        rc = lc.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise EngineError(f"llama.cpp decode failed (code {rc}): {last_errors()}")
        events: list[StepEvent] = []
        drafted = any(s.draft for s in slots)
        runs = self._runs  # read before the slots move on
        for slot in slots:
            if slot.request is not None and slot.index >= 0:
                events += self._verify(slot) if slot.draft else [self._sample(slot)]
        policy = next((s.policy for s in slots if s.policy is not None), None)
        if policy is not None and not prefill:  # generation only: a step the cost model prices
            self._clock.record(time.perf_counter() - started, split_cost(policy, runs, self.n_batch), drafted)
        return events

    def _fill(self, slots: list[_Slot]) -> int:
        b, n = self._batch, 0
        generating = [s for s in slots if s.request is not None and s.last is not None]
        for slot in slots:
            slot.index, slot.draft, slot.decoded = -1, [], None
        size, expected = len(generating), float(len(generating))  # the step's tokens, and what they yield
        runs = [(s.seq, 1) for s in generating]  # (sequence, tokens) in batch order
        for i, slot in enumerate(generating):
            slot.decoded, slot.last = slot.last, None
            assert slot.decoded is not None
            if slot.drafter is not None and slot.policy is not None:  # a draft joins if the step's rate rises
                found = self._draft(slot, slot.drafter, slot.decoded)
                slot.policy.select(0 if slot.drafter is None else slot.drafter.key)
                room = min(self.n_batch - size, self.ctx_per_slot - slot.n_past - 1)
                slot.policy.correction = self._clock.correction
                policy, seq = slot.policy, slot.seq

                def priced(k: int, i: int = i, seq: int = seq, policy: Policy = policy) -> float:
                    return split_cost(policy, [*runs[:i], (seq, 1 + k), *runs[i + 1 :]], self.n_batch)

                k = policy.depth(min(len(found), room), size, expected, priced) if room > 0 else 0
                if k > 0:
                    slot.draft, size, expected = found[:k], size + k, expected + policy.expected(k)
                    runs[i] = (seq, 1 + k)
                elif found:
                    policy.declined(found)
            first = n
            n = self._put(b, n, slot, [slot.decoded, *slot.draft], logits_last=True)
            if slot.draft:  # every row: the sampled token's and each drafted token's
                for row in range(first, n):
                    b.logits[row] = True
                slot.index = first
        for slot in slots:
            room = self.n_batch - n
            if slot.request is None or not slot.pending or room <= 0:
                continue
            piece, slot.pending = slot.pending[:room], slot.pending[room:]
            n = self._put(b, n, slot, piece, logits_last=not slot.pending)
            runs.append((slot.seq, len(piece)))
        b.n_tokens, self._runs = n, runs
        return n

    @staticmethod
    def _draft(slot: _Slot, drafter: LookupDrafter, sampled: int) -> list[int]:
        """The slot's draft; one that fails ends the slot's speculation, not its request."""
        try:
            return drafter.draft(sampled)
        except Exception as exc:
            log.warning("request %s: the draft failed (%r): decoding on without drafts", slot.request, exc)
            slot.drafter = None
            return []

    def _put(self, b: Any, n: int, slot: _Slot, tokens: list[int], *, logits_last: bool) -> int:
        for i, tok in enumerate(tokens):
            b.token[n], b.pos[n], b.n_seq_id[n] = tok, slot.n_past + i, 1
            b.seq_id[n][0] = slot.seq
            b.logits[n] = False
            n += 1
        slot.n_past += len(tokens)
        slot.cached.extend(tokens)
        if logits_last:
            b.logits[n - 1] = True
            slot.index = n - 1
        return n

    def _sample(self, slot: _Slot) -> StepEvent:
        assert slot.request is not None
        request = slot.request
        if slot.greedy is not None:
            token = lc.llama_get_sampled_token_ith(self._ctx, slot.index)
        elif slot.sampler is None:
            token = argmax_token(self._ctx, slot.index, self.engine.n_vocab)
        else:
            token = lc.llama_sampler_sample(slot.sampler, self._ctx, slot.index)
        scores = self._logprobs(slot.index, token, slot.logprobs) if slot.logprobs is not None else (None, ())
        if slot.drafter is not None and slot.policy is not None and slot.decoded is not None:
            slot.drafter.add([slot.decoded])
            slot.policy.decoded(token)
        return self._emit(slot, request, token, scores)

    def _emit(self, slot: _Slot, request: str, token: int, scores: Any = (None, ())) -> StepEvent:
        slot.generated += 1
        finish = None
        if self.engine.is_end_of_generation(token):
            finish = "stop"
        elif slot.generated >= slot.max_tokens or slot.n_past >= self.ctx_per_slot:
            finish = "length"
        if finish is None:
            slot.last = token
        else:
            self._free(slot)
        return StepEvent(request, token, finish, *scores)

    def _verify(self, slot: _Slot) -> list[StepEvent]:
        """A slot's draft against its rows: the drafted tokens up to the first disagreement are
        accepted, then the model's own token; the cells past them are removed."""
        import numpy as np

        assert slot.request is not None and slot.policy is not None and slot.drafter is not None
        request, draft, k = slot.request, slot.draft, len(slot.draft)

        def predicted(i: int) -> int:  # row by row: a rejection early reads no more rows
            row = lc.llama_get_logits_ith(self._ctx, slot.index + i)
            return int(np.ctypeslib.as_array(row, shape=(self.engine.n_vocab,)).argmax())

        accepted, token = 0, predicted(0)
        while accepted < k and token == draft[accepted]:
            accepted += 1
            token = predicted(accepted)
        slot.policy.verified(k, accepted)
        slot.drafter.accepted(accepted)
        self.spec_stats.verifies += 1
        self.spec_stats.drafted += k
        self.spec_stats.accepted += accepted
        keep = slot.n_past - k + accepted  # the sampled token and the accepted drafts stay
        lc.llama_memory_seq_rm(self._mem, slot.seq, keep, -1)
        slot.n_past, slot.cached = keep, slot.cached[:keep]
        slot.drafter.add([slot.decoded, *draft[:accepted]])  # type: ignore[list-item]
        events = []
        for emitted in [*draft[:accepted], token]:
            events.append(self._emit(slot, request, emitted))
            if slot.request is None:  # it ended (end token, max_tokens, the context)
                break
        slot.last = None if slot.request is None else token
        return events

    def _logprobs(self, index: int, token: int, k: int) -> tuple[float, tuple[tuple[int, float], ...]]:
        import numpy as np

        row = np.ctypeslib.as_array(lc.llama_get_logits_ith(self._ctx, index), shape=(self.engine.n_vocab,))
        return logprobs_of(row, token, k)

    def close(self) -> None:
        for slot in self.slots:
            if slot.request is not None:
                self._free(slot)
        if self._ctx:
            lc.llama_batch_free(self._batch)
            lc.llama_free(self._ctx)
            self._ctx = None


def ubatch_sizes(runs: list[tuple[int, int]], n_ubatch: int) -> list[int]:
    """The passes llama.cpp makes over a batch of several sequences with a cache per sequence
    (``llama_batch_allocr::split_equal``, sequential): each pass takes the sequences from the
    first with tokens left on, while their ids follow one another in batch order, and the same
    number of tokens from each, as many as the shortest has. ``runs``: (sequence, tokens) as the
    batch holds them, one run per sequence."""
    left = {seq: count for seq, count in runs if count > 0}
    order = [seq for seq, count in runs if count > 0]
    sizes = []
    while left:
        chosen: list[int] = []
        for seq in order:
            if seq in left and (not chosen or seq == chosen[-1] + 1):
                chosen.append(seq)
        rounds = min(min(left[s] for s in chosen), max(1, n_ubatch // len(chosen)))
        sizes.append(rounds * len(chosen))
        for seq in chosen:
            left[seq] -= rounds
            if not left[seq]:
                del left[seq]
    return sizes


def split_cost(policy: Policy, runs: list[tuple[int, int]], n_ubatch: int) -> float:
    """A step's cost in single-token steps: the sum over llama.cpp's passes (``ubatch_sizes``).
    One slot's draft is a pass of its own, so it costs more than the same tokens in one pass."""
    return sum(policy.cost(size) for size in ubatch_sizes(runs, n_ubatch))


class StepClock:
    """Steps without drafts say what one token's worth of step takes here; steps with drafts how
    much longer than modelled they took (``correction``, shared by the slots' policies)."""

    def __init__(self) -> None:
        self.unit: float | None = None  # seconds per plain step of one token
        self.correction = 1.0

    def record(self, seconds: float, modelled: float, drafted: bool) -> None:
        if not drafted:
            unit = seconds / modelled
            self.unit = unit if self.unit is None else 0.8 * self.unit + 0.2 * unit
        elif self.unit:
            self.correction += 0.3 * (seconds / (self.unit * modelled) - self.correction)
