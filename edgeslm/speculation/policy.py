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

from collections.abc import Mapping
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
                 draft_cost: float = 0.0, probe_every: int = 0) -> None:  # fmt: skip
        """``draft_cost``: what drafting one token costs, in plain steps (a draft model's decode;
        0 for a lookup). ``probe_every``: after that many declined steps, verify a short draft to
        learn acceptance again (a draft model's drafts cannot be scored for free)."""
        if 1 not in costs or any(size < 1 or ratio <= 0 for size, ratio in costs.items()):
            raise ValueError("costs: batch size -> time relative to one token, from size 1 on")
        self._costs = sorted(costs.items())
        self.acceptance = prior
        self.stats = stats or SpecStats()
        self._shadow: list[int] = []
        self._shadow_hits = 0
        self.draft_cost, self.probe_every, self._idle, self._wait = draft_cost, probe_every, 0, probe_every
        self.correction = 1.0  # measured verify time over the modelled one (``timed``)
        self._plain_seconds: float | None = None

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

    def depth(self, available: int, batch: int = 1, expected: float | None = None) -> int:
        """How many of ``available`` drafted tokens to verify; 0: decode plainly. ``batch``: the
        tokens already in this step's batch, ``expected``: the tokens they are expected to yield
        (other slots' replies and drafts); the draft must raise the step's tokens per second."""
        if available <= 0:
            return 0
        expected = float(batch) if expected is None else expected
        best_k, best = 0, MARGIN * expected / self.cost(batch)
        gained, term = 0.0, 1.0  # a + a^2 + ... + a^k, built up with k
        for k in range(1, available + 1):
            term *= self.acceptance
            gained += term
            rate = (expected + gained) / (self.correction * (self.cost(batch + k) + k * self.draft_cost))
            if rate > best:
                best_k, best = k, rate
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
        return sum(self.acceptance**i for i in range(1, k + 1))

    def verified(self, drafted: int, accepted: int) -> None:
        self.stats.verifies += 1
        self.stats.drafted += drafted
        self.stats.accepted += accepted
        self._learn(accepted, rejected=accepted < drafted)

    def declined(self, draft: list[int]) -> None:
        """A draft not verified: scored against the tokens that plain decoding produces next."""
        self.stats.declined += 1
        if not self._shadow:
            self._shadow, self._shadow_hits = list(draft), 0

    def decoded(self, token: int) -> None:
        """A token from a plain step."""
        if not self._shadow:
            return
        if token == self._shadow[self._shadow_hits]:
            self._shadow_hits += 1
            if self._shadow_hits == len(self._shadow):
                self._learn(self._shadow_hits, rejected=False)
                self._shadow = []
            return
        self._learn(self._shadow_hits, rejected=True)
        self._shadow = []

    def _learn(self, accepted: int, *, rejected: bool) -> None:
        for hit in [1.0] * accepted + [0.0] * rejected:
            self.acceptance += WEIGHT * (hit - self.acceptance)
