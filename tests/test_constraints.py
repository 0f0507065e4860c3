"""Constraints: parsing, checking, ranking, and what binds when nothing fits."""

from __future__ import annotations

import pytest

from edgeslm.errors import InvalidParameterError
from edgeslm.optimize.constraints import Constraints, Metrics, parse_fraction, parse_kld, parse_size, parse_tps, rank


def metrics(name: str, size: int, kld: float, tg: float = 100.0, err: float = 0.001, p99: float = 0.0) -> Metrics:
    return Metrics(name, size, size + 50, {"mean": kld, "p99": p99 or 5 * kld}, err, 1 - kld, kld / 2, 200.0, tg)


def test_parsing() -> None:
    assert parse_kld("0.05") == ("mean", 0.05) and parse_kld("p99=0.5") == ("p99", 0.5)
    assert parse_fraction("x", "90%") == pytest.approx(0.9) and parse_fraction("x", "0.9") == 0.9
    assert parse_size("--max-size", "80MB") == 80_000_000 and parse_size("--max-size", "1GiB") == 2**30
    assert parse_tps("--min-tps", "100") == 100.0 and parse_tps("--min-tps", None) is None
    for call, words in (
        (lambda: parse_size("--max-size", "80XB"), "unknown unit 'XB'"),
        (lambda: parse_size("--max-size", "0"), "more than 0"),
        (lambda: parse_kld("p42=1"), "unknown statistic 'p42'"),
        (lambda: parse_kld("lots"), "write a number"),
        (lambda: parse_fraction("--min-same-top", "nan"), "finite"),
        (lambda: parse_tps("--min-tps", "-3"), "positive"),
    ):
        with pytest.raises(InvalidParameterError, match=words):
            call()


def test_check_names_each_violation() -> None:
    c = Constraints(max_size=1000, min_tg_tps=90, max_kld=(("mean", 0.05), ("p99", 0.1)), max_ppl_increase=0.01)
    assert c.check(metrics("ok", 900, 0.01, p99=0.05)) == []
    texts = [v.text for v in c.check(metrics("bad", 1200, 0.2, tg=80))]
    assert texts == [
        "size 1.2 KB > 1.0 KB",
        "generation tok/s 80.0 < 90.0",
        "mean KLD 0.2 > 0.05",
        "p99 KLD 1 > 0.1",
        "PPL increase +10.00 % > +1.00 %",
    ]
    unmeasured = Metrics("x", 10, 10, {"mean": 0.0}, 0, 1, 0, None, None)
    assert [v.text for v in Constraints(min_tg_tps=1).check(unmeasured)] == ["generation tok/s not measured"]


def test_rank_best_quality_then_speed_within_a_tie() -> None:
    c = Constraints(max_size=1000)
    ranking = rank(
        c,
        [
            metrics("big", 2000, 0.0),
            metrics("good-slow", 900, 0.0100, tg=90),
            metrics("good-fast", 800, 0.0105, tg=120),  # within the uncertainty of good-slow: a tie, and faster
            metrics("worse", 500, 0.05, tg=200),
        ],
    )
    assert [v.metrics.name for v in ranking.verdicts] == ["good-fast", "good-slow", "worse", "big"]
    assert [v.rank for v in ranking.verdicts] == [1, 2, 3, None]
    assert ranking.winner is not None and ranking.winner.metrics.name == "good-fast"
    assert "ties the winner" in ranking.verdicts[1].reason and "0.05 vs the winner" in ranking.verdicts[2].reason
    assert ranking.verdicts[3].reason == "size 2.0 KB > 1.0 KB"


def test_when_nothing_fits_say_what_binds_and_what_is_closest() -> None:
    c = Constraints(max_size=1000, max_kld=(("mean", 0.01),))
    ranking = rank(c, [metrics("small-bad", 800, 0.2), metrics("big-good", 1100, 0.001), metrics("huge", 5000, 0.0)])
    assert ranking.winner is None
    assert ranking.closest == "big-good"
    assert ranking.binding is not None and ranking.binding.startswith("--max-size: without it 2 candidate(s)")


def test_size_budget_from_memory() -> None:
    assert Constraints(max_size=500).size_budget(kv_bytes=100) == 500
    assert Constraints(max_memory=500).size_budget(kv_bytes=100) == 400
    assert Constraints(max_size=450, max_memory=500).size_budget(kv_bytes=100) == 400
    assert Constraints().size_budget(kv_bytes=100) is None
