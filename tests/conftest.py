from __future__ import annotations

import io
import shutil
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


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file under ``root`` with its bytes (blobs by size only), to prove nothing changed."""
    state: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "store.lock":
            rel = str(path.relative_to(root))
            state[rel] = str(path.stat().st_size).encode() if "blobs" in rel else path.read_bytes()
    return state
