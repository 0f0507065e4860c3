"""A runner's slots on onnxruntime-genai: each slot its own Generator (its own KV cache).

``step`` advances every busy slot by one token, in turn: a new request's prompt is prefilled
in its first step. onnxruntime-genai's CPU generators do not share a batch, so several slots
share the cores rather than one forward pass; the answers are the same as one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import EngineError, InvalidParameterError
from .base import SamplingParams, StepEvent, check_slot_prompt, logprobs_of
from .ort import OnnxRuntimeEngine


@dataclass
class _Slot:
    request: str | None = None
    generator: Any = None
    pending: list[int] | None = None  # the prompt, until its first step
    n_past: int = 0
    generated: int = 0
    max_tokens: int = 0
    logprobs: int | None = None


class SlotDecoder:
    """``slots`` concurrent generations on ``engine``'s model."""

    def __init__(self, engine: OnnxRuntimeEngine, slots: int, ctx_per_slot: int, *, reuse: bool = True) -> None:
        if not 1 <= slots <= 256:
            raise InvalidParameterError(f"parallel slots {slots} is out of range; valid: 1 to 256")
        limit = int(engine.config["model"].get("context_length") or ctx_per_slot)
        self.engine, self.ctx_per_slot = engine, min(ctx_per_slot, limit)
        self.slots = [_Slot() for _ in range(slots)]

    def free_slots(self) -> int:
        return sum(s.request is None for s in self.slots)

    def add(
        self, request: str, prompt: list[int], sampling: SamplingParams, max_tokens: int, logprobs: int | None = None
    ) -> None:
        check_slot_prompt(prompt, self.ctx_per_slot)
        slot = next((s for s in self.slots if s.request is None), None)
        if slot is None:
            raise EngineError("no free slot")  # callers check free_slots() and queue
        slot.generator = self.engine.make_generator(sampling, max_length=self.ctx_per_slot)
        slot.request, slot.pending, slot.n_past = request, list(prompt), len(prompt)
        slot.generated, slot.max_tokens, slot.logprobs = 0, max_tokens, logprobs

    def cancel(self, request: str) -> None:
        for slot in self.slots:
            if slot.request == request:
                self._free(slot)

    @staticmethod
    def _free(slot: _Slot) -> None:
        slot.request, slot.generator, slot.pending = None, None, None

    def step(self) -> list[StepEvent]:
        return [self._advance(s) for s in self.slots if s.request is not None]

    def _advance(self, slot: _Slot) -> StepEvent:
        assert slot.request is not None
        request, generator = slot.request, slot.generator
        if slot.pending is not None:
            generator.append_tokens(slot.pending)
            slot.pending = None
        row = None
        if slot.logprobs is not None:  # the logits the next token is chosen from
            import numpy as np

            row = np.asarray(generator.get_logits(), dtype=np.float32).reshape(-1)[: self.engine.n_vocab]
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        slot.generated += 1
        slot.n_past += 1
        scores = logprobs_of(row, token, slot.logprobs or 0) if row is not None else (None, ())
        finish = None
        if self.engine.is_end_of_generation(token):
            finish = "stop"
        elif slot.generated >= slot.max_tokens or slot.n_past >= self.ctx_per_slot:
            finish = "length"
        if finish is not None:
            self._free(slot)
        return StepEvent(request, token, finish, *scores)

    def close(self) -> None:
        for slot in self.slots:
            self._free(slot)
