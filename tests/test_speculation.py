"""Speculative decoding (issue 17, begun): prompt-lookup drafts with llama.cpp's ngram-simple
semantics, the policy that verifies only what pays, and lossless greedy decoding on a tiny model
and on both builtins."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeslm.config import resolve_settings
from edgeslm.engines.base import LoadParams, SamplingParams, open_engine
from edgeslm.errors import InvalidParameterError
from edgeslm.generation import generate, load
from edgeslm.speculation import (
    LookupConfig,
    LookupDrafter,
    LookupKind,
    Policy,
    SpecStats,
    expected_gain,
    ngram_simple_draft,
)

from .conftest import CliResult
from .ggufbuild import write_runnable_model
from .servekit import CLIENT_TIMEOUT

Cli = Callable[..., CliResult]


def reference_draft(n: int, m: int, tokens: list[int], sampled: int) -> list[int]:
    """common_ngram_simple_draft (common/ngram-map.cpp), transcribed loop for loop."""
    cur = len(tokens)
    if cur <= n + m + 1:
        return []
    pattern = tokens[cur - n + 1 :] + [sampled]
    match = 0
    for j in range(cur - n - 1, 0, -1):
        if all(tokens[j + k] == pattern[k] for k in range(n)):
            match = j
            break
    if match == 0:
        return []
    copy = min(m, cur - (match + n))
    return [] if copy < n else tokens[match + n : match + n + copy]


def test_lookup_drafts_as_llama_cpps_ngram_simple() -> None:
    rng = np.random.default_rng(0)
    seen = 0
    for case in range(3000):
        n, m = int(rng.integers(1, 5)), int(rng.integers(1, 9))
        tokens = [int(t) for t in rng.integers(0, 3 + case % 5, size=int(rng.integers(0, 60)))]
        sampled = int(rng.integers(0, 4))
        config = LookupConfig(n, m, kind=LookupKind.NGRAM_SIMPLE)
        ours = ngram_simple_draft(config, np.asarray(tokens, dtype=np.int32), sampled)
        assert ours == reference_draft(n, m, tokens, sampled), (n, m, tokens, sampled)
        seen += bool(ours)
    assert seen > 500  # drafts were made, not only refused


class ReferenceMapK:
    """common_ngram_map_begin (fresh map), common_ngram_map_draft with key_only and
    common_ngram_map_accept (common/ngram-map.cpp, llama.cpp 0.3.36), transcribed loop for loop."""

    def __init__(self, n: int, m: int, prompt_length: int) -> None:
        self.n, self.m = n, m
        self.keys: list[dict[str, int]] = []
        self.key_map = [0] * 262144
        self.key_map_last_idx, self.size_last_begin = 0, prompt_length
        self.last: int | None = None

    def hash(self, tokens: list[int], start: int) -> int:
        h = 0
        for i in range(self.n):
            h = (h * 2654435761 + tokens[start + i]) % 2**32
        return h % len(self.key_map)

    def match(self, inp: list[int], j: int, key: list[int]) -> bool:
        return all(inp[j + k] == key[k] for k in range(self.n))

    def draft(self, inp: list[int], sampled: int) -> list[int]:
        self.last = None
        n, m, cur = self.n, self.m, len(inp)
        if cur < 2 * n + m:
            return []
        key = inp[cur - n + 1 :] + [sampled]
        match_pos = 0
        idx = self.key_map[self.hash(key, 0)]
        if idx != 0 and idx < cur - n - m - 1 and self.match(inp, idx, key):
            match_pos = idx
        if match_pos == 0 and self.size_last_begin > n + m + 1:
            j = self.size_last_begin - n - m - 1
            while j > self.key_map_last_idx:
                if self.match(inp, j, key):
                    match_pos = j
                    break
                j -= 1
        if match_pos == 0:
            j = cur - n - m - 1
            while j > self.size_last_begin and j > self.key_map_last_idx:
                if self.match(inp, j, key):
                    match_pos = j
                    break
                j -= 1
        if self.size_last_begin > n + m + 1:
            j = self.size_last_begin - n - m - 1
            while j > self.key_map_last_idx:
                if self.key_map[self.hash(inp, j)] == 0:
                    self.key_map[self.hash(inp, j)] = j
                j -= 1
        j = cur - n - m - 1
        while j > self.size_last_begin and j > self.key_map_last_idx:
            if self.key_map[self.hash(inp, j)] == 0:
                self.key_map[self.hash(inp, j)] = j
            j -= 1
        self.key_map_last_idx = max(cur - n - m - 1, self.key_map_last_idx)
        if match_pos == 0:
            return []
        offset = next((i for i, k in enumerate(self.keys) if self.match(inp, k["key_idx"], key)), len(self.keys))
        if offset == len(self.keys):
            self.keys.append({"key_idx": match_pos, "key_num": 0, "n_accepted": m})
        self.keys[offset]["key_num"] = min(self.keys[offset]["key_num"] + 1, 16380)
        self.last = offset
        return [inp[match_pos + n + i] for i in range(min(m, self.keys[offset]["n_accepted"]))]

    def accept(self, n_accepted: int) -> None:
        if self.last is not None:
            self.keys[self.last]["n_accepted"] = n_accepted


def test_map_k_drafts_as_llama_cpps_ngram_map_k() -> None:
    """Generations with repeats: each step's draft, then a random number of its tokens accepted
    (the history grows by them and one more), against the transcription."""
    rng = np.random.default_rng(2)
    drafts = shortened = 0
    for case in range(150):
        n, m = int(rng.integers(1, 4)), int(rng.integers(1, 7))
        vocab = 2 + case % 4
        history = [int(t) for t in rng.integers(0, vocab, size=int(rng.integers(0, 40)))]
        ours, ref = (
            LookupDrafter(LookupConfig(n, m, kind=LookupKind.NGRAM_MAP_K), history),
            ReferenceMapK(n, m, len(history)),
        )
        for _ in range(40):
            sampled = int(rng.integers(0, vocab))
            got = ours.draft(sampled)
            assert got == ref.draft(history, sampled), (n, m, history, sampled)
            drafts += bool(got)
            shortened += 0 < len(got) < m
            accepted = int(rng.integers(0, len(got) + 1))
            ours.accepted(accepted)
            ref.accept(accepted)
            grown = [sampled, *got[:accepted], int(rng.integers(0, vocab))]
            ours.add(grown[:-1])
            history += grown[:-1]
    assert drafts > 1000 and shortened > 100  # drafts made, and cut to the key's last acceptance


def test_map_k_hash_table_as_llama_cpps_on_a_long_history() -> None:
    """Hash collisions in the 2^18-entry table change which occurrence drafts (the first one stored
    for a hash stays); 30k tokens of a small vocabulary make many."""
    rng = np.random.default_rng(3)
    history = [int(t) for t in rng.integers(0, 6, size=30_000)]
    ours, ref = (
        LookupDrafter(LookupConfig(4, 8, kind=LookupKind.NGRAM_MAP_K), history),
        ReferenceMapK(4, 8, len(history)),
    )
    for _ in range(30):
        sampled = int(rng.integers(0, 6))
        got = ours.draft(sampled)
        assert got == ref.draft(history, sampled)
        ours.add([sampled, *got])
        history += [sampled, *got]


def test_lookup_drafts_the_longest_match() -> None:
    """edgeslm's lookup: the last n tokens if they occurred before, else n - 1, down to n_min; the
    most recent occurrence; the length matched is the draft's key."""
    config = LookupConfig(4, 3, n_min=2)
    drafter = LookupDrafter(config, [5, 6, 7, 8, 9, 1, 2, 7, 8, 3, 4, 0])
    assert (drafter.draft(7), drafter.key) == ([], 0)  # "0 7": never seen; "7" alone is below n_min
    drafter = LookupDrafter(config, [5, 6, 7, 8, 9, 1, 2, 7, 8, 3, 4, 6])
    assert (drafter.draft(7), drafter.key) == ([8, 9, 1], 2)  # "6 7" at 1 (not "7 8" later: that is "2 7")
    drafter = LookupDrafter(config, [1, 2, 3, 9, 1, 2, 3, 8, 0, 1, 2])
    assert (drafter.draft(3), drafter.key) == ([8, 0, 1], 3)  # "1 2 3": the most recent of two
    assert LookupConfig(1).n_min == 1  # n below n_min: single tokens match
    rng = np.random.default_rng(4)  # against the definition, by brute force
    for case in range(3000):
        n, m, n_min = int(rng.integers(1, 6)), int(rng.integers(1, 8)), int(rng.integers(1, 4))
        tokens = [int(t) for t in rng.integers(0, 2 + case % 4, size=int(rng.integers(0, 40)))]
        sampled, whole = int(rng.integers(0, 3)), tokens + [int(rng.integers(0, 3))]
        whole[-1] = sampled
        expected: tuple[list[int], int] = ([], 0)
        for size in range(min(n, len(tokens)), min(n_min, n) - 1, -1):
            ends = [e for e in range(size - 1, len(tokens)) if whole[e - size + 1 : e + 1] == whole[-size:]]
            if ends:
                expected = (whole[ends[-1] + 1 : ends[-1] + 1 + m], size)
                break
        got = LookupDrafter(LookupConfig(n, m, n_min=n_min), tokens)
        assert (got.draft(sampled), got.key) == expected, (n, m, n_min, tokens, sampled)


