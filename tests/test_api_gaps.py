"""The API gaps clients hit first (issue 16, begun): OpenAI's presence and frequency penalties as
llama.cpp's penalties sampler, ``n`` choices decoded in parallel slots, and pinned models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgeslm.engines.base import LoadParams, SamplingParams, open_engine
from edgeslm.errors import InvalidParameterError

from .conftest import CliResult
from .ggufbuild import write_runnable_model
from .onnxbuild import GGUF_NAME, build_store, private_home
from .servekit import CLIENT_TIMEOUT, serving

MODEL = GGUF_NAME  # a tiny llama with a ChatML template, converted from a Hugging Face folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("api-home")
    build_store(root)
    return root


@pytest.fixture
def tiny_home(built: Path, home: Path) -> Path:
    return private_home(built, home)


def penalized_greedy(logits_of: Callable[[list[int]], np.ndarray], prompt: list[int], n: int,
                     freq: float, present: float, window: int) -> list[int]:
    """OpenAI's formula on the logits, by hand: logit - count x frequency - (count > 0) x presence,
    counting the last ``window`` tokens, the prompt's included (llama-server's slots feed the prompt
    to the penalties sampler)."""
    out: list[int] = []
    for _ in range(n):
        row = logits_of(prompt + out).astype(np.float64)
        counts = np.bincount((prompt + out)[-window:], minlength=len(row))[: len(row)]
        row = row - counts * freq - (counts > 0) * present
        out.append(int(row.argmax()))
    return out


@pytest.mark.parametrize(("freq", "present", "window"), [(1.5, 0.0, 64), (0.0, 2.0, 64), (0.8, 0.5, 4)])
def test_penalties_follow_openais_formula(tmp_path: Path, freq: float, present: float, window: int) -> None:
    engine = open_engine("llama.cpp", write_runnable_model(tmp_path / "m.gguf", seed=3), LoadParams(n_ctx=128))
    prompt = engine.tokenize("abcabcabc", add_special=True)
    greedy = list(_take(engine.generate_tokens(prompt, SamplingParams(temperature=0)), 24))
    sampling = SamplingParams(temperature=0, frequency_penalty=freq, presence_penalty=present, repeat_last_n=window)
    ours = list(_take(engine.generate_tokens(prompt, sampling), 24))
    expected = penalized_greedy(lambda ids: engine.eval_logits(ids, len(ids) - 1)[-1], prompt, 24, freq, present,
                                window)
    assert ours == expected and ours != greedy  # the penalties change the text, exactly as defined
    for bad in ({"frequency_penalty": 2.5}, {"presence_penalty": float("nan")}):
        with pytest.raises(InvalidParameterError, match="-2 to 2"):
            SamplingParams(**bad)  # type: ignore[arg-type]


def _take(tokens: object, n: int) -> list[int]:
    from itertools import islice

    return list(islice(tokens, n))  # type: ignore[call-overload]


def test_n_choices_and_penalties_through_both_clients(tiny_home: Path) -> None:
    import ollama
    import openai

    ask = [{"role": "user", "content": "abcabcabc"}]
    with (
        serving(tiny_home, parallel=3, ctx=256) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as oai,
    ):
        one = oai.chat.completions.create(model=MODEL, messages=ask, max_tokens=8, temperature=0)  # type: ignore[arg-type]
        three = oai.chat.completions.create(model=MODEL, messages=ask, max_tokens=8, temperature=0, n=3)  # type: ignore[arg-type]
        assert [c.index for c in three.choices] == [0, 1, 2]
        assert {c.message.content for c in three.choices} == {one.choices[0].message.content}
        assert three.usage is not None and one.usage is not None
        assert three.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt is counted once
        assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
        sampled = oai.chat.completions.create(model=MODEL, messages=ask, max_tokens=12, temperature=1.0, seed=5, n=3)  # type: ignore[arg-type]
        assert len({c.message.content for c in sampled.choices}) > 1  # seed + i per choice: not three alike
        stream = oai.chat.completions.create(model=MODEL, messages=ask, max_tokens=8, temperature=0, n=2, stream=True)  # type: ignore[arg-type]
        texts = ["", ""]
        finished = set()
        for chunk in stream:
            for c in chunk.choices:
                texts[c.index] += c.delta.content or ""
                if c.finish_reason:
                    finished.add(c.index)
        assert texts == [one.choices[0].message.content] * 2 and finished == {0, 1}
        completions = oai.completions.create(model=MODEL, prompt="abcabc", max_tokens=6, temperature=0, n=2)
        assert [c.index for c in completions.choices] == [0, 1] and completions.choices[0].text
        for n in (0, 4, 1000):
            with pytest.raises(openai.BadRequestError, match=f"n={n} is out of range; valid: 1 to 3"):
                oai.chat.completions.create(model=MODEL, messages=ask, max_tokens=4, n=n)  # type: ignore[arg-type]
        penalized = oai.chat.completions.create(model=MODEL, messages=ask, max_tokens=24, temperature=0,  # type: ignore[arg-type]
                                                frequency_penalty=2.0)
        plain = oai.chat.completions.create(model=MODEL, messages=ask, max_tokens=24, temperature=0)  # type: ignore[arg-type]
        assert penalized.choices[0].message.content != plain.choices[0].message.content
        with pytest.raises(openai.BadRequestError, match="frequency_penalty"):
            oai.chat.completions.create(model=MODEL, messages=ask, max_tokens=4, frequency_penalty=3)  # type: ignore[arg-type]
        oll = ollama.Client(host=url)
        try:
            options = {"temperature": 0, "num_predict": 24, "repeat_penalty": 1.0}
            base = oll.chat(model=MODEL, messages=ask, options=options).message.content
            pushed = oll.chat(model=MODEL, messages=ask, options={**options, "presence_penalty": 2.0}).message.content
            assert base == plain.choices[0].message.content and pushed != base
        finally:
            oll._client.close()


def test_a_pinned_model_is_loaded_at_start_and_shown(tiny_home: Path, cli: Callable[..., CliResult]) -> None:
    import httpx

    with serving(tiny_home, parallel=1, ctx=128, pin=(MODEL,), keep_alive=0) as url:
        (entry,) = httpx.get(f"{url}/api/ps", timeout=CLIENT_TIMEOUT).json()["models"]
        assert entry["name"] == MODEL and entry["pinned"] and entry["expires_at"].startswith("2318")
        unload = httpx.post(
            f"{url}/api/generate", json={"model": MODEL, "keep_alive": 0}, timeout=CLIENT_TIMEOUT
        )  # Ollama's unload
        assert unload.status_code == 200 and [
            m["name"] for m in httpx.get(f"{url}/api/ps", timeout=CLIENT_TIMEOUT).json()["models"]
        ] == [MODEL]
        shown = cli("ps", "--server", url)
        assert shown.code == 0 and "pinned" in shown.out, shown.err
