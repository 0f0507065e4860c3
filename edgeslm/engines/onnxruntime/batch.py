"""A runner's slots on onnxruntime-genai: each slot its own Generator (its own KV cache).

``step`` advances every busy slot by one token, in turn (``slots.TurnSlots``): a new request's
prompt is prefilled in its first step. onnxruntime-genai's CPU generators do not share a batch,
so several slots share the cores rather than one forward pass; the answers are the same as one
at a time. (Its continuous-batching ``Engine`` was slower on the CPU: see the README.)
"""

from __future__ import annotations

from ..base import SamplingParams, StepEvent, logprobs_of
from ..slots import Slot, TurnSlots
from .engine import OnnxRuntimeEngine, append_chunked


class SlotDecoder(TurnSlots):
    """``slots`` concurrent generations on ``engine``'s model, with log-probabilities."""

    engine: OnnxRuntimeEngine

    def __init__(self, engine: OnnxRuntimeEngine, slots: int, ctx_per_slot: int, *, reuse: bool = True) -> None:
        limit = int(engine.config["model"].get("context_length") or ctx_per_slot)
        super().__init__(engine, slots, min(ctx_per_slot, limit))

    def add(
        self, request: str, prompt: list[int], sampling: SamplingParams, max_tokens: int, logprobs: int | None = None
    ) -> None:
        generator = self.engine.make_generator(sampling, max_length=self.ctx_per_slot)
        slot = self._take(request, prompt, max_tokens, logprobs)
        slot.work, slot.pending = generator, list(prompt)

    def _advance(self, slot: Slot) -> StepEvent:
        generator = slot.work
        if slot.pending is not None:
            append_chunked(generator, slot.pending)
            slot.pending = None
        row = None
        if slot.logprobs is not None:  # the logits the next token is chosen from
            import numpy as np

            row = np.asarray(generator.get_logits(), dtype=np.float32).reshape(-1)[: self.engine.n_vocab]
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        return self._event(slot, token, logprobs_of(row, token, slot.logprobs or 0) if row is not None else (None, ()))