@pytest.mark.parametrize("kind", list(LookupKind))
def test_lookup_keeps_only_its_history_even_for_100k_tokens(kind: LookupKind) -> None:
    """A 100k-token prompt: the copy is drafted; memory is the history (4 bytes a token, grown 2x
    at most) and, for ngram-map-k, its fixed 1 MiB table and one entry per key looked up."""
    prompt = list(np.random.default_rng(1).integers(0, 50_000, size=100_000))
    drafter = LookupDrafter(LookupConfig(n=3, m=8, kind=kind), prompt + prompt[5_000:5_010])
    assert drafter.draft(int(prompt[5_010])) == [int(t) for t in prompt[5_011:5_019]]  # the copy continues
    for step in range(200):
        drafter.add([int(prompt[5_010 + step])])
        drafter.draft(int(prompt[5_011 + step]))
    assert drafter._tokens.nbytes <= 8 * 100_300
    if kind is LookupKind.NGRAM_MAP_K:
        assert drafter._map is not None and drafter._map.key_map.nbytes == 1 << 20 and len(drafter._map.keys) <= 201


@pytest.mark.parametrize(("n", "m"), [(-1, 48), (12, -3), (12, 10_000), (True, 4), (2.5, 4)])
def test_lookup_settings_out_of_range_are_refused(n: object, m: object) -> None:
    with pytest.raises(InvalidParameterError, match="out of range; valid: 1 to 256"):
        LookupConfig(n, m)  # type: ignore[arg-type]


