"""A runner's slots over any engine's ``generate_tokens``: each slot its own generation, stepped in turn.

For runtimes without a batch decoder of their own (MLX): every ``step`` takes one token from
each busy slot's generator, so slots share the cores; the answers are those of one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import EngineError, InvalidParameterError
from .base import Engine, SamplingParams, StepEvent, check_slot_prompt


@dataclass
class _Slot:
    request: str | None = None
    tokens: Iterator[int] | None = None
    n_past: int = 0
    generated: int = 0
    max_tokens: int = 0


class GeneratorSlots:
    def __init__(self, engine: Engine, slots: int, ctx_per_slot: int, *, reuse: bool = True) -> None:
        if not 1 <= slots <= 256:
            raise InvalidParameterError(f"parallel slots {slots} is out of range; valid: 1 to 256")
        self.engine, self.ctx_per_slot = engine, min(ctx_per_slot, engine.n_ctx)
        self.slots = [_Slot() for _ in range(slots)]

    def free_slots(self) -> int:
        return sum(s.request is None for s in self.slots)

    def add(
        self, request: str, prompt: list[int], sampling: SamplingParams, max_tokens: int, logprobs: int | None = None
    ) -> None:
        check_slot_prompt(prompt, self.ctx_per_slot)
        if logprobs is not None:
            raise InvalidParameterError(f"log-probabilities are not available from {self.engine.name} models")
        slot = next((s for s in self.slots if s.request is None), None)
        if slot is None:
            raise EngineError("no free slot")  # callers check free_slots() and queue
        slot.tokens = self.engine.generate_tokens(prompt, sampling)
        slot.request, slot.n_past, slot.generated, slot.max_tokens = request, len(prompt), 0, max_tokens

    def cancel(self, request: str) -> None:
        for slot in self.slots:
            if slot.request == request:
                self._free(slot)

    @staticmethod
    def _free(slot: _Slot) -> None:
        slot.request, slot.tokens = None, None

    def step(self) -> list[StepEvent]:
        return [self._advance(s) for s in self.slots if s.request is not None]

    def _advance(self, slot: _Slot) -> StepEvent:
        assert slot.request is not None and slot.tokens is not None
        request = slot.request
        token = next(slot.tokens, None)
        if token is None:  # the engine's context is full
            self._free(slot)
            return StepEvent(request, 0, "length")
        slot.generated += 1
        slot.n_past += 1
        finish = None
        if self.engine.is_end_of_generation(token):
            finish = "stop"
        elif slot.generated >= slot.max_tokens or slot.n_past >= self.ctx_per_slot:
            finish = "length"
        if finish is not None:
            self._free(slot)
        return StepEvent(request, token, finish)

    def close(self) -> None:
        for slot in self.slots:
            self._free(slot)
