"""A model is looked up once per request: ``run`` opens the store once, a chat request reads one
manifest, and a runner's worker opens the model it is handed without a store at all."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeslm.config import resolve_settings
from edgeslm.pull import ensure_pulled
from edgeslm.runner import Runner
from edgeslm.store import Store
from edgeslm.store.resolve import ResolvedModel

from .fake_runner import FakeRunner
from .ggufbuild import write_runnable_model
from .servekit import serving

TOOLS = [{"type": "function", "function": {"name": "add", "description": "add two numbers",
          "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Store opens ("open") and manifest lookups ("find") from here on."""
    counts: Counter[str] = Counter()
    init, find = Store.__init__, Store.find

    def counting_init(self: Store, root: Path) -> None:
        counts["open"] += 1
        init(self, root)

    def counting_find(self: Store, name: Any) -> Any:
        counts["find"] += 1
        return find(self, name)

    monkeypatch.setattr(Store, "__init__", counting_init)
    monkeypatch.setattr(Store, "find", counting_find)
    return counts


@pytest.fixture
def tiny(cli: Any, home: Path, tmp_path: Path) -> str:
    assert cli("import", str(write_runnable_model(tmp_path / "tiny.gguf", seed=3)), "--name", "tiny").code == 0
    return "tiny"


def test_run_opens_the_store_once_for_the_model_and_its_draft(cli: Any, tiny: str, counted: Counter[str]) -> None:
    result = cli("run", tiny, "hello there", "--max-tokens", "4", "--temperature", "0")
    assert result.code == 0, result.err
    assert counted == {"open": 1, "find": 1}
    counted.clear()
    result = cli("run", tiny, "hello there", "--max-tokens", "4", "--temperature", "0", "--draft", tiny)
    assert result.code == 0, result.err
    assert counted == {"open": 1, "find": 2}  # the model, then its draft, in the one store


def test_a_chat_request_reads_one_manifest_and_hands_the_runner_the_model(
    home: Path, tiny: str, counted: Counter[str]
) -> None:
    FakeRunner.reset()
    with serving(home, FakeRunner) as base:
        counted.clear()
        body = {"model": tiny, "stream": False, "tools": TOOLS, "messages": [{"role": "user", "content": "add 1"}]}
        reply = httpx.post(f"{base}/api/chat", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        assert counted == {"find": 1}  # no store opened; the tool format, defaults and runner share one lookup
        counted.clear()
        reply = httpx.post(f"{base}/v1/chat/completions", json={**body, "tools": TOOLS}, timeout=60)
        assert reply.status_code == 200, reply.text
        assert counted == {"find": 1}
    handed = FakeRunner.handed[0]
    assert isinstance(handed, ResolvedModel) and handed.name == "tiny:latest" and handed.path.is_file()


def test_the_worker_opens_the_model_it_is_handed_with_no_store(home: Path, tiny: str, tmp_path: Path) -> None:
    """The worker gets the resolved model and a home with no store in it: it loads and answers,
    and never creates (or reads) a store there."""
    found = ensure_pulled(tiny, resolve_settings(home=home, offline=True))
    elsewhere = tmp_path / "no-store-here"
    runner = Runner(found, slots=1, ctx_per_slot=128, home=str(elsewhere))
    try:
        assert runner.info["name"] == "tiny:latest"
        assert len(asyncio.run(runner.aembed(["hello"])).vectors) == 1
    finally:
        runner.close()
    assert not (elsewhere / "models").exists()


def test_a_word_that_cannot_be_a_path_is_read_as_a_name(tmp_path: Path) -> None:
    """``run`` tries its first word as a file: a long prompt (over the file-name limit) or one with a
    NUL byte is no file, not an OSError."""
    from edgeslm.store.resolve import from_path

    assert from_path(Path("Repeat exactly: " + "one two three " * 40)) is None
    assert from_path(Path("nul\x00byte")) is None
    assert from_path(tmp_path / "absent.gguf") is None