def test_the_policy_verifies_only_what_pays_and_comes_back() -> None:
    """A batch of k costs cost(k) plain steps: with acceptance a, a k-token draft pays when
    (1 + a + ... + a^k) / cost(k + 1) beats 1; declined drafts keep acceptance learning."""
    cheap = Policy({1: 1.0, 4: 1.2, 16: 2.0, 49: 5.0}, prior=0.9)
    assert cheap.depth(0) == 0 and cheap.depth(30) > 8
    assert expected_gain(0.9, cheap.depth(30), cheap.cost(cheap.depth(30) + 1)) > 1.05
    dear = Policy({1: 1.0, 4: 4.0, 16: 16.0}, prior=0.9)  # verifying k costs k steps: never pays
    assert dear.depth(30) == 0
    policy = Policy({1: 1.0, 4: 2.4, 16: 8.0, 49: 24.4}, prior=0.5)  # SmolLM2 on 2 cores
    for _ in range(20):
        policy.verified(4, 0)  # every draft rejected at once
    assert policy.acceptance < 0.1 and policy.depth(48) == 0
    for _ in range(10):  # drafts declined, and plain decoding then writes them token for token
        policy.declined([7, 8, 9, 10])
        for token in (7, 8, 9, 10):
            policy.decoded(token)
    assert policy.acceptance > 0.9 and policy.depth(48) > 0
    assert policy.stats.declined == 10 and policy.stats.drafted == 80 and policy.stats.rate == 0.0


@pytest.fixture
def forced_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that set the verify costs by hand keep them: the clock's correction is off."""
    monkeypatch.setattr(Policy, "timed", lambda self, seconds, k: None)


@pytest.mark.usefixtures("forced_costs")
def test_speculative_greedy_equals_plain_greedy_on_a_tiny_model(tmp_path: Path) -> None:
    engine = open_engine("llama.cpp", write_runnable_model(tmp_path / "m.gguf", seed=5), LoadParams(n_ctx=512))
    prompt = engine.tokenize("the cat sat on the mat; the cat sat on the mat; the cat sat on the", add_special=True)
    greedy = SamplingParams(temperature=0)
    plain = list(islice(engine.generate_tokens(prompt, greedy), 120))
    engine.batch_costs = {1: 1.0, 4: 1.1, 16: 1.5, 49: 3.0}  # verification made cheap: drafts are checked
    stats = SpecStats()
    spec = list(islice(engine.generate_speculative(prompt, greedy, LookupConfig(n=1, m=6), stats), 120))
    assert spec == plain
    assert stats.verifies > 5 and stats.drafted > 0
    sampled = SamplingParams(temperature=0.8, seed=3, repeat_penalty=1.1)  # penalties decode plainly: same text
    stats = SpecStats()
    assert list(islice(engine.generate_speculative(prompt, sampled, LookupConfig(), stats), 40)) == list(
        islice(engine.generate_tokens(prompt, sampled), 40)
    )
    assert stats.verifies == 0


