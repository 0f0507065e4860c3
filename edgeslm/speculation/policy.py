"""When a draft pays: the verify cost of a batch against one decode step, measured for this model
on this machine, and the acceptance seen so far.

Verifying a draft of k tokens decodes k + 1 tokens in one batch and yields 1 + (accepted) tokens;
with a per-token acceptance a (each drafted token accepted only if all before it were), a verify
yields 1 + a + ... + a^k tokens on average, for cost(k + 1) plain steps. The policy verifies the
depth with the best ratio if it beats plain decoding (``MARGIN``), else declines. In a batch of
several slots the same rule holds for the whole step: a draft is verified only if the step's
expected tokens per unit of time rise, so one slot's draft cannot slow the others down; a declined
draft is still scored against the tokens plain decoding then produces (free for a lookup draft),
so acceptance keeps being learnt and speculation comes back on when it would pay again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

MARGIN = 1.05  # expected speed-up below which a draft is not verified
PRIOR = 0.7  # acceptance before anything is seen (a lookup draft exists only where n tokens matched)
WEIGHT = 0.1  # the weight of each scored token in the running acceptance
MAX_PROBE_WAIT = 1024  # declined steps between two tries of a draft model, at most
TIMING_WEIGHT = 0.3  # the weight of each timed verify step in the cost correction


@dataclass
class SpecStats:
    drafted: int = 0  # draft tokens verified
    accepted: int = 0  # of those, accepted
    verifies: int = 0  # batches verified
    declined: int = 0  # drafts the policy did not verify (expected to lose)

    @property
    def rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def expected_gain(acceptance: float, k: int, cost: float) -> float:
    """Tokens per plain step's time when verifying k drafted tokens at ``cost`` plain steps."""
    return sum(acceptance**i for i in range(k + 1)) / cost


class Policy:
    def __init__(self, costs: Mapping[int, float], *, prior: float = PRIOR, stats: SpecStats | None = None,
                 draft_cost: float = 0.0, probe_every: int = 0) -> None:
        """``draft_cost``: what drafting one token costs, in plain steps (a draft model's decode;
        0 for a lookup). ``probe_every``: after that many declined steps, verify a short draft to
        learn acceptance again (a draft model's drafts cannot be scored for free)."""
        if 1 not in costs or any(size < 1 or ratio <= 0 for size, ratio in costs.items()):
            raise ValueError("costs: batch size -> time relative to one token, from size 1 on")
        self._costs = sorted(costs.items())
        self.prior = prior
        self._rates: dict[int, float] = {}  # key (a lookup's matched length; else 0) -> acceptance
        self._key = 0
        self.stats = stats or SpecStats()
        self._shadow: list[int] = []
        self._shadow_hits, self._shadow_key = 0, 0
        self.draft_cost, self.probe_every, self._idle, self._wait = draft_cost, probe_every, 0, probe_every
        self.correction = 1.0  # measured verify time over the modelled one (``timed``)
        self._plain_seconds: float | None = None

    @property
    def acceptance(self) -> float:
        """The running per-token acceptance of drafts like the current one (``select``)."""
        return self._rates.get(self._key, self.prior)

    @acceptance.setter
    def acceptance(self, value: float) -> None:
        self._rates[self._key] = value

    def select(self, key: int) -> None:
        """The kind of the draft at hand (a lookup's matched length: short matches are less often right)."""
        self._key = key

    def cost(self, size: int) -> float:
        """A batch of ``size`` tokens in plain steps: measured points, linear between and beyond."""
        points = self._costs
        for (s0, c0), (s1, c1) in zip(points, points[1:], strict=False):
            if size <= s1:
                return c0 + (c1 - c0) * (size - s0) / (s1 - s0)
        if len(points) == 1:
            return points[0][1] * size
        (s0, c0), (s1, c1) = points[-2], points[-1]
        return c1 + (c1 - c0) / (s1 - s0) * (size - s1)

    def depth(self, available: int, batch: int = 1, expected: float | None = None,
              step_cost: Callable[[int], float] | None = None) -> int:
        """How many of ``available`` drafted tokens to verify; 0: decode plainly. ``batch``: the
        tokens already in this step's batch, ``expected``: the tokens they are expected to yield
        (other slots' replies and drafts); the draft must raise the step's tokens per second.
        ``step_cost(k)``: the step's cost with k drafted tokens, where it is not ``cost(batch + k)``
        (llama.cpp decodes a step of several sequences in more than one pass)."""
        if available <= 0:
            return 0
        expected = float(batch) if expected is None else expected
        priced = step_cost or (lambda k: self.cost(batch + k))
        best_k, best = 0, MARGIN * expected / priced(0)
        gained, term, a, last = 0.0, 1.0, self.acceptance, 0.0  # gained: a + a^2 + ... + a^k
        for k in range(1, available + 1):
            term *= a
            gained += term
            rate = (expected + gained) / (self.correction * (priced(k) + k * self.draft_cost))
            if rate > best:
                best_k, best = k, rate
            elif rate < last and k > 2 * best_k + 4:  # past the rate's one peak: stop looking
                break
            last = rate
        if best_k:
            self._wait = self.probe_every  # paying again: the next try after a pause comes soon
        elif self.probe_every:
            self._idle += 1
            if self._idle >= self._wait:  # a short try; each one that does not turn it back on waits twice as long
                self._idle, self._wait, best_k = 0, min(2 * self._wait, MAX_PROBE_WAIT), min(2, available)
        return best_k

    def timed(self, seconds: float, k: int) -> None:
        """A step's wall time (k = 0: plain). Verify steps that take longer than the model says
        (two models' weights through one cache, say) raise ``correction``, and with it every
        later step's cost, so a draft that loses in practice is verified less."""
        if k == 0:
            self._plain_seconds = seconds if self._plain_seconds is None else 0.8 * self._plain_seconds + 0.2 * seconds
        elif self._plain_seconds:
            modelled = self._plain_seconds * (self.cost(1 + k) + k * self.draft_cost)
            self.correction += TIMING_WEIGHT * (seconds / modelled - self.correction)

    def expected(self, k: int) -> float:
        """Tokens a verify of k drafted tokens is expected to yield beyond the sampled one."""
        a = self.acceptance
        return sum(a**i for i in range(1, k + 1))

    def verified(self, drafted: int, accepted: int) -> None:
        self.stats.verifies += 1
        self.stats.drafted += drafted
        self.stats.accepted += accepted
        self._learn(accepted, rejected=accepted < drafted)

    def declined(self, draft: list[int]) -> None:
        """A draft not verified: scored against the tokens that plain decoding produces next."""
        self.stats.declined += 1
        if not self._shadow:
            self._shadow, self._shadow_hits, self._shadow_key = list(draft), 0, self._key

    def decoded(self, token: int) -> None:
        """A token from a plain step."""
        if not self._shadow:
            return
        if token == self._shadow[self._shadow_hits]:
            self._shadow_hits += 1
            if self._shadow_hits == len(self._shadow):
                self._learn(self._shadow_hits, rejected=False, key=self._shadow_key)
                self._shadow = []
            return
        self._learn(self._shadow_hits, rejected=True, key=self._shadow_key)
        self._shadow = []

    def _learn(self, accepted: int, *, rejected: bool, key: int | None = None) -> None:
        key = self._key if key is None else key
        rate = self._rates.get(key, self.prior)
        for hit in [1.0] * accepted + [0.0] * rejected:
            rate += WEIGHT * (hit - rate)
        self._rates[key] = rate
