"""run / chat / embed through the CLI, on the fake engine (fast) — the real models follow in test_llamacpp."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from . import fake_engine
from .conftest import CliResult
from .ggufbuild import write_tiny_model

Cli = Callable[..., CliResult]
TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"


@pytest.fixture
def fake(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("EDGESLM_ENGINE", "fake")
    chat = write_tiny_model(tmp_path / "chat.gguf", chat_template=TEMPLATE, extra={"fake.eog_after": 6})
    base = write_tiny_model(tmp_path / "base.gguf", chat_template=None, extra={"fake.eog_after": 6})
    assert cli("import", str(chat), "--name", "chatty").code == 0
    assert cli("import", str(base), "--name", "basic").code == 0
    return cli


def feed(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def prompts() -> list[str]:
    return [bytes(p).decode() for p in fake_engine.INSTANCES[-1].prompts]


def test_run_one_prompt(fake: Cli) -> None:
    result = fake("run", "chatty", "Write", "a", "haiku", "--system", "Be brief", "--verbose")
    assert result.code == 0, result.err
    assert result.out == "The an\n"
    assert prompts() == ["<system>Be brief<user>Write a haiku<assistant>"]
    for line in (
        "load duration:",
        "prompt eval count:    46 token(s)",
        "eval count:           6 token(s)",
        "eval rate:",
    ):
        assert line in result.err


def test_first_word_is_the_prompt_unless_it_names_a_model(fake: Cli) -> None:
    result = fake("run", "--model", "basic", "The", "capital")
    assert result.code == 0 and prompts() == ["The capital"]
    assert "basic:latest has no chat template: running as plain completion" in result.err
    assert fake("run", "basic", "hello").code == 0 and prompts() == ["hello"]


def test_interactive_chat_keeps_history_and_clears(fake: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    feed(monkeypatch, 'one\n"""two\nlines"""\n/clear\nthree\n/bye\nnever\n')
    result = fake("run", "chatty", "-i")
    assert result.code == 0, result.err
    assert prompts() == [
        "<user>one<assistant>",
        "<user>one<assistant>The an<user>two\nlines<assistant>",
        "<user>three<assistant>",
    ]
    assert "Cleared the conversation." in result.err


def test_chat_on_a_base_model_is_plain_completion(fake: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    feed(monkeypatch, "first\nsecond\n")
    result = fake("run", "basic", "-i")
    assert result.code == 0 and prompts() == ["first", "second"]
    assert result.err.count("running as plain completion") == 1


def test_stdin_is_the_prompt_when_not_interactive(fake: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    feed(monkeypatch, "from a pipe")
    assert fake("run", "basic").code == 0 and prompts() == ["from a pipe"]


def test_embed_prints_json_vectors(fake: Cli) -> None:
    one = json.loads(fake("embed", "chatty", "abc").out)
    assert len(one) == 256 and abs(sum(x * x for x in one) - 1) < 1e-9
    two = json.loads(fake("embed", "chatty", "abc", "xyz").out)
    assert len(two) == 2 and two[0] == one


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("--temperature", "nan"), 2, "temperature=nan is out of range"),
        (("--top-k", "-1"), 2, "top_k=-1 is out of range"),
        (("--max-tokens", "-5"), 2, "max_tokens=-5 is out of range"),
        (("--max-tokens", "100000000"), 2, "max_tokens=100000000"),
        (("--ctx", "8"), 2, "ctx=8 is out of range"),
    ],
)
def test_bad_parameters(fake: Cli, args: tuple[str, ...], code: int, words: str) -> None:
    result = fake("run", "chatty", "hi", *args)
    assert result.code == code and words in result.err and result.out == ""


def test_prompt_longer_than_the_context(fake: Cli) -> None:
    result = fake("run", "basic", "x" * 200, "--ctx", "100")
    assert result.code == 65 and "200 tokens but the context holds 100" in result.err


def test_unknown_model(fake: Cli) -> None:
    result = fake("run", "--model", "chaty", "hi")
    assert result.code == 67 and "did you mean chatty:latest" in result.err


def test_hostile_template_is_refused(fake: Cli, tmp_path: Path) -> None:
    evil = write_tiny_model(tmp_path / "evil.gguf", chat_template="{{ 'a' * 10**9 }}")
    fake("import", str(evil), "--name", "evil")
    result = fake("run", "evil", "hi")
    assert result.code == 65 and "chat template refused" in result.err and result.out == ""