@pytest.mark.real_model
def test_lookup_is_lossless_where_batches_agree_and_pays_on_a_copy(
    builtin_home: Path, home: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SmolLM2 in F16, whose verify batches give single steps' argmax on this CPU (benchmarks/
    speculative.py, lossless section): the same text as plain greedy decoding. Quantized types'
    batched kernels can flip near-ties, so Gemma's Q4_K_M is held to its acceptance only.

    Whether a draft is verified is the cost model's decision, measured on the machine: the test
    injects one where verifying pays and stops the clock's corrections, so it asserts what the
    drafts do, not how fast this machine is."""
    from edgeslm.speculation.policy import Policy

    monkeypatch.setattr(Policy, "timed", lambda self, seconds, k: None)
    shutil.copytree(builtin_home, home)
    assert cli("quantize", "smollm2-135m-instruct", "--type", "f16", "--allow-requantize").code == 0
    text = (Path(__file__).parents[2] / "shared" / "data" / "wikitext-2-test.txt").read_bytes().decode()
    paragraph = text[2000:3200].replace("\r", "")
    # SmolLM2-135M rarely copies when asked to repeat; asked to fix the spacing it copies.
    ask = [{"role": "user", "content": f"Rewrite the following text with correct spacing around punctuation:\n\n"
                                       f"{paragraph}"}]
    settings = resolve_settings(home=home, offline=True)
    for name in ("smollm2-135m-instruct:f16", "gemma3-270m"):
        model = load(name, ctx=1024, threads=2, settings=settings)
        model.engine.batch_costs = {1: 1.0, 4: 1.1, 16: 1.4, 49: 2.2}  # type: ignore[attr-defined]
        model.engine.step_seconds = 0.01  # type: ignore[attr-defined]
        try:
            prompt = ask if model.has_chat_template else f"{paragraph}\n\n{paragraph[:300]}"
            kw = {"max_tokens": 120, "sampling": SamplingParams(temperature=0)}
            stats = SpecStats()
            spec = generate(model, prompt, draft=LookupConfig(), spec_stats=stats, **kw)  # type: ignore[arg-type]
            plain = generate(model, prompt, **kw)  # type: ignore[arg-type]
        finally:
            model.close()
        assert stats.accepted > 40 and stats.rate > 0.5, (name, stats)
        if name.endswith(":f16"):
            assert spec.tokens == plain.tokens


@pytest.mark.real_model
def test_run_draft_lookup_prints_its_acceptance(
    builtin_home: Path, home: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a draft is verified is the cost model's call, measured on the machine: a cost model
    where verifying pays is injected and the clock's corrections stopped, so a busy machine
    changes nothing here."""
    from edgeslm.engines.llamacpp import speculative as llamacpp_spec
    from edgeslm.speculation.policy import Policy

    monkeypatch.setattr(llamacpp_spec, "verify_costs", lambda *_: {1: 1.0, 4: 1.1, 16: 1.4, 49: 2.2})
    monkeypatch.setattr(Policy, "timed", lambda self, seconds, k: None)
    shutil.copytree(builtin_home, home)
    words = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
    ask = f"Repeat exactly: {words} {words} {words}"
    flags = ("--temperature", "0", "--max-tokens", "60", "--verbose")
    plain = cli("run", ask, *flags)
    # ngram-map-k needs m tokens after a match, and (as llama.cpp's) never looks at the prompt's last n + m + 1
    for kind, m, shown in [("lookup", 48, "lookup (n 3, m 48, n_min 2)"),
                           ("ngram-simple", 48, "ngram-simple (n 3, m 48)"),
                           ("ngram-map-k", 8, "ngram-map-k (n 3, m 8, min_hits 1)")]:
        spec = cli("run", ask, "--draft", kind, "--draft-n", "3", "--draft-m", str(m), *flags)
        assert spec.code == 0 and spec.out == plain.out
        assert f"draft:                {shown}\n" in spec.err
        accepted, drafted = map(int, re.search(r"draft accepted: +(\d+)/(\d+)", spec.err).groups())  # type: ignore[union-attr]
        assert drafted > 10 and accepted > drafted / 2, (kind, spec.err)  # the repeats are drafted
    refused = cli("run", ask, "--draft", "lookup", "--draft-n", "0")
    assert refused.code != 0 and "--draft-n: 0 is out of range; valid: 1 or more" in refused.err
    refused = cli("run", ask, "--draft", "lookup", "--draft-m", "300")
    assert refused.code != 0 and "draft m 300 is out of range; valid: 1 to 256" in refused.err


