"""The generation core on the fake engine: prompts, stops, limits, timings, validation."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from edgeslm.config import resolve_settings
from edgeslm.engines.base import LoadParams, SamplingParams
from edgeslm.errors import ChatTemplateError, ContextOverflowError, InvalidParameterError, ModelNotFoundError
from edgeslm.generation import Model, generate, load, stream_generate
from edgeslm.store import Store

from . import fake_engine
from .ggufbuild import write_tiny_model

TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"


def fake_model(tmp_path: Path, home: Path, **extra: str | int) -> Model:
    path = write_tiny_model(tmp_path / "f.gguf", chat_template=TEMPLATE, extra=dict(extra))
    return load(str(path), engine="fake", ctx=256, settings=resolve_settings(home=home))


def test_chat_prompt_goes_through_the_template(tmp_path: Path, home: Path) -> None:
    model = fake_model(tmp_path, home)
    result = generate(model, [{"role": "user", "content": "hi"}], max_tokens=5)
    assert bytes(fake_engine.INSTANCES[-1].prompts[-1]).decode() == "<user>hi<assistant>"
    assert result.text == "The a" and result.finish_reason == "length" and len(result.tokens) == 5


def test_end_of_generation_and_stop_strings(tmp_path: Path, home: Path) -> None:
    model = fake_model(tmp_path, home, **{"fake.eog_after": 7})
    assert generate(model, "x").text == "The ans" and generate(model, "x").finish_reason == "stop"
    stopped = generate(model, "x", stop=["ans"], max_tokens=100)
    assert stopped.text == "The " and stopped.finish_reason == "stop"
    held = [c.text for c in stream_generate(model, "x", stop=["answer!"], max_tokens=100)]
    assert "".join(held) == "The ans"  # held back while it could still become the stop string, then released


def test_chunks_carry_running_timings(tmp_path: Path, home: Path) -> None:
    model = fake_model(tmp_path, home)
    chunks = list(stream_generate(model, "hello", max_tokens=4))
    assert [c.finish_reason for c in chunks] == [None, None, None, None, "length"]
    last = chunks[-1]
    assert last.prompt_tokens == 5 and last.generation_tokens == 4 and last.token is None
    assert last.peak_memory > 10 * 2**20 and last.generation_tps > 0 and last.prompt_seconds >= 0


def test_prompt_longer_than_the_context(tmp_path: Path, home: Path) -> None:
    model = fake_model(tmp_path, home)
    with pytest.raises(ContextOverflowError, match="300 tokens but the context holds 256"):
        generate(model, "x" * 300)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"temperature": math.nan}, "temperature=nan"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"top_k": -1}, "top_k=-1"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"min_p": 1.5}, "min_p=1.5"),
        ({"repeat_penalty": math.inf}, "repeat_penalty=inf"),
        ({"seed": -3}, "seed=-3"),
        ({"seed": 2**40}, "seed="),
    ],
)
def test_sampling_ranges(kwargs: dict[str, float], words: str) -> None:
    with pytest.raises(InvalidParameterError, match="out of range; valid") as info:
        SamplingParams(**kwargs)  # type: ignore[arg-type]
    assert words in str(info.value)


@pytest.mark.parametrize("max_tokens", [-5, 0, 10**9, True, 2.5])
def test_max_tokens_range(tmp_path: Path, home: Path, max_tokens: object) -> None:
    model = fake_model(tmp_path, home)
    with pytest.raises(InvalidParameterError, match="max_tokens"):
        generate(model, "x", max_tokens=max_tokens)


def test_load_params_ranges() -> None:
    for bad in ({"n_ctx": 0}, {"n_ctx": 2**30}, {"n_threads": 0}):
        with pytest.raises(InvalidParameterError):
            LoadParams(**bad)  # type: ignore[arg-type]


def test_hostile_template_in_a_model_file(tmp_path: Path, home: Path) -> None:
    path = write_tiny_model(tmp_path / "evil.gguf", chat_template="{{ ().__class__.__base__.__subclasses__() }}")
    model = load(str(path), engine="fake", settings=resolve_settings(home=home))
    with pytest.raises(ChatTemplateError, match="unsafe"):
        generate(model, [{"role": "user", "content": "hi"}])
    assert fake_engine.INSTANCES[-1].prompts == []  # nothing reached the engine


def test_unknown_model_names_close_ones(home: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="did you mean smollm2-135m-instruct:latest"):
        load("smollm2-135m-instrct", engine="fake", settings=resolve_settings(home=home))


def test_loading_never_pulls_the_caller_decides(home: Path) -> None:
    code = "import sys, edgeslm.generation; print('edgeslm.pull' in sys.modules, 'edgeslm.sources.hub' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False"], done.stderr
    settings = resolve_settings(home=home)
    with pytest.raises(ModelNotFoundError, match=r"builtin not pulled yet; pull it first \('edgeslm pull gemma3-270m'"):
        load("gemma3-270m", engine="fake", settings=settings)
    assert Store.open(settings.models_dir).manifests() == []  # nothing was pulled behind the caller's back
