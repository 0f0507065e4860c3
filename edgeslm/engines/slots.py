"""A runner's slots stepped in turn, for runtimes without a shared forward pass (ONNX, MLX).

``TurnSlots`` keeps the slots, their limits and their finish rules; ``GeneratorSlots`` steps any
engine's ``generate_tokens`` (MLX), ``onnxruntime.batch.SlotDecoder`` onnxruntime-genai Generators. Every
``step`` takes one token from each busy slot, so slots share the cores; the answers are those of
one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import EngineError, InvalidParameterError
from .base import Engine, SamplingParams, StepEvent, check_slot_prompt


@dataclass
class Slot:
    request: str | None = None
    work: Any = None  # the slot's generation: a token iterator, or a runtime's generator object
    pending: list[int] | None = None  # a prompt not fed yet (runtimes that prefill in the first step)
    n_past: int = 0
    generated: int = 0
    max_tokens: int = 0
    logprobs: int | None = None


class TurnSlots:
    grammars = False  # the runtimes that step one sequence at a time have no grammar sampler

    def __init__(self, engine: Engine, slots: int, ctx_per_slot: int) -> None:
        if not 1 <= slots <= 256:
            raise InvalidParameterError(f"parallel slots {slots} is out of range; valid: 1 to 256")
        self.engine, self.ctx_per_slot = engine, ctx_per_slot
        self.slots = [Slot() for _ in range(slots)]

    def free_slots(self) -> int:
        return sum(s.request is None for s in self.slots)

    def _take(self, request: str, prompt: list[int], max_tokens: int, logprobs: int | None) -> Slot:
        check_slot_prompt(prompt, self.ctx_per_slot)
        slot = next((s for s in self.slots if s.request is None), None)
        if slot is None:
            raise EngineError("no free slot")  # callers check free_slots() and queue
        slot.request, slot.n_past, slot.generated, slot.max_tokens = request, len(prompt), 0, max_tokens
        slot.logprobs = logprobs
        return slot

    def cancel(self, request: str) -> None:
        for slot in self.slots:
            if slot.request == request:
                self._free(slot)

    @staticmethod
    def _free(slot: Slot) -> None:
        slot.request, slot.work, slot.pending = None, None, None

    def _event(self, slot: Slot, token: int, scores: tuple[Any, ...] = (None, ())) -> StepEvent:
        """The step's event for ``token``; the slot is freed when it ends (end token, limit, context)."""
        assert slot.request is not None
        request = slot.request
        slot.generated += 1
        slot.n_past += 1
        finish = None
        if self.engine.is_end_of_generation(token):
            finish = "stop"
        elif slot.generated >= slot.max_tokens or slot.n_past >= self.ctx_per_slot:
            finish = "length"
        if finish is not None:
            self._free(slot)
        return StepEvent(request, token, finish, *scores)

    def step(self) -> list[StepEvent]:
        return [self._advance(s) for s in self.slots if s.request is not None]

    def _advance(self, slot: Slot) -> StepEvent:
        raise NotImplementedError

    def close(self) -> None:
        for slot in self.slots:
            self._free(slot)


class GeneratorSlots(TurnSlots):
    """Slots over any engine's ``generate_tokens`` (no log-probabilities)."""

    def __init__(self, engine: Engine, slots: int, ctx_per_slot: int, *, reuse: bool = True) -> None:
        super().__init__(engine, slots, min(ctx_per_slot, engine.n_ctx))

    def add(
        self, request: str, prompt: list[int], sampling: SamplingParams, max_tokens: int, logprobs: int | None = None
    ) -> None:
        if logprobs is not None:
            raise InvalidParameterError(f"log-probabilities are not available from {self.engine.name} models")
        if sampling.grammar is not None:  # refused here: a generator raises only when first stepped
            raise InvalidParameterError(
                f"a grammar (JSON mode, a JSON schema) is not available with {self.engine.name} models; "
                "use a GGUF variant of the model for constrained output",
                params="grammar",
            )
        tokens = self.engine.generate_tokens(prompt, sampling)
        self._take(request, prompt, max_tokens, None).work = tokens

    def _advance(self, slot: Slot) -> StepEvent:
        assert slot.request is not None
        tokens: Iterator[int] = slot.work
        token = next(tokens, None)
        if token is None:  # the engine's context is full
            request = slot.request
            self._free(slot)
            return StepEvent(request, 0, "length")
        return self._event(slot, token)