def _drain(decoder: object, wanted: dict[str, list[int]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {r: [] for r in wanted}
    for _ in range(2000):
        events = decoder.step()  # type: ignore[attr-defined]
        if not events and not decoder.active():  # type: ignore[attr-defined]
            break
        for ev in events:
            out[ev.request].append(ev.token)
    return out


def test_slots_verify_their_drafts_in_one_batch_and_stay_lossless(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batching runner: greedy slots with drafts, a sampled one without, and a prompt being
    prefilled, in the same steps; every reply equals the same decoder's without drafts."""
    from edgeslm.engines.llamacpp import batch as llamacpp_batch
    from edgeslm.engines.llamacpp.batch import BatchDecoder

    engine = open_engine("llama.cpp", write_runnable_model(tmp_path / "m.gguf", seed=5), LoadParams(n_ctx=512))
    engine.batch_costs = {1: 1.0, 4: 1.1, 16: 1.5, 49: 3.0}  # verification made cheap: drafts are checked
    # ... and priced as one pass (llama.cpp's extra pass for a slot's draft would decline them all)
    monkeypatch.setattr(llamacpp_batch, "split_cost", lambda policy, runs, n: policy.cost(sum(c for _, c in runs)))
    prompts = {"a": "the cat sat on the mat; the cat sat on the", "b": "abc abc abc abc abc ab", "c": "xyz"}
    sampling = {"a": SamplingParams(temperature=0), "b": SamplingParams(temperature=0),
                "c": SamplingParams(temperature=0.9, seed=1)}
    replies = []
    for draft in (None, LookupConfig(n=1, m=6)):
        decoder = BatchDecoder(engine, 3, 256, draft=draft, reuse=False)
        decoder._clock.record = lambda *_: None  # type: ignore[method-assign]  # the forced costs stay in force
        try:
            for rid, text in prompts.items():
                decoder.add(rid, engine.tokenize(text, add_special=True), sampling[rid], 60)
            replies.append(_drain(decoder, {r: [] for r in prompts}))
            stats, left = decoder.spec_stats, dict(decoder.finished_stats)
        finally:
            decoder.close()
    plain, spec = replies
    assert spec == plain and all(len(v) > 10 for v in spec.values()), {r: len(v) for r, v in spec.items()}
    assert stats.verifies > 5 and stats.drafted > stats.accepted > 0
    assert set(left) == {"a", "b"}  # per request (drafted, accepted), for the runner's done message


@pytest.mark.real_model
def test_serve_draft_lookup_counts_drafts_in_metrics(
    builtin_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """serve --draft smollm2-135m-instruct:f16=lookup (F16: its batches agree with single steps): the
    greedy reply is the one served without drafts, /metrics counts the drafted and accepted tokens,
    and the model not named (the builtin Q4_1) drafts nothing."""
    import subprocess
    import sys

    import httpx
    import openai

    from .servekit import serving

    home = tmp_path_factory.mktemp("spec-home")
    shutil.copytree(builtin_home, home, dirs_exist_ok=True)
    subprocess.run([sys.executable, "-m", "edgeslm", "--home", str(home), "quantize", "smollm2-135m-instruct",
                    "--type", "f16", "--allow-requantize"], check=True, capture_output=True)
    text = (Path(__file__).parents[2] / "shared" / "data" / "wikitext-2-test.txt").read_bytes().decode()
    ask = [{"role": "user", "content": "Rewrite the following text with correct spacing around punctuation:\n\n"
                                       + text[2000:3200].replace("\r", "")}]
    replies, metrics = [], ""
    for draft in ((), (("smollm2-135m-instruct:f16", LookupConfig()),)):
        with serving(home, parallel=2, ctx=1024, prompt_cache=False, draft=draft) as url:
            with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as oai:
                for model in ("smollm2-135m-instruct:f16", "smollm2-135m-instruct"):
                    kw: Any = {"model": model, "messages": ask, "temperature": 0, "max_tokens": 100}
                    replies.append(oai.chat.completions.create(**kw).choices[0].message.content)
            metrics = httpx.get(f"{url}/metrics", timeout=CLIENT_TIMEOUT).text
    drafted = _metric(metrics, "edgeslm_draft_tokens_total", "smollm2-135m-instruct:f16")
    accepted = _metric(metrics, "edgeslm_draft_accepted_tokens_total", "smollm2-135m-instruct:f16")
    assert drafted > 0 and 0 < accepted <= drafted, metrics
    assert _metric(metrics, "edgeslm_generated_tokens_total", "smollm2-135m-instruct:latest") > 0, metrics
    assert _metric(metrics, "edgeslm_draft_tokens_total", "smollm2-135m-instruct:latest") == 0, metrics
    assert replies[0] and replies[2] == replies[0]


def _metric(text: str, name: str, model: str = "") -> float:
    lines = [line for line in text.splitlines() if line.startswith(name + "{") and f'model="{model}' in line]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


@pytest.mark.usefixtures("forced_costs")
def _self_drafting(tmp_path: Path) -> tuple[Path, Any, Any]:
    """A tiny model, and the same file as its draft model, with verification made cheap (hand-set
    costs: drafts are checked) and the draft's steps cheaper still."""
    from edgeslm.generation import load_draft

    target_path = write_runnable_model(tmp_path / "t.gguf", seed=5)
    target = load(str(target_path), ctx=256)
    target.engine.batch_costs = {1: 1.0, 4: 1.1, 16: 1.5, 49: 3.0}
    target.engine.step_seconds = 1.0
    same = load_draft(str(target_path), target)
    same.engine.batch_costs, same.engine.step_seconds = {1: 1.0}, 0.05
    return target_path, target, same


def test_a_draft_model_drafts_losslessly_and_bad_drafts_are_refused(tmp_path: Path, home: Path, cli: Cli) -> None:
    """A draft model: the target's own file drafts every token right (all accepted, the same text);
    a model with another vocabulary, or trained for less context than the run holds, is refused;
    a draft model that is not stored is named. The policy then tries a draft model only now and
    then (its drafts cannot be scored for free)."""
    from edgeslm.generation import load_draft

    target_path, target, same = _self_drafting(tmp_path)
    try:
        greedy = SamplingParams(temperature=0)
        stats = SpecStats()
        spec = generate(target, "the cat sat on the mat", max_tokens=80, sampling=greedy, draft=same, spec_stats=stats)
        plain = generate(target, "the cat sat on the mat", max_tokens=80, sampling=greedy)
        assert spec.tokens == plain.tokens and stats.drafted > 20 and stats.accepted == stats.drafted
        other = write_runnable_model(tmp_path / "o.gguf", seed=5, specials={"<tool_call>": 4})
        with pytest.raises(InvalidParameterError, match="has 260 tokens, t.gguf 259: a draft model needs"):
            load_draft(str(other), target)
    finally:
        same.close()
        target.close()
    longer = load(str(target_path), ctx=1024)
    try:
        with pytest.raises(InvalidParameterError, match="trained for 512 tokens of context and this run holds 1,024"):
            load_draft(str(target_path), longer)
    finally:
        longer.close()
    assert cli("import", str(target_path), "--name", "tiny").code == 0
    missing = cli("run", "tiny", "hello", "--draft", "nope:q2_k", "--temperature", "0", "--max-tokens", "4")
    assert missing.code == 67 and "nope:q2_k" in missing.err
    policy = Policy({1: 1.0, 4: 4.0}, prior=0.1, draft_cost=0.5, probe_every=4)
    tries = [step for step in range(200) if policy.depth(8)]
    assert tries[:3] == [3, 11, 27]  # after 4, then 8, then 16 declined steps


def test_verify_steps_slower_than_modelled_turn_drafts_down() -> None:
    """The cost model is corrected by the clock: verify steps that take 10x what it predicts (two
    models' weights through one cache) raise the correction until drafts are declined."""
    policy = Policy({1: 1.0, 4: 1.2, 16: 2.0, 49: 5.0}, prior=0.9, draft_cost=0.2)
    assert policy.depth(8) > 0
    policy.timed(0.01, 0)
    for _ in range(10):
        k = policy.depth(8) or 4
        policy.timed(10 * 0.01 * (policy.cost(k + 1) + k * 0.2), k)
    assert policy.correction > 5 and policy.depth(8) == 0
    from edgeslm.engines.llamacpp.batch import StepClock

    clock = StepClock()  # the batching runner's: whole steps, all slots together
    clock.record(0.02, 2.0, drafted=False)  # 2 plain steps' worth in 20 ms: 10 ms a step
    for _ in range(10):
        clock.record(0.12, 3.0, drafted=True)  # modelled 30 ms, took 120
    assert clock.unit == pytest.approx(0.01) and clock.correction == pytest.approx(4.0, rel=0.05)


def _chi2_999(df: int) -> float:
    """The 0.999 quantile of chi-square with df degrees of freedom (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + 3.09 * (2 / (9 * df)) ** 0.5) ** 3


@pytest.mark.usefixtures("forced_costs")
def test_speculative_sampling_keeps_the_distribution(tmp_path: Path) -> None:
    """Sampling (top-k 3, temperature 1) with a draft on every step, judged by the acceptance rule:
    the first two tokens of 1,000 replies follow the exact joint distribution computed from the
    logits (chi-square at 0.999), as llama.cpp's own sampler's do. The draft model is the target
    itself (its greedy token, the mode of the distribution): some drafts are accepted, some not."""
    from collections import Counter

    from edgeslm.engines.spec_sampling import distribution

    path = write_runnable_model(tmp_path / "m.gguf", seed=2)
    engine, drafter = (open_engine("llama.cpp", path, LoadParams(n_ctx=256)) for _ in range(2))
    engine.batch_costs, engine.step_seconds = {1: 1.0, 4: 1.01, 16: 1.05, 49: 1.2}, 1.0  # type: ignore[attr-defined]
    drafter.batch_costs, drafter.step_seconds = {1: 1.0}, 0.01  # type: ignore[attr-defined]
    s = SamplingParams(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0)
    prompt = engine.tokenize("the cat sat", add_special=True)
    exact: dict[tuple[int, int], float] = {}
    first_ids, first_p = distribution(engine.eval_logits(prompt, len(prompt) - 1)[-1], s)
    for a, pa in zip(first_ids, first_p, strict=True):
        ids, probs = distribution(engine.eval_logits([*prompt, int(a)], len(prompt))[-1], s)
        exact |= {(int(a), int(b)): float(pa * pb) for b, pb in zip(ids, probs, strict=True)}
    n, stats = 1000, SpecStats()
    spec = Counter(tuple(islice(engine.generate_speculative(prompt, replace(s, seed=i), drafter, stats), 2))  # type: ignore[arg-type]
                   for i in range(n))
    plain = Counter(tuple(islice(engine.generate_tokens(prompt, replace(s, seed=i)), 2)) for i in range(n))
    assert stats.verifies == n and 0.2 * n < stats.accepted < 0.5 * stats.drafted, stats  # judged, not rubber-stamped
    for counts in (spec, plain):
        assert set(counts) <= set(exact)
        chi2 = sum((counts.get(k, 0) - n * p) ** 2 / (n * p) for k, p in exact.items())
        assert chi2 < _chi2_999(len(exact) - 1), (chi2, counts, exact)


def test_serve_draft_specs_are_checked_before_it_starts(home: Path, cli: Cli) -> None:
    refused = cli("serve", "--draft", "smollm2-135m-instruct=smollm2-135m-instruct:q8_0", "--preload", "")
    assert refused.code != 0 and "serve drafts by prompt lookup (lookup, ngram-simple, ngram-map-k)" in refused.err
    refused = cli("serve", "--draft", "no-such-model=ngram-map-k", "--preload", "")
    assert refused.code != 0 and "no-such-model" in refused.err
    refused = cli("serve", "--draft", "lookup", "--draft-min-hits", "0", "--preload", "")
    assert refused.code != 0 and "--draft-min-hits: 0 is out of range" in refused.err


def test_a_draft_that_fails_mid_reply_ends_only_the_speculation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A draft model whose decode fails after a few drafts (run), and a slot's lookup that fails
    (serve's batching runner): the reply goes on without drafts and is the plain one."""
    from edgeslm.engines.llamacpp import speculative as llamacpp_spec
    from edgeslm.engines.llamacpp.batch import BatchDecoder
    from edgeslm.errors import EngineError

    calls = {"n": 0}

    def failing(real: Callable[..., list[int]], after: int) -> Callable[..., list[int]]:
        def draft(*args: Any) -> list[int]:
            calls["n"] += 1
            if calls["n"] > after:
                raise EngineError("llama.cpp decode failed (code -1)")
            return real(*args)

        return draft

    target_path, target, same = _self_drafting(tmp_path)
    monkeypatch.setattr(llamacpp_spec.ModelDrafter, "draft", failing(llamacpp_spec.ModelDrafter.draft, 3))
    try:
        greedy, stats = SamplingParams(temperature=0), SpecStats()
        spec = generate(target, "the cat sat on the mat", max_tokens=80, sampling=greedy, draft=same, spec_stats=stats)
        plain = generate(target, "the cat sat on the mat", max_tokens=80, sampling=greedy)
        assert spec.tokens == plain.tokens and len(spec.tokens) == 80
        assert calls["n"] == 4 and 0 < stats.verifies <= 3  # three drafts verified, then none
    finally:
        same.close()
        target.close()

    engine = open_engine("llama.cpp", target_path, LoadParams(n_ctx=512))
    engine.batch_costs = {1: 1.0, 4: 1.1, 16: 1.5, 49: 3.0}  # type: ignore[attr-defined]
    calls["n"] = 0
    monkeypatch.setattr(LookupDrafter, "draft", failing(LookupDrafter.draft, 30))
    prompt = engine.tokenize("abc abc abc abc abc abc ab", add_special=True)
    try:
        replies = []
        for draft in (None, LookupConfig(n=1, m=6)):
            decoder = BatchDecoder(engine, 2, 256, draft=draft, reuse=False)
            decoder._clock.record = lambda *_: None  # type: ignore[method-assign]
            try:
                decoder.add("a", prompt, SamplingParams(temperature=0), 60)
                replies.append(_drain(decoder, {"a": []})["a"])
                drafted = decoder.spec_stats.verifies
            finally:
                decoder.close()
        assert replies[1] == replies[0] and len(replies[0]) == 60 and calls["n"] == 31 and drafted > 0
    finally:
        engine.close()


@pytest.mark.real_model
def test_bench_draft_measures_the_copy_workload(builtin_home: Path, home: Path, cli: Cli) -> None:
    """bench --draft: the copy workload plainly and with drafts, the acceptance reported; a draft
    model with another vocabulary is refused by name."""
    shutil.copytree(builtin_home, home)
    result = cli("bench", "gemma3-270m", "-p", "0", "-n", "32", "-r", "1", "--draft", "lookup", "--json")
    assert result.code == 0, result.err
    tests = {t["test"]: t for t in json.loads(result.out)[0]["tests"]}
    assert list(tests) == ["tg32", "tg32 copy", "tg32 copy+lookup"]
    spec = tests["tg32 copy+lookup"]
    # Gemma copies on, so drafts are found; whether each is verified is the cost measured at load on
    # this machine (a busy or slow one declines them), so the test asserts that they are found and
    # counted, not the machine's speed (injecting the cost model is issue 34's)
    assert spec["drafted"] >= spec["accepted"] and spec["drafted"] + spec["declined"] > 10, spec
    assert spec["mean_tps"] > 0  # measured; how fast is the machine's business (0.7 tok/s beside a CPU hog)
    table = cli("bench", "gemma3-270m", "-p", "0", "-n", "16", "-r", "1", "--draft", "ngram-map-k", "--draft-m", "8")
    assert table.code == 0 and "tg16 copy+ngram-map-k" in table.out, table.err
    refused = cli("bench", "gemma3-270m", "-p", "0", "-n", "8", "-r", "1", "--draft", "smollm2-135m-instruct")
    assert refused.code != 0 and "a draft model needs the target's vocabulary" in refused.err


def test_the_step_cost_follows_llama_cpps_passes() -> None:
    """A cache per sequence: llama.cpp splits a step into passes of consecutive sequence ids with
    equal tokens each (split_equal), so a slot's draft is a pass of its own."""
    from edgeslm.engines.llamacpp.batch import split_cost, ubatch_sizes

    assert ubatch_sizes([(0, 1), (1, 1), (2, 1), (3, 1)], 512) == [4]
    assert ubatch_sizes([(0, 1), (1, 6), (2, 1), (3, 1)], 512) == [4, 5]
    assert ubatch_sizes([(0, 3), (1, 3), (2, 1)], 512) == [3, 4]
    assert ubatch_sizes([(0, 3), (1, 1), (2, 3), (3, 1)], 512) == [4, 2, 2]
    assert ubatch_sizes([(0, 1), (1, 1), (3, 1), (2, 7)], 512) == [3, 1, 6]  # 3 does not follow 1; 2 does
    assert ubatch_sizes([(0, 1), (2, 1)], 512) == [1, 1]  # an idle slot between: two passes
    assert ubatch_sizes([(0, 300), (1, 300)], 512) == [512, 88]
    policy = Policy({1: 1.0, 4: 2.0, 16: 5.0})
    assert split_cost(policy, [(0, 1), (1, 6), (2, 1), (3, 1)], 512) == policy.cost(4) + policy.cost(5)
    assert split_cost(policy, [(0, 1), (1, 6), (2, 1), (3, 1)], 512) > policy.cost(9)  # more than one pass
